"""Revocation intake on the admin port: RFC 7009, RFC 8935 SET push, and a small JSON endpoint.

    POST /revocation/revoke    RFC 7009 shape: form ``token`` [+ ``token_type_hint``] -> 200 (known or not)
    POST /revocation/events    RFC 8935 push of an RFC 8417 SET (application/secevent+jwt) -> 202,
                               or 400 {"err": ..., "description": ...}
    POST /revocation/entries   JSON {"jti"|"token"|"fingerprint"|"family"|"subject"|"client": value,
                               "issuer", "before", "ttl", "reason"} -> 200 {"revoked": entry}

Every endpoint needs ``Authorization: Bearer <credential>``: either the shared secret from
the environment variable named by ``admin.shared_secret_env`` (compared in constant time),
or a JWT access token from a configured issuer, validated and checked against the revocation
list as on the proxy, that carries ``admin.scope``. Without one: 401. A credential that is not
JWT-shaped is never sent anywhere (no introspection of a mistyped secret). When the token cannot
be checked now (JWKS or introspection down, the revocation list stale): 503.

Whose tokens a caller may revoke: the shared secret, or a token that also carries
``admin.any_issuer_scope``, any issuer's and ``*`` (every issuer); any other admin token only
its own issuer's (naming another issuer or ``*``: 403; a SET of another issuer: 400 access_denied).

A SET must also be signed by a configured issuer, with a key from that issuer's JWKS and an
algorithm from its allow-list (``JwtValidator.verify``, as for access tokens); ``aud``, when
present, must be one of the issuer's audiences; a subject identifier naming an ``iss`` must
name the SET's own issuer, and every entry it makes belongs to that issuer.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ..reasons import Reason
from ..tokens.jwt import JwtValidator
from ..tokens.token import TokenError, ValidatedToken, fingerprint
from ..tokens.validator import TokenValidator, jwt_parts
from .api import factory_for
from .entries import ANY_ISSUER, Entry, Kind, Match, is_finite
from .schema import MAX_LIFETIME, TARGETS, EntryFactory, RevocationWriteError

if TYPE_CHECKING:
    from ..runtime import Gateway

log = logging.getLogger("gateway.revocation.intake")

MIN_SECRET_LENGTH = 16
SECEVENT_TYPES = frozenset({"secevent+jwt", "application/secevent+jwt"})

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
OAUTH = "https://schemas.openid.net/secevent/oauth/event-type/"
SESSION_EVENTS = frozenset({CAEP + "session-revoked", RISC + "sessions-revoked"})
TOKEN_EVENTS = frozenset({OAUTH + "token-revoked", RISC + "tokens-revoked"})
CREDENTIAL_EVENTS = frozenset({
    CAEP + "credential-change", RISC + "account-credential-change-required", RISC + "credential-compromise",
    RISC + "account-disabled", RISC + "account-purged",
})
HANDLED_EVENTS = SESSION_EVENTS | TOKEN_EVENTS | CREDENTIAL_EVENTS


def register(app: web.Application, gateway: Gateway) -> None:
    """The ADMIN_HOOKS entry: add the intake routes to the admin application."""
    intake = Intake(gateway)
    app.router.add_post("/revocation/revoke", intake.rfc7009)
    app.router.add_post("/revocation/events", intake.events)
    app.router.add_post("/revocation/entries", intake.entries)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers={"Cache-Control": "no-store", **(headers or {})})


def _unauthorized(error: str = "invalid_token") -> web.Response:
    challenge = f'Bearer realm="tokengate-admin", error="{error}"' if error else 'Bearer realm="tokengate-admin"'
    return _json(401, {"error": error or "unauthorized", "error_description": "admin credentials required"},
                 {"WWW-Authenticate": challenge})


def _unavailable(exc: Exception) -> web.Response:
    log.warning("revocation write failed", extra={"error": str(exc)[:300]})
    return _json(503, {"error": "temporarily_unavailable", "error_description": "the revocation store is unavailable"},
                 {"Retry-After": "5"})


def _unavailable_reason(reason: Reason) -> web.Response:
    """503 when a dependency the check needs is down (JWKS, introspection, a stale revocation list)."""
    return _json(503, {"error": "temporarily_unavailable", "error_description": reason.message},
                 {"Retry-After": "5"})


def _refused(reason: Reason) -> web.Response:
    """An admin token refused for ``reason``: 401, or 503 when the reason is a dependency being down."""
    return _unavailable_reason(reason) if reason.status == 503 else _unauthorized()


def _forbidden(scope: str, description: str) -> web.Response:
    return _json(403, {"error": "insufficient_scope", "error_description": description},
                 {"WWW-Authenticate": f'Bearer realm="tokengate-admin", error="insufficient_scope", scope="{scope}"'})


@dataclass(frozen=True)
class Caller:
    """Who called an admin endpoint, and for whose tokens they may revoke.

    The shared secret, and a token with ``admin.any_issuer_scope``, act for any issuer and for
    ``*``; an issuer's admin token acts for that issuer only.
    """

    issuer: str | None  # the admin token's issuer; None for the shared secret
    any_issuer: bool

    def may_act_for(self, issuer: str) -> bool:
        return self.any_issuer or (issuer != ANY_ISSUER and issuer == self.issuer)


SHARED_SECRET = Caller(issuer=None, any_issuer=True)


class SetError(Exception):
    """A SET refused with an RFC 8935 section 2.3 error code."""

    def __init__(self, err: str, description: str) -> None:
        super().__init__(description)
        self.err = err
        self.description = description


class Unavailable(Exception):
    """The SET cannot be checked now (the issuer's keys are unavailable): 503, the transmitter retries."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.message)
        self.reason = reason


class Intake:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._secret_warned = False

    @property
    def factory(self) -> EntryFactory:
        return factory_for(self.gateway.config)

    # --- authentication ------------------------------------------------------------------------

    def _shared_secret(self) -> bytes | None:
        name = self.gateway.config.admin.shared_secret_env
        secret = os.environ.get(name) if name else None
        if not secret:
            return None
        if len(secret) < MIN_SECRET_LENGTH:
            if not self._secret_warned:
                self._secret_warned = True
                log.warning("admin shared secret ignored: shorter than 16 characters", extra={"env": name})
            return None
        return secret.encode()

    async def authenticate(self, request: web.Request) -> Caller | web.Response:
        """The caller when they may revoke, else the 401/403 answer (503 when it cannot be checked now)."""
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            return _unauthorized("")
        secret = self._shared_secret()
        # compare digests: constant time whatever the lengths
        if secret is not None and hmac.compare_digest(
            hashlib.sha256(credential.encode()).digest(), hashlib.sha256(secret).digest()
        ):
            return SHARED_SECRET
        pipeline = self.gateway.pipeline
        # only a JWT can be an admin token: a wrong or unset shared secret is never sent to introspection
        parts = jwt_parts(credential)
        if pipeline is None or parts is None:
            return _unauthorized()
        try:
            token = await self._admin_token(pipeline.validator, credential, *parts)
        except TokenError as exc:
            return _refused(exc.reason)
        refused = self.gateway.revocation.check(token)  # the store's check: fails closed when stale
        if refused is not None:
            return _refused(refused)
        admin = self.gateway.config.admin
        if admin.scope not in token.scopes:
            return _forbidden(admin.scope, f"the token lacks {admin.scope}")
        caller = Caller(token.issuer, admin.any_issuer_scope is not None and admin.any_issuer_scope in token.scopes)
        if not caller.may_act_for(token.issuer):  # an issuer configured as "*" would speak for every issuer
            return self._not_for(caller, token.issuer)
        return caller

    async def _admin_token(self, validator: TokenValidator, raw: str, header: dict[str, Any],
                           payload: dict[str, Any]) -> ValidatedToken:
        """The admin token, validated as an access token; with ``admin.audiences``, for one of those
        audiences instead of its issuer's (which the configuration keeps apart), so that an admin
        token is not also an API token. Such a token must be a JWT its issuer signs: an issuer that
        introspects cannot say that the token is meant for the admin port."""
        audiences = self.gateway.config.admin.audiences
        if not audiences:
            return await validator.validate(raw)
        issuer = payload.get("iss")
        verifier = validator.jwt.get(issuer) if isinstance(issuer, str) else None
        if verifier is None:
            raise TokenError(Reason.UNKNOWN_ISSUER, "an admin token must be a JWT of an issuer that signs its tokens")
        admin = JwtValidator(verifier.config.model_copy(update={"audiences": list(audiences)}), verifier.keys)
        return await admin.validate(raw, header, fingerprint(raw))

    def _not_for(self, caller: Caller, issuer: str) -> web.Response:
        """403 for an admin token naming another issuer's tokens (or every issuer's)."""
        wanted = self.gateway.config.admin.any_issuer_scope or self.gateway.config.admin.scope
        whose = "every issuer's" if issuer == ANY_ISSUER else f"issuer {issuer[:200]!r}'s"
        return _forbidden(wanted, f"an admin token of {caller.issuer} may revoke that issuer's tokens only, not "
                                  f"{whose}: that needs the shared secret or a token with admin.any_issuer_scope")

    async def _revoke(self, entries: list[Entry], via: str) -> None:
        for entry in entries:
            await self.gateway.revocation.revoke(entry)
            log.info("revoked", extra={"kind": entry.kind.value, "value": _loggable(entry), "issuer": entry.issuer,
                                       "via": via, "reason": entry.reason})

    # --- RFC 7009 --------------------------------------------------------------------------------

    async def rfc7009(self, request: web.Request) -> web.Response:
        caller = await self.authenticate(request)
        if not isinstance(caller, Caller):
            return caller
        form = await request.post()
        token = form.get("token")
        if not isinstance(token, str) or not token:
            return _json(400, {"error": "invalid_request", "error_description": "the token parameter is required"})
        hint = form.get("token_type_hint")
        entries = self.entries_for_token(token, hint if isinstance(hint, str) else None, caller)
        try:
            await self._revoke(entries, "rfc7009")
        except RevocationWriteError as exc:
            return _unavailable(exc)
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
        caller = await self.authenticate(request)
        if not isinstance(caller, Caller):
            return caller
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            targets = [t for t in TARGETS if t in body]
            if len(targets) != 1:
                raise ValueError(f"name exactly one of {', '.join(TARGETS)}")
            value = body[targets[0]]
            issuer = _optional_str(body, "issuer")
            if not caller.any_issuer:  # an issuer's admin token: its own issuer, named or not
                if issuer is not None and not caller.may_act_for(issuer):
                    return self._not_for(caller, issuer)
                issuer = caller.issuer
            entry = self.factory.build(
                targets[0], value, issuer=issuer, before=body.get("before"), ttl=body.get("ttl"),
                reason=_optional_str(body, "reason") or "",
            )
        except ValueError as exc:  # orjson.JSONDecodeError is one too
            return _json(400, {"error": "invalid_request", "error_description": str(exc)})
        try:
            await self._revoke([entry], "admin")
        except RevocationWriteError as exc:
            return _unavailable(exc)
        return _json(200, {"revoked": entry.to_json()})

    # --- RFC 8935 SET push -----------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.Response:
        caller = await self.authenticate(request)
        if not isinstance(caller, Caller):
            return caller
        try:
            if request.content_type != "application/secevent+jwt":
                raise SetError("invalid_request", "Content-Type must be application/secevent+jwt")
            raw = (await request.read()).decode("ascii", "replace").strip()
            claims = await self.verify_set(raw, caller)
            entries = entries_from_set(claims, self.factory)
        except SetError as exc:
            log.info("security event refused", extra={"err": exc.err, "description": exc.description})
            return _json(400, {"err": exc.err, "description": exc.description})
        except Unavailable as exc:
            return _unavailable_reason(exc.reason)
        try:
            await self._revoke(entries, "set")
        except RevocationWriteError as exc:
            return _unavailable(exc)
        return web.Response(status=202)

    async def verify_set(self, raw: str, caller: Caller) -> dict[str, Any]:
        """The claims of a SET signed by a configured issuer, or SetError (Unavailable when the keys are).

        An issuer's admin token may deliver that issuer's SETs only (access_denied, before any
        signature work, for another issuer's)."""
        parts = jwt_parts(raw)
        if parts is None:
            raise SetError("invalid_request", "the body is not a compact JWS")
        header, unverified = parts
        typ = header.get("typ")
        if typ is not None and str(typ).lower() not in SECEVENT_TYPES:
            raise SetError("invalid_request", f"typ {typ!r} is not secevent+jwt")
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise SetError("invalid_issuer", "the SET has no iss: a SET must name the issuer it speaks for")
        if not caller.may_act_for(issuer):
            raise SetError("access_denied", f"an admin token of {caller.issuer} may deliver that issuer's SETs "
                                            f"only, not those of {issuer[:200]!r}")
        pipeline = self.gateway.pipeline
        verifier = pipeline.validator.jwt.get(issuer) if pipeline is not None and isinstance(issuer, str) else None
        if verifier is None:
            raise SetError("invalid_issuer", "the SET issuer is not a configured JWT issuer")
        try:
            claims = await verifier.verify(raw, header, audience=None, require=("iss", "iat", "jti"))
        except TokenError as exc:
            raise _set_error(exc) from None
        audience = claims.get("aud")
        if audience is not None:
            wanted = set(verifier.config.audiences)
            given = {audience} if isinstance(audience, str) else set(audience) if isinstance(audience, list) else set()
            if not wanted & given:
                raise SetError("invalid_audience", "the SET is not addressed to this gateway")
        if not isinstance(claims.get("events"), dict) or not claims["events"]:
            raise SetError("invalid_request", "the SET has no events claim")
        return claims


def _set_error(exc: TokenError) -> Exception:
    """The RFC 8935 error for a SET the issuer's validator refused; Unavailable when its keys are."""
    if exc.reason.status == 503:
        return Unavailable(exc.reason)
    if exc.reason is Reason.BAD_SIGNATURE:
        return SetError("invalid_key", "the SET signature does not verify with the issuer's keys")
    if exc.reason in (Reason.DISALLOWED_ALGORITHM, Reason.UNKNOWN_KEY):
        return SetError("invalid_key", exc.detail or exc.reason.value)
    return SetError("invalid_request", f"invalid SET: {exc.detail or exc.reason.value}")


# --- mapping events to entries -------------------------------------------------------------------


def entries_from_set(claims: dict[str, Any], factory: EntryFactory, now: float | None = None) -> list[Entry]:
    """Revocations for the events of one verified SET; SetError when a handled event cannot be applied.

    session-revoked -> the session's family (sid), or the subject when no session is named;
    token-revoked   -> the token (jti), or every token of the subject;
    credential-change and account events -> every token of the subject issued before the event.
    Other event types are accepted and ignored.
    """
    now = time.time() if now is None else now
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer or issuer == ANY_ISSUER:
        raise SetError("invalid_issuer", "the SET has no usable iss: its entries must belong to its issuer")
    entries: list[Entry] = []
    for event_type, event in claims["events"].items():
        if event_type not in HANDLED_EVENTS:
            log.info("security event ignored", extra={"event_type": str(event_type)[:200]})
            continue
        event = event if isinstance(event, dict) else {}
        if event_type == CAEP + "credential-change" and event.get("change_type") == "create":
            continue  # a credential added: nothing to revoke
        when = _event_time(event, claims, now)
        reason = f"set {event_type.rsplit('/', 1)[-1]} jti={str(claims.get('jti'))[:64]}"
        ident = _identify(event.get("subject") or claims.get("sub_id") or _plain_sub(claims), issuer,
                          session_event=event_type in SESSION_EVENTS)
        if event_type in SESSION_EVENTS and ident.session is not None:
            entries.append(factory.family(ident.session, issuer=issuer, reason=reason, now=now))
        elif event_type in TOKEN_EVENTS and ident.jti is not None:
            entries.append(factory.jti(ident.jti, issuer=issuer, reason=reason, now=now))
        elif ident.sub is not None:
            entries.append(factory.subject(ident.sub, issuer=issuer, before=when, reason=reason, now=now))
        else:
            raise SetError("invalid_request", f"{event_type}: {ident.problem or 'no usable subject identifier'}")
    return entries


class _Ident:
    def __init__(self) -> None:
        self.session: str | None = None
        self.sub: str | None = None
        self.jti: str | None = None
        self.problem: str | None = None


def _plain_sub(claims: dict[str, Any]) -> dict[str, Any] | None:
    sub = claims.get("sub")
    return {"format": "iss_sub", "iss": claims["iss"], "sub": sub} if isinstance(sub, str) else None


def _identify(subject: Any, issuer: str, session_event: bool) -> _Ident:
    """Session id, ``sub`` and jti named by an RFC 9493 / SSF subject identifier.

    A SET speaks for its own issuer only: an identifier naming another ``iss`` is refused
    (SetError), so that one issuer cannot revoke the users or tokens of another.
    """
    ident = _Ident()
    if not isinstance(subject, dict):
        return ident
    fmt = str(subject.get("format") or subject.get("subject_type") or "").replace("-", "_")
    if fmt == "complex":
        session, user = subject.get("session"), subject.get("user")
        if isinstance(session, dict):
            ident.session = _identify(session, issuer, True).session
        if isinstance(user, dict):
            ident.sub = _identify(user, issuer, False).sub
    elif fmt == "iss_sub":
        _same_issuer(subject, issuer)
        sub = subject.get("sub")
        if isinstance(sub, str) and sub:
            ident.sub = sub
    elif fmt == "opaque":
        value = subject.get("id")
        if isinstance(value, str) and value:
            if session_event:
                ident.session = value
            else:
                ident.sub = value
    elif fmt == "jwt_id":
        _same_issuer(subject, issuer)
        jti = subject.get("jti")
        if isinstance(jti, str) and jti:
            ident.jti = jti
    else:
        ident.problem = f"subject identifier format {fmt or '(none)'!r} is not supported"
    return ident


def _same_issuer(subject: dict[str, Any], issuer: str) -> None:
    """The ``iss`` of an ``iss_sub`` / ``jwt_id`` identifier, when given, must be the SET's issuer."""
    named = subject.get("iss")
    if named is not None and named != issuer:
        raise SetError("invalid_issuer", f"the subject belongs to issuer {str(named)[:200]!r}, not to the SET's "
                                         "issuer: a SET may only revoke its own issuer's subjects and tokens")


def _event_time(event: dict[str, Any], claims: dict[str, Any], now: float) -> float:
    """event_timestamp (seconds; milliseconds tolerated), else the SET's iat, never after now.

    A time that is not a finite number in range (NaN, Infinity, 1e308, negative: the JSON
    parser of signed tokens accepts NaN and Infinity) is refused, never guessed at."""
    for name, value in (("event_timestamp", event.get("event_timestamp")), ("iat", claims.get("iat"))):
        if value is None:
            continue
        if not is_finite(value):
            raise SetError("invalid_request", f"{name} must be a finite number of seconds, not {value!r:.40}")
        seconds = value / 1000 if value > 1e11 else float(value)
        if not 0 < seconds <= now + MAX_LIFETIME:
            raise SetError("invalid_request", f"{name} {value!r:.40} is out of range")
        return min(seconds, now)
    return now


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
