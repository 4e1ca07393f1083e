"""The route table (compiled at load, matched per request): the first route matching host, path
and method wins, and a path whose readings land on different routes is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .hosts import host_key
from .route import Route, compile_route, fold
from .target import CACHED_KEY_MAX
from .variants import trimmed, without_parameters

if TYPE_CHECKING:
    from ..config import RouteConfig


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route | None
    allowed_methods: frozenset[str] = frozenset()  # for 405 when the path matched but not the method
    refused: bool = False  # path parameters the route does not allow, or a variant routed elsewhere: 400


_REFUSED = RouteMatch(None, refused=True)


_MATCHES_MAX = 4096


class RouteTable:
    """Routes in configured order: the first route matching host, path and method wins."""

    def __init__(self, routes: Iterable[RouteConfig]) -> None:
        self.routes = [compile_route(r) for r in routes]
        self._matches: dict[tuple[str, str, str], RouteMatch] = {}  # bounded: emptied when full

    def match(self, host: str, method: str, path: str) -> RouteMatch:
        key = (host, method, path)
        found = self._matches.get(key)
        if found is None:
            found = self._match(host, method, path)
            if len(path) + len(host) <= CACHED_KEY_MAX:
                if len(self._matches) >= _MATCHES_MAX:
                    self._matches.clear()
                self._matches[key] = found
        return found

    def _match(self, host: str, method: str, path: str) -> RouteMatch:
        host = host_key(host)
        bare = without_parameters(path)
        path = path if bare is None else bare  # routed as the upstream that drops parameters sees it
        found = self._first(host, method, path)
        if bare is not None and (found.route is None or not found.route.allow_path_parameters):
            return _REFUSED
        variant = trimmed(path)
        if variant is not None and (not variant or self._first(host, method, variant).route is not found.route):
            return _REFUSED  # "/api/admin." and "/api/admin" must not be told apart by the routes
        return found

    def _first(self, host: str, method: str, path: str) -> RouteMatch:
        parts = path.strip("/").split("/")
        folded: tuple[str, list[str]] | None = None
        allowed: set[str] = set()
        for route in self.routes:
            if not route.matches_host(host):
                continue
            if route.case_insensitive:
                if folded is None:
                    folded_path = fold(path)
                    folded = (folded_path, folded_path.strip("/").split("/"))
                if not route.matches_path(*folded):
                    continue
            elif not route.matches_path(path, parts):
                continue
            if method in route.methods:
                return RouteMatch(route)
            allowed |= route.methods
        return RouteMatch(None, frozenset(allowed))
