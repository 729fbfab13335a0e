// Conformance: streamed snapshots (ExportPartition / ImportPartition, issue #17) on every backend.
// A streamed round trip gives the same state as SavePartition describes; the export is the state at
// its start while the partition goes on; incremental snapshots chain; bad streams create nothing and
// leave the source untouched.
import { status } from '@grpc/grpc-js';
import { pb } from '@vsm/client';
import { HvMsr } from '@vsm/core';
import { GiB, type Harness, failure, startHarness } from '../support/server';

const R = pb.HvRegisterName;
const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });

jest.setTimeout(300_000);

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h.stop();
});

/** A partition with VTL1, overlays, protections, queued SynIC messages and `pages` RAM pages from 0x100000. */
async function source(id: string, pages = 8) {
  const p = await h.client.partitions.createPartition({
    partitionId: id,
    partition: pb.Partition.fromPartial({ vpCount: 2, memoryBytes: GiB, maximumVtl: 1, labels: { k: 'v' } }),
  });
  const vp0 = `${p.name}/vps/0`;
  for (let i = 0; i < pages; i += 64) {
    const n = Math.min(64, pages - i);
    const data = Buffer.alloc(n * 4096);
    for (let k = 0; k < n; k++) data.fill(`page ${i + k};`, k * 4096, (k + 1) * 4096);
    await h.client.memory.writeGpa({ name: p.name, gpa: 0x100000n + BigInt(i) * 4096n, data });
  }
  await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
  await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
  await h.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 1n });
  await h.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x1001n });
  await h.client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n }); // into VTL1
  await h.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 2n });
  await h.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x2001n });
  await h.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_SIMP, value: 0x9001n });
  await h.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_SCONTROL, value: 1n });
  await h.client.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] });
  // Many ranges: every other page of 0x200.. protected.
  const ranges = Array.from({ length: 3000 }, (_, k) => ({ startPage: 0x200n + 2n * BigInt(k), pageCount: 1n }));
  await h.client.intercepts.modifyVtlProtectionMask({ name: p.name, protectingVtl: 1, mapFlags: 0x1, ranges });
  await h.client.synic.postMessage({ name: vp0, vtl: 1, sint: 0, messageType: 7, payload: Buffer.from('first') });
  await h.client.synic.postMessage({ name: vp0, vtl: 1, sint: 0, messageType: 8, payload: Buffer.from('queued') });
  await h.client.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 1n }); // back to VTL0
  return p.name;
}

/** SavePartition of a partition, without what legitimately differs between copies. */
async function state(name: string) {
  const s = await h.client.snapshots.savePartition({ name });
  return { ...s, sourceName: '', savedTimeUnixMs: 0n };
}

async function exportAll(req: Partial<pb.ExportPartitionRequest>): Promise<pb.SnapshotChunk[]> {
  const out: pb.SnapshotChunk[] = [];
  for await (const c of h.client.snapshots.exportPartition(req)) out.push(c);
  return out;
}
const headerOf = (chunks: pb.SnapshotChunk[]) => {
  const c = chunks[0]!.chunk;
  if (c?.$case !== 'header') throw new Error('no header first');
  return c.value;
};
const pagesIn = (chunks: pb.SnapshotChunk[]) =>
  chunks.flatMap((c) =>
    c.chunk?.$case === 'memory' ? c.chunk.value.runs.flatMap((r) => Array.from({ length: r.data.length / 4096 }, (_, k) => r.gpfn + BigInt(k))) : [],
  );

test('a streamed export imports to the same state, in chunks; a ranges-heavy partition streams its protections', async () => {
  const name = await source('ss-src', 300);
  const chunks = await exportAll({ name, chunkBytes: 64 * 1024 });
  const header = headerOf(chunks);
  expect(header.snapshot?.formatVersion).toBe(1);
  expect(header.protectionRanges).toBe(3000n);
  expect(header.memoryPages).toBeGreaterThanOrEqual(300n);
  expect(chunks.filter((c) => c.chunk?.$case === 'memory').length).toBeGreaterThan(1);
  expect(chunks.at(-1)!.chunk?.$case).toBe('trailer');
  const copy = await h.client.snapshots.importPartition(chunks, { partitionId: 'ss-copy' });
  expect(copy.name).toBe('partitions/ss-copy');
  expect(await state('partitions/ss-copy')).toEqual(await state(name));
  // The copy behaves alike: VTL1's protection is enforced on it too.
  const w = await h.client.guest.writeMemory({ name: 'partitions/ss-copy/vps/0', gpa: 0x200000n, data: Buffer.from('x') });
  expect(w.outcome?.intercept?.interceptId).toBeGreaterThan(0n);
});

test('the export is the state at its start: pages written while it streams are sent as they were', async () => {
  const name = await source('ss-live', 2000);
  const before = await state(name);
  const it = h.client.snapshots.exportPartition({ name, chunkBytes: 4096 })[Symbol.asyncIterator]();
  const chunks: pb.SnapshotChunk[] = [];
  // Read up to the first memory chunk, then change pages the export has not sent yet.
  for (;;) {
    const r = await it.next();
    if (r.done) throw new Error('ended early');
    chunks.push(r.value);
    if (r.value.chunk?.$case === 'memory') break;
  }
  const last = 0x100000n + 1999n * 4096n;
  await h.client.memory.writeGpa({ name, gpa: last, data: Buffer.from('written during the export') });
  await h.client.memory.writeGpa({ name, gpa: 0x300000n, data: Buffer.from('a new page during the export') });
  for (let r = await it.next(); !r.done; r = await it.next()) chunks.push(r.value);
  await h.client.snapshots.importPartition(chunks, { partitionId: 'ss-live-copy' });
  expect(await state('partitions/ss-live-copy')).toEqual(before);
  expect((await h.client.memory.readGpa({ name: 'partitions/ss-live-copy', gpa: last, length: 8 })).data.toString()).toBe('page 199');
  expect((await h.client.memory.readGpa({ name, gpa: last, length: 7 })).data.toString()).toBe('written');
});

test('incremental exports send only the pages written since the last one; base + deltas import to the same state', async () => {
  const name = await source('ss-inc', 100);
  const full = await exportAll({ name });
  const base = headerOf(full);
  await h.client.memory.writeGpa({ name, gpa: 0x100000n + 5n * 4096n, data: Buffer.from('changed 5') });
  await h.client.memory.writeGpa({ name, gpa: 0x400000n, data: Buffer.from('new page') });
  const d1 = await exportAll({ name, baseSnapshotId: base.snapshotId });
  const h1 = headerOf(d1);
  expect(h1.baseSnapshotId).toBe(base.snapshotId);
  expect(pagesIn(d1)).toEqual([0x105n, 0x400n]);
  // VSM state changes travel in every delta's header.
  await h.client.intercepts.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: 0xf, ranges: [{ startPage: 0x200n, pageCount: 1n }] });
  await h.client.memory.writeGpa({ name, gpa: 0x100000n + 7n * 4096n, data: Buffer.from('changed 7') });
  const d2 = await exportAll({ name, baseSnapshotId: h1.snapshotId });
  expect(pagesIn(d2)).toEqual([0x107n]);
  // A delta with nothing written sends no page.
  const d3 = await exportAll({ name, baseSnapshotId: headerOf(d2).snapshotId });
  expect(pagesIn(d3)).toEqual([]);
  await h.client.snapshots.importPartition([...full, ...d1, ...d2, ...d3], { partitionId: 'ss-inc-copy' });
  expect(await state('partitions/ss-inc-copy')).toEqual(await state(name));
  // An older base is refused, naming the last one.
  const e = await failure(exportAll({ name, baseSnapshotId: h1.snapshotId }));
  expect(e.code).toBe(status.FAILED_PRECONDITION);
  expect(e.message).toContain(headerOf(d3).snapshotId);
  // A delta without its base, or out of order, is refused and creates nothing.
  const e2 = await failure(h.client.snapshots.importPartition([...full, ...d2], { partitionId: 'ss-inc-bad' }));
  expect(e2.code).toBe(status.INVALID_ARGUMENT);
  expect(e2.message).toContain('base_snapshot_id');
  expect((await failure(h.client.partitions.getPartition({ name: 'partitions/ss-inc-bad' }))).code).toBe(status.NOT_FOUND);
});

test('an export the client abandons does not move the base: the next delta still has every page', async () => {
  const name = await source('ss-abandon', 2000);
  const full = await exportAll({ name });
  const base = headerOf(full).snapshotId;
  await h.client.memory.writeGpa({ name, gpa: 0x100000n, data: Buffer.from('one') });
  // A full export abandoned after its first page (2000 pages of 4 KiB chunks cannot all be in flight).
  const ac = new AbortController();
  for await (const c of h.client.snapshots.exportPartition({ name, chunkBytes: 4096 }, ac.signal)) {
    if (c.chunk?.$case === 'memory') ac.abort();
  }
  await h.client.memory.writeGpa({ name, gpa: 0x100000n + 4096n, data: Buffer.from('two') });
  // The abandoned export may still be ending on the server: retry while it holds the partition.
  let delta: pb.SnapshotChunk[] | undefined;
  for (let i = 0; i < 200 && !delta; i++) {
    delta = await exportAll({ name, baseSnapshotId: base }).catch((e) => {
      if (e.code !== status.FAILED_PRECONDITION || !/in progress/.test(e.message)) throw e;
      return new Promise<undefined>((r) => setTimeout(() => r(undefined), 20));
    });
  }
  expect(pagesIn(delta!)).toEqual([0x100n, 0x101n]);
});

describe('bad streams create nothing and leave the source untouched', () => {
  let name: string;
  let chunks: pb.SnapshotChunk[];
  let before: unknown;
  beforeAll(async () => {
    name = await source('ss-bad', 20);
    chunks = await exportAll({ name, chunkBytes: 4096 });
    before = await state(name);
  });
  afterEach(async () => {
    expect((await failure(h.client.partitions.getPartition({ name: 'partitions/ss-bad-copy' }))).code).toBe(status.NOT_FOUND);
    expect(await state(name)).toEqual(before);
  });

  test('truncated (no trailer)', async () => {
    const e = await failure(h.client.snapshots.importPartition(chunks.slice(0, -1), { partitionId: 'ss-bad-copy' }));
    expect(e.code).toBe(status.DATA_LOSS);
    expect(e.reason).toBe('SNAPSHOT_TRUNCATED');
  });
  test('truncated (chunks missing before the trailer)', async () => {
    const e = await failure(h.client.snapshots.importPartition([...chunks.slice(0, -3), chunks.at(-1)!], { partitionId: 'ss-bad-copy' }));
    expect(e.code).toBe(status.DATA_LOSS);
    expect(e.reason).toBe('SNAPSHOT_INCOMPLETE');
  });
  test('a corrupted page', async () => {
    const bad = chunks.map((c) => pb.SnapshotChunk.decode(pb.SnapshotChunk.encode(c).finish()));
    const mem = bad.find((c) => c.chunk?.$case === 'memory')!;
    if (mem.chunk?.$case !== 'memory') throw new Error('no memory chunk');
    mem.chunk.value.runs[0]!.data[100] ^= 0xff;
    const e = await failure(h.client.snapshots.importPartition(bad, { partitionId: 'ss-bad-copy' }));
    expect(e.code).toBe(status.DATA_LOSS);
    expect(e.reason).toBe('SNAPSHOT_DIGEST_MISMATCH');
  });
  test('a stream from a newer format', async () => {
    const bad = chunks.map((c) => pb.SnapshotChunk.decode(pb.SnapshotChunk.encode(c).finish()));
    const hdr = bad[0]!.chunk;
    if (hdr?.$case !== 'header') throw new Error('no header');
    hdr.value.snapshot!.formatVersion = 2;
    const e = await failure(h.client.snapshots.importPartition(bad, { partitionId: 'ss-bad-copy' }));
    expect(e.code).toBe(status.INVALID_ARGUMENT);
    expect(e.message).toMatch(/format_version: 2 is not supported/);
  });
  test('a page out of order, and a chunk before the header', async () => {
    const mems = chunks.filter((c) => c.chunk?.$case === 'memory');
    const swapped = [chunks[0]!, ...chunks.filter((c) => c.chunk?.$case === 'protections'), mems[1]!, mems[0]!, ...mems.slice(2), chunks.at(-1)!];
    const e = await failure(h.client.snapshots.importPartition(swapped, { partitionId: 'ss-bad-copy' }));
    expect(e.code).toBe(status.INVALID_ARGUMENT);
    expect(e.message).toMatch(/out of order/);
    const e2 = await failure(h.client.snapshots.importPartition(chunks.slice(1), { partitionId: 'ss-bad-copy' }));
    expect(e2.code).toBe(status.INVALID_ARGUMENT);
    expect(e2.message).toMatch(/before the first header/);
  });
  test('an import under an existing id', async () => {
    const e = await failure(h.client.snapshots.importPartition(chunks, { partitionId: 'ss-bad' }));
    expect(e.code).toBe(status.ALREADY_EXISTS);
  });
  test('a source that fails mid-stream (the client cancels)', async () => {
    async function* failing() {
      yield chunks[0]!;
      yield chunks[1]!;
      throw new Error('disk read failed');
    }
    await expect(h.client.snapshots.importPartition(failing(), { partitionId: 'ss-bad-copy' })).rejects.toThrow('disk read failed');
  });
});
