// One connection to a grantvaultd socket: connect, Hello, then any number of
// pipelined requests whose responses are matched by request id
// (docs/protocol.md). It knows nothing of what the requests mean; client.ts
// does. A Connection that closed stays closed: the Client opens a new one.

import { createConnection, type Socket } from 'node:net';

import { create, fromBinary, type MessageInitShape, toBinary } from '@bufbuild/protobuf';

import { RequestSchema, type Response, ResponseSchema } from './gen/grantvault/v1/envelope_pb.js';
import { encodeFrame, FrameDecoder, FramingError, MAX_FRAME_BYTES } from './framing.js';
import {
  errorFromFrame,
  GrantvaultError,
  InternalError,
  ResourceExhaustedError,
  UnavailableError,
  DeadlineExceededError,
} from './errors.js';

/** The oneof body of a Request (`{ case: 'resolve', value: {…} }`, …), as plain data. */
export type RequestBody = NonNullable<MessageInitShape<typeof RequestSchema>['body']>;

/**
 * Receives the responses of one request.
 *
 * `frame` is called for each response; `last` is true for the final one (more
 * = false), after which nothing more is delivered. The message is valid only
 * during the call: its bytes fields are views into a frame that is zeroed when
 * `frame` returns (frames may carry access tokens), so copy what you keep.
 *
 * `lost` is called instead, once, when the connection ends before the final
 * response.
 */
export interface CallSink {
  frame(response: Response, last: boolean): void;
  lost(error: GrantvaultError): void;
}

export interface ConnectionOptions {
  socketPath: string;
  clientName: string;
  /** Bounds connect + Hello. */
  timeoutMs: number;
}

export const PROTOCOL_VERSION = 1;
// How long a second connection attempt waits for a refusal before it writes Hello.
const REFUSAL_WAIT_MS = 250;

/** The daemon closed the connection before it read Hello: a refusal at accept that was lost. */
class ClosedBeforeHello extends UnavailableError {}
// The request_id field at its largest: one tag byte and a 10-byte varint.
const MAX_REQUEST_ID_BYTES = 11;

function tooLargeForAFrame(bytes: number): ResourceExhaustedError {
  return new ResourceExhaustedError(`the request takes ${bytes} bytes, more than one frame carries (${MAX_FRAME_BYTES})`);
}

/**
 * Throws ResourceExhaustedError when a request with this body cannot be sent
 * in one frame (whatever its request id), before anything is sent.
 */
export function checkFits(body: RequestBody, deadlineMs: number): void {
  const encoded = toBinary(RequestSchema, create(RequestSchema, { deadlineMs, body }));
  const bytes = encoded.length + MAX_REQUEST_ID_BYTES;
  encoded.fill(0);
  if (bytes > MAX_FRAME_BYTES) throw tooLargeForAFrame(bytes);
}

export class Connection {
  private readonly pending = new Map<bigint, CallSink>();
  private nextId = 1n;
  private closedWith: GrantvaultError | null = null;
  private onClose: (() => void) | null = null;

  private constructor(
    private readonly socket: Socket,
    private readonly socketPath: string,
    private readonly decoder: FrameDecoder,
    /** grantvaultd's version, from its HelloReply. */
    readonly serverVersion: string,
  ) {}

  /**
   * Connects and says Hello. Rejects with the daemon's typed error when it
   * refuses the connection (RESOURCE_EXHAUSTED at a connection limit,
   * PERMISSION_DENIED for a caller the policy does not name, …), with
   * UnavailableError when the socket cannot be reached or closes, and with
   * DeadlineExceededError after `timeoutMs`.
   */
  static async open(options: ConnectionOptions): Promise<Connection> {
    const startedAt = Date.now();
    try {
      return await Connection.attempt(options, 0);
    } catch (e) {
      // The daemon refuses a connection at accept by writing one Error and closing, before it
      // reads anything. When it closed before our Hello was written, the write failed (EPIPE)
      // and took the socket, and the refusal in it, down with it: connect once more, and this
      // time wait for a refusal a moment before writing Hello.
      if (!(e instanceof ClosedBeforeHello)) throw e;
      const remainingMs = options.timeoutMs - (Date.now() - startedAt);
      if (remainingMs <= 0) throw new UnavailableError(e.message);
      return Connection.attempt({ ...options, timeoutMs: remainingMs }, Math.min(REFUSAL_WAIT_MS, remainingMs));
    }
  }

  private static attempt(options: ConnectionOptions, readFirstMs: number): Promise<Connection> {
    return new Promise<Connection>((resolve, reject) => {
      const socket = createConnection({ path: options.socketPath });
      const decoder = new FrameDecoder();
      let settled = false;
      let refusal: GrantvaultError | null = null;
      let helloTimer: NodeJS.Timeout | undefined;
      let helloWritten = false;
      let framesSeen = false;
      const finish = (error: GrantvaultError | null, connection?: Connection): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        clearTimeout(helloTimer);
        socket.removeListener('data', onData);
        socket.removeListener('error', onError);
        socket.removeListener('close', onCloseEvent);
        if (error !== null) {
          socket.on('error', () => {}); // the socket is given up: late errors are of no interest
          socket.destroy();
          decoder.reset();
          reject(error);
        } else if (connection) {
          resolve(connection);
        }
      };
      const timer = setTimeout(() => {
        finish(new DeadlineExceededError(
          `no answer to Hello from grantvaultd at ${options.socketPath} within ${options.timeoutMs} ms`,
        ));
      }, options.timeoutMs);
      const onData = (chunk: Buffer): void => {
        let frames: Buffer[];
        try {
          frames = decoder.push(chunk);
        } catch (e) {
          finish(new UnavailableError(`${(e as Error).message}; connection closed`));
          return;
        } finally {
          chunk.fill(0);
        }
        if (frames.length > 0) framesSeen = true;
        for (let i = 0; i < frames.length; i++) {
          const frame = frames[i] as Buffer;
          let response: Response;
          try {
            response = fromBinary(ResponseSchema, frame);
          } catch {
            finish(new UnavailableError('grantvaultd sent a frame that is not a Response; connection closed'));
            return;
          } finally {
            frame.fill(0);
          }
          if (response.body.case === 'error') {
            // A refusal at accept (request 0) or of the Hello itself (request 1).
            refusal = errorFromFrame(response.body.value);
            finish(refusal);
            return;
          }
          if (response.requestId !== 1n || response.body.case !== 'hello') {
            finish(new InternalError(`grantvaultd answered Hello with ${response.body.case ?? 'nothing'}`));
            return;
          }
          const hello = response.body.value;
          if (hello.protocolVersion !== PROTOCOL_VERSION) {
            finish(new InternalError(
              `grantvaultd speaks protocol version ${hello.protocolVersion}, not ${PROTOCOL_VERSION}`,
            ));
            return;
          }
          const connection = new Connection(socket, options.socketPath, decoder, hello.serverVersion);
          finish(null, connection);
          connection.attach();
          // Whatever came in the same chunk after the HelloReply (a refusal for request 0).
          for (const rest of frames.slice(i + 1)) connection.deliver(rest);
          return;
        }
      };
      // An error (ECONNRESET after the daemon closed a refused connection, say)
      // is reported once the socket has closed, so that a refusal frame read
      // before it wins.
      let socketError: Error | null = null;
      const onError = (e: Error): void => {
        socketError = e;
      };
      const onCloseEvent = (): void => {
        const code = (socketError as NodeJS.ErrnoException | null)?.code;
        const why = socketError ? `: ${code ?? socketError.message}` : '';
        if (refusal) {
          finish(refusal);
        } else if (helloWritten && !framesSeen && (code === 'EPIPE' || code === 'ECONNRESET')) {
          finish(new ClosedBeforeHello(`grantvaultd at ${options.socketPath} closed the connection before reading Hello${why}`));
        } else {
          finish(new UnavailableError(`cannot reach grantvaultd at ${options.socketPath}${why}`));
        }
      };
      socket.on('data', onData);
      socket.on('error', onError);
      socket.on('close', onCloseEvent);
      const writeHello = (): void => {
        if (settled || helloWritten) return;
        helloWritten = true;
        const hello = create(RequestSchema, {
          requestId: 1n,
          body: { case: 'hello', value: { protocolVersion: PROTOCOL_VERSION, clientName: options.clientName } },
        });
        socket.write(encodeFrame(toBinary(RequestSchema, hello)));
      };
      socket.once('connect', () => {
        if (readFirstMs > 0) helloTimer = setTimeout(writeHello, readFirstMs);
        else writeHello();
      });
    });
  }

  /** Takes over the socket once Hello succeeded (request id 1 was Hello's). */
  private attach(): void {
    this.nextId = 2n;
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('error', (e: NodeJS.ErrnoException) => {
      this.fail(new UnavailableError(`the connection to grantvaultd at ${this.socketPath} failed: ${e.code ?? e.message}`));
    });
    this.socket.on('close', () => {
      this.fail(new UnavailableError(`the connection to grantvaultd at ${this.socketPath} closed`));
    });
    this.updateRef();
  }

  get closed(): boolean {
    return this.closedWith !== null;
  }

  /** Called once when the connection closes, for whatever reason. */
  set closeListener(listener: (() => void) | null) {
    this.onClose = listener;
  }

  /**
   * Sends one request and routes its responses to `sink`. Returns the request
   * id (for cancel/forget). Throws ResourceExhaustedError when the request does
   * not fit in a frame, UnavailableError when the connection has closed.
   */
  start(body: RequestBody, deadlineMs: number, sink: CallSink): bigint {
    if (this.closedWith) throw this.closedWith;
    const requestId = this.nextId++;
    const request = create(RequestSchema, { requestId, deadlineMs, body });
    const message = toBinary(RequestSchema, request);
    if (message.length > MAX_FRAME_BYTES) {
      message.fill(0);
      throw tooLargeForAFrame(message.length);
    }
    this.pending.set(requestId, sink);
    this.updateRef();
    this.write(message);
    return requestId;
  }

  /**
   * Stops delivering responses of `requestId` and asks the daemon to end it
   * (CancelRequest; the daemon ends it with CANCELLED, which is dropped here,
   * as is the CancelReply). Nothing is delivered to its sink any more.
   */
  cancel(requestId: bigint): void {
    if (!this.pending.delete(requestId)) return;
    this.updateRef();
    if (this.closedWith) return;
    const cancelId = this.nextId++;
    this.write(toBinary(RequestSchema, create(RequestSchema, {
      requestId: cancelId,
      body: { case: 'cancel', value: { targetRequestId: requestId } },
    })));
  }

  /** Closes the connection; every pending call's sink gets `error`. */
  close(error: GrantvaultError): void {
    this.fail(error);
  }

  private write(message: Uint8Array): void {
    const frame = encodeFrame(message);
    message.fill(0);
    // Requests may carry API call bodies: zero the frame once the socket is done with it.
    this.socket.write(frame, () => frame.fill(0));
  }

  private onData(chunk: Buffer): void {
    let frames: Buffer[];
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      const message = e instanceof FramingError ? e.message : String(e);
      this.fail(new UnavailableError(`${message}; connection closed`));
      return;
    } finally {
      chunk.fill(0);
    }
    for (const frame of frames) this.deliver(frame);
  }

  private deliver(frame: Buffer): void {
    try {
      if (!this.closedWith) this.dispatch(frame);
    } finally {
      frame.fill(0);
    }
  }

  private dispatch(frame: Buffer): void {
    let response: Response;
    try {
      response = fromBinary(ResponseSchema, frame);
    } catch {
      this.fail(new UnavailableError('grantvaultd sent a frame that is not a Response; connection closed'));
      return;
    }
    if (response.requestId === 0n) {
      // A connection-level refusal (a policy reload that dropped this caller…):
      // the daemon closes the connection; every call gets the reason.
      this.fail(response.body.case === 'error'
        ? errorFromFrame(response.body.value)
        : new InternalError(`grantvaultd sent ${response.body.case ?? 'nothing'} for request 0`));
      return;
    }
    const sink = this.pending.get(response.requestId);
    if (!sink) return; // a call given up (deadline, cancel) or a CancelReply
    const last = !response.more;
    if (last) {
      this.pending.delete(response.requestId);
      this.updateRef();
    }
    sink.frame(response, last);
  }

  private fail(error: GrantvaultError): void {
    if (this.closedWith) return;
    this.closedWith = error;
    this.socket.destroy();
    this.decoder.reset();
    const sinks = [...this.pending.values()];
    this.pending.clear();
    for (const sink of sinks) sink.lost(error);
    this.onClose?.();
  }

  // An idle connection does not keep the process alive; one with calls in flight does.
  private updateRef(): void {
    if (this.pending.size > 0) this.socket.ref();
    else this.socket.unref();
  }
}
