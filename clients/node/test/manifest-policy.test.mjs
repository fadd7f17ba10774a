// The manifest JSON of grantvault-manifest is what the daemon's policy imports:
// checked with the real `grantvault policy check` (offline; no daemon needed).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';

import { ManifestError, validateManifest } from '@grantvault/client';

import { grantvaultCli, packageDir, runAsync } from './harness.mjs';

const skip = existsSync(grantvaultCli) ? false : `${grantvaultCli} is missing`;
const dir = mkdtempSync(join(tmpdir(), 'gv-manifest-policy-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function policyImporting(manifestJson) {
  writeFileSync(join(dir, 'bot.json'), manifestJson, { mode: 0o644 });
  const policy = join(dir, 'policy.toml');
  writeFileSync(policy, `[[callers]]\nuid = ${process.getuid()}\nrole = "agent"\nworkspaces = ["acme"]\n\n`
    + '[workspaces.acme]\nmanifests = ["bot.json"]\n', { mode: 0o644 });
  return policy;
}

test('the daemon\'s policy imports what grantvault-manifest prints, http limits included', { skip }, async () => {
  const manifest = join(dir, 'bot.ts');
  writeFileSync(manifest, `export const manifest = {
  tools: [
    { name: "send_email", connector: "google_workspace", scopes: ["gmail.send"], http: ["POST /gmail/v1/users/me/messages/send"] },
    { name: "read_things", connector: "demo", scopes: ["read"], http: ["GET /v1/things/", "* /v1/echo"] },
    { name: "read_profile", connector: "demo", scopes: ["read", "openid"] },
  ],
};
`);
  const json = execFileSync(process.execPath, [join(packageDir, 'bin', 'grantvault-manifest.mjs'), manifest], { encoding: 'utf8' });
  const check = await runAsync(grantvaultCli, ['--json', 'policy', 'check', policyImporting(json)]);
  assert.equal(check.code, 0, check.stderr);
  assert.deepEqual(JSON.parse(check.stdout), { valid: true, callers: 1, workspaces: 1, tools: 3 });
});

test('the policy refuses a manifest tool whose http entry breaks the form grantvault-manifest enforces', { skip }, async () => {
  const check = await runAsync(grantvaultCli, ['policy', 'check', policyImporting(
    '{"tools":[{"name":"t","connector":"demo","scopes":["read"],"http":["GET v1/no-slash"]}]}',
  )]);
  assert.equal(check.code, 2, check.stdout + check.stderr);
  assert.match(check.stderr, /bot\.json/);
});

// Entries the daemon accepts and refuses; the client must judge each the same way, so that
// grantvault-manifest catches (with line and column) what the policy would refuse.
const HTTP_ENTRIES = [
  'GET /v1', 'GET /v1/', '* /', 'PATCH /gmail/v1/users/me/messages', 'POST /v1/%41x', 'DELETE /a-b_c.d~e/f',
  'get /v1', 'G-T /v1', 'GET  /v1', 'GET v1', 'GET', 'GET /v1?x=1', 'GET /v1#f', 'GET /v 1', 'GET /v1/é', 'GET /v1/a\\b',
  'GET /v1//x', 'GET /v1/./x', 'GET /v1/../x', 'GET /.', 'GET /v1/%2e/x', 'GET /v1/%2F', 'GET /v1/%5c',
  'GET /v1/%20x', 'GET /r%C3%A9sum%C3%A9', 'GET /v1/..;/x', 'GET /v1;x=1', 'GET /%252e/x', 'GET /v1%00',
  'GET /%c0%ae/x', 'GET /v1%', 'GET /v1%2', 'GET /v1%zz', 'GET /v1/%7E',
];

test('the client and the daemon\'s policy accept and refuse the same http entries', { skip }, async () => {
  for (const entry of HTTP_ENTRIES) {
    const manifest = { tools: [{ name: 't', connector: 'demo', scopes: ['read'], http: [entry] }] };
    const daemon = await runAsync(grantvaultCli, ['policy', 'check', policyImporting(JSON.stringify(manifest))]);
    assert.ok(daemon.code === 0 || daemon.code === 2, `${entry}: exit ${daemon.code} ${daemon.stderr}`);
    let clientAccepts = true;
    try {
      validateManifest(manifest);
    } catch (e) {
      assert.ok(e instanceof ManifestError);
      clientAccepts = false;
    }
    assert.equal(clientAccepts, daemon.code === 0, `"${entry}": the daemon ${daemon.code === 0 ? 'accepts' : `refuses (${daemon.stderr.trim()})`}, the client ${clientAccepts ? 'accepts' : 'refuses'}`);
  }
});
