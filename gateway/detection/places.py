"""Where a client uses a token from: its network (/24, /48) and, with a GeoIP database, its place.

Runs per request (``network_of`` and the locator are cached); ``open_geoip`` once at start.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

log = logging.getLogger("gateway.detection")

TRAVEL_KMH = 1000.0
TRAVEL_MIN_KM = 300.0  # geolocation of nearby addresses is too coarse to judge shorter hops

Locate = Callable[[str], "tuple[float, float] | None"]


@lru_cache(maxsize=65536)
def network_of(ip: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) of an address; the text itself when it is not an address."""
    if ":" not in ip:
        head, dot, _ = ip.rpartition(".")
        return f"{head}.0/24" if dot and head.count(".") == 2 else ip
    try:
        address = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if address.ipv4_mapped is not None:
        return network_of(str(address.ipv4_mapped))
    return str(ipaddress.IPv6Network((int(address) >> 80 << 80, 48)))


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine) between two (latitude, longitude) points."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


def impossible_travel(a: tuple[float, float], t1: float, b: tuple[float, float], t2: float) -> bool:
    """Whether going from ``a`` at ``t1`` to ``b`` at ``t2`` (seconds) needs more than 1000 km/h."""
    km = distance_km(a, b)
    if km < TRAVEL_MIN_KM:
        return False
    hours = abs(t2 - t1) / 3600.0
    return hours <= 0 or km / hours > TRAVEL_KMH


def open_geoip(path: str) -> tuple[Any, Locate] | None:
    """The MaxMind database at ``path`` and its locator; None (logged) when it cannot be used.

    ``maxminddb`` is optional: without it impossible-travel detection is off, nothing else.
    """
    try:
        import maxminddb  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        log.warning("impossible-travel detection is off: geoip_database is set but the maxminddb package"
                    " is not installed (pip install maxminddb)")
        return None
    try:
        reader = maxminddb.open_database(path)
    except (OSError, ValueError) as exc:
        log.warning("impossible-travel detection is off: cannot open geoip_database",
                    extra={"path": path, "error": str(exc)})
        return None
    return reader, _maxmind_locator(reader)


def _maxmind_locator(reader: Any) -> Locate:
    @lru_cache(maxsize=65536)
    def locate(ip: str) -> tuple[float, float] | None:
        try:
            found = reader.get(ip)
        except ValueError:
            return None
        location = found.get("location") if isinstance(found, dict) else None
        if not isinstance(location, dict):
            return None
        lat, lon = location.get("latitude"), location.get("longitude")
        if isinstance(lat, int | float) and isinstance(lon, int | float):
            return float(lat), float(lon)
        return None

    return locate
