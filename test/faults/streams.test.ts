// Faults around streams and deadlines (README "Operations"):
// - a guest action waiting for a monitor past the caller's deadline fails DEADLINE_EXCEEDED, the VP
//   stays suspended, and a later answer still applies exactly once;
// - a client that cancels a watch stream mid-way frees the server side;
// - a slow WatchVtlTransitions consumer gets an explicit `lagged` count; delivered + missed = all.
import { status } from '@grpc/grpc-js';
import pino from 'pino';
import { connect, pb } from '@vsm/client';
import { CoreBackend, startServer } from '@vsm/vsm-v1';
import { GiB, type Harness, failure, startHarness } from '../support/server';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h.stop();
});

const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });

async function vtlPartition(id: string) {
  const p = await h.client.partitions.createPartition({ partitionId: id, partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
  const vp0 = `${p.name}/vps/0`;
  await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
  await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
  return { name: p.name, vp0 };
}

test('deadline while waiting for a monitor: DEADLINE_EXCEEDED, VP stays suspended, a later answer applies once', async () => {
  const { name, vp0 } = await vtlPartition('flt-deadline');
  await h.client.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] });
  await h.client.intercepts.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: 0x1, ranges: [{ startPage: 0x40n, pageCount: 1n }] });
  await h.client.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
  const e = await failure(h.client.guest.writeMemory({ name: vp0, gpa: 0x40000n, data: Buffer.from('late') }, { deadlineMs: 300 }));
  expect(e.code).toBe(status.DEADLINE_EXCEEDED);
  const vp = await h.client.vps.getVirtualProcessor({ name: vp0 });
  expect(vp.vtlStatus?.interceptSuspended).toBe(true);
  // Other guest actions on the suspended VP are refused, not queued behind it.
  const busy = await failure(h.client.guest.readMemory({ name: vp0, gpa: 0n, length: 1 }));
  expect([busy.code, busy.reason]).toEqual([status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_VP_STATE']);
  const m = h.client.intercepts.monitor();
  const it = m.events[Symbol.asyncIterator]();
  m.send({ kind: { $case: 'subscribe', value: { name, accessMask: 0 } as pb.MonitorSubscribe } });
  await it.next();
  const ev = (await it.next()).value;
  if (ev.kind?.$case !== 'intercept') throw new Error('expected the pending intercept');
  for (let i = 0; i < 2; i++)
    m.send({
      kind: { $case: 'reply', value: { interceptId: ev.kind.value.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } },
    });
  const results = [(await it.next()).value, (await it.next()).value].map((r) => (r.kind?.$case === 'replyResult' ? r.kind.value.status : -1));
  expect(results).toEqual([pb.ReplyStatus.REPLY_STATUS_APPLIED, pb.ReplyStatus.REPLY_STATUS_DUPLICATE]);
  expect(Buffer.from((await h.client.memory.readGpa({ name, gpa: 0x40000n, length: 4 })).data).toString()).toBe('late');
  expect((await h.client.vps.getVirtualProcessor({ name: vp0 })).vtlStatus?.interceptSuspended).toBe(false);
  m.cancel();
});

test('a slow transition watcher is told exactly how many transitions it missed', async () => {
  // Its own server, so the test can drive 200,000 transitions through the core quickly; the
  // stream, its flow control and the per-watcher queue (1024) are the real ones.
  const backend = new CoreBackend();
  const srv = await startServer({ listen: '127.0.0.1:0', backend, logger: pino({ level: 'silent' }), shutdownGraceMs: 200 });
  const client = connect(srv.address);
  try {
    const p = await client.partitions.createPartition({ partitionId: 'flt-slow', partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
    await client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    await client.vtl.enableVpVtl({ name: `${p.name}/vps/0`, targetVtl: 1 });
    const core = backend.manager.get('flt-slow');
    const vp = core.vps[0]!;
    const ac = new AbortController();
    const iter = client.vtl.watchTransitions({ name: p.name }, ac.signal)[Symbol.asyncIterator]();
    // Opens the call; its first event says the watch is registered. Nothing more is read until all
    // transitions happened.
    const first = await iter.next();
    expect(first.value?.event?.$case).toBe('subscribed');
    const total = 200_000;
    for (let i = 0; i < total / 2; i++) {
      core.switchVtl(vp, 1, 1, false);
      core.switchVtl(vp, 0, 0, true);
    }
    let delivered = 0;
    let missed = 0n;
    let lastSeq = 0n;
    const seen = (r: IteratorResult<pb.WatchVtlTransitionsResponse>) => {
      const ev = r.value?.event;
      if (ev?.$case === 'transition') {
        expect(ev.value.sequence).toBeGreaterThan(lastSeq);
        lastSeq = ev.value.sequence;
        delivered++;
      } else if (ev?.$case === 'lagged') {
        expect(ev.value.firstMissedSequence).toBeGreaterThan(lastSeq);
        missed += ev.value.missed;
      }
    };
    while (delivered + Number(missed) < total) seen(await iter.next());
    expect(missed).toBeGreaterThan(0n);
    expect(delivered + Number(missed)).toBe(total);
    // The watcher keeps going after the gap: the next transition arrives with the next sequence.
    core.switchVtl(vp, 1, 1, false);
    seen(await iter.next());
    expect(lastSeq).toBe(BigInt(total + 1));
    ac.abort();
  } finally {
    client.close();
    await srv.shutdown();
  }
}, 120_000);

test('a cancelled watch stream frees the server side; the service keeps serving', async () => {
  const { name } = await vtlPartition('flt-cancel');
  for (let i = 0; i < 50; i++) {
    const ac = new AbortController();
    const it = h.client.vtl.watchTransitions({ name }, ac.signal)[Symbol.asyncIterator]();
    const pending = it.next();
    ac.abort();
    await pending.catch(() => undefined);
  }
  expect((await h.client.partitions.getPartition({ name })).name).toBe(name);
});
