// grantvault-manifest FILE: prints the JSON the daemon's policy imports for an
// agent manifest (docs/clients.md). Exit 0 with the JSON on stdout; 1 with
// the reason on stderr; 2 on a usage error.

import { loadManifest, ManifestError, manifestToPolicyJson } from './manifest.js';

const USAGE = 'usage: grantvault-manifest MANIFEST.ts   (prints the policy JSON of an agent manifest)';

export async function main(args: readonly string[]): Promise<number> {
  if (args.length === 1 && (args[0] === '--help' || args[0] === '-h')) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const [file] = args;
  if (args.length !== 1 || file === undefined || file.startsWith('-')) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  try {
    process.stdout.write(`${manifestToPolicyJson(await loadManifest(file))}\n`);
    return 0;
  } catch (e) {
    if (!(e instanceof ManifestError)) throw e;
    process.stderr.write(`grantvault-manifest: ${e.message}\n`);
    return 1;
  }
}
