#!/usr/bin/env node
// A grant of the bench's own, outside grantvault, for bench/refresh_rtt (the
// provider's time per refresh as a bare client sees it): runs the
// authorization-code flow with PKCE against the demo provider as client
// CLIENT_ID (approve.mjs plays the user), exchanges the code, and writes the
// refresh token to --out (mode 0600). Prints the token endpoint on stdout.
//
//   node bench/reference_grant.mjs --issuer URL --ca CA.pem --client-id ID \
//       --client-secret-file FILE --user NAME --out FILE
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { basicAuth, form, request } from '../tests/provider/lib/https.mjs';

const { values: opts } = parseArgs({
  options: {
    issuer: { type: 'string' },
    ca: { type: 'string' },
    'client-id': { type: 'string' },
    'client-secret-file': { type: 'string' },
    user: { type: 'string', default: 'reference' },
    out: { type: 'string' },
  },
  strict: true,
});
for (const name of ['issuer', 'ca', 'client-id', 'client-secret-file', 'out']) {
  if (!opts[name]) {
    process.stderr.write(`reference_grant: --${name} is required\n`);
    process.exit(2);
  }
}
const here = dirname(fileURLToPath(import.meta.url));
const secret = readFileSync(opts['client-secret-file'], 'utf8').trim();
const redirectUri = 'http://127.0.0.1/callback';
const b64url = (buf) => buf.toString('base64url');

const discovery = (await request(`${opts.issuer}/.well-known/openid-configuration`,
  { ca: opts.ca })).json();
const verifier = b64url(randomBytes(32));
const url = new URL(discovery.authorization_endpoint);
url.search = form({
  response_type: 'code',
  client_id: opts['client-id'],
  redirect_uri: redirectUri,
  scope: 'openid offline_access read',
  prompt: 'consent',
  state: b64url(randomBytes(16)),
  code_challenge: b64url(createHash('sha256').update(verifier).digest()),
  code_challenge_method: 'S256',
});
const redirect = execFileSync(process.execPath,
  [join(here, '../tests/provider/approve.mjs'), '--ca', opts.ca, '--user', opts.user, url.href],
  { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
const code = new URL(redirect).searchParams.get('code');
if (!code) {
  process.stderr.write('reference_grant: the provider redirected without a code\n');
  process.exit(1);
}
const answer = await request(discovery.token_endpoint, {
  method: 'POST',
  ca: opts.ca,
  headers: {
    authorization: basicAuth(opts['client-id'], secret),
    'content-type': 'application/x-www-form-urlencoded',
  },
  body: form({
    grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier,
  }),
});
const tokens = answer.status === 200 ? answer.json() : {};
if (!tokens.refresh_token) {
  process.stderr.write(`reference_grant: the code exchange answered HTTP ${answer.status}\n`);
  process.exit(1);
}
writeFileSync(opts.out, tokens.refresh_token, { mode: 0o600 });
process.stdout.write(`${discovery.token_endpoint}\n`);
