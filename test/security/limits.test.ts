// Security: limits. Concurrent streams per client and in total (RESOURCE_EXHAUSTED with a clear
// message, slots returned when streams end), message size, partition count and size limits, and
// undecodable requests answered INVALID_ARGUMENT (not grpc-js's INTERNAL).
import * as grpc from '@grpc/grpc-js';
import { connect, pb, type VsmClient } from '@vsm/client';
import { CoreBackend, type RunningServer } from '@vsm/vsm-v1';
import { parsePolicy } from '@vsm/vsm-v1/security';
import { failure } from '../support/server';
import { partitionSpec, startSecured, tokenHash } from './support';

const clients: VsmClient[] = [];
const mk = (srv: RunningServer, token?: string) => {
  const c = connect(srv.address, { token, retries: 0, deadlineMs: 5000 });
  clients.push(c);
  return c;
};
afterAll(() => {
  for (const c of clients) c.close();
});

/** Opens a WatchVtlTransitions stream and resolves once the server accepted it (or rejects with its error). */
function watch(c: VsmClient, name: string): { ready: Promise<void>; cancel(): void; ended: Promise<unknown> } {
  const ac = new AbortController();
  const it = c.vtl.watchTransitions({ name }, ac.signal)[Symbol.asyncIterator]();
  const first = it.next();
  // An accepted stream starts with its 'subscribed' event and stays open; a refused one ends with an error.
  const ready = first.then((r) => {
    if (r.done || r.value?.event?.$case !== 'subscribed') throw new Error('stream ended');
  });
  const ended = first.then((r) => (r.done ? r : it.next())).catch((e: unknown) => e);
  return { ready, cancel: () => ac.abort(), ended };
}

describe('stream limits', () => {
  test('per client (peer address without a policy) and in total; slots come back when streams end', async () => {
    const { srv, lines } = await startSecured({ security: { limits: { maxStreams: 3, maxStreamsPerClient: 2 } } });
    try {
      const c = mk(srv);
      await c.partitions.createPartition({ partitionId: 'l', partition: partitionSpec() });
      const a = watch(c, 'partitions/l');
      const b = watch(c, 'partitions/l');
      await Promise.all([a.ready, b.ready]);
      const third = watch(c, 'partitions/l');
      const e = await failure(third.ready);
      expect([e.codeName, e.reason]).toEqual(['RESOURCE_EXHAUSTED', 'HV_STATUS_NO_RESOURCES']);
      expect(e.message).toBe('too many concurrent streams for client peer:127.0.0.1 (limit 2); close some first');
      expect(lines.some((l) => l.msg === 'stream refused: limit reached' && l.level === 40)).toBe(true);
      // Monitor streams count too.
      const m = c.intercepts.monitor();
      m.send({ kind: { $case: 'subscribe', value: { name: 'partitions/l', accessMask: 0 } as pb.MonitorSubscribe } });
      const me = await failure(
        (async () => {
          for await (const _ of m.events) return;
        })(),
      );
      expect(me.codeName).toBe('RESOURCE_EXHAUSTED');
      a.cancel();
      await new Promise((r) => setTimeout(r, 100));
      const again = watch(c, 'partitions/l');
      await again.ready;
      expect(srv.guard.streams.active).toBe(2);
      again.cancel();
      b.cancel();
      await new Promise((r) => setTimeout(r, 100));
      expect(srv.guard.streams.active).toBe(0);
    } finally {
      await srv.shutdown('test');
    }
  });

  test('per principal with a policy; the total bounds everyone', async () => {
    const policy = parsePolicy(
      JSON.stringify({
        principals: {
          a: { tokens: [tokenHash('a')], roles: { 'partitions/*': ['admin'] } },
          b: { tokens: [tokenHash('b')], roles: { 'partitions/*': ['viewer'] } },
        },
      }),
    );
    const { srv } = await startSecured({ security: { authzPolicy: policy, limits: { maxStreams: 3, maxStreamsPerClient: 2 } } });
    try {
      const a = mk(srv, 'a');
      const b = mk(srv, 'b');
      await a.partitions.createPartition({ partitionId: 'l', partition: partitionSpec() });
      const streams = [watch(a, 'partitions/l'), watch(a, 'partitions/l'), watch(b, 'partitions/l')];
      await Promise.all(streams.map((s) => s.ready));
      const e = await failure(watch(b, 'partitions/l').ready);
      expect([e.codeName, e.message]).toEqual(['RESOURCE_EXHAUSTED', 'too many concurrent streams on this server (limit 3); retry later']);
      const ea = await failure(watch(a, 'partitions/l').ready);
      expect(ea.message).toMatch(/for client principal:a \(limit 2\)/);
      for (const s of streams) s.cancel();
      await new Promise((r) => setTimeout(r, 100));
      expect(srv.guard.streams.active).toBe(0);
      // A refused (unauthorized) stream gives its slot back: b is no monitor.
      for (let i = 0; i < 3; i++) {
        const m = b.intercepts.monitor();
        m.send({ kind: { $case: 'subscribe', value: { name: 'partitions/l', accessMask: 0 } as pb.MonitorSubscribe } });
        expect(
          (
            await failure(
              (async () => {
                for await (const _ of m.events) return;
              })(),
            )
          ).codeName,
        ).toBe('PERMISSION_DENIED');
      }
      expect(srv.guard.streams.active).toBe(0);
    } finally {
      await srv.shutdown('test');
    }
  });
});

test('a Monitor stream the client half-closes ends with OK (and gives its slot back)', async () => {
  const { srv } = await startSecured({ security: { limits: { maxStreams: 1, maxStreamsPerClient: 1 } } });
  try {
    const c = mk(srv);
    await c.partitions.createPartition({ partitionId: 'h', partition: partitionSpec() });
    for (let i = 0; i < 3; i++) {
      const m = c.intercepts.monitor();
      m.send({ kind: { $case: 'subscribe', value: { name: 'partitions/h', accessMask: 0 } as pb.MonitorSubscribe } });
      m.send({
        kind: { $case: 'reply', value: { interceptId: 99n, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } as pb.InterceptReply },
      });
      m.close();
      const got: string[] = [];
      for await (const r of m.events) got.push(r.kind?.$case === 'replyResult' ? `reply:${pb.ReplyStatus[r.kind.value.status]}` : String(r.kind?.$case));
      expect(got).toEqual(['subscription', 'reply:REPLY_STATUS_UNKNOWN_INTERCEPT']);
    }
    expect(srv.guard.streams.active).toBe(0);
  } finally {
    await srv.shutdown('test');
  }
});

describe('request limits', () => {
  let srv: RunningServer;
  let c: VsmClient;
  beforeAll(async () => {
    ({ srv } = await startSecured({ backend: new CoreBackend({ maxPartitions: 2, maxMemoryBytes: 1n << 30n, maxVpCount: 4 }) }));
    c = mk(srv);
  });
  afterAll(() => srv.shutdown('test'));

  test('messages over 8 MiB are RESOURCE_EXHAUSTED', async () => {
    await c.partitions.createPartition({ partitionId: 'big', partition: partitionSpec() });
    const e = await failure(c.memory.writeGpa({ name: 'partitions/big', gpa: 0n, data: Buffer.alloc(8 * 1024 * 1024 + 1) }));
    expect(e.codeName).toBe('RESOURCE_EXHAUSTED');
    expect(e.message).toMatch(/larger than max/);
  });

  test('--max-partitions, --max-memory, --max-vps reach the core manager', async () => {
    expect((await failure(c.partitions.createPartition({ partition: { ...partitionSpec(), memoryBytes: 2n << 30n } }))).message).toMatch(
      /memory_bytes exceeds the limit of 1073741824/,
    );
    expect((await failure(c.partitions.createPartition({ partition: partitionSpec(5) }))).message).toMatch(/vp_count must be 1\.\.4/);
    await c.partitions.createPartition({ partitionId: 'second', partition: partitionSpec() });
    const e = await failure(c.partitions.createPartition({ partitionId: 'third', partition: partitionSpec() }));
    expect([e.codeName, e.message]).toEqual(['RESOURCE_EXHAUSTED', 'partition limit 2 reached']);
    expect((await c.partitions.getCapabilities({})).maxMemoryBytes).toBe(1n << 30n);
  });

  test('undecodable request bytes: INVALID_ARGUMENT, not INTERNAL', async () => {
    const raw = new grpc.Client(srv.address, grpc.credentials.createInsecure());
    const call = (path: string, bytes: Buffer) =>
      new Promise<grpc.ServiceError | null>((resolve) =>
        raw.makeUnaryRequest(
          path,
          (b: Buffer) => b,
          (b: Buffer) => b,
          bytes,
          (e) => resolve(e),
        ),
      );
    const e = await call('/vsm.v1.GuestService/WriteMsr', Buffer.from([0x0f, 0xff])); // wire type 7
    expect(e?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(e?.details).toMatch(/^the request is not a valid vsm.v1.GuestService\/WriteMsr request message: /);
    const e2 = await call('/vsm.v1.PartitionService/GetPartition', Buffer.from([0x0a, 0x05, 0x61])); // truncated string
    expect(e2?.code).toBe(grpc.status.INVALID_ARGUMENT);
    // Bidi: a malformed first Monitor message ends the stream with INVALID_ARGUMENT.
    const bidi = raw.makeBidiStreamRequest(
      '/vsm.v1.InterceptService/Monitor',
      (b: Buffer) => b,
      (b: Buffer) => b,
    );
    const be = await new Promise<grpc.ServiceError>((resolve) => {
      bidi.on('error', resolve);
      bidi.on('data', () => undefined);
      bidi.write(Buffer.from([0xff, 0xff, 0xff]));
    });
    expect(be.code).toBe(grpc.status.INVALID_ARGUMENT);
    raw.close();
  });
});
