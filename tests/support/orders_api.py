"""A shop platform's orders API without webhooks, for the polling sources' tests: the same
orders served by cursor (``?cursor=N``, the next one in the body), by ``Link`` header
(``?page=N``) or by time (``?since=T``, items newer than T), ``PAGE`` orders a page.

Handlers run on pytest-httpserver's threads; :attr:`script` lets a test answer the Nth request
of a URL its own way (a 500, a 429 with ``Retry-After``, a held answer).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from werkzeug import Request, Response

__all__ = ["PAGE", "OrdersApi", "order"]

PAGE = 2
"""Orders a page."""
EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z


def order(number: int) -> dict[str, Any]:
    """Order ``number``: its id, customer, total and creation time (seconds since the epoch)."""
    return {
        "id": 1000 + number,
        "customer": {"id": f"c{number % 3}", "email": f"c{number % 3}@shop.example"},
        "total": 10.0 + number,
        "created": EPOCH + 60 * number,
    }


class OrdersApi:
    """The orders, and the requests each URL got (path and query, in order)."""

    def __init__(self, count: int) -> None:
        self.orders = [order(n) for n in range(count)]
        self.seen: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.script: dict[tuple[str, int], Callable[[Request], Response]] = {}
        """(query string, its nth request, from 1) -> a handler answering it instead."""
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        """``count`` more orders."""
        start = len(self.orders)
        self.orders += [order(n) for n in range(start, start + count)]

    def _scripted(self, request: Request) -> Response | None:
        query = request.query_string.decode()
        with self._lock:
            self.seen.append(query)
            self.headers.append(dict(request.headers))
            nth = self.seen.count(query)
        handler = self.script.get((query, nth))
        return handler(request) if handler is not None else None

    def by_cursor(self, request: Request) -> Response:
        if (scripted := self._scripted(request)) is not None:
            return scripted
        return self.cursor_page(request)

    def cursor_page(self, request: Request) -> Response:
        """The page a cursor asks for (not recorded, not scripted)."""
        start = int(request.args.get("cursor", "0"))
        page = self.orders[start : start + PAGE]
        after = start + PAGE
        body = {"orders": page, "next": after if after < len(self.orders) else None}
        return Response(json.dumps(body), content_type="application/json")

    def by_link(self, request: Request) -> Response:
        if (scripted := self._scripted(request)) is not None:
            return scripted
        number = int(request.args.get("page", "1"))
        start = (number - 1) * PAGE
        headers = {}
        if start + PAGE < len(self.orders):
            headers["Link"] = f'<{request.base_url}?page={number + 1}>; rel="next"'
        body = json.dumps(self.orders[start : start + PAGE])
        return Response(body, content_type="application/json", headers=headers)

    def by_time(self, request: Request) -> Response:
        if (scripted := self._scripted(request)) is not None:
            return scripted
        since = int(request.args.get("since", "0"))
        newer = [o for o in self.orders if o["created"] > since][:PAGE]
        return Response(json.dumps({"data": newer}), content_type="application/json")


def failing(status: int, **headers: str) -> Callable[[Request], Response]:
    """A handler that answers ``status`` with ``headers``."""
    return lambda request: Response(json.dumps({"error": status}), status=status, headers=headers)
