// The raw grpc-js echo service used as the in-run baseline: no protobuf at all, payloads are
// Buffers passed through identity serializers, so the figures are the floor of what grpc-js
// over HTTP/2 on loopback costs on this machine. Exported so later suites can measure the same
// baseline interleaved with their own operations if they need to.
//
//   /bench.RawEcho/Unary     unary           reply = request bytes
//   /bench.RawEcho/PingPong  bidi streaming  each request message is echoed back
//   /bench.RawEcho/Stream    server stream   request = u32be size, u32be count (0 = until cancelled);
//                                            replies `count` messages of `size` bytes, honouring backpressure
import * as grpc from '@grpc/grpc-js';

const identity = (b: Buffer): Buffer => b;

function method(pathName: string, requestStream: boolean, responseStream: boolean): grpc.MethodDefinition<Buffer, Buffer> {
  return {
    path: `/bench.RawEcho/${pathName}`,
    requestStream,
    responseStream,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  };
}

export const RAW_ECHO = {
  Unary: method('Unary', false, false),
  PingPong: method('PingPong', true, true),
  Stream: method('Stream', false, true),
} as const;

export const rawEchoDefinition: grpc.ServiceDefinition = RAW_ECHO;

export function encodeStreamRequest(size: number, count: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(size, 0);
  b.writeUInt32BE(count, 4);
  return b;
}

export function decodeStreamRequest(b: Buffer): { size: number; count: number } {
  if (b.length < 8) throw new Error('stream request must be 8 bytes');
  return { size: b.readUInt32BE(0), count: b.readUInt32BE(4) };
}

/** Server-side implementation. */
export const rawEchoImplementation: grpc.UntypedServiceImplementation = {
  Unary(call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) {
    callback(null, call.request);
  },
  PingPong(call: grpc.ServerDuplexStream<Buffer, Buffer>) {
    call.on('data', (m: Buffer) => call.write(m));
    call.on('end', () => call.end());
    call.on('error', () => undefined);
  },
  Stream(call: grpc.ServerWritableStream<Buffer, Buffer>) {
    let req: { size: number; count: number };
    try {
      req = decodeStreamRequest(call.request);
    } catch (e) {
      call.destroy(Object.assign(new Error((e as Error).message), { code: grpc.status.INVALID_ARGUMENT }));
      return;
    }
    const payload = Buffer.alloc(req.size, 0x5a);
    let sent = 0;
    let stopped = false;
    call.on('cancelled', () => (stopped = true));
    call.on('error', () => (stopped = true));
    const pump = (): void => {
      while (!stopped && (req.count === 0 || sent < req.count)) {
        sent++;
        if (!call.write(payload)) {
          call.once('drain', pump);
          return;
        }
      }
      if (!stopped) call.end();
    };
    pump();
  },
};

/** Client for the raw echo service; every call is one-in-flight friendly (promise per round trip). */
export class RawEchoClient {
  readonly client: grpc.Client;

  constructor(address: string, options: grpc.ChannelOptions = {}) {
    this.client = new grpc.Client(address, grpc.credentials.createInsecure(), options);
  }

  ready(timeoutMs = 10000): Promise<void> {
    return new Promise((resolve, reject) => this.client.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve())));
  }

  unary(payload: Buffer): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(RAW_ECHO.Unary.path, identity, identity, payload, (err, res) => (err ? reject(err) : resolve(res as Buffer)));
    });
  }

  /** Opens one bidi stream; `roundTrip` writes one message and resolves with the echo. */
  pingPong(): PingPong {
    return new PingPong(this.client.makeBidiStreamRequest(RAW_ECHO.PingPong.path, identity, identity));
  }

  /**
   * Starts a server stream of `size`-byte messages (count 0 = until cancel()); `onMessage` sees
   * each one. `done` resolves when the stream ends or is cancelled, rejects on other errors.
   */
  stream(size: number, count: number, onMessage: (m: Buffer) => void): { cancel(): void; done: Promise<void> } {
    const call = this.client.makeServerStreamRequest(RAW_ECHO.Stream.path, identity, identity, encodeStreamRequest(size, count));
    let cancelled = false;
    call.on('data', onMessage);
    const done = new Promise<void>((resolve, reject) => {
      call.on('end', () => resolve());
      call.on('error', (e: grpc.ServiceError) => (cancelled && e.code === grpc.status.CANCELLED ? resolve() : reject(e)));
    });
    return {
      cancel: () => {
        cancelled = true;
        call.cancel();
      },
      done,
    };
  }

  close(): void {
    this.client.close();
  }
}

export class PingPong {
  private pending: { resolve(b: Buffer): void; reject(e: Error): void } | null = null;
  private failure: Error | null = null;

  constructor(private readonly call: grpc.ClientDuplexStream<Buffer, Buffer>) {
    call.on('data', (m: Buffer) => {
      const p = this.pending;
      this.pending = null;
      p?.resolve(m);
    });
    const fail = (e: Error) => {
      this.failure = e;
      const p = this.pending;
      this.pending = null;
      p?.reject(e);
    };
    call.on('error', fail);
    call.on('end', () => fail(new Error('ping-pong stream ended')));
  }

  roundTrip(payload: Buffer): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.pending) return Promise.reject(new Error('ping-pong: one round trip at a time'));
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      this.call.write(payload);
    });
  }

  close(): void {
    this.failure ??= new Error('ping-pong closed');
    this.call.end();
  }
}
