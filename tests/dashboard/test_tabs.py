"""The dashboard's tabs against a real server: each tab guarded and marked as the current one,
People's search, Messages' templates, and a flow's page whose counts at each step match the
store's rows for a workflow driven by real WebSocket events."""

from __future__ import annotations

import re
import sqlite3
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.dashboard import (  # noqa: F401 (sse_exit_flag_reset is autouse)
    XSS,
    dashboard_config,
    login,
    sse_exit_flag_reset,
)
from tests.support.events import event, shopper, tracked
from tests.support.server import ORIGIN, run_server, send_batch, sent

TABS = {
    "overview": "/dashboard",
    "flows": "/dashboard/flows",
    "people": "/dashboard/people",
    "messages": "/dashboard/messages",
    "system": "/dashboard/system",
}
FLOW = {
    "name": "cart",
    "trigger": "Product Added",
    "run_key": "properties.cart_id",
    "exit_on": ["Order Completed"],
    "reentry": "always",
    "holdout": 50,
    "step": [
        {"send": "cart_reminder"},
        {"wait_until": "Checkout Started", "timeout": "24h"},
        {"send": "cart_reminder_2", "if": "person.orders_since(run.started) == 0"},
    ],
}
"""Every step decided on an event (the ack follows the commit): a reminder at once, a wait
for the checkout, a second mail; half the carts held out."""


TAG = "<b onclick=x>"


def current(page: str) -> list[tuple[str, str]]:
    """The (tab, aria-current value) of the marked tabs of a page."""
    return re.findall(r'id="tab-(\w+)" aria-current="(\w+)"', page)


@pytest.mark.parametrize("tab", sorted(TABS))
async def test_each_tab_is_guarded_and_marked(tmp_path: Path, tab: str) -> None:
    """Without a session a tab is a 303 to the login for a browser and a 401 otherwise; with
    one it is a 200 with all five tabs, itself marked as the current page, and (but People)
    the live badge and script."""
    path = TABS[tab]
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        page = await client.get(path, headers={"accept": "text/html"})
        assert page.status_code == 303
        assert page.headers["location"] == f"/dashboard/login?next={path}"
        assert (await client.get(path)).status_code == 401
        await login(client)
        shown = await client.get(path)
    assert shown.status_code == 200
    assert current(shown.text) == [(tab, "page")]
    for key, href in TABS.items():
        assert f'<a href="{href}" id="tab-{key}"' in shown.text
    assert "<h1" in shown.text and '<nav class="tabs" aria-label="Dashboard">' in shown.text
    live_badge = '<span id="live" role="status" aria-live="polite">' in shown.text
    assert live_badge == (tab != "people")
    assert ("dashboard.js" in shown.text) == (tab != "people")


async def test_pages_under_a_tab_mark_it(tmp_path: Path) -> None:
    """A person's page is under People, a flow's page and Send time under Flows (marked as
    the current section, not the current page); an unknown flow is a 404."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        async with live.ws(origin=ORIGIN) as ws:
            await send_batch(ws, [shopper("ann", "ann@example.com")])
        await login(client)
        person = await client.get("/dashboard/person/u:ann")
        unknown_person = await client.get("/dashboard/person/u:nobody")
        flow = await client.get("/dashboard/flows/cart")
        send_time = await client.get("/dashboard/send-time")
        unknown = await client.get("/dashboard/flows/" + urllib.parse.quote(TAG, safe=""))
    assert current(person.text) == [("people", "true")]
    assert current(unknown_person.text) == [("people", "true")]
    assert current(flow.text) == [("flows", "true")] and flow.status_code == 200
    assert current(send_time.text) == [("flows", "true")]
    assert 'href="/dashboard/send-time"' in flow.text
    assert unknown.status_code == 404 and "Unknown workflow" in unknown.text
    assert TAG not in unknown.text and "&lt;b onclick=x&gt;" in unknown.text
    assert current(unknown.text) == [("flows", "true")]


async def test_people_lists_and_finds_people(tmp_path: Path) -> None:
    """People lists the people of the newest events, newest first; a search finds one by
    person id, user id or anonymous id, and says so when it finds nobody (escaped)."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        linked = {**shopper("bob", "bob@example.com"), "anonymousId": "anon-b"}
        async with live.ws(origin=ORIGIN) as ws:
            await send_batch(ws, [shopper("ann", "ann@example.com")])
            await send_batch(ws, [linked])
            await send_batch(ws, [event(event="Page Viewed", anonymousId="anon-z")])
        await login(client)
        listed = (await client.get("/dashboard/people")).text
        by_user = (await client.get("/dashboard/people", params={"q": "ann"})).text
        by_id = (await client.get("/dashboard/people", params={"q": "u:ann"})).text
        by_anon = (await client.get("/dashboard/people", params={"q": "anon-b"})).text
        nobody = (await client.get("/dashboard/people", params={"q": XSS})).text
    rows = re.findall(r'<tr><td data-label="person"><a href="/dashboard/person/([^"]+)">', listed)
    assert [urllib.parse.unquote(r) for r in rows] == ["a:anon-z", "u:bob", "u:ann"]
    assert "ann@example.com" in listed
    for found in (by_user, by_id):
        assert re.findall(r'href="/dashboard/person/([^"]+)">', found) == ["u%3Aann"]
    assert 'href="/dashboard/person/u%3Abob">' in by_anon
    assert "nobody found for" in nobody and XSS not in nobody
    assert 'value="&lt;script&gt;alert(1)&lt;/script&gt;"' in nobody


async def test_messages_lists_every_template_with_a_preview(tmp_path: Path) -> None:
    """Messages lists every template, each with the workflows sending it and a preview link
    into the sandboxed frame, beside the dev sink's inbox and the outbox."""
    config = dashboard_config(tmp_path, workflow=[FLOW])
    async with run_server(config) as live, live.http() as client:
        await login(client)
        page = (await client.get("/dashboard/messages")).text
    table = page[page.index('id="templates"') : page.index("</table>", page.index("templates"))]
    names = re.findall(r'<td data-label="template">(\w+)</td>', table)
    assert {"cart_reminder", "cart_reminder_2", "welcome", "confirm"} <= set(names)
    assert names == sorted(names)
    assert table.count('<a href="/dashboard/flows/cart">cart</a>') == 2
    assert table.count('target="mailview" class="preview">preview</a>') == len(names)
    assert 'href="/dashboard/messages/preview/cart_reminder"' in table
    assert 'id="mail-body"' in page and 'id="sink-body"' in page
    assert '<iframe class="mail" name="mailview"' in page


async def test_a_template_preview_renders_sample_data_inert(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A template's preview is rendered with the sample person (no customer's), with no open
    pixel and its links leading where they point, served for a sandboxed frame; an unknown
    template, or one that fails to render, is a 404 (the failure logged)."""
    templates = tmp_path / "templates" / "email"
    templates.mkdir(parents=True)
    (templates / "broken.html").write_text("{% block subject %}Hi{% endblock %}{{ person.x.y }}")
    (templates / "broken.txt").write_text("Hi")
    config = dashboard_config(tmp_path, mail={"templates": str(tmp_path / "templates")})
    async with run_server(config) as live, live.http() as client:
        await login(client)
        shown = await client.get("/dashboard/messages/preview/cart_reminder")
        unknown = await client.get("/dashboard/messages/preview/nope")
        broken = await client.get("/dashboard/messages/preview/broken")
        public = live.config.server.public_url.rstrip("/")
    assert shown.status_code == 200 and "Ada" in shown.text
    assert shown.headers["content-security-policy"].startswith("sandbox ")
    assert f"{public}/o/" not in shown.text and f"{public}/c/" not in shown.text
    assert '<base target="_blank">' in shown.text
    assert unknown.status_code == 404 and broken.status_code == 404
    assert "the preview of broken failed" in caplog.text


def _store_counts(path: str) -> dict[str, Any]:
    """The counts a flow page shows, read from the SQLite file with SQL of their own."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        runs = db.execute("SELECT count(*) FROM runs WHERE workflow = 'cart'").fetchone()[0]
        waiting = dict(
            db.execute(
                "SELECT step, count(*) FROM runs WHERE workflow = 'cart' AND state = 'active' "
                "GROUP BY step"
            ).fetchall()
        )
        completed = db.execute(
            "SELECT count(*) FROM runs WHERE workflow = 'cart' AND end_reason = 'completed'"
        ).fetchone()[0]
        exited = db.execute(
            "SELECT step, end_reason FROM runs WHERE workflow = 'cart' AND state = 'ended' "
            "AND end_reason != 'completed'"
        ).fetchall()
        sent_rows = dict(
            db.execute(
                "SELECT step, count(*) FROM outbox WHERE workflow = 'cart' AND state = 'sent' "
                "GROUP BY step"
            ).fetchall()
        )
        skips = db.execute(
            "SELECT step, detail FROM steps WHERE workflow = 'cart' AND action = 'skip'"
        ).fetchall()
        held_out = db.execute(
            "SELECT count(*) FROM runs WHERE workflow = 'cart' AND holdout = 1"
        ).fetchone()[0]
    finally:
        db.close()
    skipped: list[Counter[str]] = [Counter() for _ in range(3)]
    for step, detail in skips:
        skipped[step][orjson.loads(detail)["reason"]] += 1
    exits: list[Counter[str]] = [Counter() for _ in range(3)]
    for step, reason in exited:
        exits[step][reason] += 1
    return {
        "runs": runs,
        "waiting": [waiting.get(i, 0) for i in range(3)],
        "sent": [sent_rows.get(i, 0) for i in range(3)],
        "skipped": [dict(c) for c in skipped],
        "exited": [dict(c) for c in exits],
        "completed": completed,
        "held_out": held_out,
    }


def _node(page: str, index: int) -> str:
    """The HTML of step ``index``'s node on a flow's page."""
    start = page.index(f'data-step="{index}"')
    following = page.find('data-step="', start + 1)
    return page[start : following if following > 0 else page.index('class="node end"')]


def _number(html: str, key: str) -> int:
    found = re.search(rf'data-k="{key}">(\d+)<', html)
    assert found is not None, key
    return int(found.group(1))


def _reasons(html: str, key: str) -> dict[str, int]:
    return {r: int(n) for r, n in re.findall(rf"<li>{key}: (.+?) · (\d+)</li>", html)}


async def test_a_flow_page_counts_what_the_store_holds(tmp_path: Path) -> None:
    """Eight carts through real WebSockets: each gets its reminder at once (or is held out),
    two check out (their second mail, the run completes), one orders (the run exits at the
    checkout wait), five wait. The flow's page draws the three steps and shows, at each, the
    counts the store's rows give (read here with SQL of the test's own); the Flows tab's row
    and the stream's ``flows`` panel agree."""
    config = dashboard_config(tmp_path, workflow=[FLOW])
    async with run_server(config) as live, live.http() as client:
        async with live.ws(origin=ORIGIN) as ws:
            for i in range(8):
                await send_batch(ws, [shopper(f"s{i}", f"s{i}@example.com")])
                await send_batch(ws, [tracked(f"s{i}", "Product Added", cart_id=f"c{i}")])
            for i in (0, 1):
                await send_batch(ws, [tracked(f"s{i}", "Checkout Started", cart_id=f"c{i}")])
            await send_batch(ws, [tracked("s2", "Order Completed", cart_id="c2", revenue=5)])
        path = live.runtime.store.path
        assert _store_counts(path)["held_out"] not in (0, 8)  # both arms drawn
        await sent(live, len(await live.runtime.store.mail.outbox()))  # the sender is done
        expected = _store_counts(path)
        await login(client)
        page = (await client.get("/dashboard/flows/cart")).text
        listing = (await client.get("/dashboard/flows")).text
        panel = await live.runtime.board.flow_counts()
    assert expected["runs"] == 8 and expected["completed"] == 2
    assert expected["waiting"] == [0, 5, 0]
    assert expected["exited"] == [{}, {"exit on Order Completed": 1}, {}]
    assert expected["sent"][0] + expected["skipped"][0].get("holdout", 0) == 8
    assert sum(expected["sent"]) > 0

    drawn = re.findall(r'<li class="node kind-(\w+)" data-step="(\d)">', page)
    assert drawn == [("send", "0"), ("wait_until", "1"), ("send", "2")]
    assert "send cart_reminder" in _node(page, 0)
    assert "wait until Checkout Started (at most 1 d)" in _node(page, 1)
    assert "only if <code>person.orders_since(run.started) == 0</code>" in _node(page, 2)
    entered = [8, 8, 2]
    for i in range(3):
        node = _node(page, i)
        assert _number(node, "entered") == entered[i]
        assert _number(node, "waiting") == expected["waiting"][i]
        assert _reasons(node, "skipped") == expected["skipped"][i]
        assert _reasons(node, "exited") == expected["exited"][i]
        if i != 1:
            assert _number(node, "sent") == expected["sent"][i]
    assert re.search(r'id="flow-completed">2<', page) and re.search(r'id="flow-runs">8<', page)
    assert re.search(r'id="flow-open">5<', page) and 'id="flow-holdout">50%<' in page
    assert "every run kept" in page
    # The arms: the mailed runs and the holdout, with the lift below them.
    arms = page[page.index('id="flow-funnel-body"') :]
    arms = arms[: arms.index("</tbody>")]
    shown = re.findall(r'<tr><td data-label="arm">(\w+(?: \w+)?)</td>', arms)
    assert shown == ["all", "holdout", "vs holdout"]
    assert page.count('<td data-label="person"><a href="/dashboard/person/') == 8  # its runs

    row = listing[listing.index('<tr data-flow="cart">') :]
    row = row[: row.index("</tr>")]
    assert 'data-k="open">5<' in row and 'data-k="entered">' in row

    counts = panel["counts"]["cart"]
    assert panel["partial"] is False and counts["completed"] == 2
    assert [s["waiting"] for s in counts["steps"]] == expected["waiting"]
    assert [s["sent"] for s in counts["steps"]] == expected["sent"]
    start = page.index('id="snapshot">') + len('id="snapshot">')
    snapshot = orjson.loads(page[start : page.index("</script>", start)])
    assert snapshot["flows"]["counts"]["cart"]["steps"][1]["waiting"] == 5
