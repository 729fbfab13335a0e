// Answers to monitor-route intercepts apply to their own intercept only, and never half-apply
// (issue #19 findings 1, 6 and the resident-RAM limit): a crash resolves every pending intercept as
// crashed (each waiter gets its own outcome); nothing is answered on a crashed or deleted partition;
// an ALLOW whose access would exceed the resident-RAM limit is refused and the intercept stays pending.
import {
  ANSWERED_KEPT,
  HvError,
  HvRegisterName as R,
  HvStatus,
  Partition,
  SparseMemory,
  answerIntercept,
  guestAccess,
  longModeContext,
  reg64,
} from '@vsm/core';
import { ResidentMemory } from '../src/resident';

const MiB = 1n << 20n;

function monitored(vpCount: number, ram?: SparseMemory): Partition {
  const p = new Partition({ id: 'ans', architecture: 'x64', vpCount, memoryBytes: MiB, maximumVtl: 1, labels: {}, platform: ram ? { ram } : undefined });
  p.enablePartitionVtl('host', 1, 0);
  for (let i = 0; i < vpCount; i++) p.enableVpVtl('host', i, 1, longModeContext());
  p.setRegisters(p.vp(0), 1, [{ name: R.HvRegisterVsmPartitionConfig, value: reg64(1n | (0xfn << 1n)) }], 'host');
  p.modifyVtlProtectionMask('host', 1, 0x1 | 0x4, [{ start: 0x40n, count: 1n }]); // no write to page 0x40
  p.interceptRoute = 'monitor';
  return p;
}

function intercepted(p: Partition, vp: number, gpa = 0x40000n) {
  const o = guestAccess(p, p.vp(vp), 'write', gpa, 8, Buffer.alloc(8, vp + 1));
  if (o.status !== 'intercepted') throw new Error(`expected an intercept, got ${o.status}`);
  return o.intercept.id;
}

test("each waiter is woken with its own intercept's outcome; a CRASH resolves every other pending intercept as crashed", () => {
  const p = monitored(2);
  const a = intercepted(p, 0);
  const b = intercepted(p, 1);
  const woken: [bigint, string][] = [];
  p.intercepts.onResolved((id, o) => woken.push([id, o.status]));
  expect(answerIntercept(p, a, 'skip')).toMatchObject({ result: 'applied', outcome: { status: 'completed' } });
  expect(woken).toEqual([[a, 'completed']]);
  const c = intercepted(p, 0);
  expect(answerIntercept(p, c, 'crash')).toMatchObject({ result: 'applied', outcome: { status: 'crashed' } });
  expect(woken).toEqual([
    [a, 'completed'],
    [c, 'crashed'],
    [b, 'crashed'],
  ]);
  expect(p.state).toBe('crashed');
  expect(p.crashReason).toMatch(/CRASH/);
  expect(p.intercepts.pending.size).toBe(0);
  expect(p.vp(1).suspendedOn).toBeNull();
  // Nothing more is answered, nothing more runs.
  expect(() => answerIntercept(p, b, 'allow')).toThrow(expect.objectContaining({ status: HvStatus.HV_STATUS_INVALID_PARTITION_STATE }));
  expect(() => guestAccess(p, p.vp(0), 'read', 0x1000n, 8)).toThrow(expect.objectContaining({ status: HvStatus.HV_STATUS_INVALID_PARTITION_STATE }));
  expect(p.memory.read(0x40000n, 8)).toEqual(Buffer.alloc(8));
});

test('a deleted partition releases its waiters and ends its listeners; later answers are refused', () => {
  const p = monitored(1);
  const a = intercepted(p, 0);
  const ends: string[] = [];
  p.onEnd((why) => ends.push(why));
  const woken: bigint[] = [];
  p.intercepts.onResolved((id) => woken.push(id));
  p.markDeleted();
  expect(ends).toEqual(['deleted']);
  expect(woken).toEqual([a]);
  expect(() => answerIntercept(p, a, 'allow')).toThrow(expect.objectContaining({ status: HvStatus.HV_STATUS_INVALID_PARTITION_ID }));
});

test('the suspension rule: a VP suspended on an intercept takes no guest action until answered', () => {
  const p = monitored(2);
  const a = intercepted(p, 0);
  expect(() => p.assertVpCanAct(p.vp(0))).toThrow(expect.objectContaining({ status: HvStatus.HV_STATUS_INVALID_VP_STATE }));
  expect(() => p.assertVpCanAct(p.vp(1))).not.toThrow();
  answerIntercept(p, a, 'allow');
  expect(() => p.assertVpCanAct(p.vp(0))).not.toThrow();
  expect(p.memory.read(0x40000n, 8)).toEqual(Buffer.alloc(8, 1));
});

test('an ALLOW that would exceed the resident-RAM limit is refused whole: the intercept stays pending and a later ALLOW applies', () => {
  const acct = new ResidentMemory(BigInt(2 * 4096));
  const p = monitored(1, new SparseMemory(MiB, acct));
  p.memory.write(0x1000n, Buffer.alloc(8, 7)); // one page resident
  const a = intercepted(p, 0);
  p.memory.write(0x2000n, Buffer.alloc(8, 7)); // the limit is full now
  let err: unknown;
  try {
    answerIntercept(p, a, 'allow');
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(HvError);
  expect((err as HvError).status).toBe(HvStatus.HV_STATUS_INSUFFICIENT_MEMORY);
  expect(p.state).toBe('active');
  expect(p.intercepts.status(a)).toBe('pending');
  expect(p.vp(0).suspendedOn).toBe(a);
  expect(p.memory.read(0x40000n, 8)).toEqual(Buffer.alloc(8));
  // Room again (an operator freed memory elsewhere): the same answer applies once.
  acct.release(4096);
  expect(answerIntercept(p, a, 'allow')).toMatchObject({ result: 'applied', outcome: { status: 'completed' } });
  expect(p.memory.read(0x40000n, 8)).toEqual(Buffer.alloc(8, 1));
  expect(answerIntercept(p, a, 'allow')).toEqual({ result: 'duplicate' });
});

test('answered ids are remembered one per id modulo ANSWERED_KEPT: until an id that much greater is answered, also after a state import', () => {
  const p = monitored(1);
  const first = intercepted(p, 0);
  answerIntercept(p, first, 'skip');
  const second = intercepted(p, 0);
  answerIntercept(p, second, 'skip');
  expect(p.intercepts.status(first)).toBe('duplicate');
  expect(p.intercepts.outcomeOf(first)).toEqual({ status: 'completed', data: undefined });
  // The broker's own bookkeeping, driven directly (a guest access per id would take minutes).
  const b = p.intercepts;
  let last = 0n;
  for (let i = 0; i < ANSWERED_KEPT - 2; i++) b.markAnswered((last = b.allocateId()), { status: 'crashed' });
  expect(last).toBe(first + BigInt(ANSWERED_KEPT) - 1n);
  expect(b.status(first)).toBe('duplicate'); // ANSWERED_KEPT answers so far: all remembered
  b.markAnswered((last = b.allocateId()), { status: 'crashed' }); // first + ANSWERED_KEPT: first's slot
  expect(b.status(first)).toBe('unknown');
  expect(b.outcomeOf(first)).toBeUndefined();
  expect(b.status(second)).toBe('duplicate');
  expect(b.outcomeOf(last)).toEqual({ status: 'crashed' });
  expect(b.status(last + 1n)).toBe('unknown'); // not allocated yet
  // An intercept answered late takes its slot back from the newer id that shares it.
  const late = b.allocateId();
  for (let i = 0; i < ANSWERED_KEPT; i++) b.markAnswered(b.allocateId(), { status: 'crashed' });
  const sharer = late + BigInt(ANSWERED_KEPT);
  expect(b.status(sharer)).toBe('duplicate');
  b.markAnswered(late, { status: 'completed' });
  expect(b.status(late)).toBe('duplicate');
  expect(b.status(sharer)).toBe('unknown');
  // Export/import keeps the remembered ids (not their outcomes).
  const q = monitored(1);
  q.intercepts.importState(b.exportState());
  expect(q.intercepts.status(late)).toBe('duplicate');
  expect(q.intercepts.status(sharer)).toBe('unknown');
  expect(q.intercepts.status(second)).toBe('unknown');
  expect(q.intercepts.status(sharer - 1n)).toBe('duplicate');
  expect(q.intercepts.outcomeOf(late)).toBeUndefined();
  expect(b.exportState().answered).toHaveLength(ANSWERED_KEPT);
});

test('answered ids above 2^53 (an imported next id) are told apart exactly: ids sharing a slot or the low 32 bits are not duplicates', () => {
  const b = monitored(1).intercepts;
  const high = (1n << 64n) - 5n; // near the top of the u64 range: the bigint path of the id's halves
  b.importState({ nextId: high, pending: [], answered: [] });
  const id = b.allocateId();
  expect(id).toBe(high);
  b.markAnswered(id, { status: 'crashed' });
  expect(b.status(id)).toBe('duplicate');
  expect(b.outcomeOf(id)).toEqual({ status: 'crashed' });
  // Same slot and same low 32 bits, another high half; and a neighbour across 2^53 precision.
  expect(b.status(id - (1n << 32n))).toBe('unknown');
  expect(b.status(id - (1n << 40n))).toBe('unknown');
  expect(b.status(id - 1n)).toBe('unknown');
  const safe = BigInt(Number.MAX_SAFE_INTEGER); // 2^53 - 1: the last id on the number path
  b.markAnswered(safe, { status: 'crashed' });
  expect(b.status(safe)).toBe('duplicate');
  expect(b.status(safe + 1n)).toBe('unknown');
  expect(b.status(safe + (1n << 32n))).toBe('unknown');
  // Export/import round-trips them.
  const q = monitored(1).intercepts;
  q.importState(b.exportState());
  expect(q.status(id)).toBe('duplicate');
  expect(q.status(safe)).toBe('duplicate');
  expect(b.exportState().answered).toEqual([safe, id]);
});

test("whenAnswered wakes only the waiters of the answered id, once; a deleted partition's waiters get crashed", () => {
  const p = monitored(3);
  const a = intercepted(p, 0);
  const b = intercepted(p, 1);
  const got: string[] = [];
  p.intercepts.whenAnswered(a, (o) => got.push(`a1 ${o.status}`));
  p.intercepts.whenAnswered(a, (o) => got.push(`a2 ${o.status}`));
  p.intercepts.whenAnswered(b, (o) => got.push(`b ${o.status}`));
  answerIntercept(p, a, 'skip');
  expect(got).toEqual(['a1 completed', 'a2 completed']);
  answerIntercept(p, a, 'skip'); // a duplicate wakes nobody again
  expect(got).toEqual(['a1 completed', 'a2 completed']);
  p.markDeleted();
  expect(got).toEqual(['a1 completed', 'a2 completed', 'b crashed']);
});
