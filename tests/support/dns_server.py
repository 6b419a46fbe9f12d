"""A small authoritative DNS server on loopback (UDP, port 0) for tests: it answers A, AAAA
and TXT questions from a table, NXDOMAIN for anything else. Built with dnspython's messages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

Records = Mapping[tuple[str, str], Sequence[str]]
"""(name, type) -> the records' text, e.g. ("shop.example", "TXT"): ['"v=spf1 -all"']."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, records: Records) -> None:
        self.records = {(name.rstrip(".").lower(), kind): v for (name, kind), v in records.items()}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        answers = self.records.get((name, kind))
        if answers:
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", kind, *answers))
        elif not any(n == name for n, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@contextlib.asynccontextmanager
async def dns_server(records: Records) -> AsyncIterator[str]:
    """Serve ``records``; yields ``127.0.0.1:<port>``."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Protocol(records), local_addr=("127.0.0.1", 0)
    )
    try:
        yield f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"
    finally:
        transport.close()
