// End-to-end checks of the local authorization server (server.mjs) and the
// scripted user (approve.mjs), over TLS on 127.0.0.1 only:
//   node --test tests/provider/*.test.mjs   (Node 20 also takes the directory;
//   Node 21+ does not) or: npm test --prefix tests/provider
import { strict as assert } from 'node:assert';
import { execFile, spawn } from 'node:child_process';
import {
  createHash, createPublicKey, randomBytes, verify as verifySignature,
} from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { basicAuth, form, request } from './lib/https.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const T = { timeout: 10_000 };
const AT_TTL = 30;

const client = {
  client_id: 'grantvault-test',
  client_secret: randomBytes(24).toString('base64url'),
  redirect_uris: ['http://127.0.0.1:8765/callback'],
};
const postClient = {
  client_id: 'grantvault-post',
  client_secret: randomBytes(24).toString('base64url'),
  redirect_uris: ['http://127.0.0.1:8765/callback'],
  token_endpoint_auth_method: 'client_secret_post',
};
// RFC 8252 §7.3: a native client's loopback redirect may use any port.
const redirectUri = 'http://127.0.0.1:41234/callback';

let dir;
let server;
let serverErr = '';
let issuer;
let ca;
let meta;
const secretsSeen = new Set();

function run(cmd, args, opts = {}) {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 8000, ...opts }, (error, stdout, stderr) => {
      resolve({ code: error ? (error.code ?? 1) : 0, stdout, stderr });
    });
  });
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'gv-provider-test-'));
  const cert = await run(join(here, 'provider-cert.sh'), [dir]);
  assert.equal(cert.code, 0, cert.stderr);
  ca = join(dir, 'cert.pem');
  const clientsFile = join(dir, 'clients.json');
  writeFileSync(clientsFile, JSON.stringify([client, postClient]), { mode: 0o600 });
  server = spawn(process.execPath, [join(here, 'server.mjs'), '--port', '0',
    '--cert', ca, '--key', join(dir, 'key.pem'), '--clients', clientsFile], {
    env: { ...process.env, GV_PROVIDER_AT_TTL: String(AT_TTL) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  server.stderr.setEncoding('utf8');
  server.stderr.on('data', (d) => { serverErr += d; });
  issuer = await new Promise((resolve, reject) => {
    let out = '';
    // Generous, as the C++ harness's 60 s: a loaded CI machine can stall a start for seconds.
    const timer = setTimeout(() => reject(new Error(`no READY in 60 s; stderr:\n${serverErr}`)), 60_000);
    server.stdout.setEncoding('utf8');
    server.stdout.on('data', (d) => {
      out += d;
      const m = /^READY (\S+)$/m.exec(out);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    server.once('exit', (code) => { clearTimeout(timer); reject(new Error(`server exited ${code}:\n${serverErr}`)); });
  });
  meta = (await request(`${issuer}/.well-known/openid-configuration`, { ca })).json();
});

after(async () => {
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => { server.once('exit', (code, signal) => resolve({ code, signal })); });
    server.kill('SIGTERM');
    const timer = setTimeout(() => server.kill('SIGKILL'), 3000);
    const { code } = await exited;
    clearTimeout(timer);
    assert.equal(code, 0, 'server.mjs exits cleanly on SIGTERM');
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function pkce() {
  const verifier = randomBytes(32).toString('base64url');
  return { verifier, challenge: createHash('sha256').update(verifier).digest('base64url') };
}

function authorizationUrl({
  c = client, scope = 'openid offline_access read', prompt = 'consent', challenge, state, nonce,
  redirect = redirectUri,
}) {
  const u = new URL(meta.authorization_endpoint);
  const p = {
    response_type: 'code', client_id: c.client_id, redirect_uri: redirect, scope, state, nonce,
  };
  if (prompt) p.prompt = prompt;
  if (challenge) Object.assign(p, { code_challenge: challenge, code_challenge_method: 'S256' });
  for (const [k, v] of Object.entries(p)) if (v !== undefined) u.searchParams.set(k, v);
  return u.href;
}

async function approve(url, ...flags) {
  const r = await run(process.execPath, [join(here, 'approve.mjs'), '--ca', ca, ...flags, url]);
  return { ...r, url: r.code === 0 ? new URL(r.stdout.trim()) : undefined };
}

async function tokenRequest(params, c = client) {
  const headers = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };
  const body = { ...params };
  if (c.token_endpoint_auth_method === 'client_secret_post') {
    Object.assign(body, { client_id: c.client_id, client_secret: c.client_secret });
  } else {
    headers.authorization = basicAuth(c.client_id, c.client_secret);
  }
  const res = await request(meta.token_endpoint, { method: 'POST', headers, body: form(body), ca });
  const json = res.json();
  for (const k of ['access_token', 'refresh_token', 'id_token']) if (json[k]) secretsSeen.add(json[k]);
  return { status: res.status, json, headers: res.headers };
}

async function endpoint(url, params, c = client) {
  const res = await request(url, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json',
      authorization: basicAuth(c.client_id, c.client_secret),
    },
    body: form(params),
    ca,
  });
  return { status: res.status, json: res.body ? res.json() : {} };
}

// Authorizes (as `user`) and exchanges the code: returns the token response.
async function authorize({
  c = client, scope, prompt, user = 'alice',
} = {}) {
  const { verifier, challenge } = pkce();
  const state = randomBytes(16).toString('base64url');
  const nonce = randomBytes(16).toString('base64url');
  const a = await approve(authorizationUrl({
    c, scope, prompt, challenge, state, nonce,
  }), '--user', user);
  assert.equal(a.code, 0, a.stderr);
  assert.equal(a.url.searchParams.get('state'), state);
  const code = a.url.searchParams.get('code');
  assert.ok(code, a.url.href);
  secretsSeen.add(code);
  const t = await tokenRequest({
    grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier,
  }, c);
  assert.equal(t.status, 200, JSON.stringify(t.json));
  return { ...t.json, nonce };
}

function decodeJwt(jwt) {
  const [h, p, s] = jwt.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url')),
    payload: JSON.parse(Buffer.from(p, 'base64url')),
    signingInput: `${h}.${p}`,
    signature: Buffer.from(s, 'base64url'),
  };
}

test('discovery is served over TLS that verifies against the generated CA only', T, async () => {
  assert.equal(meta.issuer, issuer);
  assert.match(issuer, /^https:\/\/127\.0\.0\.1:\d+$/);
  assert.deepEqual(meta.code_challenge_methods_supported, ['S256']);
  assert.deepEqual(meta.response_types_supported, ['code']);
  assert.ok(meta.revocation_endpoint && meta.introspection_endpoint);
  for (const s of ['openid', 'offline_access', 'read', 'write']) assert.ok(meta.scopes_supported.includes(s), s);
  assert.deepEqual(meta.token_endpoint_auth_methods_supported, ['client_secret_basic', 'client_secret_post']);
  await assert.rejects(request(`${issuer}/.well-known/openid-configuration`), /self-signed certificate/);
});

test('authorization code + PKCE S256 gives access, refresh and a valid id_token', T, async () => {
  const t = await authorize({ user: 'alice' });
  assert.equal(t.token_type, 'Bearer');
  assert.equal(t.expires_in, AT_TTL);
  assert.ok(t.access_token && t.refresh_token && t.id_token);
  assert.deepEqual(t.scope.split(' ').sort(), ['offline_access', 'openid', 'read']);

  const jwt = decodeJwt(t.id_token);
  assert.equal(jwt.header.alg, 'RS256');
  const jwks = (await request(meta.jwks_uri, { ca })).json();
  const jwk = jwks.keys.find((k) => k.kid === jwt.header.kid);
  assert.ok(jwk, 'id_token kid is in the JWKS');
  assert.equal(jwk.d, undefined, 'JWKS has no private parts');
  assert.ok(verifySignature('sha256', Buffer.from(jwt.signingInput), createPublicKey({ key: jwk, format: 'jwk' }), jwt.signature));
  const c = jwt.payload;
  assert.equal(c.iss, issuer);
  assert.equal(c.aud, client.client_id);
  assert.equal(c.sub, 'alice');
  assert.equal(c.nonce, t.nonce);
  assert.ok(c.exp > Date.now() / 1000);

  const me = await request(meta.userinfo_endpoint, { headers: { authorization: `Bearer ${t.access_token}` }, ca });
  assert.equal(me.status, 200);
  assert.equal(me.json().sub, 'alice');

  // email/profile put their claims in the id_token (conformIdTokenClaims: false).
  const e = decodeJwt((await authorize({ scope: 'openid email profile', user: 'erin' })).id_token).payload;
  assert.equal(e.sub, 'erin');
  assert.equal(e.email, 'erin@example.test');
  assert.equal(e.name, 'Test User erin');
});

test('refresh tokens rotate on every use; reusing a rotated one kills the grant', T, async () => {
  const t = await authorize({ user: 'bob' });
  const r1 = await tokenRequest({ grant_type: 'refresh_token', refresh_token: t.refresh_token });
  assert.equal(r1.status, 200, JSON.stringify(r1.json));
  assert.ok(r1.json.refresh_token);
  assert.notEqual(r1.json.refresh_token, t.refresh_token, 'a new refresh token each time');
  assert.notEqual(r1.json.access_token, t.access_token);

  const reuse = await tokenRequest({ grant_type: 'refresh_token', refresh_token: t.refresh_token });
  assert.equal(reuse.status, 400);
  assert.equal(reuse.json.error, 'invalid_grant');
  // The reuse revoked the whole grant: the newest refresh token and access token die too.
  const after = await tokenRequest({ grant_type: 'refresh_token', refresh_token: r1.json.refresh_token });
  assert.equal(after.status, 400);
  assert.equal(after.json.error, 'invalid_grant');
  const i = await endpoint(meta.introspection_endpoint, { token: r1.json.access_token });
  assert.equal(i.json.active, false);
  assert.match(serverErr, /grant\.error: invalid_grant \(refresh token already used\)/);
});

test('introspection reports active/inactive; revocation works', T, async () => {
  const t = await authorize({ user: 'carol' });
  const i1 = await endpoint(meta.introspection_endpoint, { token: t.access_token });
  assert.equal(i1.status, 200);
  assert.equal(i1.json.active, true);
  assert.equal(i1.json.sub, 'carol');
  assert.equal(i1.json.client_id, client.client_id);
  assert.ok(i1.json.scope.split(' ').includes('read'));
  const iRt = await endpoint(meta.introspection_endpoint, { token: t.refresh_token, token_type_hint: 'refresh_token' });
  assert.equal(iRt.json.active, true);

  // oidc-provider's revocation of either token revokes every token of the grant
  // (RFC 7009 §2.1 allows it for access tokens).
  const rv = await endpoint(meta.revocation_endpoint, { token: t.access_token, token_type_hint: 'access_token' });
  assert.equal(rv.status, 200);
  assert.equal((await endpoint(meta.introspection_endpoint, { token: t.access_token })).json.active, false);
  assert.equal((await endpoint(meta.introspection_endpoint, { token: t.refresh_token })).json.active, false);
  const r = await tokenRequest({ grant_type: 'refresh_token', refresh_token: t.refresh_token });
  assert.equal(r.json.error, 'invalid_grant');

  const t2 = await authorize({ user: 'carol' });
  const rv2 = await endpoint(meta.revocation_endpoint, { token: t2.refresh_token, token_type_hint: 'refresh_token' });
  assert.equal(rv2.status, 200);
  assert.equal((await endpoint(meta.introspection_endpoint, { token: t2.refresh_token })).json.active, false);
  assert.equal((await endpoint(meta.introspection_endpoint, { token: t2.access_token })).json.active, false);
  const dead = await tokenRequest({ grant_type: 'refresh_token', refresh_token: t2.refresh_token });
  assert.equal(dead.json.error, 'invalid_grant');
  // Revoking an unknown token is not an error (RFC 7009 §2.2).
  assert.equal((await endpoint(meta.revocation_endpoint, { token: 'not-a-token' })).status, 200);
});

test('PKCE is required: no challenge, no verifier or a wrong verifier is refused', T, async () => {
  const noChallenge = await approve(authorizationUrl({ state: 's1', nonce: 'n1' }));
  assert.equal(noChallenge.code, 0, noChallenge.stderr);
  assert.equal(noChallenge.url.searchParams.get('error'), 'invalid_request');
  assert.match(noChallenge.url.searchParams.get('error_description'), /PKCE/);
  assert.equal(noChallenge.url.searchParams.get('code'), null);

  for (const verifier of [undefined, pkce().verifier]) {
    const { verifier: right, challenge } = pkce();
    const a = await approve(authorizationUrl({ challenge, state: 's2', nonce: 'n2' }));
    assert.equal(a.code, 0, a.stderr);
    const code = a.url.searchParams.get('code');
    secretsSeen.add(code);
    const params = { grant_type: 'authorization_code', code, redirect_uri: redirectUri };
    if (verifier) params.code_verifier = verifier;
    const bad = await tokenRequest(params);
    assert.equal(bad.status, 400);
    assert.equal(bad.json.error, 'invalid_grant');
    // oidc-provider does not consume the code on a failed PKCE check: the
    // right verifier still redeems it (once).
    const retry = await tokenRequest({ ...params, code_verifier: right });
    assert.equal(retry.status, 200, JSON.stringify(retry.json));
  }
  assert.match(serverErr, /code_verifier must be provided|code_verifier does not match/);
});

test('an authorization code works once', T, async () => {
  const { verifier, challenge } = pkce();
  const a = await approve(authorizationUrl({ challenge, state: 's', nonce: 'n' }));
  const code = a.url.searchParams.get('code');
  const params = {
    grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier,
  };
  assert.equal((await tokenRequest(params)).status, 200);
  const again = await tokenRequest(params);
  assert.equal(again.json.error, 'invalid_grant');
});

test('--deny cancels at consent: error=access_denied with the state', T, async () => {
  const { challenge } = pkce();
  const a = await approve(authorizationUrl({ challenge, state: 'deny-state', nonce: 'n' }), '--deny');
  assert.equal(a.code, 0, a.stderr);
  assert.equal(a.url.origin + a.url.pathname, redirectUri);
  assert.equal(a.url.searchParams.get('error'), 'access_denied');
  assert.equal(a.url.searchParams.get('state'), 'deny-state');
  assert.equal(a.url.searchParams.get('iss'), issuer);
  assert.equal(a.url.searchParams.get('code'), null);
});

test('no refresh token without offline_access and prompt=consent', T, async () => {
  const noOffline = await authorize({ scope: 'openid read' });
  assert.equal(noOffline.refresh_token, undefined);
  const noPrompt = await authorize({ scope: 'openid offline_access read', prompt: null });
  assert.equal(noPrompt.refresh_token, undefined);
  assert.ok(!noPrompt.scope.split(' ').includes('offline_access'));
});

test('client authentication: secret in Basic or in the body, right secret only', T, async () => {
  // oidc-provider 9 accepts client_secret_basic and client_secret_post
  // interchangeably for a client registered with either.
  const viaPost = await authorize({ c: postClient, user: 'dave' });
  assert.ok(viaPost.refresh_token);
  const viaBasic = await tokenRequest({ grant_type: 'refresh_token', refresh_token: viaPost.refresh_token },
    { ...postClient, token_endpoint_auth_method: 'client_secret_basic' });
  assert.equal(viaBasic.status, 200, JSON.stringify(viaBasic.json));
  const wrong = await tokenRequest({ grant_type: 'refresh_token', refresh_token: viaBasic.json.refresh_token },
    { ...postClient, client_secret: 'wrong' });
  assert.equal(wrong.status, 401);
  assert.equal(wrong.json.error, 'invalid_client');
  const otherClient = await tokenRequest({ grant_type: 'refresh_token', refresh_token: viaBasic.json.refresh_token });
  assert.equal(otherClient.json.error, 'invalid_grant', 'a refresh token works only for its own client');
  assert.match(serverErr, /grant\.error: invalid_client \(invalid secret provided\)/);
});

test('an unregistered redirect URI gets an error page, not a redirect', T, async () => {
  const { challenge } = pkce();
  const a = await approve(authorizationUrl({
    challenge, state: 's', nonce: 'n', redirect: 'http://127.0.0.1:41234/elsewhere',
  }));
  assert.equal(a.code, 1);
  assert.match(a.stderr, /HTTP 400 .*redirect_uri/);
});

test('the server log names requests but never codes or tokens', T, async () => {
  assert.match(serverErr, /provider: POST \/token 200/);
  assert.ok(secretsSeen.size > 10);
  for (const s of secretsSeen) assert.ok(!serverErr.includes(s), 'a code or token reached the log');
  assert.ok(!serverErr.includes(client.client_secret));
});
