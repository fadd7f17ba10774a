// The client against the real grantvaultd (SoftHSM2 token, SQLite store) and
// the real oidc-provider: see harness.mjs.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { after, afterEach, before, test } from 'node:test';

import * as gv from '@grantvault/client';

import { CONNECTOR, missingPrerequisite, sleep, Vault, waitFor, WORKSPACE, within } from './harness.mjs';

const skip = missingPrerequisite() ?? false;
const MAX_CONNECTIONS_PER_UID = 4;
let vault;
const clients = [];

async function open(options = {}) {
  const client = await gv.connect({ socketPath: vault.agentSocket, clientName: 'node-test', ...options });
  clients.push(client);
  return client;
}
function closeAll() {
  for (const client of clients.splice(0)) client.close();
}
const READ = { workspace: WORKSPACE, connector: CONNECTOR, tool: 'read_profile' };

before(async () => {
  if (skip) return;
  vault = await Vault.start({ extraConfig: `[limits]\nagent_max_connections_per_uid = ${MAX_CONNECTIONS_PER_UID}\n` });
});
// Each test's clients are closed after it, passed or failed, so that none holds connections
// another test counts on.
afterEach(closeAll);
after(async () => {
  closeAll();
  await vault?.stop();
});

test('connect says Hello; resolve returns the grant\'s token', { skip }, async () => {
  const client = await open();
  assert.match(client.serverVersion, /^\d+\.\d+\.\d+/);
  const token = await client.resolve(READ);
  assert.ok(token.accessToken.length >= 16);
  assert.equal(token.tokenType, 'Bearer');
  assert.equal(token.grantId, vault.grant);
  assert.equal(token.accountId, 'alice');
  assert.equal(token.connectorType, 'oidc');
  assert.ok(token.scopes.includes('read'), token.scopes.join(' '));
  assert.ok(token.expiresAt instanceof Date && token.expiresAt > new Date(), String(token.expiresAt));
  // The same token as the CLI's resolve (which asks agent.sock the same way) reports.
  const cli = await vault.cli(['--json', 'resolve', '--workspace', WORKSPACE, '--connector', CONNECTOR, '--tool', 'read_profile']);
  assert.equal(cli.code, 0, cli.stderr);
  assert.equal(JSON.parse(cli.stdout).access_token_length, token.accessToken.length);
});

test('an unknown connector, workspace or tool is refused with the daemon\'s typed error', { skip }, async () => {
  const client = await open();
  const refusal = (request) => client.resolve(request).then(() => assert.fail('resolved'), (e) => e);
  // The grant is looked up before the tool is checked against the connector (docs/protocol.md).
  const noGrant = await refusal({ ...READ, connector: 'no_such_connector' });
  assert.ok(noGrant instanceof gv.NotFoundError, String(noGrant));
  assert.equal(noGrant.code, 'NOT_FOUND');
  assert.equal(noGrant.codeNumber, 4);
  assert.match(noGrant.message, /has no grant for connector 'no_such_connector'/);
  const otherWorkspace = await refusal({ ...READ, workspace: 'ws_other' });
  assert.ok(otherWorkspace instanceof gv.PermissionDeniedError, String(otherWorkspace));
  assert.match(otherWorkspace.message, /ws_other/);
  const undeclaredTool = await refusal({ ...READ, tool: 'no_such_tool' });
  assert.ok(undeclaredTool instanceof gv.PermissionDeniedError, String(undeclaredTool));
  const widerScope = await refusal({ ...READ, scopes: ['admin'] });
  assert.ok(widerScope instanceof gv.PermissionDeniedError, String(widerScope));
  // Refusals leave the connection usable.
  assert.equal((await client.resolve(READ)).grantId, vault.grant);
});

test('100 resolves pipelined on one connection', { skip }, async () => {
  const client = await open();
  await client.resolve(READ);
  const before = await openConnections();
  const answers = await within(20_000, '100 resolves', Promise.all(Array.from({ length: 100 }, () => client.resolve(READ))));
  const first = answers[0].accessToken;
  for (const answer of answers) {
    assert.equal(answer.grantId, vault.grant);
    assert.ok(answer.accessToken.equals(first));
  }
  assert.equal(await openConnections(), before, 'the resolves opened connections of their own');
});

// The state letter (R, S, T, …) of each thread of a process.
function threadStates(pid) {
  const tasks = readdirSync(`/proc/${pid}/task`);
  return tasks.map((tid) => {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  });
}

async function openConnections() {
  const status = await vault.cli(['--json', 'status']);
  assert.equal(status.code, 0, status.stderr);
  return JSON.parse(status.stdout).open_connections;
}

test('a call past its deadline fails DEADLINE_EXCEEDED locally; the connection stays usable', { skip }, async () => {
  const client = await open();
  await client.resolve(READ);
  vault.daemon.process.kill('SIGSTOP');
  let error;
  await waitFor(5_000, 'grantvaultd stopped', () => threadStates(vault.daemon.process.pid).every((s) => s === 'T'));
  const started = Date.now();
  try {
    error = await client.resolve({ ...READ, deadlineMs: 500 }).then(() => null, (e) => e);
  } finally {
    vault.daemon.process.kill('SIGCONT');
  }
  const took = Date.now() - started;
  assert.ok(error instanceof gv.DeadlineExceededError, String(error));
  assert.ok(took >= 480 && took < 3000, `took ${took} ms`);
  assert.equal((await client.resolve({ ...READ, deadlineMs: 10_000 })).grantId, vault.grant);
});

test(`a connection past agent_max_connections_per_uid (${MAX_CONNECTIONS_PER_UID}) is refused RESOURCE_EXHAUSTED at connect`, { skip }, async () => {
  for (let i = 0; i < MAX_CONNECTIONS_PER_UID; i++) await open();
  const error = await gv.connect({ socketPath: vault.agentSocket }).then((c) => { c.close(); return null; }, (e) => e);
  assert.ok(error instanceof gv.ResourceExhaustedError, String(error));
  assert.match(error.message, new RegExp(`limit per uid is ${MAX_CONNECTIONS_PER_UID}`));
  closeAll();
  // Once they are closed, connections are accepted again.
  const again = await within(10_000, 'connect after closing', (async () => {
    for (;;) {
      try {
        return await open();
      } catch (e) {
        if (!(e instanceof gv.ResourceExhaustedError)) throw e;
        await sleep(50);
      }
    }
  })());
  assert.equal((await again.resolve(READ)).grantId, vault.grant);
});

test('subscribe receives REVOKED after `grantvault revoke`, then AUTHORIZED after a new authorization', { skip }, async () => {
  const client = await open();
  const stream = await client.subscribe(WORKSPACE);
  const events = stream[Symbol.asyncIterator]();
  const revokedGrant = vault.grant;
  await vault.revoke('node client subscribe test');
  const revoked = await within(5_000, 'REVOKED event', events.next());
  assert.equal(revoked.done, false);
  assert.deepEqual({ ...revoked.value, at: null }, {
    kind: 'revoked', workspaceId: WORKSPACE, connectorId: CONNECTOR, grantId: revokedGrant, accountId: 'alice',
    reason: revoked.value.reason, at: null, replacedGrantId: '',
  });
  assert.match(revoked.value.reason, /node client subscribe test/);
  assert.ok(Math.abs(revoked.value.at - Date.now()) < 60_000, String(revoked.value.at));
  await assert.rejects(client.resolve(READ), gv.RevokedError);

  vault.grant = await vault.authorize();
  const authorized = await within(5_000, 'AUTHORIZED event', events.next());
  assert.equal(authorized.value.kind, 'authorized');
  assert.equal(authorized.value.grantId, vault.grant);
  assert.equal((await client.resolve(READ)).grantId, vault.grant);
  stream.close();
});

test('after the daemon restarts, calls in flight fail UNAVAILABLE and the next call reconnects', { skip }, async () => {
  const client = await open();
  const once = await open({ reconnect: false });
  const stream = await client.subscribe(WORKSPACE);
  const ended = (async () => {
    for await (const event of stream) assert.fail(`unexpected event ${event.kind}`);
  })().then(() => null, (e) => e);
  await vault.restartDaemon();
  const end = await within(10_000, 'subscription end', ended);
  assert.ok(end instanceof gv.UnavailableError, String(end));
  const token = await client.resolve(READ);
  assert.equal(token.grantId, vault.grant);
  await assert.rejects(once.resolve(READ), gv.UnavailableError);
});
