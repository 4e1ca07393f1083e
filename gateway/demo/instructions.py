"""What ``gateway demo`` prints: the demo's tokens as shell variables, then one command per outcome."""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric import ec

from ..tokens.dpop import confirmation
from .config import DemoPorts
from .issuer import DemoIssuer

STEP_UP_ACR = "urn:example:mfa"  # the acr_values of the demo's /payouts route


def demo_tokens(issuer: DemoIssuer) -> dict[str, str]:
    """The tokens the printed commands use, valid for an hour."""
    hour = 3600
    # bound to a key that is dropped at once: what a thief holds after copying a DPoP-bound token
    absent_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "READER": issuer.mint(scope="orders:read", ttl=hour),
        "WRITER": issuer.mint(scope="profile", ttl=hour),
        "ACME": issuer.mint(scope="orders:read", ttl=hour, tenant="acme"),
        "MFA": issuer.mint(scope="orders:read", ttl=hour, acr=STEP_UP_ACR, auth_time=int(time.time())),
        "STOLEN": issuer.mint(scope="orders:read", ttl=hour, cnf=confirmation(absent_key)),
    }


def demo_instructions(issuer: DemoIssuer, upstream_url: str, ports: DemoPorts, audit_path: str) -> str:
    """What ``gateway demo`` prints: the tokens as shell variables, then one command per outcome.

    Every command follows a comment ending in ``-> <status>``, the answer it gets (tests/test_demo.py
    runs them all and checks).
    """
    base, token_endpoint = f"http://127.0.0.1:{ports.gateway}", issuer.token_endpoint
    variables = "\n".join(f"{name}='{token}'" for name, token in demo_tokens(issuer).items())
    return f"""
tokengate demo: gateway {base}, issuer {issuer.issuer}, upstream {upstream_url}
metrics: http://127.0.0.1:{ports.admin}/metrics   audit records: {audit_path}

# paste these first: the demo's tokens (an hour each) as shell variables
{variables}

# no token: the challenge says WWW-Authenticate: Bearer realm="tokengate" (and DPoP) -> 401
curl -i {base}/orders

# a token without orders:read, insufficient_scope -> 403
curl -i -H "Authorization: Bearer $WRITER" {base}/orders

# a token with orders:read: the upstream answers and sees X-Auth-Subject -> 200
curl -i -H "Authorization: Bearer $READER" {base}/orders

# DPoP (RFC 9449): a token bound to a new key from the issuer, then the API with a fresh proof -> 200
# (from a checkout without installing: python tools/dpop_client.py with the same arguments)
gateway dpop-request --token-endpoint {token_endpoint} --scope orders:read {base}/dpop/orders

# the DPoP-only route refuses a plain bearer token, sender_constraint_required -> 401
curl -i -H "Authorization: Bearer $READER" {base}/dpop/orders

# a stolen DPoP-bound token is useless without its key: as a bearer token, unproven_binding -> 401
curl -i -H "Authorization: Bearer $STOLEN" {base}/orders

# ... and as DPoP without a proof signed by that key, invalid_dpop_proof -> 401
curl -i -H "Authorization: DPoP $STOLEN" {base}/dpop/orders

# claims rule same-tenant (CEL: claims.tenant == path.tenant), the token's tenant is acme -> 200
curl -i -H "Authorization: Bearer $ACME" {base}/tenants/acme/orders

# ... another tenant's orders, access_denied (rule_failed, the rule named in the audit record) -> 403
curl -i -H "Authorization: Bearer $ACME" {base}/tenants/globex/orders

# step-up (RFC 9470): a token without acr, insufficient_user_authentication -> 401
curl -i -H "Authorization: Bearer $READER" {base}/payouts

# a token with acr {STEP_UP_ACR} and auth_time within max_age (5m) -> 200
curl -i -H "Authorization: Bearer $MFA" {base}/payouts

# past 5 minutes, mint a fresh one: curl -s -d acr={STEP_UP_ACR} {token_endpoint}
# mint your own: curl -s -d scope=orders:write {token_endpoint}   (-d tenant=acme adds the claim)
# a public route, no token needed: curl -i {base}/public/health
# what was decided, request by request: gateway audit {audit_path}
Ctrl-C stops the demo.
"""
