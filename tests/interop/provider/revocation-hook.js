// Feed tokengate's revocation list from node oidc-provider (docs/revocation.md quotes this file).
//
//   import { connectRevocationHook } from './revocation-hook.js';
//   connectRevocationHook(provider, { adminUrl: 'http://gateway-admin:9090', secret: process.env.GATEWAY_ADMIN_SECRET });
//
// oidc-provider emits no "revocation.success". What it does emit:
//   access_token.destroyed, client_credentials.destroyed (token)  an opaque access token was revoked
//       (revocation endpoint, or its expiry): revoked at the gateway by fingerprint, SHA-256 of the token.
//       An opaque token's value is its jti, so the token itself never leaves this process.
//   grant.revoked (ctx, grantId)  every token of one grant is being revoked (refresh token reuse, a
//       revoked refresh token, logout): revoked at the gateway as a family. Tokens carry the grant id
//       only through extraTokenClaims (below) and the gateway's revocation.family_claim: grant_id.
// JWT access tokens are never stored, so no event names them, and the revocation endpoint refuses
// them (unsupported_token_type): the gateway's list is their only revocation, through grant.revoked.
import { createHash } from 'node:crypto';

const ATTEMPTS = 5; // a replica answering 503 (Redis down) enforces already; retry so that all do

export function connectRevocationHook(provider, { adminUrl, secret, log = console }) {
  const post = async (body) => {
    for (let attempt = 1; ; attempt += 1) {
      try {
        const res = await fetch(`${adminUrl}/revocation/entries`, {
          method: 'POST',
          headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
          body: JSON.stringify({ issuer: provider.issuer, ...body }),
          signal: AbortSignal.timeout(5000),
        });
        if (res.ok) return;
        if (res.status < 500 || attempt === ATTEMPTS) {
          log.error('gateway revocation refused', res.status, await res.text());
          return;
        }
      } catch (err) {
        if (attempt === ATTEMPTS) {
          log.error('gateway revocation failed', err);
          return;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 100 * 2 ** attempt));
    }
  };

  const tokenDestroyed = (token) => {
    const ttl = Math.max(1, (token.exp ?? 0) - Math.floor(Date.now() / 1000));
    if (token.exp && ttl <= 1) return; // expired anyway: nothing left to revoke
    post({
      fingerprint: createHash('sha256').update(token.jti).digest('hex'),
      ...(token.exp ? { ttl } : {}),
      reason: `${token.kind} destroyed at the authorization server`,
    });
  };
  provider.on('access_token.destroyed', tokenDestroyed);
  provider.on('client_credentials.destroyed', tokenDestroyed);
  provider.on('grant.revoked', (ctx, grantId) => {
    post({ family: grantId, reason: 'grant revoked at the authorization server' });
  });
}

// The claim that ties every access token of a grant together, for family revocation:
//   new Provider(issuer, { extraTokenClaims: grantIdClaim, ... })   and, in the gateway,
//   revocation: { family_claim: grant_id }
export async function grantIdClaim(ctx, token) {
  return token.grantId ? { grant_id: token.grantId } : undefined;
}
