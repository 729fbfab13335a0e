// Issue #19, regression tests for the intercept findings (a real server on loopback; public API):
//  1. A deadline policy's CRASH (or a monitor's CRASH answer) while another VP waits on a later
//     ALLOW policy or a monitor: both waiting guest actions return OK with partition_crashed, the
//     later timer does nothing, the process stays up (checked in-process and with the service as a
//     child process, whose exit would be reported by the process guard), other partitions serve.
//  2. A VP suspended on a monitor intercept refuses every guest action (FAILED_PRECONDITION /
//     HV_STATUS_INVALID_VP_STATE) and nothing changes; the ALLOW then completes the write in VTL0.
//  6. After a crash: Monitor streams end FAILED_PRECONDITION / HV_STATUS_INVALID_PARTITION_STATE,
//     a new subscribe and guest actions are refused the same way, and no waiting action returns an
//     older intercept's outcome.
// 13. DeletePartition ends its Monitor and WatchVtlTransitions streams and the waiting guest action
//     with NOT_FOUND / HV_STATUS_INVALID_PARTITION_ID; an answer sent before the end is not applied.
// 12. One WatchVtlTransitions stream over 50,000 transitions: no MaxListenersExceededWarning.
//
// The child-process variant of 1 runs services/vsm-service/dist/main.js: build first (`npm test`
// and `npm run build` do).
import { status } from '@grpc/grpc-js';
import pino from 'pino';
import { connect, type MonitorSession, pb, type VsmClient, VsmError } from '@vsm/client';
import { CoreBackend, startServer } from '@vsm/vsm-v1';
import { GiB, failure, startHarness } from '../support/server';
import { spawnService } from '../support/child-service';
import { hostWarnings } from '../support/guard';
import { waitFor } from '../support/wait';
import { MSR, VTL1_LAYOUT, setupVtl1Partition } from '../security/support';

jest.setTimeout(120_000);

const A = pb.InterceptAction;
const SECRET = VTL1_LAYOUT.secretGpa; // no access for VTL0
const PLAIN = 0x30000n; // unprotected RAM
const LONG = { deadlineMs: 20_000 }; // a guest action that may wait: bounded, but far beyond any deadline policy here

/** A guest action the test awaits later: its rejection is handled now (an early failure of the test must not leave an unhandled rejection behind). */
function waiting<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

const pendingCount = async (c: VsmClient, name: string) => (await c.intercepts.listPendingIntercepts({ name })).intercepts.length;

/** A Monitor stream read in the background: every response kept, the way it ended recorded. */
class Monitor {
  readonly s: MonitorSession;
  readonly events: pb.MonitorResponse[] = [];
  /** Resolves when the stream ends: undefined for a clean end, else the error. */
  readonly ended: Promise<VsmError | Error | undefined>;
  private cursor = 0;
  private notify: (() => void) | undefined;
  done = false;

  constructor(c: VsmClient, name: string) {
    const s = c.intercepts.monitor();
    this.s = s;
    s.send({ kind: { $case: 'subscribe', value: { name, accessMask: 0 } as pb.MonitorSubscribe } });
    this.ended = (async () => {
      try {
        for await (const ev of s.events) {
          this.events.push(ev);
          this.notify?.();
        }
        return undefined;
      } catch (e) {
        return e as Error;
      } finally {
        this.done = true;
        this.notify?.();
      }
    })();
  }

  /** The next response of kind `k` after the ones already taken. */
  async next<K extends NonNullable<pb.MonitorResponse['kind']>['$case']>(
    k: K,
    timeoutMs = 30_000,
  ): Promise<Extract<NonNullable<pb.MonitorResponse['kind']>, { $case: K }>['value']> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      while (this.cursor < this.events.length) {
        const ev = this.events[this.cursor++]!;
        if (ev.kind?.$case === k) return ev.kind.value as never;
      }
      if (this.done) throw new Error(`monitor stream ended (${String(await this.ended)}) before a ${k} arrived`);
      if (Date.now() > end) throw new Error(`no ${k} on the monitor stream within ${timeoutMs} ms`);
      await new Promise<void>((r) => {
        this.notify = r;
        setTimeout(r, 50);
      });
    }
  }

  reply(interceptId: bigint, action: pb.InterceptAction, data = Buffer.alloc(0)): void {
    try {
      this.s.send({ kind: { $case: 'reply', value: { interceptId, action, data } as pb.InterceptReply } });
    } catch {
      // the stream may already be gone; what matters is what the server applied
    }
  }

  replyResults(): pb.ReplyResult[] {
    return this.events.flatMap((e) => (e.kind?.$case === 'replyResult' ? [e.kind.value] : []));
  }
}

/** How the stream ended ([code, reason]); fails if it has not ended within 15 s. */
const endedWith = async (m: Monitor) => {
  const e = await Promise.race([m.ended, new Promise<'open'>((r) => setTimeout(() => r('open'), 15_000))]);
  if (e === 'open') return ['still open after 15 s', undefined];
  return e instanceof VsmError ? [status[e.code], e.reason] : [e ? `not a VsmError: ${e.message}` : 'clean end', undefined];
};

async function monitoredPartition(c: VsmClient, id: string, route: Partial<pb.SetInterceptRouteRequest> = {}) {
  const { name, vps } = await setupVtl1Partition(c, id, 2, Buffer.from('original'));
  await c.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR, ...route });
  return { name, vp0: vps[0]!, vp1: vps[1]! };
}

// ---- 1 ------------------------------------------------------------------------------------------

describe.each([
  ['in-process service', 'in-process'],
  ['service as a child process', 'child'],
] as const)('finding 1: a crash while another VP waits on a later ALLOW (%s)', (_label, kind) => {
  let c: VsmClient;
  let stop: () => Promise<void>;
  let alive: () => void = () => undefined;
  beforeAll(async () => {
    if (kind === 'in-process') {
      const h = await startHarness();
      c = h.client;
      stop = () => h.stop();
    } else {
      const svc = await spawnService([], { name: 'vsm-service (hardening-intercepts)' });
      c = connect(svc.address, { deadlineMs: 10_000, retries: 0 });
      stop = async () => {
        c.close();
        await svc.stop();
      };
      alive = () => expect(svc.unexpectedExit()).toBeUndefined();
    }
  });
  afterAll(async () => {
    await stop();
  });

  async function stillServing(other: string) {
    alive();
    expect((await c.partitions.getCapabilities({})).hypercallCodes.length).toBeGreaterThan(0);
    expect((await c.partitions.getPartition({ name: other })).state).toBe(pb.PartitionState.PARTITION_STATE_ACTIVE);
    await c.guest.writeMsr({ name: `${other}/vps/0`, msr: MSR.GUEST_OS_ID, value: 7n });
    expect((await c.guest.readMsr({ name: `${other}/vps/0`, msr: MSR.GUEST_OS_ID })).value).toBe(7n);
  }

  test('deadline policy CRASH for VP1, then a later ALLOW policy for VP0: both return partition_crashed, the process stays up', async () => {
    const other = (
      await c.partitions.createPartition({ partitionId: `h1-other-${kind}`, partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition })
    ).name;
    const { name, vp0, vp1 } = await monitoredPartition(c, `h1-policy-${kind}`, { answerDeadlineMs: 1500n, deadlineAction: A.INTERCEPT_ACTION_CRASH });
    const w1 = waiting(c.guest.writeMemory({ name: vp1, gpa: SECRET, data: Buffer.from('vp1') }, LONG));
    await waitFor('VP1 waiting', async () => (await pendingCount(c, name)) === 1);
    await c.intercepts.setInterceptRoute({
      name,
      route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR,
      answerDeadlineMs: 3000n,
      deadlineAction: A.INTERCEPT_ACTION_ALLOW,
    });
    const t0 = Date.now();
    const w0 = waiting(c.guest.writeMemory({ name: vp0, gpa: SECRET, data: Buffer.from('vp0') }, LONG));
    await waitFor('VP0 waiting', async () => (await pendingCount(c, name)) === 2);
    // Both wait while the partition is still running (VP1's 1,500 ms have not passed yet).
    expect((await c.partitions.getPartition({ name })).state).toBe(pb.PartitionState.PARTITION_STATE_ACTIVE);
    const [r1, r0] = await Promise.all([w1, w0]);
    expect(r1.outcome?.partitionCrashed).toBe(true);
    expect(r0.outcome?.partitionCrashed).toBe(true);
    expect((await c.partitions.getPartition({ name })).state).toBe(pb.PartitionState.PARTITION_STATE_CRASHED);
    // VP0's own 3,000 ms timer comes and goes: nothing happens to the process.
    await new Promise((r) => setTimeout(r, Math.max(0, t0 + 3000 + 1000 - Date.now())));
    await stillServing(other);
    expect((await c.partitions.getPartition({ name })).state).toBe(pb.PartitionState.PARTITION_STATE_CRASHED);
    expect(Buffer.from((await c.memory.readGpa({ name, gpa: SECRET, length: 8 })).data).toString()).toBe('original');
  });

  test('a monitor answers VP1 CRASH while VP0 waits on a later ALLOW policy: both return partition_crashed, the process stays up', async () => {
    const other = `partitions/h1-other-${kind}`;
    const { name, vp0, vp1 } = await monitoredPartition(c, `h1-mon-${kind}`, { answerDeadlineMs: 3000n, deadlineAction: A.INTERCEPT_ACTION_ALLOW });
    const m = new Monitor(c, name);
    await m.next('subscription');
    const t0 = Date.now();
    const w1 = waiting(c.guest.writeMemory({ name: vp1, gpa: SECRET, data: Buffer.from('vp1') }, LONG));
    const i1 = await m.next('intercept');
    const w0 = waiting(c.guest.writeMemory({ name: vp0, gpa: SECRET, data: Buffer.from('vp0') }, LONG));
    const i0 = await m.next('intercept');
    expect([i1.vpIndex, i0.vpIndex]).toEqual([1, 0]);
    m.reply(i1.interceptId, A.INTERCEPT_ACTION_CRASH);
    expect((await m.next('replyResult')).status).toBe(pb.ReplyStatus.REPLY_STATUS_APPLIED);
    const [r1, r0] = await Promise.all([w1, w0]);
    expect(r1.outcome?.partitionCrashed).toBe(true);
    expect(r0.outcome?.partitionCrashed).toBe(true);
    await new Promise((r) => setTimeout(r, Math.max(0, t0 + 3000 + 1000 - Date.now())));
    await stillServing(other);
    expect((await c.partitions.getPartition({ name })).state).toBe(pb.PartitionState.PARTITION_STATE_CRASHED);
    expect(Buffer.from((await c.memory.readGpa({ name, gpa: SECRET, length: 8 })).data).toString()).toBe('original');
    m.s.cancel();
  });

  test('a monitor answers VP1 CRASH while VP0 waits on the monitor: both return partition_crashed; a late ALLOW for VP0 applies nothing', async () => {
    const other = `partitions/h1-other-${kind}`;
    const { name, vp0, vp1 } = await monitoredPartition(c, `h1-mon2-${kind}`);
    const m = new Monitor(c, name);
    await m.next('subscription');
    const w1 = waiting(c.guest.writeMemory({ name: vp1, gpa: SECRET, data: Buffer.from('vp1') }, LONG));
    const i1 = await m.next('intercept');
    const w0 = waiting(c.guest.writeMemory({ name: vp0, gpa: SECRET, data: Buffer.from('vp0') }, LONG));
    const i0 = await m.next('intercept');
    m.reply(i1.interceptId, A.INTERCEPT_ACTION_CRASH);
    const [r1, r0] = await Promise.all([w1, w0]);
    expect([r1.outcome?.partitionCrashed, r0.outcome?.partitionCrashed]).toEqual([true, true]);
    m.reply(i0.interceptId, A.INTERCEPT_ACTION_ALLOW);
    expect(await endedWith(m)).toEqual(['FAILED_PRECONDITION', 'HV_STATUS_INVALID_PARTITION_STATE']);
    expect(m.replyResults().map((r) => [r.interceptId, r.status])).toEqual([[i1.interceptId, pb.ReplyStatus.REPLY_STATUS_APPLIED]]);
    await stillServing(other);
    expect(Buffer.from((await c.memory.readGpa({ name, gpa: SECRET, length: 8 })).data).toString()).toBe('original');
  });
});

// ---- 2, 6, 13 (in-process) ------------------------------------------------------------------------

describe('on one in-process service', () => {
  let c: VsmClient;
  let stop: () => Promise<void>;
  beforeAll(async () => {
    const h = await startHarness();
    c = h.client;
    stop = () => h.stop();
  });
  afterAll(async () => {
    await stop();
  });

  test('finding 2: a VP suspended on a monitor intercept refuses every guest action and nothing changes; ALLOW then writes in VTL0', async () => {
    const { name, vp0, vp1 } = await monitoredPartition(c, 'h2-suspended');
    await c.memory.writeGpa({ name, gpa: PLAIN, data: Buffer.from('plain') });
    const m = new Monitor(c, name);
    await m.next('subscription');
    // Every register of the VTL except the reference time counter, which runs on its own.
    const regs = async (vtl: number) =>
      (await c.vps.getVpRegisters({ name: vp0, vtl })).registers.filter((x) => x.name !== pb.HvRegisterName.HV_REGISTER_NAME_TIME_REF_COUNT);
    const before = { vtl0: await regs(0), vtl1: await regs(1), vp: (await c.vps.getVirtualProcessor({ name: vp0 })).vtlStatus };
    const blocked = waiting(c.guest.writeMemory({ name: vp0, gpa: SECRET, data: Buffer.from('allowed!') }, LONG));
    const ev = await m.next('intercept');
    expect((await c.vps.getVirtualProcessor({ name: vp0 })).vtlStatus).toMatchObject({
      activeVtl: 0,
      interceptSuspended: true,
      suspendedInterceptId: ev.interceptId,
    });

    const hypercallInput = Buffer.alloc(24);
    hypercallInput.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
    const actions: Array<[string, () => Promise<unknown>]> = [
      ['WriteMsr', () => c.guest.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 0x5555n })],
      ['ReadMsr', () => c.guest.readMsr({ name: vp0, msr: MSR.GUEST_OS_ID })],
      ['Hypercall (HvCallVtlCall)', () => c.guest.hypercall({ name: vp0, control: 0x11n })],
      [
        'Hypercall (HvCallModifyVtlProtectionMask)',
        () => c.guest.hypercall({ name: vp0, control: 0x0cn | (1n << 32n), inputGpa: 0x20000n, input: hypercallInput }),
      ],
      ['CallHypercallPage (VtlCall)', () => c.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n })],
      ['CallHypercallPage (VtlReturn)', () => c.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 1n })],
      ['ReadMemory', () => c.guest.readMemory({ name: vp0, gpa: PLAIN, length: 5 })],
      ['WriteMemory', () => c.guest.writeMemory({ name: vp0, gpa: PLAIN, data: Buffer.from('xxxxx') })],
      ['ExecuteMemory', () => c.guest.executeMemory({ name: vp0, gpa: PLAIN, length: 4 })],
    ];
    const outcomes: Array<[string, string, string | undefined]> = [];
    for (const [what, act] of actions) {
      const r = await act().then(
        () => undefined,
        (e: unknown) => e,
      );
      outcomes.push(r instanceof VsmError ? [what, status[r.code]!, r.reason] : [what, 'OK', undefined]);
    }
    expect(outcomes).toEqual(actions.map(([what]) => [what, 'FAILED_PRECONDITION', 'HV_STATUS_INVALID_VP_STATE']));
    // Nothing changed: same VTL, still suspended on the same intercept, same registers, same memory.
    expect((await c.vps.getVirtualProcessor({ name: vp0 })).vtlStatus).toEqual({
      ...before.vp,
      interceptSuspended: true,
      suspendedInterceptId: ev.interceptId,
    });
    expect(await regs(0)).toEqual(before.vtl0);
    expect(await regs(1)).toEqual(before.vtl1);
    expect(Buffer.from((await c.memory.readGpa({ name, gpa: PLAIN, length: 5 })).data).toString()).toBe('plain');
    // The other VP runs guest actions meanwhile.
    await c.guest.writeMsr({ name: vp1, msr: MSR.GUEST_OS_ID, value: 0x77n });
    expect((await c.guest.readMsr({ name: vp1, msr: MSR.GUEST_OS_ID })).value).toBe(0x77n);
    expect((await c.guest.readMemory({ name: vp1, gpa: PLAIN, length: 5 })).data).toEqual(Buffer.from('plain'));
    // ALLOW: the write happens, in VTL0.
    m.reply(ev.interceptId, A.INTERCEPT_ACTION_ALLOW);
    expect((await m.next('replyResult')).status).toBe(pb.ReplyStatus.REPLY_STATUS_APPLIED);
    const done = await blocked;
    expect(done.outcome?.activeVtl).toBe(0);
    expect(done.outcome?.partitionCrashed).toBe(false);
    expect(Buffer.from((await c.memory.readGpa({ name, gpa: SECRET, length: 8 })).data).toString()).toBe('allowed!');
    expect((await c.vps.getVirtualProcessor({ name: vp0 })).vtlStatus).toMatchObject({ activeVtl: 0, interceptSuspended: false });
    m.s.cancel();
  });

  test('finding 6: after a crash, streams end FAILED_PRECONDITION, new subscribes and guest actions are refused, no older outcome is returned', async () => {
    const { name, vp0, vp1 } = await monitoredPartition(c, 'h6-crashed');
    const m1 = new Monitor(c, name);
    await m1.next('subscription');
    const m2 = new Monitor(c, name);
    await m2.next('subscription');
    // An earlier intercept of VP0 answered SKIP with monitor data: VP0's last monitor outcome.
    const r0 = waiting(c.guest.readMemory({ name: vp0, gpa: SECRET, length: 4 }, LONG));
    const e0 = await m1.next('intercept');
    await m2.next('intercept');
    m1.reply(e0.interceptId, A.INTERCEPT_ACTION_SKIP, Buffer.from('OLD!'));
    expect((await m1.next('replyResult')).status).toBe(pb.ReplyStatus.REPLY_STATUS_APPLIED);
    expect(Buffer.from((await r0).data).toString()).toBe('OLD!');
    // VP0 reads again and waits; VP1's intercept is answered CRASH.
    const again = waiting(c.guest.readMemory({ name: vp0, gpa: SECRET, length: 4 }, LONG));
    const e1 = await m1.next('intercept');
    await m2.next('intercept');
    const w1 = waiting(c.guest.writeMemory({ name: vp1, gpa: SECRET, data: Buffer.from('vp1') }, LONG));
    const e2 = await m1.next('intercept');
    expect([e1.vpIndex, e2.vpIndex]).toEqual([0, 1]);
    m1.reply(e2.interceptId, A.INTERCEPT_ACTION_CRASH);
    expect((await w1).outcome?.partitionCrashed).toBe(true);
    // A late answer to VP0's intercept (the other stream) is not applied to the crashed partition...
    m2.reply(e1.interceptId, A.INTERCEPT_ACTION_SKIP, Buffer.from('NEW!'));
    // ...and the waiting read ends with the crash, not with an earlier SKIP's (or this one's) bytes.
    const r = await again.then(
      (x) => ({ crashed: x.outcome?.partitionCrashed, data: Buffer.from(x.data).toString() }),
      (e: VsmError) => ({ code: status[e.code], reason: e.reason }),
    );
    expect(r).toEqual({ crashed: true, data: '' });
    // Both streams end with the partition's state; the late answer got no APPLIED.
    expect(await endedWith(m1)).toEqual(['FAILED_PRECONDITION', 'HV_STATUS_INVALID_PARTITION_STATE']);
    expect(await endedWith(m2)).toEqual(['FAILED_PRECONDITION', 'HV_STATUS_INVALID_PARTITION_STATE']);
    expect(m2.replyResults().filter((x) => x.status === pb.ReplyStatus.REPLY_STATUS_APPLIED)).toEqual([]);
    // New subscribers and guest actions are refused.
    const m3 = new Monitor(c, name);
    expect(await endedWith(m3)).toEqual(['FAILED_PRECONDITION', 'HV_STATUS_INVALID_PARTITION_STATE']);
    expect(m3.events).toEqual([]);
    for (const act of [
      () => c.guest.readMemory({ name: vp0, gpa: SECRET, length: 4 }, LONG),
      () => c.guest.readMemory({ name: vp0, gpa: PLAIN, length: 4 }, LONG),
      () => c.guest.writeMsr({ name: vp1, msr: MSR.GUEST_OS_ID, value: 1n }),
    ]) {
      const e = await failure(act());
      expect([status[e.code], e.reason]).toEqual(['FAILED_PRECONDITION', 'HV_STATUS_INVALID_PARTITION_STATE']);
    }
    expect((await c.partitions.getPartition({ name })).state).toBe(pb.PartitionState.PARTITION_STATE_CRASHED);
  });

  test('finding 13: DeletePartition ends its Monitor and WatchVtlTransitions streams and the waiting guest action with NOT_FOUND; an answer sent before is not applied', async () => {
    const { name, vp0 } = await monitoredPartition(c, 'h13-deleted');
    const m = new Monitor(c, name);
    await m.next('subscription');
    // A transition watcher that has seen one transition (so its stream is open and idle).
    const ac = new AbortController();
    const watch = c.vtl.watchTransitions({ name }, ac.signal)[Symbol.asyncIterator]();
    const firstTransition = (async () => {
      for (;;) {
        const r = await watch.next();
        if (r.done || r.value.event?.$case === 'transition') return r.value?.event?.$case;
      }
    })();
    await new Promise((r) => setTimeout(r, 100));
    await c.guest.callHypercallPage({ name: `${name}/vps/1`, offset: 0x0f, rcx: 0n }); // VP1: VtlCall
    expect(await firstTransition).toBe('transition');
    const watchEnd = (async () => {
      try {
        for (;;) {
          const r = await watch.next();
          if (r.done) return ['clean end', undefined];
        }
      } catch (e) {
        return e instanceof VsmError ? [status[e.code], e.reason] : [`not a VsmError: ${String(e)}`, undefined];
      }
    })();
    const blocked = waiting(c.guest.writeMemory({ name: vp0, gpa: SECRET, data: Buffer.from('deleted?') }, LONG));
    const ev = await m.next('intercept');
    await c.partitions.deletePartition({ name });
    // An answer sent right after the delete (the stream may not have ended yet) must not land.
    m.reply(ev.interceptId, A.INTERCEPT_ACTION_ALLOW);
    const w = await blocked.then(
      (x) => ({ ok: x.outcome }),
      (e: VsmError) => [status[e.code], e.reason],
    );
    expect(w).toEqual(['NOT_FOUND', 'HV_STATUS_INVALID_PARTITION_ID']);
    expect(await endedWith(m)).toEqual(['NOT_FOUND', 'HV_STATUS_INVALID_PARTITION_ID']);
    expect(await watchEnd).toEqual(['NOT_FOUND', 'HV_STATUS_INVALID_PARTITION_ID']);
    expect(m.replyResults().filter((r) => r.status === pb.ReplyStatus.REPLY_STATUS_APPLIED)).toEqual([]);
    // A partition created again under the same id starts clean: nothing of the old intercept lands on it.
    const again = await setupVtl1Partition(c, 'h13-deleted', 2, Buffer.from('new one'));
    expect(Buffer.from((await c.memory.readGpa({ name: again.name, gpa: SECRET, length: 7 })).data).toString()).toBe('new one');
    expect(await pendingCount(c, again.name)).toBe(0);
    ac.abort();
  });
});

// ---- 12 -----------------------------------------------------------------------------------------

test('finding 12: one WatchVtlTransitions stream over 50,000 transitions emits no MaxListenersExceededWarning', async () => {
  const backend = new CoreBackend();
  const srv = await startServer({ listen: '127.0.0.1:0', backend, logger: pino({ level: 'silent' }), shutdownGraceMs: 200 });
  const client = connect(srv.address);
  const since = Date.now();
  try {
    const p = await client.partitions.createPartition({ partitionId: 'h12-watch', partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
    await client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    await client.vtl.enableVpVtl({ name: `${p.name}/vps/0`, targetVtl: 1 });
    // The core drives the transitions (as test/faults/streams.test.ts does); the stream between
    // them goes idle again and again, which is where a listener per idle wait would pile up.
    const core = backend.manager.get('h12-watch');
    const vp = core.vps[0]!;
    const ac = new AbortController();
    const iter = client.vtl.watchTransitions({ name: p.name }, ac.signal)[Symbol.asyncIterator]();
    const total = 50_000;
    let seen = 0n;
    let delivered = 0;
    const reader = (async () => {
      while (delivered + Number(seen) < total) {
        const r = await iter.next();
        if (r.done) throw new Error('watch ended early');
        const ev = r.value.event;
        if (ev?.$case === 'transition') delivered++;
        else if (ev?.$case === 'lagged') seen += ev.value.missed;
      }
    })();
    await new Promise((r) => setTimeout(r, 100));
    for (let i = 0; i < total / 2; i++) {
      core.switchVtl(vp, 1, 1, false);
      core.switchVtl(vp, 0, 0, true);
      // Let the stream catch up and go idle now and then.
      if (i % 5 === 4) await new Promise((r) => setImmediate(r));
    }
    await reader;
    expect(delivered + Number(seen)).toBe(total);
    ac.abort();
    await new Promise((r) => setImmediate(r));
    expect(
      hostWarnings(since)
        .filter((w) => w.name === 'MaxListenersExceededWarning')
        .map((w) => w.message),
    ).toEqual([]);
  } finally {
    client.close();
    await srv.shutdown();
  }
});
