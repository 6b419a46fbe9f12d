"""Where links and images from data may point: the shop's hosts only; template links stay the
operator's own. Pure."""

from __future__ import annotations

from pathlib import Path

from rtserver.mail.hosts import Hosts, hosts_in
from tests.support.server import make_config


def hosts(tmp_path: Path, written: set[str] | None = None, **mail: object) -> Hosts:
    config = make_config(tmp_path, mail={"brand": {"url": "https://shop.example/home"}, **mail})
    return Hosts(config.mail, "https://rt.example", lambda: written or set())


def test_links_default_to_the_brand_host_and_the_public_host(tmp_path: Path) -> None:
    policy = hosts(tmp_path)
    assert policy.link("https://shop.example/p/1") == "https://shop.example/p/1"
    assert policy.link("http://rt.example/demo#lamp") == "http://rt.example/demo#lamp"
    assert policy.link("https://phish.example/") is None
    assert policy.link("https://shop.example.evil/") is None
    assert policy.link("javascript:alert(1)") is None
    assert policy.link("https://[::1") is None
    assert policy.link(None) is None


def test_configured_link_hosts_replace_the_brand_host(tmp_path: Path) -> None:
    policy = hosts(tmp_path, link_hosts=["www.shop.example"])
    assert policy.link("https://www.shop.example/p") is not None
    assert policy.link("https://shop.example/p") is None


def test_images_need_https_and_an_image_host(tmp_path: Path) -> None:
    policy = hosts(tmp_path)
    assert policy.image("https://shop.example/i.jpg") is not None  # a link host
    assert policy.image("http://shop.example/i.jpg") is None  # not https
    assert policy.image("https://cdn.example/i.jpg") is None
    policy.feed_images = frozenset({"cdn.example"})
    assert policy.image("https://cdn.example/i.jpg") is not None
    assert policy.image("https://rt.example/static/i.png") is not None
    assert policy.image(None) is None
    configured = hosts(tmp_path, image_hosts=["img.example"])
    configured.feed_images = frozenset({"cdn.example"})
    assert configured.image("https://img.example/i.jpg") is not None
    assert configured.image("https://cdn.example/i.jpg") is None
    assert configured.image("https://shop.example/i.jpg") is None


def test_the_public_host_serves_images_in_its_own_scheme(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    policy = Hosts(config.mail, "http://localhost:8000")
    assert policy.image("http://localhost:8000/demo/lamp.png") is not None
    assert policy.image("ftp://localhost/x") is None


def test_redirects_go_to_shop_hosts_and_to_hosts_templates_name(tmp_path: Path) -> None:
    written = {"track.carrier.example"}
    policy = hosts(tmp_path, written)
    assert policy.redirect("https://shop.example/p")
    assert policy.redirect("https://track.carrier.example/?n=1")
    assert not policy.redirect("https://phish.example/")
    assert not policy.redirect("mailto:a@b")
    written.add("reviews.example")  # an edited template counts at once
    assert policy.redirect("https://reviews.example/")


def test_hosts_in_template_sources() -> None:
    source = '<a href="https://Reviews.Example/x">r</a> {{ brand.url }} http://track.example./n'
    assert hosts_in([source, "no links"]) == {"reviews.example", "track.example"}
