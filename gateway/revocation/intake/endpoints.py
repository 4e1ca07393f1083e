"""The admin revocation endpoints (per request): RFC 7009, RFC 8935 SET push, and a small JSON endpoint.

    POST /revocation/revoke    RFC 7009 shape: form ``token`` [+ ``token_type_hint``] -> 200 (known or not)
    POST /revocation/events    RFC 8935 push of an RFC 8417 SET (application/secevent+jwt) -> 202,
                               or 400 {"err": ..., "description": ...}
    POST /revocation/entries   JSON {"jti"|"token"|"fingerprint"|"family"|"subject"|"client": value,
                               "issuer", "before", "ttl", "reason"} -> 200 {"revoked": entry}

Who may call them: auth.py. How a SET is checked: set_token.py; what its events revoke: set_events.py.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ...tokens.jws import jwt_parts
from ..api import factory_for
from ..entries import ANY_ISSUER, Entry, Kind, Match
from ..entry_factory import TARGETS, EntryFactory
from ..schema import RevocationWriteError
from .auth import AdminAuth, Caller, not_for
from .responses import json_response, unavailable, unavailable_reason
from .set_events import SetError, entries_from_set
from .set_token import Unavailable, verify_set

if TYPE_CHECKING:
    from ...runtime import Gateway

log = logging.getLogger("gateway.revocation.intake")


def register(app: web.Application, gateway: Gateway) -> None:
    """Add the intake routes to the admin application (called by admin.py ``admin_app``)."""
    intake = Intake(gateway)
    app.router.add_post("/revocation/revoke", intake.rfc7009)
    app.router.add_post("/revocation/events", intake.events)
    app.router.add_post("/revocation/entries", intake.entries)


class Intake:
    """The three endpoints' handlers, for one gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.auth = AdminAuth(gateway)

    @property
    def factory(self) -> EntryFactory:
        """The TTL and issuer rules of the current configuration."""
        return factory_for(self.gateway.config)

    async def _revoke(self, entries: list[Entry], via: str) -> None:
        for entry in entries:
            await self.gateway.revocation.revoke(entry)
            log.info("revoked", extra={"kind": entry.kind.value, "value": _loggable(entry), "issuer": entry.issuer,
                                       "via": via, "reason": entry.reason})

    # --- RFC 7009 --------------------------------------------------------------------------------

    async def rfc7009(self, request: web.Request) -> web.Response:
        """POST /revocation/revoke: revoke the presented token (and, for a refresh token, its family)."""
        caller = await self.auth.authenticate(request)
        if not isinstance(caller, Caller):
            return caller
        form = await request.post()
        token = form.get("token")
        if not isinstance(token, str) or not token:
            return json_response(400, {"error": "invalid_request",
                                       "error_description": "the token parameter is required"})
        hint = form.get("token_type_hint")
        entries = self.entries_for_token(token, hint if isinstance(hint, str) else None, caller)
        try:
            await self._revoke(entries, "rfc7009")
        except RevocationWriteError as exc:
            return unavailable(exc)
        # RFC 7009 2.2: 200 whether or not the token was known, so nobody learns which tokens exist
        return web.Response(status=200, headers={"Cache-Control": "no-store"})

    def entries_for_token(self, raw: str, hint: str | None, caller: Caller) -> list[Entry]:
        """The fingerprint of the presented token; for a JWT refresh token, also its family.

        The token's claims are read unverified: the caller is an authenticated administrator,
        and they only choose what to revoke and for how long (capped by the issuer's lifetime).
        The entries belong to the caller's issuer when the caller is an issuer's admin token
        (whatever ``iss`` the token claims); for the operator, to the token's configured ``iss``,
        else (an opaque token) to every issuer: a fingerprint matches that one token anyway.
        """
        parts = jwt_parts(raw)
        claims = parts[1] if parts is not None else {}
        claimed = claims.get("iss") if isinstance(claims.get("iss"), str) else None
        if not caller.any_issuer and caller.issuer is not None:
            issuer = caller.issuer
        elif claimed is not None and self.gateway.config.issuer(claimed) is not None:
            issuer = claimed
        else:
            issuer = ANY_ISSUER
        factory = self.factory
        entries = [factory.token(raw, issuer=issuer, reason="rfc7009")]
        family = claims.get(self.gateway.revocation.list.family_claim)
        if hint == "refresh_token" and isinstance(family, str) and family and issuer != ANY_ISSUER:
            entries.append(factory.family(family, issuer=issuer, reason="rfc7009 refresh_token"))
        return entries

    # --- JSON ------------------------------------------------------------------------------------

    async def entries(self, request: web.Request) -> web.Response:
        """POST /revocation/entries: one entry named in a JSON body."""
        caller = await self.auth.authenticate(request)
        if not isinstance(caller, Caller):
            return caller
        try:
            entry = self._json_entry(orjson.loads(await request.read()), caller)
        except ValueError as exc:  # orjson.JSONDecodeError is one too
            return json_response(400, {"error": "invalid_request", "error_description": str(exc)})
        if isinstance(entry, web.Response):
            return entry
        try:
            await self._revoke([entry], "admin")
        except RevocationWriteError as exc:
            return unavailable(exc)
        return json_response(200, {"revoked": entry.to_json()})

    def _json_entry(self, body: Any, caller: Caller) -> Entry | web.Response:
        """The entry a JSON body asks for (ValueError when malformed; 403 for another issuer's)."""
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        targets = [t for t in TARGETS if t in body]
        if len(targets) != 1:
            raise ValueError(f"name exactly one of {', '.join(TARGETS)}")
        value = body[targets[0]]
        issuer = _optional_str(body, "issuer")
        if not caller.any_issuer:  # an issuer's admin token: its own issuer, named or not
            if issuer is not None and not caller.may_act_for(issuer):
                return not_for(self.gateway.config.admin, caller, issuer)
            issuer = caller.issuer
        return self.factory.build(
            targets[0], value, issuer=issuer, before=body.get("before"), ttl=body.get("ttl"),
            reason=_optional_str(body, "reason") or "",
        )

    # --- RFC 8935 SET push -----------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.Response:
        """POST /revocation/events: apply the events of a pushed SET (202), or the RFC 8935 error (400)."""
        caller = await self.auth.authenticate(request)
        if not isinstance(caller, Caller):
            return caller
        try:
            if request.content_type != "application/secevent+jwt":
                raise SetError("invalid_request", "Content-Type must be application/secevent+jwt")
            raw = (await request.read()).decode("ascii", "replace").strip()
            pipeline = self.gateway.pipeline
            claims = await verify_set(raw, caller, pipeline.validator if pipeline is not None else None)
            entries = entries_from_set(claims, self.factory)
        except SetError as exc:
            log.info("security event refused", extra={"err": exc.err, "description": exc.description})
            return json_response(400, {"err": exc.err, "description": exc.description})
        except Unavailable as exc:
            return unavailable_reason(exc.reason)
        try:
            await self._revoke(entries, "set")
        except RevocationWriteError as exc:
            return unavailable(exc)
        return web.Response(status=202)


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def _loggable(entry: Entry) -> str:
    """What a log line may say about an entry: token values are already fingerprints or jtis."""
    if entry.kind is Kind.TOKEN and entry.match is not Match.JTI and len(entry.value) == 64:
        return entry.value[:32]
    return entry.value[:200]
