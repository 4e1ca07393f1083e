"""Denials turned into responses in one place: RFC 6750 / RFC 9449 challenges and small JSON bodies.

A 401 names every scheme the route accepts, one ``WWW-Authenticate`` line each, Bearer first:
``Bearer`` (RFC 6750) and ``DPoP`` with its ``algs`` (RFC 9449 section 7.1). The error goes on the
challenge of the scheme the request used (a DPoP proof failure always on the DPoP one); the other
challenge is bare. ``DPoP-Nonce`` goes out whenever the token's issuer asks for nonces.
"""

from __future__ import annotations

import orjson
from aiohttp import web
from multidict import CIMultiDict

from .decision import Decision
from .reasons import Reason

_NOT_ABOUT_TOKENS = frozenset({Reason.BAD_PATH, Reason.BAD_HOST})
# a claims rule said no: another token of the same user would not do better, so no challenge
_NO_CHALLENGE = _NOT_ABOUT_TOKENS | {Reason.RULE_FAILED}
_PROOF_ERRORS = frozenset({Reason.INVALID_DPOP_PROOF, Reason.DPOP_REPLAYED, Reason.USE_DPOP_NONCE})
# reasons whose Decision.detail (a fixed sentence, never a value from the request) the client may read
_DETAILED = _PROOF_ERRORS | {Reason.CLIENT_CERTIFICATE_INVALID}


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _format(scheme: str, params: list[tuple[str, str]]) -> str:
    return f"{scheme} " + ", ".join(f"{name}={_quote(value)}" for name, value in params)


def _error_params(decision: Decision) -> list[tuple[str, str]]:
    reason = decision.reason
    if not reason.error:  # RFC 6750 3.1: no error code when the request carried no token
        return []
    description = decision.detail if reason in _DETAILED and decision.detail else reason.message
    params = [("error", reason.error), ("error_description", description)]
    if reason is Reason.INSUFFICIENT_SCOPE and decision.route is not None:
        params.append(("scope", " ".join(sorted(decision.missing_scopes))))
    if reason is Reason.INSUFFICIENT_USER_AUTHENTICATION and decision.route is not None:
        step_up = decision.route.step_up
        if step_up.acr_values:  # RFC 9470 section 3: what to ask the authorization server for
            params.append(("acr_values", " ".join(step_up.acr_values)))
        if step_up.max_age is not None:
            params.append(("max_age", str(step_up.max_age)))
    return params


def challenges(decision: Decision, realm: str) -> list[str]:
    """The ``WWW-Authenticate`` values for a denial, Bearer first; empty when no challenge applies."""
    reason = decision.reason
    if reason.status not in (400, 401, 403) or reason in _NO_CHALLENGE:
        return []
    offer = decision.challenges
    used_dpop = decision.scheme == "dpop" or reason in _PROOF_ERRORS
    dpop = offer.dpop or used_dpop
    bearer = offer.bearer or not dpop
    errors = _error_params(decision)
    error_on_dpop = used_dpop or not bearer
    values = []
    if bearer:
        values.append(_format("Bearer", [("realm", realm), *([] if error_on_dpop else errors)]))
    if dpop:
        algs = [("algs", " ".join(sorted(offer.algorithms)))] if offer.algorithms else []
        values.append(_format("DPoP", [("realm", realm), *(errors if error_on_dpop else []), *algs]))
    return values


def challenge(decision: Decision, realm: str) -> str | None:
    """The first ``WWW-Authenticate`` value (the Bearer one when Bearer is offered), or None."""
    values = challenges(decision, realm)
    return values[0] if values else None


def denial_headers(decision: Decision, realm: str) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json", "Cache-Control": "no-store"})
    for value in challenges(decision, realm):
        headers.add("WWW-Authenticate", value)
    if decision.dpop_nonce is not None:
        headers["DPoP-Nonce"] = decision.dpop_nonce
    if decision.reason is Reason.METHOD_NOT_ALLOWED:
        headers["Allow"] = ", ".join(sorted(decision.allowed_methods))
    if decision.reason.status == 503:
        headers["Retry-After"] = "5"
    if decision.rate_limit is not None:
        # RateLimit-Policy / RateLimit, and on a refusal the limiter's Retry-After: for
        # rate_limit_unavailable, when Redis will be asked again (retry_interval), not the 5 s above
        for name, value in decision.rate_limit.headers():
            headers[name] = value
    return headers


def allowed_headers(decision: Decision) -> list[tuple[str, str]]:
    """Headers an allowed request's response carries from the gateway: the current DPoP nonce and
    the RateLimit fields (with ``rate_limiting.headers``)."""
    own = [("DPoP-Nonce", decision.dpop_nonce)] if decision.dpop_nonce is not None else []
    if decision.rate_limit is not None:
        own += decision.rate_limit.headers()
    return own


def denial_body(reason: Reason, request_id: str, detail: str = "") -> bytes:
    body: dict[str, str] = {"error": reason.error or reason.value, "reason": reason.value, "request_id": request_id}
    description = detail if reason in _DETAILED and detail else reason.message
    if description:
        body["error_description"] = description
    return orjson.dumps(body)


def denial_response(decision: Decision, realm: str, request_id: str) -> web.Response:
    """The response a client sees for a denied request; never internals (nor a rule's name)."""
    headers = denial_headers(decision, realm)
    headers["X-Request-Id"] = request_id
    return web.Response(
        status=decision.reason.status, body=denial_body(decision.reason, request_id, decision.detail),
        headers=headers,
    )
