// IdMap (services/core/src/id-map.ts): the intercept-id map of a partition's pending intercepts and
// their waiters behaves as a Map of bigint ids (iterated in ascending id order) at every size, with
// ids on both sides of 2^53, through growth, shrinking and backward-shift deletions.
import { IdMap } from '@vsm/core';

/** A deterministic pseudo-random sequence (xorshift32). */
function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

const sorted = (m: Map<bigint, number>) => [...m.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));

test('random sets, deletes and clears agree with a Map: get, has, size, and entries in id order', () => {
  const r = rng(7);
  const m = new IdMap<number>();
  const ref = new Map<bigint, number>();
  // Sequential ids (as intercepts are allocated), some far apart (collisions in the low bits), and
  // ids at and above 2^53 (imported states).
  const pick = (): bigint => {
    const k = r();
    if (k < 0.6) return BigInt(Math.floor(r() * 64)) + 1000n;
    if (k < 0.8) return BigInt(Math.floor(r() * 8)) * 65536n + 1n;
    if (k < 0.9) return (1n << 32n) * BigInt(Math.floor(r() * 4)) + 5n;
    return (1n << 53n) + BigInt(Math.floor(r() * 8)) - 2n;
  };
  const mismatches: string[] = [];
  for (let i = 0; i < 50_000; i++) {
    const id = pick();
    const op = r();
    if (op < 0.5) {
      m.set(id, i);
      ref.set(id, i);
    } else if (op < 0.95) {
      if (m.delete(id) !== ref.delete(id)) mismatches.push(`delete ${id} at ${i}`);
    } else if (op < 0.9995) {
      if (m.get(id) !== ref.get(id)) mismatches.push(`get ${id} at ${i}`);
    } else {
      m.clear();
      ref.clear();
    }
    if (m.size !== ref.size || m.has(id) !== ref.has(id)) mismatches.push(`size/has ${id} at ${i}`);
    if (i % 997 === 0) expect([...m]).toEqual(sorted(ref));
  }
  expect(mismatches).toEqual([]);
  expect([...m.entries()]).toEqual(sorted(ref));
  expect([...m.keys()]).toEqual(sorted(ref).map((e) => e[0]));
  expect([...m.values()]).toEqual(sorted(ref).map((e) => e[1]));
  const seen: [bigint, number][] = [];
  m.forEach((v, k, map) => {
    expect(map).toBe(m);
    seen.push([k, v]);
  });
  expect(seen).toEqual(sorted(ref));
});

test('100,000 sequential ids: set, found, iterated oldest first, deleted in another order; changing the map while iterating is safe', () => {
  const m = new IdMap<string>();
  const n = 100_000;
  for (let i = 1; i <= n; i++) m.set(BigInt(i), `r${i}`);
  expect(m.size).toBe(n);
  expect(m.get(1n)).toBe('r1');
  expect(m.get(BigInt(n))).toBe(`r${n}`);
  expect(m.get(BigInt(n + 1))).toBeUndefined();
  let prev = 0n;
  let ordered = true;
  let count = 0;
  for (const [id] of m) {
    ordered &&= id > prev;
    prev = id;
    m.delete(id); // while iterating: the iteration is a snapshot
    count++;
  }
  expect(ordered).toBe(true);
  expect(count).toBe(n);
  expect(m.size).toBe(0);
  // Refill after shrinking, deleting odd ids first.
  for (let i = 1; i <= 1000; i++) m.set(BigInt(i), String(i));
  for (let i = 1; i <= 1000; i += 2) expect(m.delete(BigInt(i))).toBe(true);
  expect([...m.keys()]).toEqual(Array.from({ length: 500 }, (_, k) => BigInt(2 * k + 2)));
  expect(m.delete(1n)).toBe(false);
});
