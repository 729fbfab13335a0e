// The core's injected clock (issue #18): every time the core reports comes from the Clock of the
// partition (PartitionSpec.clock, ManagerOptions.clock), never from the system clock directly:
// HV_X64_MSR_TIME_REF_COUNT (100 ns units since the partition was created), VTL transition and
// intercept timestamps, and the creation time.
import { HvMsr, HvRegisterName as R, Partition, PartitionManager, guestAccess, longModeContext, reg64, snapshotPartition } from '@vsm/core';
import type { Clock } from '../src/clock';
import { systemClock } from '../src/clock';

const { HV_X64_MSR_TIME_REF_COUNT } = HvMsr;

/** A clock that moves only when told to. */
class FakeClock implements Clock {
  unixUs = 1_700_000_000_000_000n; // 2023-11-14T22:13:20Z
  ref100ns = 5_000_000n; // an arbitrary origin
  nowUnixMs(): number {
    return Number(this.unixUs / 1000n);
  }
  nowUnixUs(): bigint {
    return this.unixUs;
  }
  referenceTime100ns(): bigint {
    return this.ref100ns;
  }
  /** Both clocks move by `us` microseconds. */
  advance(us: bigint): void {
    this.unixUs += us;
    this.ref100ns += us * 10n;
  }
}

function protectedPartition(clock: Clock): Partition {
  const p = new Partition({ id: 'clk', architecture: 'x64', vpCount: 1, memoryBytes: 1n << 20n, maximumVtl: 1, labels: {}, clock });
  p.enablePartitionVtl('host', 1, 0);
  p.enableVpVtl('host', 0, 1, longModeContext());
  p.setRegisters(p.vp(0), 1, [{ name: R.HvRegisterVsmPartitionConfig, value: reg64(1n | (0xfn << 1n)) }], 'host');
  p.modifyVtlProtectionMask('host', 1, 0x1 | 0x4, [{ start: 0x40n, count: 1n }]); // page 0x40: no write
  return p;
}

test("HV_X64_MSR_TIME_REF_COUNT counts the clock's reference time (100 ns units) from partition creation", () => {
  const clock = new FakeClock();
  const p = protectedPartition(clock);
  const vp = p.vp(0);
  expect(p.readMsr(vp, HV_X64_MSR_TIME_REF_COUNT)).toEqual({ value: 0n });
  clock.advance(1_234_567n); // 1.234567 s
  expect(p.readMsr(vp, HV_X64_MSR_TIME_REF_COUNT)).toEqual({ value: 12_345_670n });
  expect(p.getRegister(vp, 0, R.HvRegisterTimeRefCount).low).toBe(12_345_670n);
  // The same count in every VTL (the reference counter is partition-wide).
  expect(p.getRegister(vp, 1, R.HvRegisterTimeRefCount).low).toBe(12_345_670n);
  clock.advance(1n);
  expect(p.readMsr(vp, HV_X64_MSR_TIME_REF_COUNT).value).toBe(12_345_680n);
});

test("the creation time, VTL transition and intercept timestamps are the clock's wall time", () => {
  const clock = new FakeClock();
  const p = protectedPartition(clock);
  expect(p.createTimeUnixMs).toBe(1_700_000_000_000);
  const transitions: bigint[] = [];
  p.onTransition((t) => transitions.push(t.timeUnixUs));
  clock.advance(250n);
  // A write to the protected page intercepts into VTL1 (route 'vtl'): one intercept, one transition.
  const o = guestAccess(p, p.vp(0), 'write', 0x40000n, 8, Buffer.alloc(8, 1));
  expect(o.status).toBe('intercepted');
  if (o.status !== 'intercepted') return;
  expect(o.intercept.timeUnixUs).toBe(1_700_000_000_000_250n);
  expect(transitions).toEqual([1_700_000_000_000_250n]);
  clock.advance(1_000n);
  p.switchVtl(p.vp(0), 0, 0, true);
  expect(transitions).toEqual([1_700_000_000_000_250n, 1_700_000_000_001_250n]);
});

test('PartitionManager gives its clock to the partitions it creates and restores; a snapshot does not carry it', () => {
  const clock = new FakeClock();
  const m = new PartitionManager(undefined, { clock });
  const p = m.create({ partitionId: 'a', architecture: 'x64', vpCount: 1, memoryBytes: 1n << 20n, maximumVtl: 1, labels: {} });
  expect(p.clock).toBe(clock);
  expect(p.createTimeUnixMs).toBe(1_700_000_000_000);
  const snap = snapshotPartition(p);
  expect(Object.keys(snap.spec)).not.toContain('clock');
  clock.advance(3_000n);
  const copy = m.restore(snap, 'b');
  expect(copy.clock).toBe(clock);
  // The restored partition keeps the saved creation time; its reference counter starts again at 0.
  expect(copy.createTimeUnixMs).toBe(1_700_000_000_000);
  expect(copy.readMsr(copy.vp(0), HV_X64_MSR_TIME_REF_COUNT).value).toBe(0n);
  clock.advance(1n);
  expect(copy.readMsr(copy.vp(0), HV_X64_MSR_TIME_REF_COUNT).value).toBe(10n);
});

test('without a clock a partition uses the system clock', () => {
  const before = Date.now();
  const p = new Partition({ id: 'sys', architecture: 'x64', vpCount: 1, memoryBytes: 1n << 20n, maximumVtl: 0, labels: {} });
  expect(p.clock).toBe(systemClock);
  expect(p.createTimeUnixMs).toBeGreaterThanOrEqual(before);
  expect(p.createTimeUnixMs).toBeLessThanOrEqual(Date.now());
  const a = p.readMsr(p.vp(0), HV_X64_MSR_TIME_REF_COUNT).value;
  const b = p.readMsr(p.vp(0), HV_X64_MSR_TIME_REF_COUNT).value;
  expect(a).toBeGreaterThanOrEqual(0n);
  expect(b).toBeGreaterThanOrEqual(a);
});
