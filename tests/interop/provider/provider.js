// node oidc-provider for tests/interop: `node provider.js SETTINGS.json`.
//
// Listens on 127.0.0.1 (a free port), prints one JSON line {"issuer": ...} once it serves, and
// runs until stdin closes (so it never outlives the test process). SETTINGS:
//   clients    oidc-provider client metadata (the test's private_key_jwt client brings its public JWK)
//   resources  { "<resource indicator>": { "format": "jwt"|"opaque", "alg": "RS256"|"ES256", "scope": "..." } }
//   gateway    { "adminUrl": ..., "secret": ... }: where revocation-hook.js sends revocations
//   accounts   account ids the auto-consenting login below signs in (first one by default)
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';
import { connectRevocationHook, grantIdClaim } from './revocation-hook.js';

const settings = JSON.parse(readFileSync(process.argv[2], 'utf8'));

function signingKey(type, options, alg) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid: `${alg.toLowerCase()}-${randomUUID()}`, alg, use: 'sig' };
}

const server = createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: settings.clients,
    cookies: { keys: [randomUUID()] },
    jwks: {
      keys: [
        signingKey('rsa', { modulusLength: 2048 }, 'RS256'),
        signingKey('ec', { namedCurve: 'P-256' }, 'ES256'),
      ],
    },
    features: {
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      // RFC 9449: a token request with a DPoP proof gets a token bound to the proof's key (cnf.jkt)
      dPoP: { enabled: true },
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => oneOf,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, indicator) => {
          const resource = settings.resources[indicator];
          if (!resource) throw new Provider.errors.InvalidTarget();
          return {
            scope: resource.scope,
            audience: indicator,
            accessTokenTTL: 600,
            accessTokenFormat: resource.format,
            ...(resource.format === 'jwt' ? { jwt: { sign: { alg: resource.alg } } } : {}),
          };
        },
      },
    },
    scopes: ['openid', 'offline_access', ...new Set(Object.values(settings.resources).flatMap((r) => r.scope.split(' ')))],
    extraTokenClaims: grantIdClaim,
    findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: true,
    pkce: { required: () => false },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    renderError: async (ctx, out) => { ctx.type = 'json'; ctx.body = out; },
  });
  connectRevocationHook(provider, settings.gateway);
  const callback = provider.callback();
  server.on('request', (req, res) => {
    if (req.url.startsWith('/interaction/')) {
      autoConsent(provider, req, res).catch((err) => { res.statusCode = 500; res.end(String(err)); });
    } else {
      callback(req, res);
    }
  });
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

// The login and consent page of a real deployment, reduced to "yes": sign in the first account and
// grant what was asked (scopes and resources), so a test can run the authorization code flow.
async function autoConsent(provider, req, res) {
  const { prompt, params } = await provider.interactionDetails(req, res);
  const accountId = settings.accounts?.[0] ?? 'alice';
  if (prompt.name === 'login') {
    await provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
    return;
  }
  const grant = new provider.Grant({ accountId, clientId: params.client_id });
  grant.addOIDCScope(params.scope);
  for (const resource of [params.resource].flat().filter(Boolean)) grant.addResourceScope(resource, params.scope);
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
