"""Host and raw request-target checks, normalisation, and the compiled route table
(compiled at load, matched per request).

The gateway matches, authorises and forwards one and the same normalised path, so an
upstream can never see a path that differs from the one that was authorised
(``/public/health/../../orders``, ``%2e%2e``, ``..%2f`` and friends).

Some upstreams normalise further in ways the gateway cannot undo for them: they drop path
parameters (``/admin;x`` is ``/admin`` to a servlet container), trailing dots and spaces
(``/admin.`` is ``/admin`` to IIS), a trailing slash, or everything after a decoded ``?``.
The route table therefore also matches the path as such an upstream would see it, and a
request whose two readings land on different routes is refused rather than guessed
(``RouteMatch.refused``, answered 400 ``bad_path``).

A route matches by ``path`` (exact, or ``{param}`` segments), ``path_prefix`` (at a segment
boundary), ``path_regex`` or ``path_glob`` (RE2 programs compiled at load: path_patterns.py);
every kind sees the same normalised path, never the query.
"""

from .hosts import host_key, valid_host
from .route import Route, compile_route
from .table import RouteTable
from .target import BadTarget, Target, normalise_target
from .variants import trimmed, without_parameters

__all__ = [
    "BadTarget",
    "Route",
    "RouteTable",
    "Target",
    "compile_route",
    "host_key",
    "normalise_target",
    "trimmed",
    "valid_host",
    "without_parameters",
]
