"""Client addresses behind trusted proxies: who sent a request, and whether its peer is believed.

Runs per request (the proxy, the decision port, the request's span); pure functions of the peer,
``X-Forwarded-For`` and ``trusted_proxies``.
"""

from __future__ import annotations

import ipaddress

from multidict import CIMultiDictProxy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def forwarded_for(headers: CIMultiDictProxy[str]) -> str | None:
    """Every X-Forwarded-For line as one chain: a proxy may add its own line instead of appending."""
    lines = headers.getall("X-Forwarded-For", ())
    if not lines:
        return None
    return lines[0] if len(lines) == 1 else ", ".join(lines)


def client_address(peer: str, forwarded_for: str | None, trusted: list[IPNetwork]) -> str:
    """The client IP: the peer, or the last untrusted hop of X-Forwarded-For when the peer is trusted."""
    if not trusted or not forwarded_for or not is_trusted(peer, trusted):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not is_trusted(hop, trusted):
            return hop if _is_ip(hop) else peer
    return peer


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_trusted(address: str, trusted: list[IPNetwork]) -> bool:
    """Whether ``address`` is in one of the ``trusted`` networks (an address that is none: no)."""
    if not trusted:  # the common case: no address to parse
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
