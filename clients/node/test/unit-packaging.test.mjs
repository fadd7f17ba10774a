// The published shape: the same API from import and require, with types for both.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import * as esm from '@grantvault/client';

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
