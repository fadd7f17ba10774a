// The agent-side client of grantvaultd's agent.sock: one connection, shared
// by every call (pipelined, matched by request id), re-established on the
// next call after it broke.

import type { ActiveCall, CallHandlers, CallOptions } from './call.js';
import { checkFits, Connection, type RequestBody } from './connection.js';
import {
  CancelledError,
  DeadlineExceededError,
  FailedPreconditionError,
  GrantvaultError,
  InternalError,
  InvalidArgumentError,
  UnavailableError,
  errorFromFrame,
} from './errors.js';
import { proxyFetch, type GrantvaultFetchInit } from './proxy.js';
import { openSubscription, type GrantEventStream, type SubscribeOptions } from './subscribe.js';

export interface ConnectOptions {
  /** agent.sock: `<state>/run/agent.sock`, or `/run/grantvault/agent.sock` under systemd. */
  socketPath: string;
  /** Free text for the daemon's logs. Default "grantvault-node/<version>". */
  clientName?: string;
  /** The deadline of a call that names none, in ms. Default 30,000. */
  defaultDeadlineMs?: number;
  /** Bounds connect + Hello, in ms (and no more than the call's deadline). Default 5,000. */
  connectTimeoutMs?: number;
  /**
   * After the connection breaks, whether the next call opens a new one (and
   * says Hello again). Default true. With false, calls after a break fail
   * with UnavailableError.
   */
  reconnect?: boolean;
}

export interface ResolveRequest {
  workspace: string;
  /** The workspace-scoped connector id. */
  connector: string;
  /** The agent tool the token is for; its declared scopes apply. */
  tool?: string;
  /** Scopes the call needs. Empty: the tool's (or, without a tool, the grant's). */
  scopes?: readonly string[];
  /** The token must stay valid this long, in seconds (at most 600). Default (0): the daemon's default, 30 s. */
  minValidSeconds?: number;
  deadlineMs?: number;
  signal?: AbortSignal;
}

/**
 * A resolved credential. `accessToken` is the secret itself: never log it,
 * never put it in an error, keep it no longer than needed and zero it
 * (`accessToken.fill(0)`) after use. Agents should prefer `client.fetch()`,
 * with which the token never leaves the daemon.
 */
export interface ResolvedToken {
  accessToken: Buffer;
  tokenType: string;
  /** null: the token does not expire. */
  expiresAt: Date | null;
  grantId: string;
  accountId: string;
  scopes: string[];
  connectorType: string;
  metadata: Record<string, string>;
}

// Kept equal to package.json's version (unit-client.test.mjs checks).
const PACKAGE_VERSION = '0.1.0';
const DEFAULT_DEADLINE_MS = 30_000;
const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
// deadline_ms is a uint32 on the wire.
const MAX_DEADLINE_MS = 0xffff_ffff;

function checkDeadline(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1 || value > MAX_DEADLINE_MS) {
    throw new InvalidArgumentError(`${name} must be an integer from 1 to ${MAX_DEADLINE_MS}, not ${value}`);
  }
  return value;
}

function uint32(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new InvalidArgumentError(`${name} must be an integer from 0 to ${0xffff_ffff}, not ${value}`);
  }
  return value;
}

function strings(name: string, values: readonly string[] | undefined): string[] {
  const list = [...(values ?? [])];
  if (list.some((s) => typeof s !== 'string' || s === '')) throw new InvalidArgumentError(`${name} must be non-empty strings`);
  return list;
}

function nonEmpty(name: string, value: unknown): string {
  if (typeof value !== 'string' || value === '') {
    throw new InvalidArgumentError(`${name} must be a non-empty string`);
  }
  return value;
}

/**
 * `promise`, unless `ms` pass first (rejects with `timeout()`) or `signal`
 * aborts (rejects with its reason). What `promise` does meanwhile goes on.
 */
function boundedWait<T>(promise: Promise<T>, ms: number, signal: AbortSignal | undefined, timeout: () => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => finish(() => reject(signal?.reason));
    const timer = setTimeout(() => finish(() => reject(timeout())), ms);
    const finish = (settle: () => void): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      settle();
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    promise.then((value) => finish(() => resolve(value)), (error: unknown) => finish(() => reject(error)));
  });
}

/** Connects to agent.sock and says Hello; see Client. */
export async function connect(options: ConnectOptions): Promise<Client> {
  const client = new Client(options);
  await client.ready();
  return client;
}

export class Client {
  private readonly socketPath: string;
  private readonly clientName: string;
  private readonly defaultDeadlineMs: number;
  private readonly connectTimeoutMs: number;
  private readonly reconnect: boolean;
  private connection: Connection | null = null;
  private opening: Promise<Connection> | null = null;
  private everConnected = false;
  private closedByUser = false;

  /** Use connect(), which also waits for the first Hello. */
  constructor(options: ConnectOptions) {
    this.socketPath = nonEmpty('socketPath', options.socketPath);
    this.clientName = options.clientName ?? `grantvault-node/${PACKAGE_VERSION}`;
    this.defaultDeadlineMs = checkDeadline('defaultDeadlineMs', options.defaultDeadlineMs ?? DEFAULT_DEADLINE_MS);
    this.connectTimeoutMs = checkDeadline('connectTimeoutMs', options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS);
    this.reconnect = options.reconnect ?? true;
  }

  /** Opens the connection now (connect() calls it). */
  async ready(): Promise<void> {
    await this.connectionWithin(this.connectTimeoutMs);
  }

  /** grantvaultd's version from the last Hello, or null before one. */
  get serverVersion(): string | null {
    return this.connection?.serverVersion ?? null;
  }

  /**
   * An access token for the grant `workspace` holds for `connector`
   * (ResolveRequest). Rejects with the daemon's typed error: NotFoundError
   * (no grant), PermissionDeniedError (the policy does not allow it),
   * RevokedError, ReauthRequiredError, UnavailableError (retryAfterMs), …
   */
  resolve(request: ResolveRequest): Promise<ResolvedToken> {
    return new Promise<ResolvedToken>((resolve, reject) => {
      const body: RequestBody = {
        case: 'resolve',
        value: {
          workspaceId: nonEmpty('workspace', request.workspace),
          connectorId: nonEmpty('connector', request.connector),
          tool: request.tool ?? '',
          scopes: strings('scopes', request.scopes),
          minValidSeconds: uint32('minValidSeconds', request.minValidSeconds ?? 0),
        },
      };
      const options: CallOptions = {
        deadlineMs: checkDeadline('deadlineMs', request.deadlineMs ?? this.defaultDeadlineMs),
        deadlineCovers: 'whole-call',
        signal: request.signal,
      };
      const handlers: CallHandlers = {
        frame(response, last) {
          const answer = response.body;
          if (answer.case === 'error') {
            reject(errorFromFrame(answer.value));
          } else if (answer.case === 'resolve' && last) {
            const reply = answer.value;
            resolve({
              accessToken: Buffer.from(reply.accessToken), // a copy: the frame is zeroed
              tokenType: reply.tokenType,
              expiresAt: reply.expiresAtMs === 0n ? null : new Date(Number(reply.expiresAtMs)),
              grantId: reply.grantId,
              accountId: reply.accountId,
              scopes: [...reply.scopes],
              connectorType: reply.connectorType,
              metadata: { ...reply.metadata },
            });
          } else {
            reject(new InternalError(`grantvaultd answered Resolve with ${answer.case ?? 'nothing'}${last ? '' : ' (more)'}`));
          }
        },
        fail: reject,
      };
      this.startCall(body, options, handlers).catch(reject);
    });
  }

  /**
   * Subscribes to the grant events of one workspace. Resolves once the daemon
   * confirmed the subscription (its SUBSCRIBED event, which is not yielded);
   * see GrantEventStream.
   */
  async subscribe(workspace: string, options: SubscribeOptions = {}): Promise<GrantEventStream> {
    return openSubscription(
      (body, callOptions, handlers) => this.startCall(body, callOptions, handlers),
      nonEmpty('workspace', workspace),
      options.deadlineMs === undefined ? this.defaultDeadlineMs : checkDeadline('deadlineMs', options.deadlineMs),
      options.signal,
    );
  }

  /**
   * An API call made by grantvaultd with the grant's credential, which never
   * reaches this process (ProxyRequest); the shape of the global fetch().
   * See docs/clients.md.
   */
  async fetch(input: string | URL, init: GrantvaultFetchInit): Promise<globalThis.Response> {
    const deadlineMs = init?.deadlineMs === undefined ? this.defaultDeadlineMs : checkDeadline('deadlineMs', init.deadlineMs);
    return proxyFetch(
      (body, callOptions, handlers) => this.startCall(body, callOptions, handlers),
      input,
      init,
      deadlineMs,
    );
  }

  /**
   * Closes the connection. Calls in flight fail with CancelledError; later
   * calls with FailedPreconditionError.
   */
  close(): void {
    this.closedByUser = true;
    this.connection?.close(new CancelledError('the grantvault client was closed'));
    this.connection = null;
  }

  private async connectionWithin(timeoutMs: number): Promise<Connection> {
    if (this.closedByUser) throw new FailedPreconditionError('the grantvault client is closed');
    if (this.connection && !this.connection.closed) return this.connection;
    if (this.everConnected && !this.reconnect) {
      throw new UnavailableError(`the connection to grantvaultd at ${this.socketPath} closed (reconnect is off)`);
    }
    if (!this.opening) {
      this.opening = Connection.open({
        socketPath: this.socketPath,
        clientName: this.clientName,
        timeoutMs: Math.min(timeoutMs, this.connectTimeoutMs),
      }).then((connection) => {
        if (this.closedByUser) {
          connection.close(new CancelledError('the grantvault client was closed'));
          throw new FailedPreconditionError('the grantvault client is closed');
        }
        this.connection = connection;
        this.everConnected = true;
        return connection;
      }).finally(() => {
        this.opening = null;
      });
    }
    return this.opening;
  }

  /**
   * Starts one call: (re)connects within its deadline, sends it, and arms
   * the local deadline and the abort signal. Rejects (nothing sent) when the
   * request cannot be sent: it does not fit a frame, the signal had aborted,
   * the daemon cannot be reached or refuses the connection.
   */
  private async startCall(body: RequestBody, options: CallOptions, handlers: CallHandlers): Promise<ActiveCall> {
    const { signal } = options;
    if (signal?.aborted) throw signal.reason;
    checkFits(body, options.deadlineMs);
    const startedAt = Date.now();
    const connection = await boundedWait(this.connectionWithin(options.deadlineMs), options.deadlineMs, signal,
      () => new DeadlineExceededError(`the deadline (${options.deadlineMs} ms) passed while connecting to grantvaultd`));
    const remainingMs = options.deadlineMs - (Date.now() - startedAt);
    if (remainingMs <= 0) {
      throw new DeadlineExceededError(`the deadline (${options.deadlineMs} ms) passed while connecting to grantvaultd`);
    }

    let done = false;
    let requestId: bigint | null = null;
    let timer: NodeJS.Timeout | undefined;
    const settle = (): void => {
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    const giveUp = (error: unknown): void => {
      if (done) return;
      settle();
      if (requestId !== null) connection.cancel(requestId);
      handlers.fail(error);
    };
    const onAbort = (): void => giveUp(signal?.reason);

    requestId = connection.start(body, remainingMs, {
      frame(response, last) {
        if (last) settle();
        else if (options.deadlineCovers === 'first-response') clearTimeout(timer);
        handlers.frame(response, last);
      },
      lost(error: GrantvaultError) {
        if (done) return;
        settle();
        handlers.fail(error);
      },
    });
    if (!done) {
      timer = setTimeout(() => {
        giveUp(new DeadlineExceededError(`no answer from grantvaultd within the deadline (${options.deadlineMs} ms)`));
      }, remainingMs);
      signal?.addEventListener('abort', onAbort, { once: true });
    }
    return {
      cancel() {
        if (done) return;
        settle();
        if (requestId !== null) connection.cancel(requestId);
      },
    };
  }
}
