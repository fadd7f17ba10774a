#!/usr/bin/env node
// A stand-in for a provider's API, for the proxy tests (clients/node/test):
// Node https on 127.0.0.1, an ephemeral port, no dependencies.
//
//   node server.mjs --cert CERT.pem --key KEY.pem
//
// stdout: "PORT <n>", then "READY". stderr: one line per request (method,
// path, status; never a header value or a body). SIGTERM/SIGINT exit 0.
//
// Routes (any method unless said):
//   /v1/echo                200 JSON {method, path, query, headers, body_sha256, body_bytes,
//                           authorization_sha256}: the request as received, except that the
//                           Authorization value is never sent back, only the hex SHA-256 of the
//                           whole value (e.g. of "Bearer <token>"; null when absent)
//   /v1/hold[?head=1]       holds the response open until POST /control/release or the client
//                           disconnects; with head=1, sends the status line, headers and a first
//                           line of body at once and holds the rest
//   /v1/big?bytes=N         200, a body of N bytes ("x"), streamed in 16 KiB writes
//   /v1/redirect?to=URL     302 to URL
//   /v1/unauthorized-once[?key=K]
//                           the first request for key K (default "default") is refused 401 and
//                           its Authorization value remembered as expired; a remembered value
//                           is always refused 401; any other gets 200 JSON like /v1/echo
//   /v1/limited[?status=S]  429 (or S: 503) with Retry-After: 2
//   /v1/stream?parts=N      200, chunked: N parts "part i\n", 20 ms apart
//   /control/held           200 JSON {held: number of /v1/hold responses open}
//   /control/release        200 JSON {released: n}: ends every held response (200, "released\n")
//   /control/stats          200 JSON {requests: {path: count}}
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { parseArgs } from 'node:util';

function log(line) {
  process.stderr.write(`api: ${line}\n`);
}

const { values: args } = parseArgs({
  options: { cert: { type: 'string' }, key: { type: 'string' }, port: { type: 'string', default: '0' } },
  strict: true,
});
if (!args.cert || !args.key) {
  log('fatal: --cert and --key are required');
  process.exit(2);
}

const sha256 = (text) => createHash('sha256').update(text).digest('hex');
const held = new Set();
const expiredAuthorizations = new Set();
const firstSeenKeys = new Set();
const counts = new Map();

function json(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function echo(req, url, body) {
  const headers = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (name !== 'authorization') headers[name] = value;
  }
  const authorization = req.headers.authorization;
  return {
    method: req.method,
    path: url.pathname,
    query: Object.fromEntries(url.searchParams),
    headers,
    body_bytes: body.length,
    body_sha256: sha256(body),
    authorization_sha256: authorization === undefined ? null : sha256(authorization),
  };
}

function positiveInt(text, fallback, max) {
  if (text === null) return fallback;
  if (!/^\d+$/.test(text) || Number(text) > max) return null;
  return Number(text);
}

const routes = {
  '/v1/echo': (req, res, url, body) => json(res, 200, echo(req, url, body)),
  '/v1/hold': (req, res, url) => {
    held.add(res);
    res.on('close', () => held.delete(res));
    if (url.searchParams.get('head') === '1') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('held\n');
    }
  },
  '/v1/big': (req, res, url) => {
    const total = positiveInt(url.searchParams.get('bytes'), null, 1 << 30);
    if (total === null) return json(res, 400, { error: 'bytes must be an integer up to 2^30' });
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': total });
    const chunk = Buffer.alloc(16 * 1024, 'x');
    let sent = 0;
    const pump = () => {
      while (sent < total) {
        const n = Math.min(chunk.length, total - sent);
        sent += n;
        if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
          res.once('drain', pump);
          return;
        }
      }
      res.end();
    };
    res.on('close', () => { sent = total; });
    pump();
    return undefined;
  },
  '/v1/redirect': (req, res, url) => {
    const to = url.searchParams.get('to');
    if (!to) return json(res, 400, { error: 'to is required' });
    res.writeHead(302, { location: to, 'content-length': 0 });
    res.end();
    return undefined;
  },
  '/v1/unauthorized-once': (req, res, url, body) => {
    const key = url.searchParams.get('key') ?? 'default';
    const authorization = req.headers.authorization ?? '';
    if (!firstSeenKeys.has(key)) {
      firstSeenKeys.add(key);
      expiredAuthorizations.add(sha256(authorization));
    }
    if (expiredAuthorizations.has(sha256(authorization))) {
      res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"', 'content-type': 'application/json' });
      res.end('{"error":"invalid_token"}');
      return undefined;
    }
    return json(res, 200, echo(req, url, body));
  },
  '/v1/limited': (req, res, url) => {
    const status = url.searchParams.get('status') === '503' ? 503 : 429;
    res.writeHead(status, { 'retry-after': '2', 'content-type': 'application/json' });
    res.end('{"error":"slow down"}');
  },
  '/v1/stream': (req, res, url) => {
    const parts = positiveInt(url.searchParams.get('parts'), 5, 10_000);
    if (parts === null) return json(res, 400, { error: 'parts must be an integer up to 10000' });
    res.writeHead(200, { 'content-type': 'text/plain' });
    let i = 0;
    const timer = setInterval(() => {
      if (i === parts) {
        clearInterval(timer);
        res.end();
        return;
      }
      res.write(`part ${i}\n`);
      i += 1;
    }, 20);
    res.on('close', () => clearInterval(timer));
    return undefined;
  },
  '/control/held': (req, res) => json(res, 200, { held: held.size }),
  '/control/release': (req, res) => {
    const released = held.size;
    for (const h of held) {
      if (!h.headersSent) h.writeHead(200, { 'content-type': 'text/plain' });
      h.end('released\n');
    }
    held.clear();
    json(res, 200, { released });
  },
  '/control/stats': (req, res) => json(res, 200, { requests: Object.fromEntries(counts) }),
};

const MAX_REQUEST_BODY = 1 << 20;
const server = createServer({ cert: readFileSync(args.cert), key: readFileSync(args.key), minVersion: 'TLSv1.2' });
server.on('request', (req, res) => {
  const url = new URL(req.url, 'https://127.0.0.1');
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > MAX_REQUEST_BODY) {
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', () => {
    const route = routes[url.pathname];
    counts.set(url.pathname, (counts.get(url.pathname) ?? 0) + 1);
    res.on('finish', () => log(`${req.method} ${url.pathname} ${res.statusCode}`));
    if (!route) {
      json(res, 404, { error: 'no such route' });
      return;
    }
    route(req, res, url, Buffer.concat(chunks));
  });
});
server.on('tlsClientError', (err) => log(`tls: ${err.code ?? err.message}`));

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(args.port), '127.0.0.1', resolve);
}).catch((e) => {
  log(`fatal: listen: ${e.message}`);
  process.exit(2);
});

function stop(signal) {
  log(`${signal}: shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));

process.stdout.write(`PORT ${server.address().port}\nREADY\n`);
