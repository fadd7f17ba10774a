#!/usr/bin/env node
// Plays the user at the local provider's login and consent pages
// (devInteractions): follows an authorization URL with a cookie jar, signs in,
// approves (or, with --deny, cancels) and stops at the redirect back to the
// client, which it prints on stdout without fetching it:
//   http://127.0.0.1:PORT/callback?code=…&state=…&iss=…      (approved)
//   http://127.0.0.1:PORT/callback?error=access_denied&…     (--deny)
//
//   node approve.mjs [--user NAME] [--password PW] [--ca CA.pem] [--deny] URL
//
// --user is the account (it becomes the token's sub; default "alice"); any
// password is accepted. --ca (or GV_PROVIDER_CA) is the certificate the
// provider's TLS certificate must chain to. Exit 0 with the URL on stdout, 1
// with a reason on stderr (an error page, an unexpected response, a timeout).
import { parseArgs } from 'node:util';

import { request } from './lib/https.mjs';

const { values: opts, positionals } = parseArgs({
  options: {
    user: { type: 'string', default: 'alice' },
    password: { type: 'string', default: 'any-password' },
    ca: { type: 'string' },
    deny: { type: 'boolean', default: false },
    'timeout-ms': { type: 'string', default: '10000' },
  },
  allowPositionals: true,
  strict: true,
});

function die(message) {
  process.stderr.write(`approve: ${message}\n`);
  process.exit(1);
}

if (positionals.length !== 1) die('usage: approve.mjs [--user NAME] [--password PW] [--ca CA.pem] [--deny] URL');
const ca = opts.ca ?? process.env.GV_PROVIDER_CA;
const startUrl = new URL(positionals[0]);
const providerOrigin = startUrl.origin;
const deadline = Date.now() + Number(opts['timeout-ms']);

// A small RFC 6265 cookie jar: name → {value, path, expires}; one host only.
const jar = new Map();
function storeCookies(setCookies = [], requestPath = '/') {
  for (const line of setCookies) {
    const [pair, ...attrs] = line.split(';');
    const eq = pair.indexOf('=');
    if (eq <= 0) continue;
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    let path = requestPath.replace(/\/[^/]*$/, '') || '/';
    let expires = Infinity;
    for (const attr of attrs) {
      const [k, ...rest] = attr.split('=');
      const key = k.trim().toLowerCase();
      const v = rest.join('=').trim();
      if (key === 'path' && v.startsWith('/')) path = v;
      else if (key === 'max-age') expires = Date.now() + Number(v) * 1000;
      else if (key === 'expires' && expires === Infinity) expires = Date.parse(v);
    }
    const id = `${name} ${path}`;
    if (!(expires > Date.now())) jar.delete(id);
    else jar.set(id, { name, value, path, expires });
  }
}
function cookieHeader(path) {
  const now = Date.now();
  const matches = (cookiePath) => path === cookiePath
    || (path.startsWith(cookiePath) && (cookiePath.endsWith('/') || path[cookiePath.length] === '/'));
  return [...jar.values()]
    .filter((c) => c.expires > now && matches(c.path))
    .sort((a, b) => b.path.length - a.path.length)
    .map((c) => `${c.name}=${c.value}`)
    .join('; ');
}

function decodeHtml(s) {
  return s.replace(/&#x([0-9a-f]+);/gi, (_, h) => String.fromCodePoint(parseInt(h, 16)))
    .replace(/&#(\d+);/g, (_, d) => String.fromCodePoint(Number(d)))
    .replace(/&quot;/g, '"').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
}

function pageText(html) {
  return decodeHtml(html.replace(/<style[\s\S]*?<\/style>/g, '').replace(/<[^>]+>/g, ' '))
    .replace(/\s+/g, ' ').trim().slice(0, 400);
}

async function send(url, { method = 'GET', body } = {}) {
  const remaining = deadline - Date.now();
  if (remaining <= 0) die('timed out');
  const u = new URL(url);
  const headers = { accept: 'text/html' };
  const cookies = cookieHeader(u.pathname);
  if (cookies) headers.cookie = cookies;
  if (body !== undefined) headers['content-type'] = 'application/x-www-form-urlencoded';
  const res = await request(u, {
    method, headers, body, ca, timeoutMs: remaining,
  });
  storeCookies(res.headers['set-cookie'], u.pathname);
  return res;
}

let next = { url: startUrl.href, method: 'GET' };
let pagesSeen = 0;
for (let step = 0; step < 30; step += 1) {
  // eslint-disable-next-line no-await-in-loop
  const res = await send(next.url, next).catch((e) => die(`${next.method} ${new URL(next.url).pathname}: ${e.message}`));
  if (res.status >= 300 && res.status < 400) {
    const location = res.headers.location;
    if (!location) die(`redirect ${res.status} without Location`);
    const target = new URL(location, next.url);
    if (target.origin !== providerOrigin) {
      // The redirect back to the client: the result. Not fetched.
      process.stdout.write(`${target.href}\n`);
      process.exit(0);
    }
    next = { url: target.href, method: 'GET' };
    continue;
  }
  if (res.status !== 200) die(`HTTP ${res.status} at ${new URL(next.url).pathname}: ${pageText(res.body)}`);
  pagesSeen += 1;
  if (pagesSeen > 6) die('too many pages without reaching the client');
  const html = res.body;
  const prompt = /<input type="hidden" name="prompt" value="([a-z_]+)"/.exec(html)?.[1];
  const action = /<form[^>]*action="([^"]+)"[^>]*method="post"/.exec(html)?.[1];
  if (!prompt || !action) die(`unexpected page at ${new URL(next.url).pathname}: ${pageText(html)}`);
  const actionUrl = new URL(decodeHtml(action), next.url).href;
  if (prompt === 'login') {
    next = {
      url: actionUrl, method: 'POST', body: new URLSearchParams({ prompt, login: opts.user, password: opts.password }).toString(),
    };
  } else if (prompt === 'consent') {
    if (opts.deny) {
      const abort = /<a href="([^"]+\/abort)"/.exec(html)?.[1];
      if (!abort) die('no cancel link on the consent page');
      next = { url: new URL(decodeHtml(abort), next.url).href, method: 'GET' };
    } else {
      next = { url: actionUrl, method: 'POST', body: new URLSearchParams({ prompt }).toString() };
    }
  } else {
    die(`unknown prompt ${prompt}`);
  }
}
die('too many steps without reaching the client');
