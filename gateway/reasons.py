"""The decision reasons: one set shared by HTTP errors, audit records and metric labels.

A reason added here shows up in all three places, so an operator reading a metric,
a responder reading the audit trail and a client reading an error see the same word.
"""

from __future__ import annotations

from enum import Enum


def _unavailable(label: str, message: str) -> tuple[str, int, str, str]:
    """A dependency (or the gateway itself) is not available: 503, and the request is refused (fail closed)."""
    return label, 503, "temporarily_unavailable", message


def _invalid_token(label: str, message: str = "the access token is invalid") -> tuple[str, int, str, str]:
    """RFC 6750 3.1 ``invalid_token``: 401, the client may retry with another token."""
    return label, 401, "invalid_token", message


def _invalid_request(label: str, message: str) -> tuple[str, int, str, str]:
    """RFC 6750 3.1 ``invalid_request``: 400, the request itself is malformed."""
    return label, 400, "invalid_request", message


class Reason(str, Enum):
    """Why a request was allowed or denied.

    Each member carries the HTTP status of the denial and the RFC 6750 error code
    (empty when the RFC says none should be sent, e.g. a request without a token).
    """

    def __new__(cls, label: str, status: int, error: str, message: str) -> Reason:
        member = str.__new__(cls, label)
        member._value_ = label
        member.status = status
        member.error = error
        member.message = message
        return member

    status: int
    error: str
    message: str

    # allowed
    ALLOWED = ("allowed", 200, "", "")
    PUBLIC_ROUTE = ("public_route", 200, "", "")

    # request shape
    BAD_PATH = _invalid_request("bad_path", "the request target is malformed or ambiguous")
    BAD_HOST = _invalid_request("bad_host", "the Host header is missing or malformed")
    BAD_HTTP_VERSION = ("unsupported_http_version", 505, "http_version_not_supported", "HTTP/1.0 or newer is required")
    NO_ROUTE = ("no_route", 404, "not_found", "no route matches this request")
    METHOD_NOT_ALLOWED = ("method_not_allowed", 405, "method_not_allowed", "method not allowed on this route")
    BODY_TOO_LARGE = ("body_too_large", 413, "payload_too_large", "request body too large")

    # bearer token presence (RFC 6750 section 2 and 3.1)
    MISSING_TOKEN = ("missing_token", 401, "", "a bearer token is required")
    MALFORMED_AUTHORIZATION = _invalid_request(
        "malformed_authorization", "the Authorization header is not a single Bearer token",
    )
    TOKEN_NOT_IN_HEADER = _invalid_request(
        "token_not_in_header", "bearer tokens are accepted in the Authorization header only",
    )
    # a route's token_source (a cookie or a custom header; docs/routes.md)
    AMBIGUOUS_TOKEN = _invalid_request("ambiguous_token", "the access token must be sent once, one way")
    MALFORMED_TOKEN = _invalid_request("malformed_token", "the token cookie or header does not hold one access token")

    # token validity (all RFC 6750 invalid_token)
    INVALID_TOKEN = _invalid_token("invalid_token")
    TOKEN_EXPIRED = _invalid_token("token_expired", "the access token expired")
    TOKEN_NOT_YET_VALID = _invalid_token("token_not_yet_valid", "the access token is not valid yet")
    WRONG_AUDIENCE = _invalid_token("wrong_audience", "the access token is not meant for this API")
    UNKNOWN_ISSUER = _invalid_token("unknown_issuer", "the access token's issuer is not trusted")
    DISALLOWED_ALGORITHM = _invalid_token("disallowed_algorithm")
    UNKNOWN_KEY = _invalid_token("unknown_key")
    BAD_SIGNATURE = _invalid_token("bad_signature")
    WRONG_TOKEN_TYPE = _invalid_token("wrong_token_type", "the token is not an access token")
    MISSING_CLAIM = _invalid_token("missing_claim", "the access token lacks a required claim")
    INVALID_CLAIM = _invalid_token("invalid_claim", "the access token carries a claim that cannot be forwarded")
    UNPROVEN_BINDING = _invalid_token(
        "unproven_binding", "the access token is bound to a key and was sent without its proof",
    )
    INACTIVE_TOKEN = _invalid_token("inactive_token", "the access token is not active")
    REVOKED_TOKEN = _invalid_token("revoked_token", "the access token was revoked")
    REVOKED_FAMILY = _invalid_token("revoked_family", "the access token was revoked")
    REVOKED_SUBJECT = _invalid_token("revoked_subject", "the access token was revoked")
    REVOKED_CLIENT = _invalid_token("revoked_client", "the access token was revoked")

    # scope policy
    INSUFFICIENT_SCOPE = ("insufficient_scope", 403, "insufficient_scope", "the access token lacks a required scope")
    RULE_FAILED = ("rule_failed", 403, "access_denied", "a claims rule of this route does not allow the request")

    # mutual-TLS certificate-bound tokens (RFC 8705); a missing certificate is UNPROVEN_BINDING
    CLIENT_CERTIFICATE_INVALID = _invalid_token(
        "client_certificate_invalid", "the client certificate is unreadable, expired or not yet valid",
    )
    CLIENT_CERTIFICATE_MISMATCH = _invalid_token(
        "client_certificate_mismatch", "the access token is bound to a different client certificate",
    )

    # DPoP proofs (RFC 9449 section 7.1): challenged with the DPoP scheme
    INVALID_DPOP_PROOF = ("invalid_dpop_proof", 401, "invalid_dpop_proof", "the DPoP proof is invalid")
    DPOP_REPLAYED = ("dpop_replayed", 401, "invalid_dpop_proof", "the DPoP proof was used before")
    USE_DPOP_NONCE = ("use_dpop_nonce", 401, "use_dpop_nonce", "the DPoP proof must carry the server's nonce")
    DPOP_KEY_MISMATCH = _invalid_token(
        "dpop_key_mismatch", "the access token is bound to another key than the DPoP proof's",
    )
    SENDER_CONSTRAINT_REQUIRED = _invalid_token(
        "sender_constraint_required", "this API requires a sender-constrained access token",
    )

    # step-up (RFC 9470)
    INSUFFICIENT_USER_AUTHENTICATION = (
        "insufficient_user_authentication", 401, "insufficient_user_authentication",
        "a stronger or more recent user authentication is required",
    )

    # dependencies down: fail closed
    JWKS_UNAVAILABLE = _unavailable("jwks_unavailable", "token keys are unavailable")
    INTROSPECTION_UNAVAILABLE = _unavailable("introspection_unavailable", "token introspection is unavailable")
    REVOCATION_UNAVAILABLE = _unavailable("revocation_unavailable", "the revocation list is unavailable")
    DPOP_REPLAY_UNAVAILABLE = _unavailable("dpop_replay_unavailable", "DPoP replay protection is unavailable")
    SHUTTING_DOWN = _unavailable("shutting_down", "the gateway is shutting down")
    # a live connection (gateway/websocket/) opened under a configuration that a reload replaced
    CONFIG_RELOADED = _unavailable("config_reloaded", "the gateway's configuration changed")

    # traffic control (gateway/ratelimit/): 429 with Retry-After and the RateLimit headers
    RATE_LIMITED = ("rate_limited", 429, "too_many_requests", "a rate limit of this API was exceeded")
    RATE_LIMIT_UNAVAILABLE = _unavailable("rate_limit_unavailable", "rate limiting is unavailable")

    # WebSocket upgrades (gateway/ws_upgrade.py, gateway/websocket/)
    WEBSOCKET_NOT_ALLOWED = _invalid_request("websocket_not_allowed", "this route does not accept WebSocket upgrades")
    BAD_WEBSOCKET_HANDSHAKE = _invalid_request("bad_websocket_handshake", "the WebSocket upgrade request is malformed")

    # upstream
    UPSTREAM_UNAVAILABLE = ("upstream_unavailable", 502, "bad_gateway", "the upstream service is unavailable")
    UPSTREAM_TIMEOUT = ("upstream_timeout", 504, "gateway_timeout", "the upstream service timed out")
    CLIENT_DISCONNECTED = ("client_disconnected", 499, "", "")
    CLIENT_TOO_SLOW = ("client_too_slow", 499, "", "")  # a streamed piece untaken: client_send_timeout

    @property
    def allowed(self) -> bool:
        """True when the policy let the request through (even if the upstream then failed)."""
        return self in _PASSED_POLICY

    @property
    def decision(self) -> str:
        return "allow" if self.allowed else "deny"


_PASSED_POLICY = frozenset(
    {Reason.ALLOWED, Reason.PUBLIC_ROUTE, Reason.UPSTREAM_UNAVAILABLE, Reason.UPSTREAM_TIMEOUT,
     Reason.CLIENT_DISCONNECTED, Reason.CLIENT_TOO_SLOW}
)
