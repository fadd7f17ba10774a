// A scripted peer on a Unix socket that speaks the wire protocol, for the
// client's unit tests: what the client does with answers the real daemon
// gives only rarely (broken frames, out-of-order answers, a stall) or not yet.
// The real daemon is tested in daemon.test.mjs and proxy.test.mjs.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { create, fromBinary, toBinary } from '@bufbuild/protobuf';

import { encodeFrame, FrameDecoder } from '@grantvault/client';
import { RequestSchema, ResponseSchema } from '../dist/esm/gen/grantvault/v1/envelope_pb.js';

export function frameOf(response) {
  return encodeFrame(toBinary(ResponseSchema, create(ResponseSchema, response)));
}

export class FakeDaemon {
  /**
   * @param {(request, peer) => void} onRequest called for every request but Hello, which is
   *   answered unless `onConnect` returns false
   */
  static async start({ onRequest = () => {}, onConnect = () => true } = {}) {
    const daemon = new FakeDaemon(onRequest, onConnect);
    await new Promise((resolve, reject) => {
      daemon.server.once('error', reject);
      daemon.server.listen(daemon.socketPath, resolve);
    });
    return daemon;
  }

  constructor(onRequest, onConnect) {
    this.dir = mkdtempSync(join(tmpdir(), 'gv-fake-'));
    this.socketPath = join(this.dir, 'agent.sock');
    this.connections = 0;
    this.requests = []; // every request received, Hello included
    this.peers = new Set();
    this.server = createServer((socket) => {
      this.connections += 1;
      const peer = new Peer(socket);
      this.peers.add(peer);
      socket.on('close', () => this.peers.delete(peer));
      socket.on('error', () => {});
      if (!onConnect(peer)) return;
      const decoder = new FrameDecoder();
      socket.on('data', (chunk) => {
        for (const frame of decoder.push(chunk)) {
          const request = fromBinary(RequestSchema, frame);
          this.requests.push(request);
          if (request.body.case === 'hello') {
            peer.hello = request.body.value;
            peer.send({ requestId: request.requestId, body: { case: 'hello', value: { protocolVersion: 1, serverVersion: 'fake-1', socketRole: 1 } } });
          } else {
            onRequest(request, peer);
          }
        }
      });
    });
  }

  /** Requests of one kind (body case), in arrival order. */
  received(kind) {
    return this.requests.filter((r) => r.body.case === kind);
  }

  async stop() {
    for (const peer of this.peers) peer.socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
    rmSync(this.dir, { recursive: true, force: true });
  }
}

class Peer {
  constructor(socket) {
    this.socket = socket;
    this.hello = null;
  }

  send(response) {
    this.socket.write(frameOf(response));
  }

  error(requestId, code, message, extra = {}) {
    this.send({ requestId, body: { case: 'error', value: { code, message, ...extra } } });
  }
}
