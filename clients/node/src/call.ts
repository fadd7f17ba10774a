// What the request-specific modules (resolve, subscribe, fetch) need of the
// client: start one request with a deadline and an abort signal, and get its
// responses or its failure, exactly once each way.

import type { Response } from './gen/grantvault/v1/envelope_pb.js';
import type { RequestBody } from './connection.js';

export interface CallOptions {
  /** Sent as deadline_ms and enforced here. */
  deadlineMs: number;
  /**
   * What the local deadline covers: the whole call (until its final
   * response), or only the wait for its first response (streams that may
   * last: Subscribe).
   */
  deadlineCovers: 'whole-call' | 'first-response';
  signal: AbortSignal | undefined;
}

export interface CallHandlers {
  /** Each response; `last` for the final one. Bytes fields are valid only during the call. */
  frame(response: Response, last: boolean): void;
  /**
   * The call ended without its final response: the connection was lost
   * (UnavailableError or the daemon's reason), the deadline passed
   * (DeadlineExceededError), or the signal aborted (its reason). After the
   * deadline or an abort, a CancelRequest has been sent.
   */
  fail(error: unknown): void;
}

export interface ActiveCall {
  /** Gives up the call: sends a CancelRequest, delivers nothing more. Idempotent. */
  cancel(): void;
}

export type CallStarter = (body: RequestBody, options: CallOptions, handlers: CallHandlers) => Promise<ActiveCall>;
