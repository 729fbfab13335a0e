// Pure logic of the KVM suites (lib/kvm-stats.ts): batch arithmetic, the protection capability
// gate, and the alternating RIP of the VTL1 handler.
import { ENFORCED_PROTECTIONS, batchFor, calibrateBatch, nextRip, opsPerSec, perOpUs, protectionGate } from '../src/lib/kvm-stats';

describe('batch arithmetic', () => {
  test('perOpUs divides every batch sample by the batch size', () => {
    expect(perOpUs([1000, 2000, 500], 100)).toEqual([10, 20, 5]);
    expect(perOpUs([], 10)).toEqual([]);
  });

  test('opsPerSec is total operations over total time', () => {
    // 3 batches of 100 operations in 1000 + 2000 + 1000 µs = 300 ops / 4 ms
    expect(opsPerSec([1000, 2000, 1000], 100)).toBeCloseTo(75_000, 6);
    // not the mean of per-batch rates (100k, 50k, 100k → 83.3k)
    expect(opsPerSec([1000, 2000, 1000], 100)).not.toBeCloseTo(83_333, 0);
  });

  test('bad input is refused', () => {
    expect(() => perOpUs([1], 0)).toThrow(RangeError);
    expect(() => perOpUs([1], 1.5)).toThrow(RangeError);
    expect(() => opsPerSec([], 10)).toThrow(RangeError);
    expect(() => opsPerSec([0, 0], 10)).toThrow(RangeError);
  });

  test('batchFor aims at the target sample duration, clamped to [1, max]', () => {
    expect(batchFor(5, 5000)).toBe(1000);
    expect(batchFor(50, 5000)).toBe(100);
    expect(batchFor(300, 5000)).toBe(17);
    expect(batchFor(0.001, 5000)).toBe(1000); // clamped to max
    expect(batchFor(0.001, 5000, 5000)).toBe(5000);
    expect(batchFor(20_000, 5000)).toBe(1); // slower than a sample: one per sample
    expect(batchFor(0, 5000)).toBe(1);
    expect(batchFor(Number.NaN, 5000)).toBe(1);
  });
});

describe('protectionGate', () => {
  const f = (supported: boolean, reason = '') => ({ name: ENFORCED_PROTECTIONS, supported, reason });

  test('supported → true', () => {
    expect(protectionGate([{ name: 'vtl', supported: true, reason: '' }, f(true)])).toBe(true);
  });

  test('not supported → a reason naming the capability, with the first clause of the backend reason', () => {
    const r = protectionGate([f(false, 'VTL protections are not yet mapped to memslots: memory guest actions ... (next milestone)')]);
    expect(r).toBe(
      `protections are not enforced by the KVM platform yet (capability ${ENFORCED_PROTECTIONS} = false: VTL protections are not yet mapped to memslots)`,
    );
    expect(protectionGate([f(false)])).toBe(`protections are not enforced by the KVM platform yet (capability ${ENFORCED_PROTECTIONS} = false)`);
  });

  test('absent → a reason (an older backend)', () => {
    expect(protectionGate([{ name: 'vtl', supported: true, reason: '' }])).toMatch(/does not report the capability kvm-enforced-protections/);
  });
});

describe('nextRip', () => {
  test('alternates between the two RIPs, so VTL0 always finds its RIP moved', () => {
    const a = 0x1000n;
    const b = 0x2000n;
    expect(nextRip(a, a, b)).toBe(b);
    expect(nextRip(b, a, b)).toBe(a);
    expect(nextRip(0x3000n, a, b)).toBe(a); // anywhere else: move to a
    let rip = a;
    for (let i = 0; i < 5; i++) {
      const to = nextRip(rip, a, b);
      expect(to).not.toBe(rip);
      rip = to;
    }
  });

  test('equal RIPs are refused', () => {
    expect(() => nextRip(1n, 2n, 2n)).toThrow(RangeError);
  });
});

describe('calibrateBatch', () => {
  /** A fake clock: op(n) advances it by setupUs + n × perOpUs (+ the next of `extraUs`, if any). */
  function fake(perOpUs: number, setupUs = 0, extraUs: number[] = []) {
    let t = 0;
    const calls: number[] = [];
    return {
      calls,
      nowUs: () => t,
      op: (n: number) => {
        calls.push(n);
        t += setupUs + n * perOpUs + (extraUs.shift() ?? 0);
      },
    };
  }

  test('doubles the probe until one call lasts probeUs, refines at that size, then sizes the batch for targetUs', async () => {
    const f = fake(10);
    const batch = await calibrateBatch(f.op, { targetUs: 5000, probeUs: 2000, nowUs: f.nowUs });
    // warm-up, doubling to 256 (256 × 10 µs ≥ 2000 µs), 3 refinements
    expect(f.calls).toEqual([1, 1, 2, 4, 8, 16, 32, 64, 128, 256, 256, 256, 256]);
    expect(batch).toBe(500);
  });

  test('a per-call overhead is amortised over the probe, not charged to one operation', async () => {
    const f = fake(5, 80); // e.g. runVp entry/exit around the exits
    const batch = await calibrateBatch(f.op, { targetUs: 5000, probeUs: 2000, nowUs: f.nowUs });
    // probe of 512: (80 + 2560) / 512 ≈ 5.16 µs → ≈ 969 (a 20-op probe would say 9 µs → 556)
    expect(batch).toBeGreaterThan(900);
    expect(batch).toBeLessThanOrEqual(1000);
  });

  test('interference during the probe: the fastest refinement decides', async () => {
    // 10 µs per op; the call that reaches the probe duration was slowed by 3 ms, the refinements not.
    const f = fake(10, 0, [0, 0, 0, 0, 0, 0, 0, 3000]);
    const batch = await calibrateBatch(f.op, { targetUs: 5000, probeUs: 2000, nowUs: f.nowUs });
    expect(f.calls.slice(-4)).toEqual([64, 64, 64, 64]); // 64 × 10 + 3000 ≥ 2000: stopped early
    expect(batch).toBe(500); // from 640 µs / 64, not 3640 µs / 64
  });

  test('slow operations: one per sample; the probe stops at max', async () => {
    const slow = fake(20_000);
    expect(await calibrateBatch(slow.op, { targetUs: 5000, nowUs: slow.nowUs })).toBe(1);
    expect(slow.calls).toEqual([1, 1, 1, 1, 1]);
    const fast = fake(0.001);
    expect(await calibrateBatch(fast.op, { targetUs: 5000, max: 64, nowUs: fast.nowUs })).toBe(64);
    expect(Math.max(...fast.calls)).toBe(64);
  });

  test('awaits asynchronous operations', async () => {
    let t = 0;
    const batch = await calibrateBatch(
      async (n) => {
        await Promise.resolve();
        t += n * 100;
      },
      { targetUs: 1000, probeUs: 1000, refine: 0, nowUs: () => t },
    );
    expect(batch).toBe(10);
  });
});
