"""The ``issuers:`` section: trusted authorization servers, their tenants, DPoP and introspection settings.

Checked when the file loads; the token validators read the result per request.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from ..tokens.issuer_pattern import TENANT_NAME, check_template, templated
from .values import Algorithm, Duration, HttpUrl, Model


class IntrospectionConfig(Model):
    """RFC 7662 token introspection for one issuer."""

    endpoint: HttpUrl | None = None
    client_id: str
    client_secret: str | None = None
    auth_method: Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] = "client_secret_basic"
    private_key_file: str | None = None
    private_key_algorithm: Algorithm = "RS256"
    cache_ttl: Duration = 60.0
    negative_cache_ttl: Duration = 10.0
    cache_size: int = Field(default=100_000, ge=1)
    timeout: Duration = 2.0
    token_prefix: str | None = None
    shared_cache: bool = False
    redis_url: str | None = None  # the shared second-level cache (with shared_cache: true)
    # /readyz turns 503 once every call (and probe) has failed for this long: one blip drains no pod
    readiness_grace: Duration = 30.0

    @model_validator(mode="after")
    def _credentials_match_method(self) -> IntrospectionConfig:
        if self.shared_cache and not self.redis_url:
            raise ValueError("shared_cache: true needs redis_url")
        if self.auth_method == "private_key_jwt" and not self.private_key_file:
            raise ValueError("auth_method private_key_jwt needs private_key_file")
        if self.auth_method != "private_key_jwt" and not self.client_secret:
            raise ValueError(f"auth_method {self.auth_method} needs client_secret")
        return self


def _not_any_issuer(value: str) -> str:
    if value == "*":  # "*" names every issuer in revocation entries
        raise ValueError("'*' is reserved for revocation entries that cover every issuer")
    if templated(value):
        check_template(value)  # ValueError: reported on the issuer key
    return value


def _tenant_name(value: str) -> str:
    if not TENANT_NAME.fullmatch(value):
        raise ValueError(f"tenant {value[:80]!r} must be 1-128 letters, digits, '.', '_', '~' or '-', starting with a "
                         "letter or digit")
    return value


# what a token must be bound to (docs/sender-constrained.md): ``none`` and ``optional`` accept unbound tokens
# (``none`` advertises Bearer only); a bound token needs its proof under every value
SenderConstraint = Literal["none", "optional", "dpop", "mtls", "any"]


class IssuerDPoPConfig(Model):
    """How DPoP proofs (RFC 9449) sent with this issuer's tokens are checked."""

    algorithms: list[Algorithm] = Field(default=["ES256", "RS256", "PS256", "EdDSA"], min_length=1)
    max_age: Duration = Field(default=60.0, gt=0)  # a proof's iat may be this old
    leeway: Duration = 5.0  # ... and this far in the future (the client's clock runs ahead)
    nonce: bool = False  # require the gateway's DPoP-Nonce in every proof (RFC 9449 section 8)


class IssuerConfig(Model):
    """A trusted authorization server and how its tokens are checked."""

    issuer: Annotated[str, AfterValidator(_not_any_issuer)] = Field(min_length=1)
    audiences: list[str] = Field(min_length=1)
    algorithms: list[Algorithm] = Field(default=["RS256", "ES256"], min_length=1)
    leeway: Duration = 30.0
    jwks_uri: HttpUrl | None = None
    require_typ: str | None = None
    required_claims: list[Annotated[str, Field(min_length=1)]] = []  # beyond exp/iss/aud (and RFC 9068's with at+jwt)
    validation: Literal["jwt", "introspection"] = "jwt"
    introspection: IntrospectionConfig | None = None
    jwks_refresh_interval: Duration = 300.0
    jwks_min_refresh_interval: Duration = 30.0
    jwks_refetch_burst: int = Field(default=3, ge=0)  # unknown-kid refetches allowed at once (a token bucket)
    http_timeout: Duration = 5.0
    max_token_lifetime: Duration = 86400.0
    sender_constraint: SenderConstraint = "optional"
    dpop: IssuerDPoPConfig = IssuerDPoPConfig()
    # a templated issuer ({tenant} in issuer; docs/issuers.md): the tenants trusted, and/or the claim naming it
    tenants: list[Annotated[str, AfterValidator(_tenant_name)]] | None = Field(default=None, min_length=1)
    tenant_claim: str | None = Field(default=None, min_length=1)
    max_tenants: int = Field(default=1000, ge=1)  # tenants whose keys are kept at once (least recently used go)

    @model_validator(mode="after")
    def _introspection_configured(self) -> IssuerConfig:
        if self.validation == "introspection" and self.introspection is None:
            raise ValueError("validation: introspection needs an introspection: section")
        return self

    @model_validator(mode="after")
    def _tenants_with_template(self) -> IssuerConfig:
        if not templated(self.issuer):
            if self.tenants is not None or self.tenant_claim is not None:
                raise ValueError("tenants and tenant_claim need a templated issuer (with {tenant} in issuer)")
            if self.jwks_uri is not None and "{tenant}" in self.jwks_uri:
                raise ValueError("jwks_uri may name {tenant} only for a templated issuer")
            return self
        if self.tenants is None and self.tenant_claim is None:
            raise ValueError("a templated issuer needs tenants (the allow-list) or tenant_claim (the claim naming "
                             "the tenant), or both: which tenants to trust must be said")
        if self.validation != "jwt" or self.introspection is not None:
            raise ValueError("a templated issuer validates JWTs with each tenant's keys: introspection is not "
                             "supported")
        return self

    @property
    def templated(self) -> bool:
        """Whether ``issuer`` names ``{tenant}`` (one entry for many tenants)."""
        return templated(self.issuer)
