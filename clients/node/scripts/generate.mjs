#!/usr/bin/env node
// Generates src/gen/ (TypeScript, @bufbuild/protobuf v2) from ../../proto with
// protoc (Debian's /usr/bin/protoc, or $PROTOC) and the locked
// @bufbuild/protoc-gen-es. The output is not committed: it is rebuilt by every
// `npm run build`, so it always matches the proto files of the same checkout.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
const protoRoot = join(pkg, '..', '..', 'proto');
const protoDir = join(protoRoot, 'grantvault', 'v1');
const out = join(pkg, 'src', 'gen');
const plugin = join(pkg, 'node_modules', '.bin', 'protoc-gen-es');
const protoc = process.env.PROTOC || '/usr/bin/protoc';

const files = readdirSync(protoDir).filter((f) => f.endsWith('.proto')).sort()
  .map((f) => join(protoDir, f));
if (files.length === 0) throw new Error(`no .proto files in ${protoDir}`);

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
execFileSync(protoc, [
  `--plugin=protoc-gen-es=${plugin}`,
  `--es_out=${out}`,
  '--es_opt=target=ts,import_extension=js',
  `--proto_path=${protoRoot}`,
  ...files,
], { stdio: 'inherit' });
