// The call guard's interceptor keeps a call's HTTP/2 stream (by its metadata object) only for calls
// that stream responses, the only ones the server looks it up for (resetting a stream whose client
// stopped reading). A unary call must not get an entry: V8's scavenger keeps the value of a WeakMap
// entry with a young key alive as if it were strong, so an entry per unary call kept every call's
// HTTP/2 stream and grpc-js call into the old generation (bench/README.md "Unary guest actions"). A real
// grpc-js server with the guard's interceptor, a unary and a server-streaming method.
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { CallGuard } from '../src/security/guard';

const same = (b: Buffer) => b;
const method = (name: string, responseStream: boolean) => ({
  path: `/vsm.v1.GuardTest/${name}`,
  requestStream: false,
  responseStream,
  requestSerialize: same,
  requestDeserialize: same,
  responseSerialize: same,
  responseDeserialize: same,
});
const service = { unary: method('Unary', false), stream: method('Stream', true) };

test('a unary call leaves no transport behind; a server stream has its own', async () => {
  const guard = new CallGuard({}, pino({ level: 'silent' }));
  const seen: { unary?: unknown; stream?: unknown } = {};
  const server = new grpc.Server({ interceptors: [guard.interceptor()] });
  server.addService(service, {
    unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      seen.unary = guard.transportOf(call.metadata) ?? 'none';
      cb(null, Buffer.from('u'));
    },
    stream: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
      seen.stream = guard.transportOf(call.metadata) ?? 'none';
      call.write(Buffer.from('s'));
      call.end();
    },
  });
  const port = await new Promise<number>((res, rej) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
  );
  const Client = grpc.makeGenericClientConstructor(service, 'GuardTest');
  const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as {
    unary(req: Buffer, cb: (e: grpc.ServiceError | null, r?: Buffer) => void): void;
    stream(req: Buffer): AsyncIterable<Buffer>;
    close(): void;
  };
  try {
    const u = await new Promise<Buffer | undefined>((res, rej) => client.unary(Buffer.from('x'), (e, r) => (e ? rej(e) : res(r))));
    expect(u?.toString()).toBe('u');
    const got: string[] = [];
    for await (const m of client.stream(Buffer.from('y'))) got.push(m.toString());
    expect(got).toEqual(['s']);
    expect(seen.unary).toBe('none');
    // The HTTP/2 stream itself (what the lagging-stream reset closes).
    expect((seen.stream as object).constructor.name).toBe('ServerHttp2Stream');
  } finally {
    client.close();
    server.forceShutdown();
    guard.close();
  }
});
