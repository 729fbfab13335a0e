// Live migration between agents (MigratePartition, issue #17), with real processes: two vsm-kvm-agent
// processes and vsm-service --backend agent in front of them (plus a third --agent address nobody
// listens on). A running 2-VP guest (migration-guest.ts: both VPs keep writing RAM, VP 0 prints a
// counter on COM1) moves from its agent to the other: the console stream through the service goes
// on without a gap or a repeat, both VPs keep running on the target, and what is in RAM agrees with
// each VP's registers. A partition with VTL1, overlays, protections, a queued SynIC message and a
// pending monitor intercept moves with its state identical (SavePartition before and after) and the
// intercept is redelivered under its id, applied once. Bad input and cancellation leave the source
// partition where it was, running.
import * as net from 'node:net';
import { status } from '@grpc/grpc-js';
import { HvMsr } from '@vsm/core';
import { connect, pb, type VsmClient, VsmError } from '@vsm/client';
import { CoreBackend, staticOwner } from '@vsm/vsm-v1';
import { vsmctl } from '../../../test/cli/support';
import { AGENT_MAIN, type ChildService, spawnService } from '../../../test/support/child-service';
import { type LooseBackend, vtl1MidCallSession } from './agent-diff-support';
import { describeKvm, failure, startAgent } from './agent-support';
import { BAD_MEMORY_EXIT, MG, migrationGuestImage } from './migration-guest';

jest.setTimeout(120_000);

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** The client's services as one LooseBackend (the differential support's scenario steps run through the service). */
function viaClient(c: VsmClient): LooseBackend {
  const groups = [c.partitions, c.vps, c.guest, c.memory, c.vtl, c.intercepts, c.synic, c.snapshots, c.execution] as unknown as Record<string, unknown>[];
  return new Proxy({} as LooseBackend, {
    get(_t, prop) {
      for (const g of groups) {
        const f = g[prop as string];
        if (typeof f === 'function') return (req: unknown) => (f as (r: unknown) => unknown).call(g, req);
      }
      return undefined;
    },
  });
}

async function collect(it: AsyncIterable<pb.MigrationProgress>, onEach?: (m: pb.MigrationProgress) => void): Promise<pb.MigrationProgress[]> {
  const out: pb.MigrationProgress[] = [];
  for await (const m of it) {
    out.push(m);
    onEach?.(m);
  }
  return out;
}

/** Waits until `pred` holds (polling; no timing assertions). */
async function until<T>(what: string, f: () => Promise<T>, pred: (v: T) => boolean, limitMs = 60_000): Promise<T> {
  const end = Date.now() + limitMs;
  for (;;) {
    const v = await f();
    if (pred(v)) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${String(v)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describeKvm('live migration between two KVM agents (real processes)', () => {
  let a: ChildService;
  let b: ChildService;
  let svc: ChildService;
  let c: VsmClient;
  let ca: VsmClient;
  let cb: VsmClient;
  let dead: string;
  let agents: string[];

  beforeAll(async () => {
    [a, b] = await Promise.all([
      spawnService([], { main: AGENT_MAIN, name: 'vsm-kvm-agent A' }),
      spawnService([], { main: AGENT_MAIN, name: 'vsm-kvm-agent B' }),
    ]);
    dead = `127.0.0.1:${await freePort()}`;
    agents = [a.address, b.address, dead];
    svc = await spawnService(['--backend', 'agent', '--agent', agents.join(',')], { name: 'vsm-service (agents A, B, dead)' });
    c = connect(svc.address, { deadlineMs: 30_000 });
    ca = connect(a.address, { deadlineMs: 30_000 });
    cb = connect(b.address, { deadlineMs: 30_000 });
  });
  afterAll(async () => {
    for (const x of [c, ca, cb]) x?.close();
    await svc?.stop();
    await Promise.all([a?.stop(), b?.stop()]);
  });

  /** A partition id whose static owner is agent A (so the service places it there). */
  const idOnA = (stem: string) => {
    for (let i = 0; ; i++) if (staticOwner(`${stem}-${i}`, agents) === 0) return `${stem}-${i}`;
  };

  /** A 2-VP partition on A running the migration guest, its console printing. */
  async function runningGuest(stem: string) {
    const id = idOnA(stem);
    const name = `partitions/${id}`;
    await c.partitions.createPartition({ partitionId: id, partition: { vpCount: 2, memoryBytes: MG.memoryBytes } as pb.Partition });
    await c.execution.loadGuestImage({
      name,
      image: migrationGuestImage(),
      format: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_FLAT,
      loadGpa: MG.flat,
      entryPoint: MG.flat,
      entryMode: pb.GuestEntryMode.GUEST_ENTRY_MODE_LONG64,
    });
    await c.execution.startPartition({ name });
    return { id, name };
  }

  /** The console through the service, as text, until `stop` aborts. */
  function consoleOf(name: string) {
    const ac = new AbortController();
    const state = { text: '', offsets: [] as bigint[], end: undefined as pb.GuestRunEnd | undefined, error: undefined as unknown };
    const done = (async () => {
      try {
        for await (const m of c.execution.streamConsole({ name, fromOffset: 0n }, ac.signal)) {
          if (m.kind?.$case === 'chunk') {
            expect(m.kind.value.offset).toBe(BigInt(Buffer.byteLength(state.text, 'latin1')));
            state.text += Buffer.from(m.kind.value.data).toString('latin1');
          } else if (m.kind?.$case === 'end') state.end = m.kind.value;
        }
      } catch (e) {
        if (!ac.signal.aborted) state.error = e;
      }
    })();
    return {
      state,
      stop: async () => {
        ac.abort();
        await done;
      },
      lines: () => state.text.split('\n').slice(0, -1),
    };
  }

  test('a running 2-VP guest moves: its console continues without a gap, both VPs keep running, RAM agrees with the registers', async () => {
    const { name } = await runningGuest('mig-run');
    const con = consoleOf(name);
    await until(
      'console lines on the source',
      async () => con.lines().length,
      (n) => n >= 5,
    );
    const vp1Before = Buffer.from((await c.memory.readGpa({ name, gpa: MG.counter1, length: 8 })).data).readBigUInt64LE(0);
    expect(vp1Before).toBeGreaterThan(0n);

    const progress = await collect(c.snapshots.migratePartition({ name, targetAgent: `agents/${b.address}`, maxRounds: 3 }));
    const last = progress[progress.length - 1]!;
    expect(last.phase).toBe(pb.MigrationPhase.MIGRATION_PHASE_DONE);
    const res = last.result!;
    expect(res).toMatchObject({ sourceAgent: a.address, targetAgent: b.address });
    expect(progress.filter((p) => p.phase === pb.MigrationPhase.MIGRATION_PHASE_PRECOPY).length).toBeGreaterThanOrEqual(2);
    expect(progress.filter((p) => p.phase === pb.MigrationPhase.MIGRATION_PHASE_SWITCHOVER)).toHaveLength(1);
    expect(progress[0]!.pagesSent).toBeGreaterThanOrEqual(BigInt(MG.data0Pages + MG.data1Pages)); // the full copy
    expect(res.rounds).toBe(progress.length - 1);
    expect(res.downtimeMs).toBeLessThanOrEqual(res.totalMs);
    console.log(
      `live migration of a running 2-VP guest writing ${MG.data0Pages + MG.data1Pages} pages per loop: downtime ${res.downtimeMs} ms, total ${res.totalMs} ms, ` +
        `${res.rounds} rounds, ${res.pagesSent} pages, ${res.bytesSent} bytes; per round: ${progress
          .slice(0, -1)
          .map((p) => `${p.pagesSent}p/${p.bytesSent}B@${p.elapsedMs}ms`)
          .join(' ')}`,
    );

    // On B, running; gone from A.
    expect((await cb.partitions.getPartition({ name })).runState).toBe(pb.RunState.RUN_STATE_RUNNING);
    expect((await failure(ca.partitions.getPartition({ name }))).code).toBe(status.NOT_FOUND);
    expect((await c.partitions.getPartition({ name })).runState).toBe(pb.RunState.RUN_STATE_RUNNING);

    // The console (one stream through the service) goes on: consecutive counters across the move.
    const atMove = con.lines().length;
    await until(
      'console lines on the target',
      async () => con.lines().length,
      (n) => n >= atMove + 5,
    );
    await con.stop();
    expect(con.state.error).toBeUndefined();
    expect(con.state.end).toBeUndefined();
    const counters = con.lines().map((l) => Number.parseInt(l, 16));
    expect(con.lines().every((l) => /^[0-9a-f]{8}$/.test(l))).toBe(true);
    for (let i = 1; i < counters.length; i++) expect(counters[i]).toBe(counters[i - 1]! + 1);

    // Neither VP found a page of its region other than it left it (migration-guest.ts checks its RAM).
    expect((await c.partitions.getPartition({ name })).runState).toBe(pb.RunState.RUN_STATE_RUNNING);
    expect(Buffer.from((await c.memory.readGpa({ name, gpa: MG.vp1Bad, length: 8 })).data).readBigUInt64LE(0)).toBe(0n);
    // VP 1 runs on B too: its counter goes on from where it was.
    const vp1After = await until(
      'VP 1 counting on the target',
      async () => Buffer.from((await c.memory.readGpa({ name, gpa: MG.counter1, length: 8 })).data).readBigUInt64LE(0),
      (v) => v > vp1Before + 2n,
    );
    expect(vp1After).toBeGreaterThan(vp1Before);

    // And back to A with vsmctl (its --json lines: one per round, then the result); the partition was
    // on B, not its static owner: the service finds it there.
    const back = await vsmctl(['--address', svc.address, '--json', 'migrate', name.slice('partitions/'.length), '--to', a.address, '--max-rounds', '2']);
    expect([back.code, back.stderr]).toEqual([0, '']);
    const lines = back.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    // The full copy, 1 or 2 deltas (fewer when a round finds <= 64 pages written), the switch-over.
    const phases = lines.slice(0, -1).map((l) => l.phase);
    expect(phases.length === 3 || phases.length === 4).toBe(true);
    expect(phases).toEqual([...phases.slice(0, -1).map(() => 'pre-copy'), 'switch-over (guest paused)']);
    expect(lines[lines.length - 1]).toMatchObject({
      name,
      sourceAgent: b.address,
      targetAgent: a.address,
      runState: 'RUN_STATE_RUNNING',
      rounds: phases.length,
    });
    expect((await ca.partitions.getPartition({ name })).runState).toBe(pb.RunState.RUN_STATE_RUNNING);
    expect((await failure(cb.partitions.getPartition({ name }))).code).toBe(status.NOT_FOUND);
    await until(
      'VP 1 counting on A again',
      async () => Buffer.from((await c.memory.readGpa({ name, gpa: MG.counter1, length: 8 })).data).readBigUInt64LE(0),
      (v) => v > vp1After + 2n,
    );

    // Paused: each VP's pages hold its R12 for a prefix and R12 - 1 after it (the loop's store order).
    await c.execution.pausePartition({ name });
    const exported: pb.SnapshotChunk[] = [];
    for await (const ch of c.snapshots.exportPartition({ name })) exported.push(ch); // reads the VPs back from KVM
    const guest = exported[0]!.chunk?.$case === 'header' ? exported[0]!.chunk.value.guest : undefined;
    expect(guest?.runState).toBe(pb.RunState.RUN_STATE_PAUSED);
    expect(guest!.consoleOffset).toBeGreaterThanOrEqual(BigInt(con.state.text.length));
    for (const [vp, base, pages] of [
      [0, MG.data0, MG.data0Pages],
      [1, MG.data1, MG.data1Pages],
    ] as const) {
      const regs = await c.vps.getVpRegisters({ name: `${name}/vps/${vp}`, vtl: 0, names: [pb.HvRegisterName.HV_REGISTER_NAME_X64_R12] });
      const r12 = regs.registers[0]!.value!.value!.$case === 'reg64' ? (regs.registers[0]!.value!.value as { value: bigint }).value : -1n;
      const values: bigint[] = [];
      for (let i = 0; i < pages; i++)
        values.push(Buffer.from((await c.memory.readGpa({ name, gpa: base + BigInt(i) * 4096n, length: 8 })).data).readBigUInt64LE(0));
      const k = values.findIndex((v) => v !== r12);
      const prefix = k < 0 ? pages : k;
      expect(values.slice(0, prefix).every((v) => v === r12)).toBe(true);
      expect(values.slice(prefix).every((v) => v === r12 - 1n)).toBe(true);
      expect(r12).toBeGreaterThan(1n);
    }
    await c.partitions.deletePartition({ name });
  });

  /** A Monitor stream through the service, subscribed. `next` throws the stream's error; 'ended' when it ended. */
  async function subscribe(name: string) {
    const m = c.intercepts.monitor();
    const it = m.events[Symbol.asyncIterator]();
    m.send({ kind: { $case: 'subscribe', value: { name, accessMask: 0 } as pb.MonitorSubscribe } });
    const next = async (): Promise<pb.MonitorResponse> => {
      const r = await it.next();
      if (r.done) return { kind: { $case: 'ended' } } as unknown as pb.MonitorResponse;
      return r.value;
    };
    expect((await next()).kind?.$case).toBe('subscription');
    return { m, next };
  }

  test('VSM state identical after the move; a pending monitor intercept is redelivered under its id and applied once', async () => {
    const id = idOnA('mig-state');
    const s = viaClient(c);
    const { name, vp0 } = await vtl1MidCallSession(s, id);
    const vp1 = `${name}/vps/1`;
    // VTL1 (active on VP 0) protects a page with no write access for VTL0; VP 1 (VTL0) writes it,
    // the route MONITOR: the write waits for a monitor's answer.
    await c.vps.setVpRegisters({
      name: vp0,
      vtl: 1,
      registers: [{ name: pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, value: { value: { $case: 'reg64', value: 1n | (0xfn << 1n) } } }],
    });
    await c.intercepts.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: 0x1, ranges: [{ startPage: 0x40n, pageCount: 4n }] });
    await c.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
    const waiting = c.guest.writeMemory({ name: vp1, gpa: 0x40000n, data: Buffer.from('once') }).then(
      (r) => r,
      (e: unknown) => e,
    );
    // A monitor on the source sees it first and does not answer.
    const first = await subscribe(name);
    const seen = await first.next();
    if (seen.kind?.$case !== 'intercept') throw new Error(`expected an intercept, got ${seen.kind?.$case}`);
    expect(seen.kind.value).toMatchObject({ redelivered: false, vpIndex: 1 });
    const interceptId = seen.kind.value.interceptId;
    expect((await c.intercepts.listPendingIntercepts({ name })).intercepts.map((x) => x.interceptId)).toEqual([interceptId]);
    await c.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_SCONTROL, value: 1n });
    const before = { ...(await c.snapshots.savePartition({ name })), savedTimeUnixMs: 0n };

    const progress = await collect(c.snapshots.migratePartition({ name, targetAgent: b.address }));
    const res = progress[progress.length - 1]!.result!;
    expect(res.targetAgent).toBe(b.address);
    console.log(
      `live migration of an idle partition with VTL1 and a pending intercept: downtime ${res.downtimeMs} ms, total ${res.totalMs} ms, ${res.rounds} rounds`,
    );
    expect((await failure(ca.partitions.getPartition({ name }))).code).toBe(status.NOT_FOUND);
    const after = { ...(await c.snapshots.savePartition({ name })), savedTimeUnixMs: 0n };
    expect(after).toEqual(before);
    // The caller that waited on the source learns its partition left (the answer comes on the target).
    const w = await waiting;
    expect(w).toBeInstanceOf(VsmError);

    // The source's monitor stream ended with its partition; a monitor that reconnects through the
    // service gets the intercept again from the target, same id, flagged redelivered.
    const ended = await first.next().then(
      (m) => m.kind?.$case,
      (e: unknown) => (e instanceof VsmError ? e.code : e),
    );
    expect([status.NOT_FOUND, 'ended']).toContain(ended);
    const { m, next } = await subscribe(name);
    const ev = await next();
    if (ev.kind?.$case !== 'intercept') throw new Error(`expected an intercept, got ${ev.kind?.$case}`);
    expect(ev.kind.value).toMatchObject({ interceptId, redelivered: true, vpIndex: 1 });
    const reply = (action: pb.InterceptAction) =>
      m.send({ kind: { $case: 'reply', value: { interceptId, action, data: Buffer.alloc(0) } } as pb.MonitorRequest['kind'] });
    reply(pb.InterceptAction.INTERCEPT_ACTION_ALLOW);
    const r1 = await next();
    expect(r1.kind?.$case === 'replyResult' && r1.kind.value.status).toBe(pb.ReplyStatus.REPLY_STATUS_APPLIED);
    reply(pb.InterceptAction.INTERCEPT_ACTION_ALLOW);
    const r2 = await next();
    expect(r2.kind?.$case === 'replyResult' && r2.kind.value.status).toBe(pb.ReplyStatus.REPLY_STATUS_DUPLICATE);
    m.cancel();
    expect(Buffer.from((await c.memory.readGpa({ name, gpa: 0x40000n, length: 4 })).data).toString()).toBe('once');
    expect((await c.intercepts.listPendingIntercepts({ name })).intercepts).toHaveLength(0);
    await c.partitions.deletePartition({ name });
  });

  test('bad input and cancellation leave the source partition where it was, running', async () => {
    const { name } = await runningGuest('mig-bad');
    const stillRunningOnA = async () => {
      expect((await ca.partitions.getPartition({ name })).runState).toBe(pb.RunState.RUN_STATE_RUNNING);
      expect((await failure(cb.partitions.getPartition({ name }))).code).toBe(status.NOT_FOUND);
    };
    const migrate = (r: Partial<pb.MigratePartitionRequest>, signal?: AbortSignal) => collect(c.snapshots.migratePartition({ name, ...r }, signal));

    const same = await failure(migrate({ targetAgent: a.address }));
    expect([same.code, same.message]).toEqual([status.FAILED_PRECONDITION, expect.stringContaining('already on agent')]);
    const unknownAgent = await failure(migrate({ targetAgent: '127.0.0.9:1' }));
    expect([unknownAgent.code, unknownAgent.message]).toEqual([status.INVALID_ARGUMENT, expect.stringContaining("not one of this service's agents")]);
    expect((await failure(migrate({ targetAgent: '' }))).code).toBe(status.INVALID_ARGUMENT);
    expect((await failure(migrate({ targetAgent: b.address, maxRounds: 1000 }))).code).toBe(status.INVALID_ARGUMENT);
    const unreachable = await failure(migrate({ targetAgent: dead }));
    expect([unreachable.code, unreachable.message]).toEqual([status.UNAVAILABLE, expect.stringContaining('unreachable')]);
    expect((await failure(collect(c.snapshots.migratePartition({ name: 'not a name', targetAgent: b.address })))).code).toBe(status.INVALID_ARGUMENT);
    const unknown = await failure(collect(c.snapshots.migratePartition({ name: `partitions/${idOnA('mig-none')}`, targetAgent: b.address })));
    expect([unknown.code, unknown.reason]).toEqual([status.NOT_FOUND, 'HV_STATUS_INVALID_PARTITION_ID']);
    await stillRunningOnA();

    // Cancelled after the first round: the target's import is abandoned, the guest never stopped.
    const ac2 = new AbortController();
    const seen: pb.MigrationProgress[] = [];
    const outcome = await collect(c.snapshots.migratePartition({ name, targetAgent: b.address, maxRounds: 64, maxDirtyPages: 1 }, ac2.signal), (m) => {
      seen.push(m);
      ac2.abort();
    }).then(
      (ps) => ps,
      (e: unknown) => e,
    );
    expect(seen.length).toBeGreaterThanOrEqual(1);
    expect(seen.some((m) => m.phase === pb.MigrationPhase.MIGRATION_PHASE_DONE)).toBe(false);
    void outcome;
    await until(
      'the source resumed after the cancel',
      async () => (await ca.partitions.getPartition({ name })).runState,
      (s) => s === pb.RunState.RUN_STATE_RUNNING,
    );
    await until(
      'no copy on the target',
      () =>
        cb.partitions.getPartition({ name }).then(
          () => 'there',
          (e: VsmError) => e.code,
        ),
      (s) => s === status.NOT_FOUND,
    );
    await stillRunningOnA();
    // The guest's own RAM check works: a page changed behind its back ends its run (what a page lost
    // in a migration would do).
    await c.memory.writeGpa({ name, gpa: MG.data0 + 5n * 4096n, data: Buffer.alloc(8, 0xee) });
    const stopped = await until(
      'the guest to notice',
      () => c.partitions.getPartition({ name }),
      (p) => p.runState !== pb.RunState.RUN_STATE_RUNNING,
    );
    expect([stopped.runState, stopped.exitCode]).toEqual([pb.RunState.RUN_STATE_STOPPED, BAD_MEMORY_EXIT]);
    await c.partitions.deletePartition({ name });
  });

  test('a partition on the emulator backend, or on an agent asked directly: FAILED_PRECONDITION naming why', async () => {
    const emu = await startAgent(new CoreBackend());
    try {
      await emu.client.partitions.createPartition({ partitionId: 'emu', partition: { vpCount: 1, memoryBytes: 1n << 20n } as pb.Partition });
      const e = await failure(collect(emu.client.snapshots.migratePartition({ name: 'partitions/emu', targetAgent: b.address })));
      expect([e.code, e.message]).toEqual([status.FAILED_PRECONDITION, expect.stringContaining('emulator backend')]);
    } finally {
      await emu.stop();
    }
    const id = idOnA('mig-direct');
    await c.partitions.createPartition({ partitionId: id, partition: { vpCount: 1, memoryBytes: 1n << 20n } as pb.Partition });
    const d = await failure(collect(ca.snapshots.migratePartition({ name: `partitions/${id}`, targetAgent: b.address })));
    expect([d.code, d.message]).toEqual([status.FAILED_PRECONDITION, expect.stringContaining('vsm-service --backend agent')]);
    await c.partitions.deletePartition({ name: `partitions/${id}` });
  });
});
