// The suspension invariant of the monitor route (rules/lifecycle.ts suspensionViolations), checked
// on every path that raises, answers or carries a monitor intercept, and at every moment something
// outside the core can observe it (the broker's publish and resolve listeners, which run inside the
// core's calls): a VP's suspendedOn names a pending intercept of that VP, and every pending intercept
// holds its VP suspended on it. A VP suspended on an intercept that is no longer pending while an
// older one of it still waits (the intercept fuzzer's report) would never be resumed: no answer to
// either can apply.
import fc from 'fast-check';
import {
  HvError,
  HvMsr,
  HvRegisterName as R,
  HvStatus,
  Partition,
  SparseMemory,
  answerIntercept,
  callHypercallPage,
  executeVmcall,
  guestAccess,
  longModeContext,
  reg64,
  snapshotPartition,
  vtlReturn,
} from '@vsm/core';
import type { AccessKind, InterceptAction, InterceptRoute } from '@vsm/core';
import { suspensionViolations } from '../src/rules/lifecycle';
import { ResidentMemory } from '../src/resident';
import { restorePartition } from '../src/snapshot';
import { vtlCall } from '../src/vtl-switch';
import { HvCallCode } from '../src/tlfs/hypercall';

const MiB = 1n << 20n;
const SECRET = 0x40000n; // VTL1: no write for VTL0
const HIDDEN = 0x41000n; // VTL1: no access for VTL0
const PLAIN = 0x42000n;

function partition(vpCount = 1, ram?: SparseMemory): Partition {
  const p = new Partition({ id: 'inv', architecture: 'x64', vpCount, memoryBytes: MiB, maximumVtl: 1, labels: {}, platform: ram ? { ram } : undefined });
  p.enablePartitionVtl('host', 1, 0);
  for (let i = 0; i < vpCount; i++) p.enableVpVtl('host', i, 1, longModeContext());
  p.setRegisters(p.vp(0), 1, [{ name: R.HvRegisterVsmPartitionConfig, value: reg64(1n | (0xfn << 1n)) }], 'host');
  p.modifyVtlProtectionMask('host', 1, 0x1 | 0x4, [{ start: SECRET >> 12n, count: 1n }]);
  p.modifyVtlProtectionMask('host', 1, 0, [{ start: HIDDEN >> 12n, count: 1n }]);
  p.interceptRoute = 'monitor';
  return p;
}

/** Checks the invariant whenever an intercept is published or resolved; returns what it saw. */
function watch(p: Partition): string[] {
  const seen: string[] = [];
  const check = (when: string) => {
    for (const v of suspensionViolations(p)) seen.push(`${when}: ${v}`);
  };
  p.intercepts.subscribe((r) => check(`publishing intercept ${r.id}`));
  p.intercepts.onResolved((id) => check(`resolving intercept ${id}`));
  return seen;
}

function intercepted(p: Partition, vp: number, kind: AccessKind = 'write', gpa = SECRET): bigint {
  const o = guestAccess(p, p.vp(vp), kind, gpa, 8, kind === 'write' ? Buffer.alloc(8, vp + 1) : undefined);
  if (o.status !== 'intercepted') throw new Error(`expected an intercept, got ${o.status}`);
  return o.intercept.id;
}

test('a RETRY that intercepts again: the VP is suspended on the new intercept only, at every moment a listener sees', () => {
  const p = partition();
  const seen = watch(p);
  const a = intercepted(p, 0);
  const r = answerIntercept(p, a, 'retry');
  expect(r.outcome).toMatchObject({ status: 'intercepted', awaitingMonitor: true });
  const b = r.outcome?.status === 'intercepted' ? r.outcome.intercept.id : -1n;
  expect(b).toBeGreaterThan(a);
  expect(p.vp(0).suspendedOn).toBe(b);
  expect(p.intercepts.status(a)).toBe('duplicate');
  expect([...p.intercepts.pending.keys()]).toEqual([b]);
  // Announcing the new intercept while the answered one was still pending showed the fuzzer's state
  // (VP on B, A pending) to every listener.
  expect(seen).toEqual([]);
  expect(answerIntercept(p, b, 'skip').outcome).toMatchObject({ status: 'completed' });
  expect(suspensionViolations(p)).toEqual([]);
  expect(seen).toEqual([]);
});

test('a RETRY refused for lack of resident RAM leaves the intercept pending and the VP suspended on it (and announces nothing)', () => {
  const acct = new ResidentMemory(BigInt(4096));
  const p = partition(1, new SparseMemory(MiB, acct));
  const seen = watch(p);
  const a = intercepted(p, 0);
  p.memory.write(0x1000n, Buffer.alloc(8, 7)); // the limit is full now
  // The page is writable now, so the retry performs the write, which the RAM limit refuses.
  p.modifyVtlProtectionMask('host', 1, 0xf, [{ start: SECRET >> 12n, count: 1n }]);
  expect(() => answerIntercept(p, a, 'retry')).toThrow(expect.objectContaining({ status: HvStatus.HV_STATUS_INSUFFICIENT_MEMORY }));
  acct.release(4096);
  expect(p.vp(0).suspendedOn).toBe(a);
  expect(p.intercepts.status(a)).toBe('pending');
  expect(suspensionViolations(p)).toEqual([]);
  expect(answerIntercept(p, a, 'retry').outcome).toMatchObject({ status: 'completed' });
  expect(p.memory.read(SECRET, 8)).toEqual(Buffer.alloc(8, 1));
  expect(seen).toEqual([]);
});

test('a suspended VP executes no VtlCall/VtlReturn (it stays in the VTL it intercepted in); nothing changes', () => {
  const p = partition();
  const vp = p.vp(0);
  p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, 1n);
  p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, 0x10001n);
  const a = intercepted(p, 0);
  p.setReg(vp, R.HvX64RegisterRax, 0n);
  const rip = p.reg(vp, R.HvX64RegisterRip);
  const invalidVpState = expect.objectContaining({ status: HvStatus.HV_STATUS_INVALID_VP_STATE });
  expect(() => vtlCall(p, vp, 0n)).toThrow(invalidVpState);
  expect(() => vtlReturn(p, vp, 0n)).toThrow(invalidVpState);
  p.setReg(vp, R.HvX64RegisterRcx, BigInt(HvCallCode.HvCallVtlCall));
  expect(() => executeVmcall(p, vp)).toThrow(invalidVpState);
  expect(() => callHypercallPage(p, vp, 0x0f)).toThrow(invalidVpState);
  expect(vp.activeVtl).toBe(0);
  expect(p.reg(vp, R.HvX64RegisterRip)).toBe(rip);
  expect(vp.vtls.get(0).pendingStubReturn).toBeNull();
  expect(vp.suspendedOn).toBe(a);
  expect(suspensionViolations(p)).toEqual([]);
});

test('VtlReturn re-executing an access that intercepted to VTL1 before the route changed to monitor: the VP waits on the new intercept', () => {
  const p = partition();
  const seen = watch(p);
  const vp = p.vp(0);
  p.interceptRoute = 'vtl';
  const first = guestAccess(p, vp, 'write', SECRET, 8, Buffer.alloc(8, 7));
  expect(first).toMatchObject({ status: 'intercepted', awaitingMonitor: false });
  expect(vp.activeVtl).toBe(1);
  p.interceptRoute = 'monitor';
  p.setReg(vp, R.HvX64RegisterRax, 0n);
  const back = vtlReturn(p, vp, 0n);
  expect(vp.activeVtl).toBe(0);
  expect(back.resumedAccess?.outcome).toMatchObject({ status: 'intercepted', awaitingMonitor: true });
  const b = back.resumedAccess?.outcome.status === 'intercepted' ? back.resumedAccess.outcome.intercept.id : -1n;
  expect(vp.suspendedOn).toBe(b);
  expect(suspensionViolations(p)).toEqual([]);
  expect(answerIntercept(p, b, 'allow').outcome).toMatchObject({ status: 'completed' });
  expect(p.memory.read(SECRET, 8)).toEqual(Buffer.alloc(8, 7));
  expect(seen).toEqual([]);
});

test('a hypercall whose input block is on a page its VTL may not read intercepts once; the VP then takes no second one', () => {
  const p = partition();
  const seen = watch(p);
  const vp = p.vp(0);
  p.setReg(vp, R.HvX64RegisterRcx, BigInt(HvCallCode.HvCallGetVpRegisters) | (1n << 32n));
  p.setReg(vp, R.HvX64RegisterRdx, HIDDEN);
  p.setReg(vp, R.HvX64RegisterR8, PLAIN);
  const o = executeVmcall(p, vp);
  expect(o.parameterIntercept).toMatchObject({ status: 'intercepted', awaitingMonitor: true });
  const a = vp.suspendedOn!;
  expect(() => executeVmcall(p, vp)).toThrow(expect.objectContaining({ status: HvStatus.HV_STATUS_INVALID_VP_STATE }));
  expect(() => guestAccess(p, vp, 'read', HIDDEN, 8)).toThrow(expect.objectContaining({ status: HvStatus.HV_STATUS_INVALID_VP_STATE }));
  expect([...p.intercepts.pending.keys()]).toEqual([a]);
  expect(answerIntercept(p, a, 'retry').outcome).toMatchObject({ status: 'intercepted', awaitingMonitor: true });
  expect(p.intercepts.pending.size).toBe(1);
  expect(seen).toEqual([]);
});

test('a route change between an intercept and its RETRY: the retry enters VTL1, the VP is no longer suspended and nothing is pending', () => {
  const p = partition();
  const seen = watch(p);
  const a = intercepted(p, 0);
  p.interceptRoute = 'vtl';
  expect(answerIntercept(p, a, 'retry').outcome).toMatchObject({ status: 'intercepted', awaitingMonitor: false });
  expect(p.vp(0).activeVtl).toBe(1);
  expect(p.vp(0).suspendedOn).toBeNull();
  expect(p.intercepts.pending.size).toBe(0);
  expect(seen).toEqual([]);
});

test('a restored snapshot taken with VPs suspended keeps the invariant; its intercepts are answered once', () => {
  const p = partition(2);
  const a = intercepted(p, 0);
  const b = intercepted(p, 1, 'read', HIDDEN);
  const q = restorePartition(snapshotPartition(p), 'inv-copy');
  const seen = watch(q);
  expect(suspensionViolations(q)).toEqual([]);
  expect(q.vp(0).suspendedOn).toBe(a);
  expect(answerIntercept(q, a, 'retry').outcome).toMatchObject({ status: 'intercepted' });
  expect(answerIntercept(q, b, 'skip').outcome).toMatchObject({ status: 'completed' });
  expect(suspensionViolations(q)).toEqual([]);
  expect(seen).toEqual([]);
  // The original is untouched by the copy's answers.
  expect([...p.intercepts.pending.keys()]).toEqual([a, b]);
});

// ---- any order of the operations above ----------------------------------------------------------

type Op =
  | { k: 'access'; vp: number; kind: AccessKind; gpa: bigint }
  | { k: 'answer'; pick: number; action: InterceptAction }
  | { k: 'route'; route: InterceptRoute }
  | { k: 'protect'; page: bigint; flags: number }
  | { k: 'vtlcall' | 'vtlreturn' | 'hypercall-intercept'; vp: number }
  | { k: 'restore' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      k: fc.constant('access' as const),
      vp: fc.integer({ min: 0, max: 2 }),
      kind: fc.constantFrom<AccessKind>('read', 'write', 'execute'),
      gpa: fc.constantFrom(SECRET, HIDDEN, PLAIN),
    }),
  },
  {
    weight: 5,
    arbitrary: fc.record({
      k: fc.constant('answer' as const),
      pick: fc.nat(),
      action: fc.constantFrom<InterceptAction>('allow', 'skip', 'retry', 'retry', 'crash'),
    }),
  },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('route' as const), route: fc.constantFrom<InterceptRoute>('monitor', 'monitor', 'vtl', 'both') }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('protect' as const), page: fc.constantFrom(SECRET, HIDDEN), flags: fc.constantFrom(0, 0x1, 0x5, 0xf) }) },
  {
    weight: 2,
    arbitrary: fc.record({ k: fc.constantFrom('vtlcall' as const, 'vtlreturn' as const, 'hypercall-intercept' as const), vp: fc.integer({ min: 0, max: 2 }) }),
  },
  { weight: 1, arbitrary: fc.constant({ k: 'restore' as const }) },
);

test('any sequence of accesses, answers, route and protection changes, VTL switches, parameter-block intercepts and restores keeps the invariant', () => {
  // What the generated sequences reached (so that the property is not vacuous).
  const reached = { retriedAgain: 0, resumedIntoMonitor: 0, parameterIntercepts: 0, restoredSuspended: 0, refusedSuspended: 0 };
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 1, maxLength: 80, size: 'large' }), (ops) => {
      let p = partition(3);
      let seen = watch(p);
      const refused: string[] = [];
      const tolerate = (fn: () => void) => {
        try {
          fn();
        } catch (e) {
          if (!(e instanceof HvError)) throw e;
          refused.push(e.message);
          if (e.status === HvStatus.HV_STATUS_INVALID_VP_STATE) reached.refusedSuspended++;
        }
      };
      for (const op of ops) {
        if (p.state !== 'active') break;
        switch (op.k) {
          case 'access':
            tolerate(() => guestAccess(p, p.vp(op.vp), op.kind, op.gpa, 8, op.kind === 'write' ? Buffer.alloc(8, 1) : undefined));
            break;
          case 'answer': {
            const ids = [...p.intercepts.pending.keys()];
            if (ids.length)
              tolerate(() => {
                if (answerIntercept(p, ids[op.pick % ids.length]!, op.action).outcome?.status === 'intercepted') reached.retriedAgain++;
              });
            break;
          }
          case 'route':
            p.interceptRoute = op.route;
            break;
          case 'protect':
            p.modifyVtlProtectionMask('host', 1, op.flags, [{ start: op.page >> 12n, count: 1n }]);
            break;
          case 'vtlcall':
          case 'vtlreturn': {
            const vp = p.vp(op.vp);
            if (vp.suspendedOn === null) p.setReg(vp, R.HvX64RegisterRax, 0n);
            tolerate(() => {
              const o = op.k === 'vtlcall' ? vtlCall(p, vp, 0n) : vtlReturn(p, vp, 0n);
              if (o.resumedAccess?.outcome.status === 'intercepted' && o.resumedAccess.outcome.awaitingMonitor) reached.resumedIntoMonitor++;
            });
            break;
          }
          case 'hypercall-intercept': {
            const vp = p.vp(op.vp);
            if (vp.suspendedOn === null) {
              p.setReg(vp, R.HvX64RegisterRcx, BigInt(HvCallCode.HvCallGetVpRegisters) | (1n << 32n));
              p.setReg(vp, R.HvX64RegisterRdx, HIDDEN);
              p.setReg(vp, R.HvX64RegisterR8, PLAIN);
            }
            tolerate(() => {
              if (executeVmcall(p, vp).parameterIntercept?.status === 'intercepted') reached.parameterIntercepts++;
            });
            break;
          }
          case 'restore':
            expect(seen).toEqual([]);
            if (p.vps.some((vp) => vp.suspendedOn !== null)) reached.restoredSuspended++;
            p = restorePartition(snapshotPartition(p), 'inv-restored');
            seen = watch(p);
            break;
        }
        expect(suspensionViolations(p)).toEqual([]);
        for (const vp of p.vps) if (vp.suspendedOn !== null) expect(p.intercepts.pending.get(vp.suspendedOn)?.vtl).toBe(vp.activeVtl);
      }
      expect(seen).toEqual([]);
      // Whatever is pending can be answered, and every answer leaves the VP free or on its new intercept.
      for (let n = 0; n < 20 && p.state === 'active' && p.intercepts.pending.size; n++) {
        answerIntercept(p, [...p.intercepts.pending.keys()][0]!, 'skip');
        expect(suspensionViolations(p)).toEqual([]);
      }
      if (p.state === 'active') expect(p.vps.every((vp) => vp.suspendedOn === null)).toBe(true);
    }),
    { seed: 19, numRuns: 300 },
  );
  for (const [what, n] of Object.entries(reached)) expect([what, n > 0]).toEqual([what, true]);
});
