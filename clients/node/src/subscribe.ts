// Subscribe: a stream of GrantEvents for one workspace, as an async iterator.

import type { ActiveCall, CallStarter } from './call.js';
import { errorFromFrame, InternalError, ResourceExhaustedError } from './errors.js';
import { GrantEvent_Kind, type GrantEvent as GrantEventMessage } from './gen/grantvault/v1/agent_pb.js';

export type GrantEventKind = 'authorized' | 'revoked' | 'reauth_required';

/** One change to a grant of the subscribed workspace. */
export interface GrantEvent {
  /** 'authorized' is a new grant, or a scope change (then replacedGrantId is set). */
  kind: GrantEventKind;
  workspaceId: string;
  connectorId: string;
  grantId: string;
  accountId: string;
  reason: string;
  /** null when the daemon sent no time. */
  at: Date | null;
  /** The grant an 'authorized' event replaces, or "". */
  replacedGrantId: string;
}

export interface SubscribeOptions {
  /** Ends the subscription (a CancelRequest is sent); the iterator then throws the signal's reason. */
  signal?: AbortSignal;
  /** How long to wait for the daemon to confirm the subscription, in ms. Default: the client's. */
  deadlineMs?: number;
}

/**
 * The events of one subscription, in order. `for await (const event of
 * stream)`; leaving the loop (break, return, throw) or calling `close()` ends
 * the subscription with a CancelRequest.
 *
 * The iterator throws when the stream ends otherwise: UnavailableError when
 * the connection was lost (a subscription does not survive a reconnect:
 * subscribe again, and list the grants to catch up), PermissionDeniedError
 * when a policy reload no longer allows it, the signal's reason on abort.
 * At most 1,024 events wait unread; past that the subscription ends with
 * ResourceExhaustedError.
 */
export interface GrantEventStream extends AsyncIterableIterator<GrantEvent> {
  close(): void;
}

const MAX_QUEUED_EVENTS = 1024;

const KINDS: Partial<Record<GrantEvent_Kind, GrantEventKind>> = {
  [GrantEvent_Kind.AUTHORIZED]: 'authorized',
  [GrantEvent_Kind.REVOKED]: 'revoked',
  [GrantEvent_Kind.REAUTH_REQUIRED]: 'reauth_required',
};

function toEvent(message: GrantEventMessage, kind: GrantEventKind): GrantEvent {
  return {
    kind,
    workspaceId: message.workspaceId,
    connectorId: message.connectorId,
    grantId: message.grantId,
    accountId: message.accountId,
    reason: message.reason,
    at: message.atMs === 0n ? null : new Date(Number(message.atMs)),
    replacedGrantId: message.replacedGrantId,
  };
}

interface Waiter {
  resolve: (result: IteratorResult<GrantEvent>) => void;
  reject: (error: unknown) => void;
}

class EventQueue implements GrantEventStream {
  private readonly events: GrantEvent[] = [];
  private readonly waiters: Waiter[] = [];
  // Set once the stream ended; `error` (null: none) is thrown once the queued events are read.
  private ended: { error: unknown } | null = null;
  call: ActiveCall | null = null;

  push(event: GrantEvent): void {
    if (this.ended) return;
    const waiter = this.waiters.shift();
    if (waiter) {
      waiter.resolve({ value: event, done: false });
      return;
    }
    if (this.events.length >= MAX_QUEUED_EVENTS) {
      this.call?.cancel();
      this.end(new ResourceExhaustedError(`more than ${MAX_QUEUED_EVENTS} grant events waited unread; subscription ended`));
      return;
    }
    this.events.push(event);
  }

  /** Ends the stream: queued events are still yielded, then `error` is thrown (or done). */
  end(error: unknown): void {
    if (this.ended) return;
    this.ended = { error };
    if (this.events.length > 0) return;
    for (const waiter of this.waiters.splice(0)) this.settle(waiter);
  }

  private settle(waiter: Waiter): void {
    const ended = this.ended;
    if (ended && ended.error !== null) {
      this.ended = { error: null }; // thrown once; then the iterator is done
      waiter.reject(ended.error);
    } else {
      waiter.resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<GrantEvent>> {
    const event = this.events.shift();
    if (event) return Promise.resolve({ value: event, done: false });
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      if (this.ended) this.settle(waiter);
      else this.waiters.push(waiter);
    });
  }

  return(): Promise<IteratorResult<GrantEvent>> {
    this.close();
    return Promise.resolve({ value: undefined, done: true });
  }

  close(): void {
    this.call?.cancel();
    this.events.length = 0;
    this.end(null);
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}

/** Sends SubscribeRequest; resolves with the stream once SUBSCRIBED arrived. */
export function openSubscription(
  start: CallStarter,
  workspace: string,
  deadlineMs: number,
  signal: AbortSignal | undefined,
): Promise<GrantEventStream> {
  return new Promise<GrantEventStream>((resolve, reject) => {
    const queue = new EventQueue();
    let subscribed = false;
    const fail = (error: unknown): void => {
      if (subscribed) queue.end(error);
      else reject(error);
    };
    start({ case: 'subscribe', value: { workspaceId: workspace } }, {
      deadlineMs,
      deadlineCovers: 'first-response',
      signal,
    }, {
      frame(response, last) {
        const body = response.body;
        if (body.case === 'error') {
          fail(errorFromFrame(body.value));
          return;
        }
        if (body.case !== 'grantEvent' || last) {
          queue.call?.cancel();
          fail(new InternalError(`grantvaultd answered Subscribe with ${body.case ?? 'nothing'}${last ? ' (final)' : ''}`));
          return;
        }
        const event = body.value;
        if (!subscribed) {
          if (event.kind !== GrantEvent_Kind.SUBSCRIBED) {
            queue.call?.cancel();
            fail(new InternalError('grantvaultd did not confirm the subscription first'));
            return;
          }
          subscribed = true;
          resolve(queue);
          return;
        }
        const kind = KINDS[event.kind];
        if (kind) queue.push(toEvent(event, kind)); // kinds of a newer daemon are skipped
      },
      fail,
    }).then((call) => {
      queue.call = call;
    }, reject);
  });
}
