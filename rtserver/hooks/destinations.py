"""Where rtserver may send HTTP requests: a workflow's ``webhook`` steps and the alert webhook
(never an SSRF tool). Every outbound request goes through here.

A destination must start with one of ``hooks.allow`` (an admin allow-list of URL prefixes,
matched on a path boundary, so ``https://crm.example/`` never admits
``https://crm.example.evil/``) and every address its host resolves to must be public: private,
loopback, link-local (``169.254.169.254``, the cloud metadata service), multicast, reserved and
unspecified addresses are refused unless ``hooks.allow_private`` says otherwise (an on-premise
CRM, tests). The check runs at configuration time (a host that does not resolve then is only a
warning: DNS may be down while the server starts) and again before every delivery, whose
connection then goes to the very address checked (no second lookup to rebind).

Resolution is injected (``resolve``), so tests check the rules with a stub and no traffic.
:func:`post_json` is the one guarded POST for callers without the courier's machinery (the alert
webhook): resolved and checked before it connects, to the checked address, no redirect followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, BinaryIO

import httpx
import orjson

from rtserver import __version__
from rtserver.errors import ConfigError

__all__ = [
    "AsyncResolve",
    "DestinationRefused",
    "Resolve",
    "allowed",
    "check_steps",
    "check_url",
    "fetch_into",
    "pinned",
    "post_json",
    "resolve_async",
    "refused_address",
    "resolve_host",
    "target",
    "unsafe",
]

Resolve = Callable[[str, int], list[str]]
"""``(host, port) -> addresses``; raises ``OSError`` when the host does not resolve."""
AsyncResolve = Callable[[str, int], Awaitable[list[str]]]
MAX_ANSWER_BYTES = 65536


class DestinationRefused(ValueError):
    """An outbound request the guard refuses: a refused address, a bad URL, or a redirect; or
    an answer that is not what the caller takes, whose ``status`` and ``Retry-After`` header
    (``retry_after``, as sent) are kept for a caller that backs off."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        """The answer's HTTP status (None: no answer was taken, e.g. a refused address)."""
        self.retry_after = retry_after
        """The answer's ``Retry-After`` header, if any (seconds or an HTTP date)."""


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (``getaddrinfo``, TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def resolve_async(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, without blocking the loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def pinned(url: str, address: str) -> str:
    """``url`` with its host replaced by ``address`` (the port and the rest kept)."""
    parts = urllib.parse.urlsplit(url)
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def allowed(url: str, allow: Iterable[str]) -> bool:
    """Whether ``url`` starts with one of the ``allow`` prefixes, on a boundary."""
    for prefix in allow:
        if url == prefix:
            return True
        if url.startswith(prefix) and (prefix.endswith("/") or url[len(prefix)] in "/?#"):
            return True
    return False


def refused_address(address: str) -> str | None:
    """Why ``address`` is no place for a webhook, or None for a public one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return f"{address} is a {kind.replace('_', '-')} address"
    if not ip.is_global:  # shared (100.64/10, carrier-grade NAT and some metadata services) ...
        return f"{address} is not a global address"
    return None


def target(url: str) -> tuple[str, int]:
    """``(host, port)`` of an http(s) URL.

    Raises:
        ValueError: not an http(s) URL with a host and a valid port.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    port = parts.port  # ValueError for a port out of range or not a number
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def unsafe(addresses: Iterable[str], allow_private: bool) -> str | None:
    """Why one of ``addresses`` is refused, or None when all may be called."""
    if allow_private:
        return None
    for address in addresses:
        reason = refused_address(address)
        if reason is not None:
            return reason
    return None


def check_url(
    where: str, url: str, allow_private: bool, resolve: Resolve = resolve_host
) -> list[str]:
    """Check one destination's host and addresses; return warnings (it does not resolve now).

    Raises:
        ConfigError: not an http(s) URL, or a host that resolves to a refused address.
    """
    try:
        host, port = target(url)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        addresses = resolve(host, port)
    except OSError as exc:
        return [f"{where}: {host} does not resolve now ({exc}); checked again later"]
    reason = unsafe(addresses, allow_private)
    if reason is not None:
        raise ConfigError(f"{where}: {reason} (hooks.allow_private = false)")
    return []


def check_steps(
    steps: Iterable[tuple[str, int, str]],
    allow: tuple[str, ...],
    allow_private: bool,
    resolve: Resolve = resolve_host,
) -> list[str]:
    """Check the ``(workflow, step number, url)`` of every webhook step; return warnings.

    Raises:
        ConfigError: a URL outside ``allow``, or a host that resolves to a refused address.
    """
    warnings: list[str] = []
    for workflow, number, url in steps:
        where = f"workflow {workflow!r} step {number}: webhook {url!r}"
        if not allowed(url, allow):
            listed = ", ".join(repr(prefix) for prefix in allow) or "empty"
            raise ConfigError(f"{where}: not in hooks.allow ({listed})")
        warnings += check_url(where, url, allow_private, resolve)
    return warnings


async def _checked(
    url: str, allow_private: bool, resolve: AsyncResolve
) -> tuple[str, str, dict[str, str]]:
    """The URL pinned to its checked address, the host (for SNI) and the base headers.

    Raises:
        DestinationRefused: a bad URL or a refused address.
        OSError: the host does not resolve.
    """
    try:
        host, port = target(url)
        host = host.encode("idna").decode("ascii")
    except (ValueError, UnicodeError) as exc:
        raise DestinationRefused(f"bad destination: {exc}") from None
    addresses = await resolve(host, port)
    refused = unsafe(addresses, allow_private) if addresses else "no address"
    if refused is not None:
        raise DestinationRefused(f"destination refused: {refused}")
    parts = urllib.parse.urlsplit(url)
    name = f"[{host}]" if ":" in host else host
    headers = {
        "host": name if parts.port is None else f"{name}:{parts.port}",
        "user-agent": f"rtserver/{__version__}",
    }
    return pinned(url, addresses[0]), host, headers


def _refuse_redirect(response: httpx.Response) -> None:
    status = response.status_code
    if 300 <= status < 400 and status != 304:
        location = response.headers.get("location", "")
        raise DestinationRefused(f"{status} to {location!r}: redirects are not followed")


async def post_json(
    url: str,
    payload: Mapping[str, Any],
    *,
    allow_private: bool,
    timeout_s: float,
    resolve: AsyncResolve = resolve_async,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """POST ``payload`` as JSON to ``url`` through the guard; the 2xx status.

    The host is resolved and every address checked first; the connection goes to the very
    address checked (Host and SNI keep the name); no redirect is followed; at most
    ``MAX_ANSWER_BYTES`` of the answer are read; ``timeout_s`` bounds the whole attempt.

    Raises:
        DestinationRefused: a bad URL, a refused address, or an answer that is not 2xx.
        OSError: the host does not resolve.
        httpx.HTTPError, TimeoutError: the request failed.
    """
    address, host, headers = await _checked(url, allow_private, resolve)
    headers["content-type"] = "application/json"
    async with httpx.AsyncClient(
        follow_redirects=False, trust_env=False, timeout=timeout_s, transport=transport
    ) as client:
        request = client.build_request(
            "POST",
            address,
            content=orjson.dumps(dict(payload)),
            headers=headers,
            extensions={"sni_hostname": host},
        )
        async with asyncio.timeout(timeout_s):
            response = await client.send(request, stream=True)
            try:
                read = 0
                with contextlib.suppress(httpx.StreamConsumed):  # an answer made in memory
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= MAX_ANSWER_BYTES:
                            break
            finally:
                await response.aclose()
    _refuse_redirect(response)
    status = response.status_code
    if not 200 <= status < 300:
        raise DestinationRefused(f"{status} {response.reason_phrase}".strip())
    return status


async def fetch_into(
    url: str,
    sink: BinaryIO,
    *,
    headers: Mapping[str, str] | None = None,
    allow_private: bool,
    timeout_s: float,
    max_bytes: int,
    resolve: AsyncResolve = resolve_async,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.Headers | None:
    """GET ``url`` through the guard and write the body to ``sink`` as it arrives (so memory
    stays flat whatever its size); the answer's headers, or None for a 304 Not Modified.

    Checked as :func:`post_json` is; ``timeout_s`` bounds each connect and read, not the whole
    download; a body over ``max_bytes`` is refused.

    Raises:
        DestinationRefused: a bad URL, a refused address, a redirect, an answer other than
            200 or 304 (with its ``status`` and ``retry_after``), or a body over ``max_bytes``.
        OSError: the host does not resolve.
        httpx.HTTPError, TimeoutError: the request failed.
    """
    address, host, base = await _checked(url, allow_private, resolve)
    async with httpx.AsyncClient(
        follow_redirects=False, trust_env=False, timeout=timeout_s, transport=transport
    ) as client:
        request = client.build_request(
            "GET",
            address,
            headers={**base, **(headers or {})},
            extensions={"sni_hostname": host},
        )
        response = await client.send(request, stream=True)
        try:
            _refuse_redirect(response)
            if response.status_code == 304:
                return None
            if response.status_code != 200:
                raise DestinationRefused(
                    f"{response.status_code} {response.reason_phrase}".strip(),
                    status=response.status_code,
                    retry_after=response.headers.get("retry-after"),
                )
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read > max_bytes:
                    raise DestinationRefused(f"larger than {max_bytes} bytes")
                sink.write(chunk)
        finally:
            await response.aclose()
    return response.headers
