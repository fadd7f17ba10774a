// The published shape: the same API from import and require, with types for both.
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import * as esm from '@grantvault/client';

import { FakeDaemon } from './fake-daemon.mjs';
import { packageDir } from './harness.mjs';

test('require() and import give the same API', () => {
  const names = execFileSync(process.execPath, ['-e', `
    const gv = require('@grantvault/client');
    const e = new gv.RevokedError('x');
    if (!(e instanceof gv.GrantvaultError) || e.code !== 'REVOKED') process.exit(1);
    if (gv.parseManifest('export const manifest = { tools: [] };').tools.length !== 0) process.exit(1);
    console.log(Object.keys(gv).sort().join(','));`], { cwd: packageDir, encoding: 'utf8' }).trim();
  assert.equal(names, Object.keys(esm).sort().join(','));
  for (const name of ['connect', 'Client', 'GrantvaultError', 'RevokedError', 'loadManifest', 'manifestToPolicyJson']) {
    assert.ok(names.split(',').includes(name), name);
  }
});

test('type declarations exist for both module formats', () => {
  for (const file of ['dist/esm/index.d.ts', 'dist/cjs/index.d.ts', 'dist/esm/client.d.ts', 'dist/cjs/package.json']) {
    assert.ok(existsSync(join(packageDir, file)), file);
  }
});

test('the declarations type-check an agent host written in strict TypeScript, as ESM and as CommonJS', () => {
  const tsc = join(packageDir, 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', join(packageDir, 'test', 'types', 'tsconfig.json')], { cwd: packageDir, encoding: 'utf8' });
});

test('the CommonJS build speaks the protocol: a resolve from a require()d client', async () => {
  const daemon = await FakeDaemon.start({
    onRequest(request, peer) {
      if (request.body.case !== 'resolve') return;
      peer.send({ requestId: request.requestId, body: { case: 'resolve', value: { accessToken: Buffer.from('cjs-token'), grantId: 'gr_cjs' } } });
    },
  });
  try {
    const { stdout } = await promisify(execFile)(process.execPath, ['-e', `
      const { connect } = require('@grantvault/client');
      connect({ socketPath: ${JSON.stringify(daemon.socketPath)} })
        .then(async (c) => { const t = await c.resolve({ workspace: 'w', connector: 'c' }); c.close(); console.log(t.grantId, t.accessToken.length); })
        .catch((e) => { console.error(e); process.exit(1); });`], { cwd: packageDir, timeout: 10_000 });
    assert.equal(stdout.trim(), 'gr_cjs 9');
  } finally {
    await daemon.stop();
  }
});
