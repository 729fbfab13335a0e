// Load held with nothing lost: 16 concurrent clients (each its own channel) drive guest actions and
// VTL switches on 16 partitions while 16 WatchVtlTransitions streams and 4 monitors are open; every
// transition reaches its watcher in order, every intercept is answered exactly once, every call
// succeeds. Bounded in count (not time), loopback only.
import pino from 'pino';
import { connect, pb, type VsmClient } from '@vsm/client';
import { CoreBackend, startServer } from '@vsm/vsm-v1';
import { HvMsr } from '@vsm/core';

const CLIENTS = 16;
const ROUNDS = 40; // VtlCall + VtlReturn pairs per client
const INTERCEPTS = 10; // monitor-answered writes per client (on 4 monitored partitions)

test(`${CLIENTS} clients, ${CLIENTS} watch streams, 4 monitors: nothing lost`, async () => {
  const srv = await startServer({ listen: '127.0.0.1:0', backend: new CoreBackend(), logger: pino({ level: 'silent' }), shutdownGraceMs: 500 });
  const clients: VsmClient[] = Array.from({ length: CLIENTS }, () => connect(srv.address, { deadlineMs: 60_000 }));
  try {
    const parts: string[] = [];
    for (let i = 0; i < CLIENTS; i++) {
      const c = clients[i]!;
      const p = await c.partitions.createPartition({
        partitionId: `load-${i}`,
        partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 } as pb.Partition,
      });
      const vp = `${p.name}/vps/0`;
      await c.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
      await c.vtl.enableVpVtl({ name: vp, targetVtl: 1 });
      await c.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 1n });
      await c.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x1001n });
      await c.guest.callHypercallPage({ name: vp, offset: 0x0f, rcx: 0n });
      await c.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 1n });
      await c.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x2001n });
      await c.vps.setVpRegisters({
        name: vp,
        vtl: 1,
        registers: [{ name: pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, value: { value: { $case: 'reg64', value: 1n | (0xfn << 1n) } } }],
      });
      await c.guest.callHypercallPage({ name: vp, offset: 0x26, rcx: 1n });
      if (i < 4) {
        await c.intercepts.modifyVtlProtectionMask({ name: p.name, protectingVtl: 1, mapFlags: 0x1, ranges: [{ startPage: 0x40n, pageCount: 1n }] });
        await c.intercepts.setInterceptRoute({ name: p.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
      }
      parts.push(p.name);
    }
    // Watchers (one per partition, each on another client's channel) and monitors.
    const ac = new AbortController();
    const registered: Promise<void>[] = [];
    const watched = parts.map((name, i) => {
      const seqs: bigint[] = [];
      let lagged = false;
      let ready!: () => void;
      registered.push(new Promise<void>((r) => (ready = r)));
      const done = (async () => {
        for await (const ev of clients[(i + 1) % CLIENTS]!.vtl.watchTransitions({ name }, ac.signal)) {
          if (ev.event?.$case === 'subscribed') ready();
          if (ev.event?.$case === 'transition') seqs.push(ev.event.value.sequence);
          if (ev.event?.$case === 'lagged') lagged = true;
          if (seqs.length === ROUNDS * 2) break;
        }
      })();
      return { seqs, done, lagged: () => lagged };
    });
    const answered = new Map<bigint, number>();
    const monitors = parts.slice(0, 4).map((name, i) => {
      const m = clients[(i + 2) % CLIENTS]!.intercepts.monitor(ac.signal);
      m.send({ kind: { $case: 'subscribe', value: pb.MonitorSubscribe.fromPartial({ name }) } });
      let ready!: () => void;
      registered.push(new Promise<void>((r) => (ready = r)));
      const done = (async () => {
        for await (const ev of m.events) {
          if (ev.kind?.$case === 'subscription') ready();
          if (ev.kind?.$case === 'intercept' && ev.kind.value.needsReply) {
            const key = BigInt(i) * 1_000_000n + ev.kind.value.interceptId;
            answered.set(key, (answered.get(key) ?? 0) + 1);
            m.send({
              kind: {
                $case: 'reply',
                value: { interceptId: ev.kind.value.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) },
              },
            });
          }
        }
      })().catch(() => undefined);
      return { m, done };
    });
    // Every watcher and monitor answered its subscription: nothing of the load can be missed.
    await Promise.all(registered);
    // The load: every client switches VTLs ROUNDS times; the first 4 also fault INTERCEPTS times.
    await Promise.all(
      clients.map(async (c, i) => {
        const vp = `${parts[i]}/vps/0`;
        for (let k = 0; k < ROUNDS; k++) {
          const a = await c.guest.callHypercallPage({ name: vp, offset: 0x0f, rcx: 0n });
          const b = await c.guest.callHypercallPage({ name: vp, offset: 0x26, rcx: 1n });
          if (!a.outcome?.vtlSwitch || !b.outcome?.vtlSwitch) throw new Error(`client ${i}: a switch did not happen`);
          if (i < 4 && k < INTERCEPTS) {
            const w = await c.guest.writeMemory({ name: vp, gpa: 0x40000n + BigInt(k), data: Buffer.from([k]) });
            if (w.outcome?.exception) throw new Error('write failed');
          }
        }
      }),
    );
    await Promise.all(watched.map((w) => w.done));
    for (const w of watched) {
      expect(w.lagged()).toBe(false);
      expect(w.seqs).toHaveLength(ROUNDS * 2);
      for (let k = 1; k < w.seqs.length; k++) expect(w.seqs[k]).toBe(w.seqs[k - 1]! + 1n);
    }
    expect(answered.size).toBe(4 * INTERCEPTS);
    expect([...answered.values()].every((n) => n === 1)).toBe(true);
    for (let i = 0; i < 4; i++) {
      const bytes = (await clients[0]!.memory.readGpa({ name: parts[i]!, gpa: 0x40000n, length: INTERCEPTS })).data;
      expect([...bytes]).toEqual(Array.from({ length: INTERCEPTS }, (_, k) => k));
    }
    ac.abort();
    for (const m of monitors) m.m.cancel();
    await Promise.all(monitors.map((m) => m.done));
  } finally {
    for (const c of clients) c.close();
    await srv.shutdown('test');
  }
}, 180_000);
