// A real OpenID Connect authorization server for the OAuth tests: panva's `oidc-provider` (certified),
// configured with resource indicators (RFC 8707), PKCE, JWT access tokens (RFC 9068), refresh tokens,
// dynamic client registration and introspection (RFC 7662). Login and consent are plain HTTP endpoints so
// a test drives them with requests, no browser.
//
// Usage: node provider.mjs CONFIG.json — the config names the issuers (one per port), the signing keys
// (private JWKs, so a test can also forge tokens with the provider's own key), the resource servers, the
// users and their claims. Prints `ready <issuer> ...` on stdout once every issuer listens.
import { readFileSync } from 'node:fs';
import http from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

function readForm(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => resolve(Object.fromEntries(new URLSearchParams(body))));
    req.on('error', reject);
  });
}

function sendJson(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function buildProvider(spec) {
  const { users, resources } = config;
  const provider = new Provider(spec.issuer, {
    jwks: { keys: spec.keys },
    cookies: { keys: ['fleet-mcp-test-cookie-key'] },
    clients: config.clients,
    scopes: ['openid', 'offline_access', ...config.scopes],
    claims: { openid: ['sub'], profile: ['preferred_username'] },
    pkce: { required: () => true },
    clientDefaults: { id_token_signed_response_alg: 'ES256' },
    findAccount: async (_ctx, id) => (users[id] ? {
      accountId: id,
      claims: async () => ({ sub: id, preferred_username: users[id].claims.preferred_username ?? id }),
    } : undefined),
    // What fleet-mcp maps to an account, a principal and roles: configured per user.
    extraTokenClaims: async (_ctx, token) => {
      const user = users[token.accountId];
      return user ? { ...user.claims } : undefined;
    },
    ttl: {
      AccessToken: () => 600,
      AuthorizationCode: 60,
      RefreshToken: 3600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
    issueRefreshToken: async (_ctx, client, code) => client.grantTypeAllowed('refresh_token')
      && code.scopes.has('offline_access'),
    features: {
      devInteractions: { enabled: false },
      registration: { enabled: true },
      introspection: { enabled: true, allowedPolicy: async () => true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => undefined,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, indicator, client) => {
          const rs = resources[indicator];
          if (!rs) throw new Provider.errors.InvalidTarget(`unknown resource ${indicator}`);
          const opaque = (config.opaqueClients ?? []).includes(client.clientId);
          return {
            scope: rs.scope,
            audience: indicator,
            accessTokenTTL: rs.ttl ?? 600,
            accessTokenFormat: opaque ? 'opaque' : 'jwt',
            jwt: opaque ? undefined : { sign: { alg: 'ES256' } },
          };
        },
      },
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  });
  provider.proxy = false;
  return provider;
}

async function interaction(provider, req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return sendJson(res, 400, { error: 'interaction mismatch' });
  if (req.method === 'GET') {
    return sendJson(res, 200, {
      uid, prompt: details.prompt.name, client_id: details.params.client_id, scope: details.params.scope,
      resource: details.params.resource,
    });
  }
  const form = await readForm(req);
  if (action === 'login') {
    const user = config.users[form.login];
    if (!user || user.password !== form.password) return sendJson(res, 403, { error: 'bad credentials' });
    return provider.interactionFinished(req, res, { login: { accountId: form.login } },
      { mergeWithLastSubmission: false });
  }
  if (action === 'confirm') {
    const { prompt: { details: missing }, params, session: { accountId } } = details;
    let grant;
    if (details.grantId) grant = await provider.Grant.find(details.grantId);
    else grant = new provider.Grant({ accountId, clientId: params.client_id });
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    if (missing.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const grantId = await grant.save();
    const consent = details.grantId ? {} : { grantId };
    return provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
  }
  return sendJson(res, 404, { error: 'unknown interaction action' });
}

const servers = [];
for (const spec of config.issuers) {
  const provider = buildProvider(spec);
  const callback = provider.callback();
  const server = http.createServer((req, res) => {
    const match = /^\/interaction\/([^/]+)(?:\/(login|confirm))?$/.exec(req.url.split('?')[0]);
    if (match) {
      interaction(provider, req, res, match[1], match[2]).catch((err) => {
        sendJson(res, 400, { error: String(err && err.message) });
      });
      return;
    }
    callback(req, res);
  });
  await new Promise((resolve) => server.listen(spec.port, '127.0.0.1', resolve));
  servers.push(server);
}
process.stdout.write(`ready ${config.issuers.map((s) => s.issuer).join(' ')}\n`);
process.on('SIGTERM', () => { for (const s of servers) s.close(); process.exit(0); });
