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

// The flat lookup index (issue #13): built by get() after enough lookups since the last change,
// dropped by every change. Lookups must agree with the per-page model whether or not it is in use.
test('interleaved changes and lookups agree with a per-page model, with and without the lookup index (incl. descending fragmentation)', () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.oneof(
          fc.record({
            kind: fc.constant('set' as const),
            start: fc.integer({ min: 0, max: 3000 }),
            count: fc.integer({ min: 1, max: 300 }),
            mask: fc.integer({ min: 0, max: 3 }),
          }),
          // A descending run of single pages (fragmentation, the order issue #17 measured).
          fc.record({
            kind: fc.constant('desc' as const),
            start: fc.integer({ min: 0, max: 3000 }),
            count: fc.integer({ min: 1, max: 400 }),
            mask: fc.integer({ min: 0, max: 3 }),
          }),
          fc.record({
            kind: fc.constant('lookups' as const),
            start: fc.integer({ min: 0, max: 3200 }),
            count: fc.integer({ min: 1, max: 400 }),
            mask: fc.constant(0),
          }),
          fc.record({ kind: fc.constant('clone' as const), start: fc.constant(0), count: fc.constant(0), mask: fc.constant(0) }),
        ),
        { maxLength: 120 },
      ),
      (ops) => {
        const pages = 3400;
        let m = new ProtectionMap(DEFAULT);
        const ref = model(pages);
        let indexedLookups = 0;
        const check = (g: number) => {
          if (m.indexed) indexedLookups++;
          expect(m.get(g)).toBe(ref.get(g));
        };
        for (const o of ops) {
          if (o.kind === 'set') {
            m.set(o.start, o.count, o.mask);
            ref.set(o.start, o.count, o.mask);
            expect(m.indexed).toBe(false);
          } else if (o.kind === 'desc') {
            for (let i = o.count - 1; i >= 0; i -= 2) {
              m.set(o.start + i, 1, (o.mask + i) & 3);
              ref.set(o.start + i, 1, (o.mask + i) & 3);
            }
          } else if (o.kind === 'clone') {
            const c = m.clone();
            m.set(0, 1, (ref.get(0) + 1) & 3); // the original changes: the clone must not see it
            expect(c.get(0)).toBe(ref.get(0));
            const d = c.draft();
            d.set(1, 1, 1);
            m = c;
            m.adopt(d);
            ref.set(1, 1, 1);
          } else {
            // Scattered lookups (stride 7: enough of them build the index), then every boundary neighbourhood.
            for (let k = 0; k < o.count; k++) check((o.start + 7 * k) % pages);
            for (const r of m.rangesFrom(0, 64)) for (const g of [r.start - 1, r.start, r.end - 1, r.end]) if (g >= 0 && g < pages) check(g);
          }
        }
        for (let g = 0; g < pages; g++) check(g);
        expect(indexedLookups).toBeGreaterThan(0); // the full sweep alone builds it
      },
    ),
    { numRuns: 80 },
  );
});

test('the lookup index: built after count/4 lookups, dropped by set and adopt, follows defaultMask, spans pages above 2^32', () => {
  const m = new ProtectionMap(DEFAULT);
  const base = 2 ** 36; // a 48-bit GPA's page numbers
  for (let i = 0; i < 1000; i++) m.set(base + 3 * i, 1 + (i % 2), i & 3);
  let n = 0;
  while (!m.indexed) {
    m.get(base + n);
    n++;
  }
  expect(n).toBe(250); // count / 4 (≥ 64) lookups
  for (let i = 0; i < 1000; i++) {
    expect(m.get(base + 3 * i)).toBe(i & 3);
    expect(m.get(base + 3 * i + 1)).toBe(i % 2 ? i & 3 : DEFAULT);
    expect(m.get(base + 3 * i + 2)).toBe(DEFAULT);
  }
  expect(m.get(base - 1)).toBe(DEFAULT);
  expect(m.get(base + 3000)).toBe(DEFAULT);
  expect(m.get(0)).toBe(DEFAULT);
  m.defaultMask = 0x1;
  expect(m.get(base + 2)).toBe(0x1);
  m.set(base + 2, 1, 3);
  expect(m.indexed).toBe(false);
  expect(m.get(base + 2)).toBe(3);
  // A draft adopted drops the index too.
  for (let k = 0; k < 300; k++) m.get(base + k);
  expect(m.indexed).toBe(true);
  const d = m.draft();
  d.set(base, 3000, 2);
  m.adopt(d);
  expect(m.indexed).toBe(false);
  expect(m.get(base + 2)).toBe(2);
  // Clustered ranges with one far away: a wide bucket, binary-searched.
  const c = new ProtectionMap(DEFAULT);
  for (let i = 0; i < 500; i++) c.set(2 * i, 1, 1);
  c.set(2 ** 40, 1, 3);
  for (let k = 0; k < 200; k++) c.get(k);
  expect(c.indexed).toBe(true);
  for (let g = 0; g < 1002; g++) expect(c.get(g)).toBe(g % 2 === 0 && g < 1000 ? 1 : DEFAULT);
  expect(c.get(2 ** 40)).toBe(3);
  expect(c.get(2 ** 40 - 1)).toBe(DEFAULT);
  expect(c.get(2 ** 40 + 1)).toBe(DEFAULT);
});

test('rangesInto copies what rangesFrom returns, across leaves, without objects', () => {
  const m = new ProtectionMap(DEFAULT);
  for (let i = 2999; i >= 0; i--) m.set(3 * i, 1 + (i % 2), i & 3);
  const out = { starts: new Float64Array(700), ends: new Float64Array(700), masks: new Uint8Array(700) };
  const seen: [number, number, number][] = [];
  let after = -1;
  for (let n = m.rangesInto(after, out); n > 0; n = m.rangesInto(after, out)) {
    for (let i = 0; i < n; i++) seen.push([out.starts[i]!, out.ends[i]!, out.masks[i]!]);
    after = out.ends[n - 1]!;
  }
  expect(seen).toEqual(m.list().map((r) => [r.start, r.end, r.mask]));
  expect(seen).toHaveLength(m.rangeCount);
  // From inside a range: that range first, as rangesFrom.
  expect(m.rangesInto(3 * 1001, out)).toBe(700);
  expect([out.starts[0], out.ends[0], out.masks[0]]).toEqual([3003, 3005, 1001 & 3]);
  expect(m.rangesInto(9000, out)).toBe(0);
});
