// fetch() through grantvaultd's proxy against the real daemon, the real
// oidc-provider, and the stand-in API (tests/api/server.mjs) registered as the
// connector's API base: see harness.mjs.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, afterEach, before, test } from 'node:test';

import * as gv from '@grantvault/client';

import { CONNECTOR, missingPrerequisite, packageDir, sha256Hex, sleep, Vault, waitFor, WORKSPACE, within } from './harness.mjs';
import { searchProcessMemory } from './procmem.mjs';

const skip = missingPrerequisite() ?? false;
// Larger than any answer the proxy passes on (its size cap; docs/proxy.md).
const OVERSIZED_BYTES = 64 << 20;
const TOOLS = [
  { name: 'read_profile', connector: CONNECTOR, scopes: ['read'] },
  { name: 'call_api', connector: CONNECTOR, scopes: ['read'], http: ['GET /v1/', 'POST /v1/echo'] },
  { name: 'echo_only', connector: CONNECTOR, scopes: ['read'], http: ['GET /v1/echo'] },
];
const CALL = { workspace: WORKSPACE, connector: CONNECTOR, tool: 'call_api' };

let vault;
let client;

before(async () => {
  if (skip) return;
  vault = await Vault.start({ api: true, tools: TOOLS });
});
afterEach(() => {
  client?.close();
  client = null;
});
after(async () => {
  await vault?.stop();
});

async function open() {
  client = await gv.connect({ socketPath: vault.agentSocket, clientName: 'node-proxy-test' });
  return client;
}
/** The grant's current token, resolved by this (test) process. */
async function currentToken() {
  const c = await gv.connect({ socketPath: vault.agentSocket });
  try {
    return (await c.resolve({ workspace: WORKSPACE, connector: CONNECTOR, tool: 'read_profile' })).accessToken;
  } finally {
    c.close();
  }
}
const bearerHash = (token) => sha256Hex(Buffer.concat([Buffer.from('Bearer '), token]));
async function refusal(promise) {
  try {
    const response = await promise;
    await response.arrayBuffer(); // a refusal may come after the head, erroring the body
  } catch (e) {
    return e;
  }
  return assert.fail('the call succeeded');
}

/**
 * Runs test/fixtures/host-fetch.mjs, which makes one call with fetch() (and, with
 * `alsoResolve`, resolves the token too); while it is still alive after the call, searches its
 * memory. Returns the API's echo and what the search found.
 */
async function hostCall(alsoResolve) {
  const host = spawn(process.execPath, [join(packageDir, 'test', 'fixtures', 'host-fetch.mjs'),
    vault.agentSocket, WORKSPACE, CONNECTOR, 'call_api', '/v1/echo?from=host', ...(alsoResolve ? ['--also-resolve'] : [])],
  { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  host.stdout.setEncoding('utf8').on('data', (d) => { stdout += d; });
  host.stderr.setEncoding('utf8').on('data', (d) => { stderr += d; });
  const exited = new Promise((r) => host.once('exit', r));
  try {
    const canary = randomBytes(32);
    host.stdin.write(`${canary.toString('hex')}\n`);
    await waitFor(20_000, 'the host\'s call', () => {
      if (host.exitCode !== null) throw new Error(`host-fetch exited ${host.exitCode}: ${stderr}`);
      return stdout.includes('\n');
    });
    const answer = JSON.parse(stdout);
    assert.equal(answer.status, 200, answer.body);
    const token = await currentToken();
    const { found: [tokenFound, tokenUtf16Found, canaryFound], bytesRead } = searchProcessMemory(host.pid, [
      token, Buffer.from(token.toString('latin1'), 'utf16le'), canary,
    ]);
    assert.ok(canaryFound, `the memory scan (${bytesRead} bytes) did not find the canary the host holds`);
    const tokenHash = bearerHash(token);
    token.fill(0);
    return { echo: JSON.parse(answer.body), tokenHash, tokenInMemory: tokenFound || tokenUtf16Found };
  } finally {
    host.stdin.end('exit\n');
    await within(10_000, 'host exit', exited).catch(() => host.kill('SIGKILL'));
  }
}

test('a call is made with the grant\'s token, which never reaches the host process', { skip }, async () => {
  const { echo, tokenHash, tokenInMemory } = await hostCall(false);
  assert.equal(echo.path, '/v1/echo');
  assert.deepEqual(echo.query, { from: 'host' });
  assert.equal(echo.authorization_sha256, tokenHash, 'the API did not see the grant\'s token as a Bearer');
  assert.equal(tokenInMemory, false, 'the access token is in the host process\'s memory');
  // The control: the same search finds the token in a host that resolved it.
  assert.equal((await hostCall(true)).tokenInMemory, true, 'the memory search does not find a token the host holds');
});

test('an absolute URL on the API base, the caller\'s headers and body; the caller\'s Authorization is replaced', { skip }, async () => {
  await open();
  const response = await client.fetch(`${vault.apiBase}/v1/echo?x=1&y=two`, {
    ...CALL, method: 'POST', headers: { 'X-Trace': 'trace-1', Authorization: 'Bearer not-the-grant', 'Content-Type': 'application/json' },
    body: '{"hello":"api"}',
  });
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type'), /application\/json/);
  const echo = await response.json();
  assert.deepEqual([echo.method, echo.path, echo.query], ['POST', '/v1/echo', { x: '1', y: 'two' }]);
  assert.equal(echo.headers['x-trace'], 'trace-1');
  assert.equal(echo.body_sha256, sha256Hex('{"hello":"api"}'));
  const token = await currentToken();
  assert.equal(echo.authorization_sha256, bearerHash(token));
  assert.notEqual(echo.authorization_sha256, sha256Hex('Bearer not-the-grant'));
});

test('a streamed answer arrives in parts through the body stream', { skip }, async () => {
  await open();
  const response = await client.fetch('/v1/stream?parts=5', CALL);
  assert.equal(response.status, 200);
  const reader = response.body.getReader();
  const chunks = [];
  for (;;) {
    const { value, done } = await within(10_000, 'stream part', reader.read());
    if (done) break;
    chunks.push(Buffer.from(value));
  }
  assert.equal(Buffer.concat(chunks).toString(), 'part 0\npart 1\npart 2\npart 3\npart 4\n');
  assert.ok(chunks.length > 1, 'the parts arrived as one');
});

test('a path outside the tool\'s http prefixes is PERMISSION_DENIED', { skip }, async () => {
  await open();
  for (const [url, init] of [
    ['/other/path', CALL],
    ['/v1/echo', { ...CALL, method: 'DELETE' }],
    ['/v1/hold', { ...CALL, tool: 'echo_only' }],
  ]) {
    const error = await refusal(client.fetch(url, init));
    assert.ok(error instanceof gv.PermissionDeniedError, `${init.method ?? 'GET'} ${url} (${init.tool}): ${error}`);
  }
  assert.equal((await vault.apiControl('/control/stats')).requests['/other/path'], undefined, 'the API was called');
});

test('a host outside the API bases is PERMISSION_DENIED', { skip }, async () => {
  await open();
  for (const url of [`https://localhost:${vault.apiPort}/v1/echo`, `https://127.0.0.2:${vault.apiPort}/v1/echo`, `https://127.0.0.1:${vault.apiPort + 1}/v1/echo`]) {
    const error = await refusal(client.fetch(url, CALL));
    assert.ok(error instanceof gv.PermissionDeniedError, `${url}: ${error}`);
  }
});

test('a redirect to another host is PERMISSION_DENIED', { skip }, async () => {
  await open();
  const echoes = async () => (await vault.apiControl('/control/stats')).requests['/v1/echo'] ?? 0;
  const before = await echoes();
  const to = `https://localhost:${vault.apiPort}/v1/echo`;
  const error = await refusal(client.fetch(`/v1/redirect?to=${encodeURIComponent(to)}`, CALL));
  assert.ok(error instanceof gv.PermissionDeniedError, String(error));
  assert.equal(await echoes(), before, 'the redirect was followed');
});

test('an answer over the size cap is RESOURCE_EXHAUSTED', { skip }, async () => {
  await open();
  const error = await refusal(client.fetch(`/v1/big?bytes=${OVERSIZED_BYTES}`, { ...CALL, deadlineMs: 60_000 }));
  assert.ok(error instanceof gv.ResourceExhaustedError, String(error));
});

test('aborting a call sends a CancelRequest: the daemon drops the API call', { skip }, async () => {
  await open();
  const controller = new AbortController();
  const call = client.fetch('/v1/hold', { ...CALL, signal: controller.signal });
  await waitFor(10_000, 'the API holding the call', async () => (await vault.apiControl('/control/held')).held === 1);
  controller.abort();
  await assert.rejects(call, { name: 'AbortError' });
  await waitFor(5_000, 'the API call dropped', async () => (await vault.apiControl('/control/held')).held === 0);
});

test('an API 401 makes exactly one refresh and one retry, which succeeds', { skip }, async () => {
  await open();
  const before = await currentToken();
  const refreshes = vault.refreshesServed();
  const response = await client.fetch('/v1/unauthorized-once?key=refresh-test', CALL);
  assert.equal(response.status, 200);
  const echo = await response.json();
  await sleep(500); // a second refresh, if any, would be logged by now
  assert.equal(vault.refreshesServed() - refreshes, 1, 'refresh_token grants at the provider');
  const after = await currentToken();
  assert.ok(!after.equals(before), 'the token did not change');
  assert.equal(echo.authorization_sha256, bearerHash(after));
});

test('429 or 503 with Retry-After: 2 is UNAVAILABLE with retryAfterMs 2000 and the upstream status', { skip }, async () => {
  await open();
  for (const [url, status] of [['/v1/limited', 429], ['/v1/limited?status=503', 503]]) {
    const error = await refusal(client.fetch(url, CALL));
    assert.ok(error instanceof gv.UnavailableError, `${url}: ${error}`);
    assert.equal(error.retryAfterMs, 2000);
    assert.equal(error.upstreamStatus, status);
  }
});

test('revocation ends 20 calls held open with REVOKED within one second; the next call is refused', { skip }, async () => {
  await open();
  const HELD = 20;
  // Half are waiting for the API's head, half are reading a body the API holds open.
  const calls = Array.from({ length: HELD }, (_, i) => client.fetch(`/v1/hold${i % 2 ? '?head=1' : ''}`, { ...CALL, deadlineMs: 60_000 }));
  const ends = calls.map((call) => call.then((r) => r.arrayBuffer()).then(() => ({ error: null, at: Date.now() }), (error) => ({ error, at: Date.now() })));
  await waitFor(15_000, `the API holding ${HELD} calls`, async () => (await vault.apiControl('/control/held')).held === HELD);
  const revokeStarted = Date.now();
  await vault.revoke('node proxy test');
  const revoked = Date.now();
  const results = await within(10_000, 'the held calls ending', Promise.all(ends));
  results.forEach(({ error, at }, i) => {
    assert.ok(error instanceof gv.RevokedError, `call ${i}: ${error}`);
    assert.ok(at - revoked <= 1000, `call ${i} ended ${at - revoked} ms after the revocation (the CLI took ${revoked - revokeStarted} ms)`);
  });
  const next = await refusal(client.fetch('/v1/echo', CALL));
  assert.ok(next instanceof gv.RevokedError, String(next));
  vault.grant = await vault.authorize();
});
