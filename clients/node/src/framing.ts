// The wire framing of both sockets (docs/protocol.md, "Framing"): a 32-bit
// unsigned big-endian length N, 1 <= N <= 65,536, then N bytes of one protobuf
// message.

/** The largest message one frame may carry, in bytes. */
export const MAX_FRAME_BYTES = 65_536;
const HEADER_BYTES = 4;

/** A frame that breaks the protocol: the stream can no longer be trusted. */
export class FramingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FramingError';
  }
}

/** Prefixes one encoded message with its length; throws if it does not fit. */
export function encodeFrame(message: Uint8Array): Buffer {
  if (message.length < 1 || message.length > MAX_FRAME_BYTES) {
    throw new FramingError(
      `a frame carries 1 to ${MAX_FRAME_BYTES} bytes; this message has ${message.length}`,
    );
  }
  const frame = Buffer.allocUnsafe(HEADER_BYTES + message.length);
  frame.writeUInt32BE(message.length, 0);
  frame.set(message, HEADER_BYTES);
  return frame;
}

/**
 * Splits a byte stream into frames. Feed it chunks as they arrive, in order;
 * it returns the complete frames' messages and keeps a partial frame for the
 * next chunk. A length of 0 or above MAX_FRAME_BYTES throws FramingError; the
 * decoder is then unusable (the caller closes the connection).
 *
 * The decoder copies what it keeps, and zeroes its own copies once a frame is
 * handed out: frames may carry access tokens. The returned messages belong to
 * the caller, who should zero them once decoded.
 */
export class FrameDecoder {
  private readonly header = Buffer.alloc(HEADER_BYTES);
  private headerFilled = 0;
  private body: Buffer | null = null;
  private bodyFilled = 0;
  private failed: FramingError | null = null;

  /** Bytes of an incomplete frame held (header included). */
  get bufferedBytes(): number {
    return this.body === null ? this.headerFilled : HEADER_BYTES + this.bodyFilled;
  }

  push(chunk: Uint8Array): Buffer[] {
    if (this.failed) throw this.failed;
    const frames: Buffer[] = [];
    let offset = 0;
    while (offset < chunk.length) {
      if (this.body === null) {
        const take = Math.min(HEADER_BYTES - this.headerFilled, chunk.length - offset);
        this.header.set(chunk.subarray(offset, offset + take), this.headerFilled);
        this.headerFilled += take;
        offset += take;
        if (this.headerFilled < HEADER_BYTES) break;
        const length = this.header.readUInt32BE(0);
        if (length === 0 || length > MAX_FRAME_BYTES) {
          this.failed = new FramingError(
            `grantvaultd sent a frame length of ${length} (allowed: 1 to ${MAX_FRAME_BYTES})`,
          );
          throw this.failed;
        }
        this.body = Buffer.alloc(length);
        this.bodyFilled = 0;
        this.headerFilled = 0;
      }
      const take = Math.min(this.body.length - this.bodyFilled, chunk.length - offset);
      this.body.set(chunk.subarray(offset, offset + take), this.bodyFilled);
      this.bodyFilled += take;
      offset += take;
      if (this.bodyFilled === this.body.length) {
        frames.push(this.body);
        this.body = null;
        this.bodyFilled = 0;
      }
    }
    return frames;
  }

  /** Zeroes and drops a partial frame (on close). */
  reset(): void {
    this.header.fill(0);
    this.headerFilled = 0;
    this.body?.fill(0);
    this.body = null;
    this.bodyFilled = 0;
  }
}
