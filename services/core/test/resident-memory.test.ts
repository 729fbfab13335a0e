// The process-wide resident guest RAM account (issue 19 finding 8): SparseMemory counts the pages
// it holds in a shared ResidentMemory; a write whose new pages exceed the limit is refused
// (HV_STATUS_INSUFFICIENT_MEMORY) before any page is allocated or byte written, also when a guest
// write is split around an overlay; the PartitionManager owns the account, gives a partition's
// pages back on delete, refuses a restore that does not fit, and counts the whole memory_bytes of
// a partition whose engine supplies RAM mapping all of it.
import { HvError, HvRegisterName as R, HvStatus, Partition, PartitionManager, DEFAULT_LIMITS, SparseMemory, reg64, snapshotPartition } from '@vsm/core';
import { PAGE_SIZE } from '../src/memory';
import { ResidentMemory } from '../src/resident';

const MiB = 1n << 20n;
const GiB = 1n << 30n;

const insufficient = (fn: () => unknown): HvError => {
  try {
    fn();
  } catch (e) {
    if (e instanceof HvError && e.status === HvStatus.HV_STATUS_INSUFFICIENT_MEMORY) return e;
    throw e;
  }
  throw new Error('expected HV_STATUS_INSUFFICIENT_MEMORY');
};

describe('SparseMemory with a ResidentMemory account', () => {
  test('pages count when first written, zeros allocate nothing, clear/free give them back', () => {
    const acct = new ResidentMemory(16n * BigInt(PAGE_SIZE));
    const m = new SparseMemory(GiB, acct);
    m.write(0x1000n, Buffer.from('a'));
    m.write(0x1008n, Buffer.from('b')); // same page
    m.write(0x5000n, Buffer.alloc(3 * PAGE_SIZE)); // zeros: nothing
    expect(acct.usedBytes).toBe(PAGE_SIZE);
    m.write(0x1ffen, Buffer.from('cdef')); // crosses into page 2
    expect(acct.usedBytes).toBe(2 * PAGE_SIZE);
    m.clear();
    expect(acct.usedBytes).toBe(0);
    m.write(0n, Buffer.alloc(PAGE_SIZE, 1));
    m.free();
    expect(acct.usedBytes).toBe(0);
  });

  test('a write that would exceed the limit is refused before any of its pages is allocated', () => {
    const acct = new ResidentMemory(4n * BigInt(PAGE_SIZE));
    const m = new SparseMemory(GiB, acct);
    m.write(0n, Buffer.alloc(2 * PAGE_SIZE, 1)); // 2 of 4 pages
    const e = insufficient(() => m.write(0x10000n, Buffer.alloc(3 * PAGE_SIZE, 2))); // needs 3, 2 left
    expect(e.message).toMatch(/limit is 16384 bytes/);
    expect(m.touchedPages()).toEqual([0, 1]);
    expect(m.read(0x10000n, 3 * PAGE_SIZE).equals(Buffer.alloc(3 * PAGE_SIZE))).toBe(true);
    // Rewriting held pages and filling exactly to the limit work.
    m.write(0n, Buffer.alloc(2 * PAGE_SIZE, 9));
    m.write(0x10000n, Buffer.alloc(2 * PAGE_SIZE, 2));
    expect(acct.usedBytes).toBe(4 * PAGE_SIZE);
    insufficient(() => m.write(0x20000n, Buffer.from('x')));
  });

  test("the account is shared: one memory's pages leave less for another", () => {
    const acct = new ResidentMemory(3n * BigInt(PAGE_SIZE));
    const a = new SparseMemory(GiB, acct);
    const b = new SparseMemory(GiB, acct);
    a.write(0n, Buffer.alloc(2 * PAGE_SIZE, 1));
    b.write(0n, Buffer.from('fits'));
    insufficient(() => b.write(0x1000n, Buffer.from('no room')));
    a.free();
    b.write(0x1000n, Buffer.from('room now'));
    expect(acct.usedBytes).toBe(2 * PAGE_SIZE);
  });
});

describe('Partition.writeView', () => {
  test('a guest write split around an overlay is refused whole: neither its RAM nor its overlay part lands', () => {
    const acct = new ResidentMemory(1n * BigInt(PAGE_SIZE));
    const p = new Partition({
      id: 'wv',
      architecture: 'x64',
      vpCount: 1,
      memoryBytes: GiB,
      maximumVtl: 0,
      labels: {},
      platform: { ram: new SparseMemory(GiB, acct) },
    });
    // A writable overlay (VP assist page) at GPFN 1, between RAM pages 0 and 2.
    p.setRegisters(p.vp(0), 0, [{ name: R.HvRegisterVpAssistPage, value: reg64(0x1001n) }], 'host');
    const data = Buffer.alloc(3 * PAGE_SIZE, 0x77);
    insufficient(() => p.writeView(0, 0, 0n, data)); // RAM pages 0 and 2 are new; one fits
    expect(p.readView(0, 0, 0n, 3 * PAGE_SIZE).equals(Buffer.alloc(3 * PAGE_SIZE))).toBe(true);
    expect(acct.usedBytes).toBe(0);
    // Two pages' worth only if one of them is already held.
    p.memory.write(0n, Buffer.from('held'));
    expect(p.writeView(0, 0, 0x10n, Buffer.alloc(2 * PAGE_SIZE - 0x10, 0x66))).toBe(true); // pages 0 (held) and 1 (overlay)
    expect(p.readView(0, 0, 0x1000n, 4).equals(Buffer.alloc(4, 0x66))).toBe(true);
  });
});

describe('PartitionManager', () => {
  const req = (id: string, memoryBytes = GiB) => ({ partitionId: id, architecture: 'x64' as const, vpCount: 1, memoryBytes, maximumVtl: 1, labels: {} });

  test("owns one account for all its partitions; delete gives a partition's pages back; no limit by default", () => {
    const m = new PartitionManager({ ...DEFAULT_LIMITS, maxResidentBytes: 8n * BigInt(PAGE_SIZE) });
    const a = m.create(req('a'));
    const b = m.create(req('b'));
    a.memory.write(0n, Buffer.alloc(6 * PAGE_SIZE, 1));
    insufficient(() => b.memory.write(0n, Buffer.alloc(3 * PAGE_SIZE, 1)));
    expect(m.resident.usedBytes).toBe(6 * PAGE_SIZE);
    m.delete('a');
    expect(m.resident.usedBytes).toBe(0);
    b.memory.write(0n, Buffer.alloc(3 * PAGE_SIZE, 1));
    expect(m.resident.usedBytes).toBe(3 * PAGE_SIZE);
    expect(new PartitionManager().resident.limit).toBe(Infinity);
  });

  test('a restore that does not fit the remaining budget is refused before anything is created', () => {
    const m = new PartitionManager({ ...DEFAULT_LIMITS, maxResidentBytes: 10n * BigInt(PAGE_SIZE) });
    const src = m.create(req('src'));
    src.memory.write(0n, Buffer.alloc(4 * PAGE_SIZE, 3));
    const snap = snapshotPartition(src);
    m.restore(snap, 'copy'); // 8 of 10 pages
    insufficient(() => m.restore(snap, 'copy2'));
    insufficient(() => m.restore(snap));
    expect(m.list(100, '').partitions.map((p) => p.id)).toEqual(['src', 'copy']);
    expect(m.resident.usedBytes).toBe(8 * PAGE_SIZE);
    // Generated ids were not consumed by the refusals.
    m.delete('src');
    expect(m.restore(snap).id).toBe('p000001');
  });

  test('an engine whose RAM maps the whole GPA space has memory_bytes counted at create and restore, given back on delete or failure', () => {
    const disposed: string[] = [];
    const m = new PartitionManager(
      { ...DEFAULT_LIMITS, maxResidentBytes: 3n * 64n * MiB },
      { platform: (spec) => ({ hooks: { ram: new SparseMemory(spec.memoryBytes) }, dispose: () => disposed.push(spec.id) }) },
    );
    m.create(req('k1', 64n * MiB));
    m.create(req('k2', 64n * MiB));
    expect(m.resident.usedBytes).toBe(128 * 2 ** 20);
    insufficient(() => m.create(req('k3', 128n * MiB)));
    const snap = snapshotPartition(m.get('k1'));
    m.restore(snap, 'k3');
    insufficient(() => m.restore(snap, 'k4'));
    expect(m.list(100, '').partitions.map((p) => p.id)).toEqual(['k1', 'k2', 'k3']);
    m.delete('k2');
    expect(disposed).toEqual(['k2']);
    expect(m.resident.usedBytes).toBe(128 * 2 ** 20);
    m.create(req('k4', 64n * MiB));
    expect(m.resident.usedBytes).toBe(192 * 2 ** 20);
  });
});
