"""Where a workflow's ``webhook`` step may send (never an SSRF tool).

A destination must start with one of ``hooks.allow`` (an admin allow-list of URL prefixes,
matched on a path boundary, so ``https://crm.example/`` never admits
``https://crm.example.evil/``) and every address its host resolves to must be public: private,
loopback, link-local (``169.254.169.254``, the cloud metadata service), multicast, reserved and
unspecified addresses are refused unless ``hooks.allow_private`` says otherwise (an on-premise
CRM, tests). The check runs at configuration time (a host that does not resolve then is only a
warning: DNS may be down while the server starts) and again before every delivery, whose
connection then goes to the very address checked (no second lookup to rebind).

Resolution is injected (``resolve``), so tests check the rules with a stub and no traffic.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Callable, Iterable

from rtserver.errors import ConfigError

__all__ = [
    "Resolve",
    "allowed",
    "check_steps",
    "refused_address",
    "resolve_host",
    "target",
    "unsafe",
]

Resolve = Callable[[str, int], list[str]]
"""``(host, port) -> addresses``; raises ``OSError`` when the host does not resolve."""


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (``getaddrinfo``, TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


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
        try:
            host, port = target(url)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        try:
            addresses = resolve(host, port)
        except OSError as exc:
            warnings.append(f"{where}: {host} does not resolve now ({exc}); checked again later")
            continue
        reason = unsafe(addresses, allow_private)
        if reason is not None:
            raise ConfigError(f"{where}: {reason} (hooks.allow_private = false)")
    return warnings
