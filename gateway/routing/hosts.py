"""Host header checks and the host routes match on (per request; checked hosts are remembered)."""

from __future__ import annotations

import ipaddress
import re

# Stricter than RFC 3986 reg-name on purpose: DNS-style labels only. Sub-delims ("a,b" splits an
# X-Forwarded-Host list), percent-encoding (decoded differently downstream), userinfo and
# whitespace have no place in a Host an upstream may read as its virtual host.
_HOST = re.compile(
    r"(?:(?P<name>(?:[A-Za-z0-9_-]+\.)*[A-Za-z0-9_-]+\.?)|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{1,5}))?"
)
_HOST_NAME_MAX = 254  # RFC 1035: 253 characters, plus a trailing dot


def valid_host(host: str) -> bool:
    """Whether ``host`` is a Host header value the gateway routes on: a DNS name, an IPv4 address or a
    bracketed IPv6 address, and optionally a port from 1 to 65535. An empty or missing Host is not."""
    if host in _VALID_HOSTS:  # a deployment sees a handful of hosts: checked once each
        return True
    if not _check_host(host):
        return False
    if len(_VALID_HOSTS) >= _VALID_HOSTS_MAX:
        _VALID_HOSTS.clear()
    _VALID_HOSTS.add(host)
    return True


_VALID_HOSTS: set[str] = set()  # bounded: emptied when full
_VALID_HOSTS_MAX = 1024


def _check_host(host: str) -> bool:
    if len(host) > _HOST_NAME_MAX + 6:  # the longest name and ":65535"; also spares the regex long input
        return False
    match = _HOST.fullmatch(host)
    if match is None:
        return False
    port = match.group("port")
    if port is not None and not 0 < int(port) <= 65535:
        return False
    name = match.group("name")
    if name is not None:
        return len(name) <= _HOST_NAME_MAX
    try:
        ipaddress.IPv6Address(match.group("ipv6"))
    except ValueError:
        return False
    return True


def host_key(host: str) -> str:
    """The host as routes are matched on it: no port, lower case, no trailing dot
    (``Admin.Example.:443`` is the virtual host ``admin.example`` to DNS and to upstreams)."""
    host = host.lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0].removesuffix(".")
