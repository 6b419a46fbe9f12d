"""Where a workflow's webhook step may send (``rtserver.hooks.destinations``): the allow-list's
boundaries, refused addresses, URL targets and the configuration check, all with a stub
resolver: no DNS and no connection (one test resolves ``localhost``)."""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, strategies as st

from rtserver.errors import ConfigError
from rtserver.hooks.destinations import (
    DestinationRefused,
    allowed,
    check_steps,
    post_json,
    refused_address,
    resolve_host,
    target,
    unsafe,
)

CRM = "https://crm.example/hooks/"


class Resolver:
    """A resolver stub: answers from a table (an unknown host does not resolve) and records
    every ``(host, port)`` it was asked."""

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Fail loudly on any real lookup or connection; yields what was attempted."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise AssertionError(f"network used: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts


# allowed()


@pytest.mark.parametrize(
    ("url", "allow", "expected"),
    [
        ("https://crm.example/hooks", ("https://crm.example/hooks",), True),
        (CRM + "cart", (CRM,), True),
        (CRM, (CRM,), True),
        ("https://crm.example/hooksmith", (CRM,), False),
        ("https://crm.example/hooks/cart", ("https://crm.example/hooks",), True),
        ("https://crm.example/hooks?x=1", ("https://crm.example/hooks",), True),
        ("https://crm.example/hooks#part", ("https://crm.example/hooks",), True),
        ("https://crm.example/hooksmith", ("https://crm.example/hooks",), False),
        ("https://crm.example/x", ("https://crm.example",), True),
        ("https://crm.example", ("https://crm.example",), True),
        ("https://crm.example.evil/x", ("https://crm.example",), False),
        ("https://crm.exampleX", ("https://crm.example",), False),
        ("https://crm.example:8443/x", ("https://crm.example",), False),
        ("https://crm.example@evil.example/x", ("https://crm.example",), False),
        ("https://crm.example.evil/x", (CRM,), False),
        (CRM + "cart", (), False),
        ("http://crm.example/hooks/cart", (CRM,), False),
        (CRM + "cart", ("http://crm.example/hooks/",), False),
        ("https://erp.example/in", (CRM, "https://erp.example/"), True),
    ],
    ids=[
        "exact",
        "slash-prefix",
        "slash-prefix-exact",
        "slash-prefix-not-a-folder",
        "boundary-slash",
        "boundary-query",
        "boundary-fragment",
        "no-boundary-longer-segment",
        "host-prefix",
        "host-prefix-exact",
        "longer-host-refused",
        "suffixed-host-refused",
        "other-port-refused",
        "userinfo-trick-refused",
        "other-host-under-slash-prefix",
        "empty-allow-list",
        "http-not-admitted-by-https",
        "https-not-admitted-by-http",
        "any-of-several",
    ],
)
def test_allowed_matches_prefixes_on_a_boundary(
    url: str, allow: tuple[str, ...], expected: bool
) -> None:
    """A URL is admitted by an equal prefix, a prefix ending in '/', or a prefix followed by
    '/', '?' or '#'; never by a host that merely starts the same, nor across schemes."""
    assert allowed(url, allow) is expected


def test_allowed_takes_any_iterable() -> None:
    """The allow-list may be any iterable (a generator is read once, in order)."""
    assert allowed(CRM + "x", (p for p in ("https://a.example/", CRM)))
    assert not allowed(CRM + "x", iter(()))


HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,8}(\.[a-z]{2,6}){1,2}", fullmatch=True)
SUFFIXES = st.text(alphabet="abcX.-_/@:?#%\\=&", max_size=24)


@given(host=HOSTS, suffix=SUFFIXES, scheme=st.sampled_from(["http", "https"]))
def test_a_host_prefix_admits_only_its_own_host(host: str, suffix: str, scheme: str) -> None:
    """A host-only prefix admits exactly the URLs that continue it on a boundary, and every
    URL it admits has that very host (and scheme) once parsed."""
    prefix = f"{scheme}://{host}"
    url = prefix + suffix
    admitted = allowed(url, [prefix])
    assert admitted is (suffix == "" or suffix[0] in "/?#")
    if admitted:
        parts = urllib.parse.urlsplit(url)
        assert (parts.scheme, parts.hostname) == (scheme, host)
        assert target(url)[0] == host


@given(host=HOSTS, path=st.text(alphabet="abc/", max_size=8), rest=SUFFIXES)
def test_a_folder_prefix_admits_everything_below_it(host: str, path: str, rest: str) -> None:
    """A prefix ending in '/' admits every URL that starts with it, all on its host."""
    prefix = f"https://{host}/{path}".rstrip("/") + "/"
    url = prefix + rest
    assert allowed(url, [prefix])
    assert urllib.parse.urlsplit(url).hostname == host


# refused_address()


@pytest.mark.parametrize(
    ("address", "kinds"),
    [
        ("127.0.0.1", {"loopback"}),
        ("127.8.9.10", {"loopback"}),
        ("10.0.0.1", {"private"}),
        ("172.16.0.1", {"private"}),
        ("172.31.255.254", {"private"}),
        ("192.168.1.1", {"private"}),
        ("169.254.169.254", {"link-local"}),
        ("0.0.0.0", {"unspecified", "private"}),
        ("224.0.0.1", {"multicast"}),
        ("239.255.255.250", {"multicast"}),
        ("240.0.0.1", {"reserved", "private"}),
        ("::1", {"loopback"}),
        ("::", {"unspecified", "private"}),
        ("fe80::1", {"link-local"}),
        ("fe80::1%eth0", {"link-local"}),
        ("fc00::1", {"private"}),
        ("fd00:ec2::254", {"private"}),
        ("ff02::1", {"multicast"}),
        ("::ffff:10.0.0.1", {"private"}),
        ("::ffff:127.0.0.1", {"loopback"}),
        ("::ffff:169.254.169.254", {"link-local"}),
    ],
    ids=[
        "loopback",
        "loopback-range",
        "rfc1918-10",
        "rfc1918-172.16",
        "rfc1918-172.31",
        "rfc1918-192.168",
        "cloud-metadata",
        "unspecified-v4",
        "multicast-v4",
        "ssdp-multicast",
        "reserved-class-e",
        "loopback-v6",
        "unspecified-v6",
        "link-local-v6",
        "link-local-v6-scope-id",
        "unique-local-v6",
        "aws-metadata-v6",
        "multicast-v6",
        "v4-mapped-private",
        "v4-mapped-loopback",
        "v4-mapped-metadata",
    ],
)
def test_refused_addresses_say_what_kind_they_are(address: str, kinds: set[str]) -> None:
    """Loopback, private, link-local, multicast, reserved and unspecified addresses (also
    with a scope id or mapped into IPv6) are refused, the reason naming the address and kind."""
    reason = refused_address(address)
    assert reason is not None
    match = re.fullmatch(re.escape(address) + r" is a ([a-z-]+) address", reason)
    assert match is not None, reason
    assert match.group(1) in kinds


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "8.8.8.8", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34"],
    ids=["public-v4", "public-dns", "public-v6", "v4-mapped-public"],
)
def test_public_addresses_are_allowed(address: str) -> None:
    """A public address has nothing against it."""
    assert refused_address(address) is None


@pytest.mark.parametrize(
    "address",
    ["100.64.0.1", "100.100.100.200", "::ffff:100.100.100.200"],
    ids=["cgnat", "alibaba-metadata", "v4-mapped-alibaba-metadata"],
)
def test_non_public_shared_addresses_are_refused(address: str) -> None:
    """An address that is not globally reachable (RFC 6598 shared space) is refused."""
    assert not ipaddress.ip_address(address.removeprefix("::ffff:")).is_global
    assert refused_address(address) is not None


@given(st.ip_addresses(v=4))
def test_v4_mapped_addresses_get_the_verdict_of_their_ipv4(ip: ipaddress.IPv4Address) -> None:
    """``::ffff:a.b.c.d`` is judged exactly as ``a.b.c.d`` (no bypass through IPv6)."""
    plain = refused_address(str(ip))
    mapped = refused_address(f"::ffff:{ip}")
    assert (plain is None) is (mapped is None)
    if plain is not None and mapped is not None:
        assert mapped.removeprefix(f"::ffff:{ip}") == plain.removeprefix(str(ip))


@given(st.ip_addresses(v=6), st.sampled_from(["eth0", "1", "en0"]))
def test_a_scope_id_does_not_change_the_verdict(ip: ipaddress.IPv6Address, scope: str) -> None:
    """``addr%scope`` is judged as ``addr``; the reason quotes the address as given."""
    plain = refused_address(str(ip))
    scoped = refused_address(f"{ip}%{scope}")
    assert (plain is None) is (scoped is None)
    if plain is not None and scoped is not None:
        assert scoped == plain.replace(str(ip), f"{ip}%{scope}", 1)


GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")


@given(st.ip_addresses())
def test_global_unicast_addresses_are_never_refused(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    """No globally reachable unicast address (IPv4, or IPv6 global unicast 2000::/3) is
    refused: the check refuses nothing public."""
    unicast = ip.version == 4 or ip in GLOBAL_UNICAST_V6
    if unicast and ip.is_global and not ip.is_multicast:
        assert refused_address(str(ip)) is None


def test_refused_address_rejects_what_is_not_an_address() -> None:
    """A host name is no address: ValueError (resolve first)."""
    with pytest.raises(ValueError):
        refused_address("crm.example")


# target()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://crm.example/hooks", ("crm.example", 80)),
        ("https://crm.example/hooks", ("crm.example", 443)),
        ("https://crm.example", ("crm.example", 443)),
        ("https://crm.example:8443/hooks", ("crm.example", 8443)),
        ("http://crm.example:443/", ("crm.example", 443)),
        ("http://[2001:db8::1]/x", ("2001:db8::1", 80)),
        ("https://[::1]:9000/x", ("::1", 9000)),
        ("https://[fe80::1%25eth0]/x", ("fe80::1%25eth0", 443)),
        ("http://10.0.0.1/x", ("10.0.0.1", 80)),
        ("HTTPS://CRM.Example/x", ("crm.example", 443)),
        ("https://user:secret@crm.example/x", ("crm.example", 443)),
    ],
    ids=[
        "http-default-port",
        "https-default-port",
        "no-path",
        "explicit-port",
        "explicit-port-over-scheme",
        "ipv6-literal",
        "ipv6-literal-port",
        "ipv6-scope-id",
        "ipv4-literal",
        "case-folded",
        "userinfo-ignored",
    ],
)
def test_target_is_host_and_port(url: str, expected: tuple[str, int]) -> None:
    """The host (lower case, IPv6 without brackets) and the port, defaulting per scheme."""
    assert target(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://crm.example/x",
        "file:///etc/passwd",
        "gopher://crm.example/",
        "https:///hooks",
        "https://",
        "crm.example/hooks",
        "mailto:ops@crm.example",
        "https://crm.example:99999/",
        "https://crm.example:port/",
    ],
    ids=[
        "ftp",
        "file",
        "gopher",
        "no-host",
        "scheme-only",
        "no-scheme",
        "mailto",
        "port-out-of-range",
        "port-not-a-number",
    ],
)
def test_target_refuses_what_is_not_an_http_url_with_a_host(url: str) -> None:
    """Other schemes, a missing host or a bad port: ValueError."""
    with pytest.raises(ValueError):
        target(url)


def test_target_names_the_url_it_refuses() -> None:
    """The error quotes the URL."""
    with pytest.raises(ValueError, match=re.escape("not an http(s) URL with a host: 'ftp://x/'")):
        target("ftp://x/")


# unsafe()


@pytest.mark.parametrize(
    ("addresses", "allow_private", "expected"),
    [
        ([], False, None),
        ([], True, None),
        (["93.184.216.34"], False, None),
        (["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"], False, None),
        (["93.184.216.34", "10.0.0.1", "127.0.0.1"], False, "10.0.0.1 is a private address"),
        (["169.254.169.254", "10.0.0.1"], False, "169.254.169.254 is a link-local address"),
        (["127.0.0.1", "169.254.169.254", "10.0.0.1", "::1"], True, None),
    ],
    ids=[
        "empty",
        "empty-private-allowed",
        "public",
        "all-public",
        "first-refused-wins",
        "metadata-first",
        "allow-private-admits-all",
    ],
)
def test_unsafe_gives_the_first_refused_reason(
    addresses: list[str], allow_private: bool, expected: str | None
) -> None:
    """The reason of the first refused address; None when all may be called or when private
    addresses are allowed."""
    assert unsafe(addresses, allow_private) == expected


def test_unsafe_reads_no_address_when_private_ones_are_allowed() -> None:
    """With ``allow_private`` the addresses are not even looked at (not valid ones either)."""
    assert unsafe(["not an address"], True) is None


def test_unsafe_stops_at_the_first_refused_address() -> None:
    """Addresses after the first refused one are not read."""

    def addresses() -> Iterator[str]:
        yield "10.0.0.1"
        raise AssertionError("read past the first refused address")

    assert unsafe(addresses(), False) == "10.0.0.1 is a private address"


# check_steps()


def test_a_url_outside_the_allow_list_is_a_config_error(no_network: list[Any]) -> None:
    """The error names the workflow, the step number, the URL and hooks.allow; nothing is
    resolved for it."""
    resolver = Resolver({"evil.example": ["93.184.216.34"]})
    url = "https://evil.example/collect"
    with pytest.raises(ConfigError) as caught:
        check_steps([("crm_sync", 3, url)], (CRM, "https://erp.example/"), False, resolver)
    message = str(caught.value)
    assert message == (
        f"workflow 'crm_sync' step 3: webhook {url!r}: not in hooks.allow "
        f"({CRM!r}, 'https://erp.example/')"
    )
    assert resolver.calls == [] and no_network == []


def test_an_empty_allow_list_refuses_every_step(no_network: list[Any]) -> None:
    """No allow-list: every webhook step is a configuration error, said so."""
    resolver = Resolver({"crm.example": ["93.184.216.34"]})
    with pytest.raises(ConfigError, match=r"step 1: .*not in hooks\.allow \(empty\)"):
        check_steps([("crm_sync", 1, CRM + "cart")], (), False, resolver)
    assert resolver.calls == []


@pytest.mark.parametrize(
    ("url", "answers", "asked", "refused"),
    [
        (
            CRM + "cart",
            {"crm.example": ["169.254.169.254"]},
            ("crm.example", 443),
            "169.254.169.254",
        ),
        (CRM + "cart", {"crm.example": ["10.0.0.1"]}, ("crm.example", 443), "10.0.0.1"),
        (
            "https://crm.example:8443/hooks/x",
            {"crm.example": ["93.184.216.34", "fd00::5"]},
            ("crm.example", 8443),
            "fd00::5",
        ),
        ("http://10.0.0.1/x", {"10.0.0.1": ["10.0.0.1"]}, ("10.0.0.1", 80), "10.0.0.1"),
        ("http://[::1]:8080/x", {"::1": ["::1"]}, ("::1", 8080), "::1"),
    ],
    ids=["cloud-metadata", "private", "one-of-several", "ipv4-literal", "ipv6-literal"],
)
def test_a_host_on_a_refused_address_is_a_config_error(
    url: str,
    answers: dict[str, list[str]],
    asked: tuple[str, int],
    refused: str,
    no_network: list[Any],
) -> None:
    """The error names the step, the refused address and hooks.allow_private; the stub was
    asked once for (host, port) and nothing else was contacted."""
    allow = (CRM, "https://crm.example:8443/", "http://10.0.0.1/", "http://[::1]:8080/")
    resolver = Resolver(answers)
    with pytest.raises(ConfigError) as caught:
        check_steps([("crm_sync", 2, url)], allow, False, resolver)
    message = str(caught.value)
    assert message.startswith(f"workflow 'crm_sync' step 2: webhook {url!r}: {refused} is a ")
    assert message.endswith("(hooks.allow_private = false)")
    assert resolver.calls == [asked]
    assert no_network == []


def test_allow_private_accepts_private_destinations(no_network: list[Any]) -> None:
    """With ``allow_private`` an on-premise CRM (and the metadata address) is accepted."""
    resolver = Resolver({"crm.example": ["10.0.0.1"], "10.0.0.2": ["10.0.0.2"]})
    steps = [("crm_sync", 1, CRM + "a"), ("crm_sync", 2, "http://10.0.0.2/b")]
    assert check_steps(steps, (CRM, "http://10.0.0.2/"), True, resolver) == []
    assert resolver.calls == [("crm.example", 443), ("10.0.0.2", 80)]
    assert no_network == []


def test_a_public_destination_passes_silently(no_network: list[Any]) -> None:
    """An allowed URL whose host resolves to public addresses only: no warning."""
    resolver = Resolver({"crm.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]})
    assert check_steps([("crm_sync", 1, CRM + "cart")], (CRM,), False, resolver) == []
    assert resolver.calls == [("crm.example", 443)]


def test_a_host_that_does_not_resolve_is_only_a_warning(no_network: list[Any]) -> None:
    """DNS may be down at start: a lookup's OSError becomes a returned warning, not an error."""
    resolver = Resolver()
    warnings = check_steps([("crm_sync", 4, CRM + "cart")], (CRM,), False, resolver)
    assert warnings == [
        f"workflow 'crm_sync' step 4: webhook {CRM + 'cart'!r}: crm.example does not resolve "
        "now ([Errno -2] Name or service not known); checked again later"
    ]
    assert resolver.calls == [("crm.example", 443)]


def test_any_oserror_of_the_resolver_is_a_warning() -> None:
    """Not only gaierror: a timeout or a refused connection to the DNS server also warns."""

    def down(host: str, port: int) -> list[str]:
        raise TimeoutError("resolver timed out")

    (warning,) = check_steps([("w", 1, CRM + "x")], (CRM,), False, down)
    assert "crm.example does not resolve now (resolver timed out)" in warning


def test_warnings_accumulate_over_several_steps(no_network: list[Any]) -> None:
    """Every step is checked in order; each unresolved host adds its own warning."""
    resolver = Resolver({"ok.example": ["93.184.216.34"]})
    steps = [
        ("a", 1, "https://down.example/x"),
        ("a", 2, "https://ok.example/y"),
        ("b", 1, "http://gone.example:8080/z"),
    ]
    allow = ("https://down.example/", "https://ok.example", "http://gone.example:8080/")
    warnings = check_steps(steps, allow, False, resolver)
    assert [w.split(":", 1)[0] for w in warnings] == ["workflow 'a' step 1", "workflow 'b' step 1"]
    assert "down.example does not resolve now" in warnings[0]
    assert "gone.example does not resolve now" in warnings[1]
    assert resolver.calls == [("down.example", 443), ("ok.example", 443), ("gone.example", 8080)]


def test_a_later_refused_step_still_raises_after_warnings(no_network: list[Any]) -> None:
    """An unresolved host before a refused one does not hide the refusal."""
    resolver = Resolver({"crm.example": ["192.168.1.1"]})
    steps = [("a", 1, "https://down.example/x"), ("b", 5, CRM + "y")]
    with pytest.raises(ConfigError, match=r"workflow 'b' step 5: .*192\.168\.1\.1 is a private"):
        check_steps(steps, ("https://down.example/", CRM), False, resolver)


def test_no_steps_no_work(no_network: list[Any]) -> None:
    """Without webhook steps nothing is resolved, whatever the allow-list."""
    resolver = Resolver()
    assert check_steps([], (), False, resolver) == []
    assert resolver.calls == []


def test_an_allowed_url_with_a_bad_port_is_a_config_error(no_network: list[Any]) -> None:
    """A bad port in an allowed URL is a configuration error naming the step."""
    url = "https://crm.example:99999/hooks"
    with pytest.raises(ConfigError, match=r"workflow 'crm_sync' step 1"):
        check_steps([("crm_sync", 1, url)], ("https://crm.example:99999/",), False, Resolver())


# resolve_host() (the only tests that resolve: the loopback name and a literal)


def test_resolve_host_finds_loopback_for_localhost() -> None:
    """``localhost`` resolves to loopback addresses only, each once, sorted."""
    addresses = resolve_host("localhost", 80)
    assert addresses and addresses == sorted(set(addresses))
    assert all(ipaddress.ip_address(a).is_loopback for a in addresses)
    assert all("loopback" in (refused_address(a) or "") for a in addresses)


def test_resolve_host_returns_a_literal_as_is() -> None:
    """An IP literal resolves to itself (no DNS involved)."""
    assert resolve_host("127.0.0.1", 443) == ["127.0.0.1"]


def test_the_default_resolver_refuses_localhost() -> None:
    """check_steps resolves with ``resolve_host`` by default: localhost is refused."""
    url = "http://localhost:8080/hooks"
    with pytest.raises(ConfigError, match=r"is a loopback address \(hooks\.allow_private"):
        check_steps([("crm_sync", 1, url)], ("http://localhost:8080/",), False)


async def test_post_json_refuses_private_addresses_before_it_connects() -> None:
    """The guarded POST checks what the host resolves to first: loopback, link-local (the
    metadata service) and private addresses are refused without a connection, unless
    private addresses are allowed."""
    connected: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        connected.append(str(request.url))
        return httpx.Response(204)

    transport = httpx.MockTransport(handler)
    for url, address in (
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://alerts.example/hook", "127.0.0.1"),
        ("http://alerts.example/hook", "10.1.2.3"),
    ):

        async def resolve(host: str, port: int, address: str = address) -> list[str]:
            return [address]

        with pytest.raises(DestinationRefused, match="destination refused"):
            await post_json(
                url, {"a": 1}, allow_private=False, timeout_s=1.0, resolve=resolve,
                transport=transport,
            )  # fmt: skip
    assert connected == []

    async def public(host: str, port: int) -> list[str]:
        return ["93.184.215.14"]

    status = await post_json(
        "https://alerts.example:8443/hook", {"a": 1}, allow_private=False, timeout_s=1.0,
        resolve=public, transport=transport,
    )  # fmt: skip
    assert status == 204 and connected == ["https://93.184.215.14:8443/hook"]


async def test_post_json_follows_no_redirect_and_fails_on_errors() -> None:
    """A 3xx is a refusal naming where it pointed (never followed); a 5xx is a failure."""

    async def local(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    for answer, message in (
        (httpx.Response(302, headers={"location": "http://10.0.0.1/"}), "not followed"),
        (httpx.Response(500), "500 Internal Server Error"),
    ):
        transport = httpx.MockTransport(lambda request, answer=answer: answer)
        with pytest.raises(DestinationRefused, match=message):
            await post_json(
                "http://hooks.test/x", {}, allow_private=True, timeout_s=1.0, resolve=local,
                transport=transport,
            )  # fmt: skip
    with pytest.raises(DestinationRefused, match="bad destination"):
        await post_json("ftp://x/", {}, allow_private=True, timeout_s=1.0, resolve=local)
