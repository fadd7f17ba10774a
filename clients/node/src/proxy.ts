// fetch() through grantvaultd's proxy (ProxyRequest): the daemon makes the
// API call with the grant's credential, which never reaches this process,
// and streams the answer back as ProxyResponseHead, ProxyResponseBody parts
// and ProxyResponseEnd (or an Error at any point).

import type { CallStarter } from './call.js';
import { errorFromFrame, InternalError, InvalidArgumentError, ResourceExhaustedError } from './errors.js';
import type { HttpHeader } from './gen/grantvault/v1/agent_pb.js';

/**
 * The largest request body of a proxied call: it travels in the request's
 * frame, and the daemon refuses more (docs/proxy.md).
 */
export const MAX_PROXY_BODY_BYTES = 60 * 1024;

/** The body of a proxied call: at most MAX_PROXY_BODY_BYTES, and the whole request must fit one frame. */
export type GrantvaultBody = string | Uint8Array | ArrayBuffer | URLSearchParams;

/**
 * The fields of the standard RequestInit that the proxy carries, plus which
 * grant and which tool the call is made for.
 */
export interface GrantvaultFetchInit {
  workspace: string;
  connector: string;
  /** The tool whose declared scopes and HTTP limits apply. */
  tool: string;
  /** Scopes the call needs; empty: the tool's. */
  scopes?: readonly string[];
  method?: string;
  headers?: ConstructorParameters<typeof Headers>[0];
  body?: GrantvaultBody | null;
  /** Aborting sends a CancelRequest; the promise (or the body) rejects with the signal's reason. */
  signal?: AbortSignal | null;
  /** Covers the whole call, body included, in ms. Default: the client's. */
  deadlineMs?: number;
}

// The fetch standard's normalised methods, and its forbidden ones.
const NORMALISED_METHODS = new Set(['DELETE', 'GET', 'HEAD', 'OPTIONS', 'POST', 'PUT']);
const FORBIDDEN_METHODS = new Set(['CONNECT', 'TRACE', 'TRACK']);
const METHOD_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Statuses whose responses have no body (the fetch standard's null body statuses).
const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

function normaliseMethod(method: string | undefined): string {
  if (method === undefined) return 'GET';
  if (!METHOD_TOKEN.test(method)) throw new InvalidArgumentError(`"${method}" is not an HTTP method`);
  const upper = method.toUpperCase();
  if (FORBIDDEN_METHODS.has(upper)) throw new InvalidArgumentError(`the ${upper} method is not allowed`);
  return NORMALISED_METHODS.has(upper) ? upper : method;
}

function checkUrl(input: string | URL): string {
  const url = typeof input === 'string' ? input : input.href;
  if (url.startsWith('/')) {
    if (url.startsWith('//')) throw new InvalidArgumentError('a path must not start with "//"');
    return url;
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new InvalidArgumentError('the URL must be an absolute https URL or a path starting with "/"');
  }
  if (parsed.protocol !== 'https:') {
    throw new InvalidArgumentError(`the URL must be https, not ${parsed.protocol.replace(/:$/, '')}`);
  }
  return url;
}

/** The body's bytes (a copy) and the Content-Type the fetch standard gives it. */
function encodeBody(body: GrantvaultBody): { bytes: Uint8Array; contentType: string | null } {
  if (typeof body === 'string') {
    return { bytes: Buffer.from(body, 'utf8'), contentType: 'text/plain;charset=UTF-8' };
  }
  if (body instanceof URLSearchParams) {
    return { bytes: Buffer.from(body.toString(), 'utf8'), contentType: 'application/x-www-form-urlencoded;charset=UTF-8' };
  }
  if (body instanceof Uint8Array) return { bytes: Uint8Array.from(body), contentType: null };
  if (body instanceof ArrayBuffer) return { bytes: new Uint8Array(body.slice(0)), contentType: null };
  throw new InvalidArgumentError(
    'the body must be a string, Buffer, Uint8Array, ArrayBuffer or URLSearchParams (it must fit in one frame)',
  );
}

function toHeaders(fields: readonly HttpHeader[]): Headers {
  const headers = new Headers();
  for (const { name, value } of fields) {
    try {
      headers.append(name, value);
    } catch {
      // A field that the Headers class refuses (not a token, a control character): left out.
    }
  }
  return headers;
}

/** Makes the call; see Client.fetch. */
export function proxyFetch(
  start: CallStarter,
  input: string | URL,
  init: GrantvaultFetchInit,
  deadlineMs: number,
): Promise<Response> {
  return new Promise<Response>((resolve, reject) => {
    if (typeof init !== 'object' || init === null) throw new InvalidArgumentError('fetch needs init with workspace, connector and tool');
    for (const key of ['workspace', 'connector', 'tool'] as const) {
      if (typeof init[key] !== 'string' || init[key] === '') throw new InvalidArgumentError(`init.${key} must be a non-empty string`);
    }
    const method = normaliseMethod(init.method);
    const url = checkUrl(input);
    let headers: Headers;
    try {
      headers = new Headers(init.headers);
    } catch {
      // Not the Headers class's message: it may quote a value, and values may be credentials.
      throw new InvalidArgumentError('init.headers holds an invalid header name or value');
    }
    let body: Uint8Array = new Uint8Array(0);
    if (init.body !== undefined && init.body !== null) {
      if (method === 'GET' || method === 'HEAD') throw new InvalidArgumentError(`a ${method} request cannot have a body`);
      const encoded = encodeBody(init.body);
      body = encoded.bytes;
      if (body.length > MAX_PROXY_BODY_BYTES) {
        throw new ResourceExhaustedError(
          `the request body is ${body.length} bytes; a proxied call carries at most ${MAX_PROXY_BODY_BYTES} (it must fit one frame)`,
        );
      }
      if (encoded.contentType !== null && !headers.has('content-type')) headers.set('content-type', encoded.contentType);
    }
    const headerFields: Array<{ name: string; value: string }> = [];
    headers.forEach((value, name) => headerFields.push({ name, value }));

    // Set once the head arrived: then failures error the body instead of rejecting.
    let controller: ReadableStreamDefaultController<Uint8Array> | null = null;
    let headSeen = false;
    let bodyless = false;
    let cancel: (() => void) | null = null;
    const fail = (error: unknown): void => {
      if (!headSeen) reject(error);
      else if (controller) controller.error(error);
    };

    start({
      case: 'proxy',
      value: {
        workspaceId: init.workspace,
        connectorId: init.connector,
        tool: init.tool,
        method,
        url,
        headers: headerFields,
        body,
        scopes: [...(init.scopes ?? [])],
      },
    }, { deadlineMs, deadlineCovers: 'whole-call', signal: init.signal ?? undefined }, {
      frame(response, last) {
        const answer = response.body;
        if (answer.case === 'error') {
          fail(errorFromFrame(answer.value));
          return;
        }
        if (!headSeen) {
          if (answer.case !== 'proxyHead' || last) {
            reject(new InternalError(`grantvaultd answered a proxied call with ${answer.case ?? 'nothing'} before its head`));
            if (!last) cancel?.();
            return;
          }
          const head = answer.value;
          if (head.status < 200 || head.status > 599) {
            reject(new InternalError(`grantvaultd sent an HTTP status of ${head.status}`));
            cancel?.();
            return;
          }
          headSeen = true;
          bodyless = method === 'HEAD' || NULL_BODY_STATUSES.has(head.status);
          const stream = bodyless ? null : new ReadableStream<Uint8Array>({
            start(c) {
              controller = c;
            },
            cancel() {
              cancel?.();
            },
          });
          resolve(new Response(stream, { status: head.status, headers: toHeaders(head.headers) }));
          return;
        }
        if (answer.case === 'proxyBody' && !last) {
          if (!bodyless) controller?.enqueue(Uint8Array.from(answer.value.data)); // a copy: the frame is zeroed
        } else if (answer.case === 'proxyEnd' && last) {
          controller?.close();
        } else {
          cancel?.();
          fail(new InternalError(`grantvaultd sent ${answer.case ?? 'nothing'}${last ? ' (final)' : ''} in a proxied answer`));
        }
      },
      fail,
    }).then((call) => {
      cancel = () => call.cancel();
    }, reject);
  });
}
