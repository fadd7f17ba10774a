#!/usr/bin/env node
// Local OAuth 2.0 / OpenID Connect authorization server for grantvault's tests
// and ./run.sh: oidc-provider over HTTPS on 127.0.0.1, configured like a strict
// real-world server (PKCE required for every client, refresh tokens rotated on
// every use, revocation and introspection on, short-lived access tokens).
//
//   node server.mjs --cert CERT.pem --key KEY.pem --clients CLIENTS.json [--port N]
//
// Options may also come from the environment: GV_PROVIDER_PORT,
// GV_PROVIDER_CERT, GV_PROVIDER_KEY, GV_PROVIDER_CLIENTS. Port 0 (the default)
// picks an ephemeral port; the chosen port is printed as "PORT <n>".
// Lifetimes (seconds): GV_PROVIDER_AT_TTL (access token, default 60),
// GV_PROVIDER_RT_TTL (refresh token, default 14 days), GV_PROVIDER_CODE_TTL
// (authorization code, default 60).
//
// stdout: "PORT <n>" (only for port 0), then "READY <issuer>" once listening.
// stderr: one line per request (method, path, status, time; never query strings
// or bodies, so never codes or tokens), "grant.success: <grant_type>" for each
// token-endpoint success, and the error/error_detail of failed token,
// revocation, introspection, userinfo and authorization requests.
//
// CLIENTS.json: an array (or {"clients": [...]}) of
//   { "client_id", "client_secret", "redirect_uris": [...],
//     optional "token_endpoint_auth_method" ("client_secret_basic" default,
//     or "client_secret_post"; oidc-provider 9 accepts the secret either way
//     for both), "scope" (allow-list), "application_type",
//     "id_token_signed_response_alg" ("RS256" default, or "ES256") }
// A client whose redirect URIs are all http loopback URIs is registered as a
// native application, so any port on the same loopback path is accepted
// (RFC 8252 §7.3); give "application_type": "web" to demand exact matches.
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { parseArgs } from 'node:util';

// oidc-provider 9 warns on Node 20 ("Unsupported runtime"); all we use works.
const { default: Provider } = await import('oidc-provider');

function log(line) {
  process.stderr.write(`provider: ${line}\n`);
}

function fail(message) {
  log(`fatal: ${message}`);
  process.exit(2);
}

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    clients: { type: 'string' },
  },
  strict: true,
});

const portText = args.port ?? process.env.GV_PROVIDER_PORT ?? '0';
const certPath = args.cert ?? process.env.GV_PROVIDER_CERT;
const keyPath = args.key ?? process.env.GV_PROVIDER_KEY;
const clientsPath = args.clients ?? process.env.GV_PROVIDER_CLIENTS;
if (!/^\d+$/.test(portText) || Number(portText) > 65535) fail(`bad port ${portText}`);
if (!certPath || !keyPath) fail('--cert and --key are required (see provider-cert.sh)');
if (!clientsPath) fail('--clients is required');

function seconds(name, fallback) {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  if (!/^\d+$/.test(text) || Number(text) < 1) fail(`${name} must be a positive integer`);
  return Number(text);
}
const accessTokenTtl = seconds('GV_PROVIDER_AT_TTL', 60);
const refreshTokenTtl = seconds('GV_PROVIDER_RT_TTL', 14 * 24 * 3600);
const codeTtl = seconds('GV_PROVIDER_CODE_TTL', 60);

function isLoopbackHttp(uri) {
  try {
    const u = new URL(uri);
    return u.protocol === 'http:' && ['127.0.0.1', '[::1]', 'localhost'].includes(u.hostname);
  } catch {
    return false;
  }
}

function loadClients(path) {
  let parsed;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    fail(`cannot read clients file ${path}: ${e.message}`);
  }
  const list = Array.isArray(parsed) ? parsed : parsed?.clients;
  if (!Array.isArray(list) || list.length === 0) fail('the clients file lists no client');
  return list.map((c) => {
    if (!c.client_id || !c.client_secret || !Array.isArray(c.redirect_uris)) {
      fail('each client needs client_id, client_secret and redirect_uris');
    }
    const native = c.redirect_uris.length > 0 && c.redirect_uris.every(isLoopbackHttp);
    return {
      application_type: native ? 'native' : 'web',
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
      ...c,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
    };
  });
}

function signingKeys() {
  const jwk = (keyPair, alg) => {
    const key = keyPair.privateKey.export({ format: 'jwk' });
    const pub = keyPair.publicKey.export({ format: 'der', type: 'spki' });
    return {
      ...key, alg, use: 'sig', kid: createHash('sha256').update(pub).digest('base64url').slice(0, 16),
    };
  };
  return [
    jwk(generateKeyPairSync('rsa', { modulusLength: 2048 }), 'RS256'),
    jwk(generateKeyPairSync('ec', { namedCurve: 'P-256' }), 'ES256'),
  ];
}

const clients = loadClients(clientsPath);
let tls;
try {
  tls = { cert: readFileSync(certPath), key: readFileSync(keyPath) };
} catch (e) {
  fail(`cannot read the TLS certificate or key: ${e.message}`);
}

// Listen first (port 0 → ephemeral) so the issuer can name the real port; the
// provider is attached before anyone is told the address.
const server = createServer({ ...tls, minVersion: 'TLSv1.2' });
server.on('tlsClientError', (err) => log(`tls: ${err.code ?? err.message}`));
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(portText), '127.0.0.1', resolve);
}).catch((e) => fail(`listen: ${e.message}`));
const { port } = server.address();
const issuer = `https://127.0.0.1:${port}`;

const configuration = {
  clients,
  jwks: { keys: signingKeys() },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  // findAccount's accountId must equal the sub it is given.
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return {
          sub, email: `${sub}@example.test`, email_verified: true, name: `Test User ${sub}`,
        };
      },
    };
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  // Non-OIDC scopes must be listed to be grantable; unlisted ones are dropped.
  scopes: ['openid', 'profile', 'email', 'offline_access', 'read', 'write', 'admin'],
  // With false, the id_token carries the granted scopes' claims (email, name),
  // like Google's and Microsoft's do, not only sub.
  conformIdTokenClaims: false,
  responseTypes: ['code'],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  // Default: required only for public clients.
  pkce: { required: () => true },
  // Default: confidential clients' refresh tokens rotate after 70 % of their life.
  rotateRefreshToken: true,
  // Default kept on purpose: a refresh token only with offline_access, which
  // oidc-provider honours only when the request carries prompt=consent.
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    userinfo: { enabled: true },
  },
  ttl: {
    AccessToken: accessTokenTtl,
    AuthorizationCode: codeTtl,
    IdToken: 3600,
    RefreshToken: refreshTokenTtl,
    Grant: refreshTokenTtl,
    Session: 24 * 3600,
    Interaction: 600,
  },
  clientBasedCORS: () => false,
  async renderError(ctx, out) {
    ctx.type = 'html';
    const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
    ctx.body = `<!DOCTYPE html><html><head><title>oops</title></head><body><h1>oops! something went wrong</h1>${
      Object.entries(out).map(([k, v]) => `<pre><strong>${esc(k)}</strong>: ${esc(v)}</pre>`).join('')}</body></html>`;
  },
};

let provider;
try {
  provider = new Provider(issuer, configuration);
} catch (e) {
  fail(`configuration: ${e.message}`);
}

provider.use(async (ctx, next) => {
  const started = process.hrtime.bigint();
  try {
    await next();
  } finally {
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    log(`${ctx.method} ${ctx.path} ${ctx.status} ${ms.toFixed(1)}ms`);
  }
});

const errorEvents = [
  'grant.error', 'authorization.error', 'revocation.error', 'introspection.error',
  'userinfo.error', 'discovery.error', 'jwks.error', 'end_session.error',
];
for (const event of errorEvents) {
  provider.on(event, (ctx, err) => {
    log(`${event}: ${err.error ?? err.name}${err.error_detail ? ` (${err.error_detail})` : ''}${
      ctx?.oidc?.client ? ` client=${ctx.oidc.client.clientId}` : ''}`);
  });
}
provider.on('server_error', (ctx, err) => log(`server_error: ${err.stack ?? err}`));
provider.on('grant.revoked', (ctx, grantId) => log(`grant.revoked: ${grantId.slice(0, 6)}…`));
// One line per token issued at the token endpoint, naming only the grant type, so that tests
// can count refreshes (written before the answer is sent).
provider.on('grant.success', (ctx) => log(`grant.success: ${ctx.oidc?.params?.grant_type ?? '?'}`));

server.on('request', provider.callback());

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  log(`${signal}: shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));

if (Number(portText) === 0) process.stdout.write(`PORT ${port}\n`);
process.stdout.write(`READY ${issuer}\n`);
