// Framing (src/framing.ts): lengths, partial frames, refused lengths.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { encodeFrame, FrameDecoder, FramingError, MAX_FRAME_BYTES } from '@grantvault/client';

test('encodeFrame writes a big-endian length and refuses empty or oversized messages', () => {
  assert.deepEqual([...encodeFrame(Uint8Array.of(8, 1, 0x52, 2, 8, 1))], [0, 0, 0, 6, 8, 1, 0x52, 2, 8, 1]);
  const largest = encodeFrame(new Uint8Array(MAX_FRAME_BYTES));
  assert.equal(largest.readUInt32BE(0), 65_536);
  assert.throws(() => encodeFrame(new Uint8Array(0)), FramingError);
  assert.throws(() => encodeFrame(new Uint8Array(MAX_FRAME_BYTES + 1)), /1 to 65536 bytes; this message has 65537/);
});

test('a stream cut at every byte boundary gives back the same frames', () => {
  const messages = [Uint8Array.of(1), Buffer.from('hello world'), new Uint8Array(MAX_FRAME_BYTES).fill(7), Uint8Array.of(9, 9)];
  const stream = Buffer.concat(messages.map((m) => encodeFrame(m)));
  for (const step of [1, 2, 3, 4, 5, 7, 1000, stream.length]) {
    const decoder = new FrameDecoder();
    const out = [];
    for (let i = 0; i < stream.length; i += step) out.push(...decoder.push(stream.subarray(i, i + step)));
    assert.deepEqual(out.map((b) => Buffer.from(b).toString('hex')), messages.map((m) => Buffer.from(m).toString('hex')), `step ${step}`);
    assert.equal(decoder.bufferedBytes, 0);
  }
});

test('a partial frame is kept until the rest arrives', () => {
  const decoder = new FrameDecoder();
  const frame = encodeFrame(Buffer.from('abcdef'));
  assert.deepEqual(decoder.push(frame.subarray(0, 3)), []);
  assert.equal(decoder.bufferedBytes, 3);
  assert.deepEqual(decoder.push(frame.subarray(3, 8)), []);
  assert.equal(decoder.bufferedBytes, 8);
  const [message] = decoder.push(frame.subarray(8));
  assert.equal(message.toString(), 'abcdef');
});

test('a length of 0 breaks the decoder for good', () => {
  const decoder = new FrameDecoder();
  assert.throws(() => decoder.push(Buffer.from([0, 0, 0, 0, 1])), /frame length of 0 \(allowed: 1 to 65536\)/);
  assert.throws(() => decoder.push(encodeFrame(Uint8Array.of(1))), FramingError);
});

test('a length above 65,536 is refused as soon as the header is complete', () => {
  const decoder = new FrameDecoder();
  assert.deepEqual(decoder.push(Buffer.from([0, 1, 0])), []);
  assert.throws(() => decoder.push(Buffer.from([1])), /frame length of 65537/);
  assert.throws(() => new FrameDecoder().push(Buffer.from([0xff, 0xff, 0xff, 0xff])), /frame length of 4294967295/);
});

test('frames handed out do not share memory with the input', () => {
  const decoder = new FrameDecoder();
  const input = encodeFrame(Buffer.from('secret'));
  const [message] = decoder.push(input);
  input.fill(0);
  assert.equal(message.toString(), 'secret');
});
