// A minimal HTTPS client for the provider scripts and tests: trusts exactly the
// CA file it is given (certificate and host-name verification stay on), never
// follows redirects, and gives up after a deadline. Node 20's global fetch
// cannot take a CA without the undici package, so this uses node:https.
import { readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';

const cache = new Map();

function loadCa(caFile) {
  if (!caFile) return undefined;
  if (!cache.has(caFile)) cache.set(caFile, readFileSync(caFile));
  return cache.get(caFile);
}

// Returns { status, headers, body, json() }. `headers` keeps node's lower-case
// names; `set-cookie` is an array.
export function request(url, {
  method = 'GET', headers = {}, body, ca, timeoutMs = 5000,
} = {}) {
  const u = new URL(url);
  if (u.protocol !== 'https:') {
    return Promise.reject(new Error(`refusing a non-https URL: ${u.origin}`));
  }
  const payload = body === undefined ? undefined : Buffer.from(body);
  const allHeaders = { ...headers };
  if (payload) allHeaders['content-length'] = String(payload.length);
  return new Promise((resolve, reject) => {
    const req = httpsRequest(u, {
      method,
      headers: allHeaders,
      ca: loadCa(ca),
      minVersion: 'TLSv1.2',
      agent: false,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({
          status: res.statusCode,
          headers: res.headers,
          body: text,
          json() { return JSON.parse(text); },
        });
      });
      res.on('error', reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`timeout after ${timeoutMs} ms: ${method} ${u.origin}${u.pathname}`)));
    req.on('error', reject);
    if (payload) req.write(payload);
    req.end();
  });
}

export function form(params) {
  return new URLSearchParams(params).toString();
}

export function basicAuth(clientId, clientSecret) {
  // RFC 6749 §2.3.1: form-encode each part before base64.
  const enc = (s) => encodeURIComponent(s).replace(/%20/g, '+');
  return `Basic ${Buffer.from(`${enc(clientId)}:${enc(clientSecret)}`).toString('base64')}`;
}
