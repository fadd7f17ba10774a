// The client against a scripted peer (fake-daemon.mjs): Hello, refusals,
// pipelining with answers out of order, broken frames, deadlines, aborts,
// reconnects, subscriptions and the proxy's streamed answer.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import * as gv from '@grantvault/client';

import { FakeDaemon, frameOf } from './fake-daemon.mjs';
import { packageDir, sleep, waitFor, within } from './harness.mjs';

const { connect } = gv;
const Code = { INVALID_ARGUMENT: 1, PERMISSION_DENIED: 3, NOT_FOUND: 4, REVOKED: 5, UNAVAILABLE: 7, RESOURCE_EXHAUSTED: 9, CANCELLED: 13 };

function resolveReply(requestId, token) {
  return {
    requestId,
    body: {
      case: 'resolve',
      value: {
        accessToken: Buffer.from(token), tokenType: 'Bearer', expiresAtMs: 1_800_000_000_000n, grantId: 'gr_1',
        accountId: 'alice', scopes: ['read'], connectorType: 'oidc', metadata: { tenant: 't1' },
      },
    },
  };
}

async function withDaemon(options, body) {
  const daemon = await FakeDaemon.start(options);
  const clients = [];
  try {
    await within(20_000, 'test body', body(daemon, async (extra = {}) => {
      const client = await connect({ socketPath: daemon.socketPath, clientName: 'unit', ...extra });
      clients.push(client);
      return client;
    }));
  } finally {
    for (const client of clients) client.close();
    await daemon.stop();
  }
}

test('connect says Hello with the client name and resolve maps the reply', () => withDaemon({
  onRequest(request, peer) {
    if (request.body.case === 'resolve') peer.send(resolveReply(request.requestId, 'tok-1'));
  },
}, async (daemon, open) => {
  const client = await open();
  assert.equal(client.serverVersion, 'fake-1');
  const [hello] = daemon.received('hello');
  assert.deepEqual([hello.requestId, hello.body.value.protocolVersion, hello.body.value.clientName], [1n, 1, 'unit']);
  const token = await client.resolve({ workspace: 'ws', connector: 'demo', tool: 'read_profile', scopes: ['read'], minValidSeconds: 120, deadlineMs: 4000 });
  assert.deepEqual({ ...token, accessToken: token.accessToken.toString() }, {
    accessToken: 'tok-1', tokenType: 'Bearer', expiresAt: new Date(1_800_000_000_000), grantId: 'gr_1', accountId: 'alice',
    scopes: ['read'], connectorType: 'oidc', metadata: { tenant: 't1' },
  });
  const [sent] = daemon.received('resolve');
  assert.deepEqual(
    [sent.body.value.workspaceId, sent.body.value.connectorId, sent.body.value.tool, sent.body.value.scopes, sent.body.value.minValidSeconds],
    ['ws', 'demo', 'read_profile', ['read'], 120],
  );
  assert.ok(sent.deadlineMs > 3000 && sent.deadlineMs <= 4000, `deadline_ms ${sent.deadlineMs}`);
}));

test('the default client name carries the package\'s version', () => withDaemon({}, async (daemon) => {
  const client = await connect({ socketPath: daemon.socketPath });
  client.close();
  const { version } = JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8'));
  assert.equal(daemon.received('hello')[0].body.value.clientName, `grantvault-node/${version}`);
}));

test('a refusal at accept (request 0) rejects connect with its typed error', () => withDaemon({
  onConnect(peer) {
    peer.error(0n, Code.RESOURCE_EXHAUSTED, 'agent_max_connections_per_uid (2) reached', { retryAfterMs: 100 });
    peer.socket.end();
    return false;
  },
}, async (daemon) => {
  const error = await connect({ socketPath: daemon.socketPath }).then(() => null, (e) => e);
  assert.ok(error instanceof gv.ResourceExhaustedError, String(error));
  assert.equal(error.message, 'agent_max_connections_per_uid (2) reached');
  assert.equal(error.retryAfterMs, 100);
}));

test('an unreachable socket is UnavailableError', async () => {
  const error = await connect({ socketPath: '/nonexistent/agent.sock' }).then(() => null, (e) => e);
  assert.ok(error instanceof gv.UnavailableError);
  assert.match(error.message, /cannot reach grantvaultd at \/nonexistent\/agent\.sock: ENOENT/);
});

test('100 pipelined resolves answered in reverse order each get their own answer', () => {
  const held = [];
  return withDaemon({
    onRequest(request, peer) {
      if (request.body.case !== 'resolve') return;
      held.push([request, peer]);
      if (held.length === 100) {
        for (const [r, p] of held.reverse()) p.send(resolveReply(r.requestId, `tok-${r.body.value.workspaceId}`));
      }
    },
  }, async (daemon, open) => {
    const client = await open();
    const answers = await Promise.all(Array.from({ length: 100 }, (_, i) => client.resolve({ workspace: `w${i}`, connector: 'c' })));
    answers.forEach((a, i) => assert.equal(a.accessToken.toString(), `tok-w${i}`));
    assert.equal(daemon.connections, 1);
    assert.equal(new Set(daemon.received('resolve').map((r) => r.requestId)).size, 100);
  });
});

for (const [what, header] of [['0', [0, 0, 0, 0]], ['65,537', [0, 1, 0, 1]]]) {
  test(`a frame length of ${what} from the daemon breaks the connection; the next call reconnects`, () => withDaemon({
    onRequest(request, peer) {
      if (request.body.case !== 'resolve') return;
      if (request.body.value.workspaceId === 'bad') peer.socket.write(Buffer.from(header));
      else peer.send(resolveReply(request.requestId, 'tok'));
    },
  }, async (daemon, open) => {
    const client = await open();
    await client.resolve({ workspace: 'other', connector: 'c' });
    const error = await client.resolve({ workspace: 'bad', connector: 'c' }).then(() => null, (e) => e);
    assert.ok(error instanceof gv.UnavailableError, String(error));
    assert.match(error.message, new RegExp(`grantvaultd sent a frame length of ${header.reduce((n, b) => n * 256 + b, 0)} \\(allowed: 1 to 65536\\); connection closed`));
    assert.equal((await client.resolve({ workspace: 'again', connector: 'c' })).accessToken.toString(), 'tok');
    assert.equal(daemon.connections, 2);
    assert.equal(daemon.received('hello').length, 2);
  }));
}

test('an answer written a byte at a time is put together', () => withDaemon({
  async onRequest(request, peer) {
    if (request.body.case !== 'resolve') return;
    const frame = frameOf(resolveReply(request.requestId, 'slow-token'));
    for (const byte of frame) {
      peer.socket.write(Buffer.of(byte));
      await sleep(1);
    }
  },
}, async (daemon, open) => {
  const client = await open();
  assert.equal((await client.resolve({ workspace: 'w', connector: 'c' })).accessToken.toString(), 'slow-token');
}));

test('the local deadline rejects, sends a CancelRequest and leaves the connection usable', () => withDaemon({
  onRequest(request, peer) {
    if (request.body.case === 'resolve' && request.body.value.workspaceId === 'fast') peer.send(resolveReply(request.requestId, 'tok'));
  },
}, async (daemon, open) => {
  const client = await open();
  const started = Date.now();
  const error = await client.resolve({ workspace: 'stall', connector: 'c', deadlineMs: 300 }).then(() => null, (e) => e);
  const took = Date.now() - started;
  assert.ok(error instanceof gv.DeadlineExceededError, String(error));
  assert.ok(took >= 290 && took < 2000, `took ${took} ms`);
  const stalled = daemon.received('resolve')[0];
  assert.ok(stalled.deadlineMs > 0 && stalled.deadlineMs <= 300);
  await waitFor(2000, 'CancelRequest', () => daemon.received('cancel').length === 1);
  assert.equal(daemon.received('cancel')[0].body.value.targetRequestId, stalled.requestId);
  // A late answer to the abandoned request is dropped, and the next call works.
  [...daemon.peers][0].send(resolveReply(stalled.requestId, 'late'));
  assert.equal((await client.resolve({ workspace: 'fast', connector: 'c' })).accessToken.toString(), 'tok');
}));

test('an abort signal rejects with its reason and sends a CancelRequest', () => withDaemon({}, async (daemon, open) => {
  const client = await open();
  const controller = new AbortController();
  const pending = client.resolve({ workspace: 'w', connector: 'c', signal: controller.signal });
  await waitFor(2000, 'resolve sent', () => daemon.received('resolve').length === 1);
  controller.abort();
  await assert.rejects(pending, { name: 'AbortError' });
  await waitFor(2000, 'CancelRequest', () => daemon.received('cancel').length === 1);
  await assert.rejects(client.resolve({ workspace: 'w', connector: 'c', signal: AbortSignal.abort(new Error('before')) }), /before/);
  assert.equal(daemon.received('resolve').length, 1);
}));

test('calls in flight fail UNAVAILABLE when the connection breaks; the next call reconnects and says Hello again', () => withDaemon({
  onRequest(request, peer) {
    if (request.body.case !== 'resolve') return;
    if (request.body.value.workspaceId === 'drop') setTimeout(() => peer.socket.destroy(), 50);
    else peer.send(resolveReply(request.requestId, 'tok'));
  },
}, async (daemon, open) => {
  const client = await open();
  const waiting = [client.resolve({ workspace: 'drop', connector: 'c' }), client.resolve({ workspace: 'drop', connector: 'c' })];
  for (const result of await Promise.allSettled(waiting)) {
    assert.ok(result.reason instanceof gv.UnavailableError, String(result.reason));
    assert.match(result.reason.message, /closed/);
  }
  assert.equal((await client.resolve({ workspace: 'ok', connector: 'c' })).accessToken.toString(), 'tok');
  assert.equal(daemon.received('hello').length, 2);

  const once = await open({ reconnect: false });
  await assert.rejects(once.resolve({ workspace: 'drop', connector: 'c' }), gv.UnavailableError);
  await assert.rejects(once.resolve({ workspace: 'ok', connector: 'c' }), /reconnect is off/);
}));

test('close() fails calls in flight with CancelledError and later calls with FailedPreconditionError', () => withDaemon({}, async (daemon, open) => {
  const client = await open();
  const pending = client.resolve({ workspace: 'w', connector: 'c' });
  await waitFor(2000, 'resolve sent', () => daemon.received('resolve').length === 1);
  client.close();
  await assert.rejects(pending, gv.CancelledError);
  await assert.rejects(client.resolve({ workspace: 'w', connector: 'c' }), gv.FailedPreconditionError);
}));

test('invalid arguments are refused before anything is sent', () => withDaemon({}, async (daemon, open) => {
  const client = await open();
  await assert.rejects(client.resolve({ workspace: '', connector: 'c' }), gv.InvalidArgumentError);
  await assert.rejects(client.resolve({ workspace: 'w', connector: 'c', deadlineMs: 0 }), gv.InvalidArgumentError);
  await assert.rejects(client.subscribe(''), gv.InvalidArgumentError);
  await assert.rejects(client.resolve({ workspace: 'w', connector: 'c', minValidSeconds: -1 }), gv.InvalidArgumentError);
  await assert.rejects(client.resolve({ workspace: 'w', connector: 'c', scopes: ['read', ''] }), gv.InvalidArgumentError);
  assert.equal(daemon.requests.length, 1); // Hello
}));

function grantEvent(requestId, kind, extra = {}) {
  return { requestId, more: true, body: { case: 'grantEvent', value: { kind, workspaceId: 'ws', ...extra } } };
}

test('subscribe resolves on SUBSCRIBED, yields events, and leaving the loop sends a CancelRequest', () => withDaemon({
  onRequest(request, peer) {
    if (request.body.case !== 'subscribe') return;
    peer.send(grantEvent(request.requestId, 1));
    setTimeout(() => {
      peer.send(grantEvent(request.requestId, 2, { connectorId: 'demo', grantId: 'gr_2', accountId: 'alice', atMs: 1_700_000_000_000n, replacedGrantId: 'gr_1' }));
      peer.send(grantEvent(request.requestId, 3, { connectorId: 'demo', grantId: 'gr_2', reason: 'offboarding', atMs: 1_700_000_000_500n }));
      peer.send(grantEvent(request.requestId, 4, { grantId: 'gr_3' }));
    }, 20);
  },
}, async (daemon, open) => {
  const client = await open();
  const stream = await client.subscribe('ws');
  const seen = [];
  for await (const event of stream) {
    seen.push(event);
    if (seen.length === 2) break;
  }
  assert.deepEqual(seen, [
    { kind: 'authorized', workspaceId: 'ws', connectorId: 'demo', grantId: 'gr_2', accountId: 'alice', reason: '', at: new Date(1_700_000_000_000), replacedGrantId: 'gr_1' },
    { kind: 'revoked', workspaceId: 'ws', connectorId: 'demo', grantId: 'gr_2', accountId: '', reason: 'offboarding', at: new Date(1_700_000_000_500), replacedGrantId: '' },
  ]);
  await waitFor(2000, 'CancelRequest', () => daemon.received('cancel').length === 1);
  assert.equal(daemon.received('cancel')[0].body.value.targetRequestId, daemon.received('subscribe')[0].requestId);
  assert.deepEqual(await stream.next(), { value: undefined, done: true });
}));

test('a refused subscription rejects; a stream ended by the daemon or a lost connection throws from the loop', () => withDaemon({
  onRequest(request, peer) {
    if (request.body.case !== 'subscribe') return;
    const ws = request.body.value.workspaceId;
    if (ws === 'denied') {
      peer.error(request.requestId, Code.PERMISSION_DENIED, "workspace 'denied' is not allowed");
    } else {
      peer.send(grantEvent(request.requestId, 1));
      peer.send(grantEvent(request.requestId, 3, { grantId: 'gr_9' }));
      if (ws === 'ends') peer.error(request.requestId, Code.PERMISSION_DENIED, 'policy reloaded');
      else setTimeout(() => peer.socket.destroy(), 30);
    }
  },
}, async (daemon, open) => {
  const client = await open();
  await assert.rejects(client.subscribe('denied'), gv.PermissionDeniedError);
  for (const [ws, ErrorClass] of [['ends', gv.PermissionDeniedError], ['lost', gv.UnavailableError]]) {
    const stream = await client.subscribe(ws);
    const kinds = [];
    await assert.rejects((async () => { for await (const e of stream) kinds.push(e.kind); })(), ErrorClass);
    assert.deepEqual(kinds, ['revoked'], ws);
  }
}));

test('a subscription whose reader falls 1,024 events behind ends with ResourceExhaustedError', () => withDaemon({
  onRequest(request, peer) {
    if (request.body.case !== 'subscribe') return;
    peer.send(grantEvent(request.requestId, 1));
    for (let i = 0; i < 1100; i++) peer.send(grantEvent(request.requestId, 3, { grantId: `gr_${i}` }));
  },
}, async (daemon, open) => {
  const client = await open();
  const stream = await client.subscribe('ws');
  await waitFor(5000, 'CancelRequest', () => daemon.received('cancel').length === 1);
  const seen = [];
  await assert.rejects((async () => { for await (const e of stream) seen.push(e.grantId); })(), gv.ResourceExhaustedError);
  assert.equal(seen.length, 1024);
  assert.equal(seen.at(-1), 'gr_1023');
}));

function proxyHead(requestId, status, headers = []) {
  return { requestId, more: true, body: { case: 'proxyHead', value: { status, headers, grantId: 'gr_1', accountId: 'alice' } } };
}
const proxyBody = (requestId, text) => ({ requestId, more: true, body: { case: 'proxyBody', value: { data: Buffer.from(text) } } });
const proxyEnd = (requestId, n) => ({ requestId, body: { case: 'proxyEnd', value: { bodyBytes: BigInt(n) } } });
const FETCH = { workspace: 'ws', connector: 'demo', tool: 'call_api' };

test('fetch sends the call and streams the answer into a standard Response', () => withDaemon({
  onRequest(request, peer) {
    if (request.body.case !== 'proxy') return;
    const id = request.requestId;
    peer.send(proxyHead(id, 201, [{ name: 'Content-Type', value: 'application/json' }, { name: 'x-multi', value: 'a' }, { name: 'x-multi', value: 'b' }]));
    const parts = ['{"ok":', 'true', '}'];
    parts.forEach((p, i) => setTimeout(() => peer.send(proxyBody(id, p)), 10 * (i + 1)));
    setTimeout(() => peer.send(proxyEnd(id, 11)), 50);
  },
}, async (daemon, open) => {
  const client = await open();
  const response = await client.fetch('/v1/things?x=1', {
    ...FETCH, method: 'post', headers: { 'X-Trace': 't1' }, body: new URLSearchParams({ a: '1 2' }), scopes: ['write'],
  });
  assert.ok(response instanceof Response);
  assert.equal(response.status, 201);
  assert.equal(response.headers.get('content-type'), 'application/json');
  assert.equal(response.headers.get('x-multi'), 'a, b');
  assert.deepEqual(await response.json(), { ok: true });
  const [sent] = daemon.received('proxy');
  const call = sent.body.value;
  assert.deepEqual({ ...call, $typeName: undefined, body: Buffer.from(call.body).toString(), headers: call.headers.map((h) => [h.name, h.value]) }, {
    $typeName: undefined, workspaceId: 'ws', connectorId: 'demo', tool: 'call_api', method: 'POST', url: '/v1/things?x=1',
    headers: [['content-type', 'application/x-www-form-urlencoded;charset=UTF-8'], ['x-trace', 't1']],
    body: 'a=1+2', scopes: ['write'],
  });
}));

test('fetch: an Error before the head rejects typed; one after the head errors the body', () => withDaemon({
  onRequest(request, peer) {
    if (request.body.case !== 'proxy') return;
    const id = request.requestId;
    if (request.body.value.url.endsWith('limited')) {
      peer.error(id, Code.UNAVAILABLE, 'the API answered 429', { retryAfterMs: 2000, upstreamStatus: 429 });
    } else {
      peer.send(proxyHead(id, 200));
      peer.send(proxyBody(id, 'first part'));
      setTimeout(() => peer.error(id, Code.REVOKED, 'the grant was revoked'), 20);
    }
  },
}, async (daemon, open) => {
  const client = await open();
  const limited = await client.fetch('https://api.example.test/v1/limited', FETCH).then(() => null, (e) => e);
  assert.ok(limited instanceof gv.UnavailableError);
  assert.deepEqual([limited.retryAfterMs, limited.upstreamStatus], [2000, 429]);
  const response = await client.fetch('/v1/hold', FETCH);
  assert.equal(response.status, 200);
  const reader = response.body.getReader();
  assert.equal(Buffer.from((await reader.read()).value).toString(), 'first part');
  await assert.rejects(reader.read(), gv.RevokedError);
}));

test('fetch: aborting after the head errors the body and sends a CancelRequest', () => withDaemon({
  onRequest(request, peer) {
    if (request.body.case === 'proxy') peer.send(proxyHead(request.requestId, 200));
  },
}, async (daemon, open) => {
  const client = await open();
  const controller = new AbortController();
  const response = await client.fetch('/v1/hold', { ...FETCH, signal: controller.signal });
  const text = response.text();
  controller.abort();
  await assert.rejects(text, { name: 'AbortError' });
  await waitFor(2000, 'CancelRequest', () => daemon.received('cancel').length === 1);
  assert.equal(daemon.received('cancel')[0].body.value.targetRequestId, daemon.received('proxy')[0].requestId);
}));

test('fetch: cancelling the body sends a CancelRequest; a 204 has a null body', () => withDaemon({
  onRequest(request, peer) {
    if (request.body.case !== 'proxy') return;
    if (request.body.value.url === '/v1/empty') {
      peer.send(proxyHead(request.requestId, 204));
      peer.send(proxyEnd(request.requestId, 0));
    } else {
      peer.send(proxyHead(request.requestId, 200));
      peer.send(proxyBody(request.requestId, 'x'));
    }
  },
}, async (daemon, open) => {
  const client = await open();
  const empty = await client.fetch('/v1/empty', { ...FETCH, method: 'DELETE' });
  assert.equal(empty.status, 204);
  assert.equal(empty.body, null);
  const response = await client.fetch('/v1/stream', FETCH);
  await response.body.cancel();
  await waitFor(2000, 'CancelRequest', () => daemon.received('cancel').length === 1);
}));

test('fetch refuses, before sending, a body that does not fit one frame and malformed calls', () => withDaemon({}, async (daemon, open) => {
  const client = await open();
  await assert.rejects(client.fetch('/v1/echo', { ...FETCH, method: 'POST', body: Buffer.alloc(gv.MAX_PROXY_BODY_BYTES + 1) }),
    (e) => e instanceof gv.ResourceExhaustedError && e.message === 'the request body is 61441 bytes; a proxied call carries at most 61440 (it must fit one frame)');
  // A body within the cap, with headers that make the request too large for a frame.
  await assert.rejects(client.fetch('/v1/echo', { ...FETCH, method: 'POST', body: Buffer.alloc(gv.MAX_PROXY_BODY_BYTES), headers: { 'x-big': 'y'.repeat(5000) } }),
    (e) => e instanceof gv.ResourceExhaustedError && /the request takes \d+ bytes, more than one frame carries \(65536\)/.test(e.message));
  await assert.rejects(client.fetch('/v1/echo', { ...FETCH, body: 'x' }), /a GET request cannot have a body/);
  await assert.rejects(client.fetch('http://api.example.test/v1', FETCH), /must be https/);
  await assert.rejects(client.fetch('v1/echo', FETCH), /absolute https URL or a path/);
  await assert.rejects(client.fetch('/v1/echo', { ...FETCH, tool: '' }), /init\.tool must be a non-empty string/);
  await assert.rejects(client.fetch('/v1/echo', { ...FETCH, method: 'CONNECT' }), /not allowed/);
  await assert.rejects(client.fetch('/v1/echo', { ...FETCH, headers: { 'x-api-key': 'sk-secret\r\nx-injected: 1' } }),
    (e) => e instanceof gv.InvalidArgumentError && !e.message.includes('sk-secret'));
  await assert.rejects(client.fetch('/v1/echo', { ...FETCH, method: 'POST', body: new ReadableStream() }), /must be a string, Buffer/);
  assert.equal(daemon.requests.length, 1); // Hello
  // A body at the limit is sent.
  const sent = client.fetch('/v1/echo', { ...FETCH, method: 'POST', body: Buffer.alloc(gv.MAX_PROXY_BODY_BYTES) }).catch(() => {});
  await waitFor(2000, 'proxy sent', () => daemon.received('proxy').length === 1);
  assert.equal(daemon.received('proxy')[0].body.value.body.length, gv.MAX_PROXY_BODY_BYTES);
  client.close();
  await sent;
}));
