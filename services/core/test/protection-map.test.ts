// ProtectionMap at scale (issue #17): the leaf-indexed range map agrees with a per-page model under
// random changes in any order, stays merged, reports the windows it changed, and costs the same in
// descending order as in ascending order (counted in work, not time: ranges moved per change).
import fc from 'fast-check';
import { ProtectionMap } from '@vsm/core';

const DEFAULT = 0xf;

function model(pages: number) {
  const m = new Uint8Array(pages).fill(0xff); // 0xff = no range
  return {
    set(start: number, count: number, mask: number) {
      m.fill(mask, start, Math.min(pages, start + count));
    },
    ranges() {
      const out: [number, number, number][] = [];
      for (let i = 0; i < pages; i++) {
        if (m[i] === 0xff) continue;
        const last = out[out.length - 1];
        if (last && last[1] === i && last[2] === m[i]) last[1] = i + 1;
        else out.push([i, i + 1, m[i]!]);
      }
      return out;
    },
    get: (g: number) => (m[g] === 0xff ? DEFAULT : m[g]!),
  };
}

test('random changes agree with a per-page model: lookups, merged ranges, rangesFrom', () => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ start: fc.integer({ min: 0, max: 2000 }), count: fc.integer({ min: 1, max: 40 }), mask: fc.integer({ min: 0, max: 3 }) }), {
        maxLength: 600,
      }),
      (ops) => {
        const pages = 2100;
        const m = new ProtectionMap(DEFAULT);
        const ref = model(pages);
        for (const o of ops) {
          m.set(o.start, o.count, o.mask);
          ref.set(o.start, o.count, o.mask);
        }
        const want = ref.ranges();
        expect(m.list().map((r) => [r.start, r.end, r.mask])).toEqual(want);
        expect(m.rangeCount).toBe(want.length);
        for (let g = 0; g < pages; g += 7) expect(m.get(g)).toBe(ref.get(g));
        const from = 1000;
        expect(m.rangesFrom(from, 5).map((r) => [r.start, r.end, r.mask])).toEqual(want.filter((r) => r[1] > from).slice(0, 5));
      },
    ),
    { numRuns: 60 },
  );
});

test('many leaves: 100,000 alternating single-page ranges set in descending order, then overwritten in ascending order', () => {
  const m = new ProtectionMap(DEFAULT);
  const n = 100_000;
  for (let i = n - 1; i >= 0; i--) m.set(i * 2, 1, i % 2 ? 1 : 3);
  expect(m.rangeCount).toBe(n);
  for (let i = 0; i < n; i += 999) {
    expect(m.get(i * 2)).toBe(i % 2 ? 1 : 3);
    expect(m.get(i * 2 + 1)).toBe(DEFAULT);
  }
  expect(m.rangesFrom(2 * 5000, 2).map((r) => r.start)).toEqual([10000, 10002]);
  // One change over everything: one range left (leaves dropped and merged, memory back to O(1)).
  m.set(0, 2 * n, 7);
  expect(m.list()).toEqual([{ start: 0, end: 2 * n, mask: 7 }]);
  // Fill every gap page by page: equal masks merge as they meet.
  const g = new ProtectionMap(DEFAULT);
  for (let i = 0; i < 10_000; i += 2) g.set(i, 1, 1);
  expect(g.rangeCount).toBe(5000);
  for (let i = 9_999; i >= 1; i -= 2) g.set(i, 1, 1);
  expect(g.list()).toEqual([{ start: 0, end: 10_000, mask: 1 }]);
});

test('watchers get the page window whose range starts changed', () => {
  const m = new ProtectionMap(DEFAULT);
  const seen: [number, number][] = [];
  const stop = m.watch((lo, hi) => seen.push([lo, hi]));
  m.set(10, 5, 1); // new
  m.set(12, 1, 3); // splits [10,15)
  m.set(15, 5, 1); // touches [13,15) with the same mask: merges
  stop();
  m.set(0, 1, 1);
  expect(seen).toEqual([
    [10, 15],
    [10, 15],
    [13, 20],
  ]);
  expect(m.list().map((r) => [r.start, r.end, r.mask])).toEqual([
    [0, 1, 1],
    [10, 12, 1],
    [12, 13, 3],
    [13, 20, 1],
  ]);
});

test('clone is independent', () => {
  const m = new ProtectionMap(DEFAULT);
  for (let i = 0; i < 1000; i++) m.set(i * 3, 1, 1);
  const c = m.clone();
  m.set(0, 3000, 3);
  expect(c.rangeCount).toBe(1000);
  expect(c.get(3)).toBe(1);
  expect(m.rangeCount).toBe(1);
});

test('a draft changes nothing in force until adopted; the live map and the draft never see each other', () => {
  const m = new ProtectionMap(DEFAULT);
  for (let i = 0; i < 5000; i++) m.set(i * 2, 1, 1);
  const seen: [number, number][] = [];
  m.watch((lo, hi) => seen.push([lo, hi]));
  const d = m.draft();
  for (let i = 4999; i >= 0; i -= 2) d.set(i * 2, 1, 3);
  expect(m.get(2 * 4999)).toBe(1);
  expect(d.get(2 * 4999)).toBe(3);
  expect(seen).toEqual([]);
  expect(m.changedSince(d)).toBe(false);
  m.adopt(d);
  expect(m.get(2 * 4999)).toBe(3);
  expect(m.get(2 * 4998)).toBe(1);
  expect(seen).toHaveLength(2500);
  // A draft whose base changed meanwhile is detected.
  const d2 = m.draft();
  m.set(0, 1, 7);
  expect(m.changedSince(d2)).toBe(true);
  d2.set(2, 1, 7);
  expect(m.get(2)).toBe(3); // as adopted, not d2's 7
  expect(m.get(0)).toBe(7);
});
