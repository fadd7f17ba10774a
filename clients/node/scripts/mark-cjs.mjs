#!/usr/bin/env node
// The package is "type": "module"; dist/cjs holds CommonJS output, so it gets
// its own package.json saying so (Node decides a .js file's format by the
// nearest package.json).
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
writeFileSync(join(pkg, 'dist', 'cjs', 'package.json'), '{"type": "commonjs"}\n');
