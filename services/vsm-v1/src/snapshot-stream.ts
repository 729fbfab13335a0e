// service layer: ExportPartition and ImportPartition (issue #17), the streamed form of
// SavePartition/RestorePartition for partitions of any size. A stream (segment) is a SnapshotHeader
// (the vsm.v1.PartitionSnapshot without protection ranges and RAM, mapped as SavePartition maps it),
// the protection ranges and RAM runs in chunks, and a SnapshotTrailer with the counts and a SHA-256
// over the segment. The export produces a chunk only when the client took the previous ones
// (StreamSink back-pressure), so the service holds a bounded amount whatever the partition size; the
// import writes each chunk into the partition being built and keeps nothing else. Incremental
// snapshots: each partition remembers the id of its last snapshot delivered whole; an export with that
// id as `base_snapshot_id` sends only the pages written since.
import { createHash, randomUUID } from 'node:crypto';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { status as Code } from '@grpc/grpc-js';
import * as core from '@vsm/core';
import { pb as P } from '@vsm/client';
import type { StreamSink } from './backend';
import { ApiError, invalidArgument } from './errors';
import { fromPbSnapshot, toPbSnapshot } from './snapshot-codec';

/** Largest and default RAM bytes per SnapshotChunk. */
export const EXPORT_CHUNK_MAX = 1 << 20;
export const EXPORT_CHUNK_DEFAULT = 1 << 20;
/** Protection ranges per chunk (≤ 30 bytes each encoded; few, so that each chunk's objects die young). */
export const RANGES_PER_CHUNK = 8192;

/** The id of each partition's last snapshot delivered whole (the base an incremental export names). */
const lastSnapshot = new WeakMap<core.Partition, string>();

/** SnapshotTrailer.sha256 of a segment, fed as its pieces are sent or received. */
export class SegmentDigest {
  private readonly h = createHash('sha256');
  private readonly word = Buffer.alloc(24);

  header(h: P.SnapshotHeader): void {
    this.h.update(P.SnapshotHeader.encode(h).finish());
  }
  range(vtl: number, start: bigint, end: bigint, mask: number): void {
    const w = this.word;
    w.writeUInt32LE(vtl, 0);
    w.writeBigUInt64LE(start, 4);
    w.writeBigUInt64LE(end, 12);
    w.writeUInt32LE(mask >>> 0, 20);
    this.h.update(w);
  }
  pages(gpfn: bigint, data: Uint8Array): void {
    const w = this.word.subarray(0, 8);
    for (let k = 0; k * 4096 < data.length; k++) {
      w.writeBigUInt64LE(gpfn + BigInt(k), 0);
      this.h.update(w);
      this.h.update(data.subarray(k * 4096, (k + 1) * 4096));
    }
  }
  digest(): Buffer {
    return this.h.digest();
  }
}

/** ArrayBuffer bytes an export may leave behind for the collector before it asks for a collection. */
export const EXPORT_GARBAGE_SOFT_LIMIT = 16 << 20;
/** Longest wait for V8's background sweeping after a collection, per chunk. */
const SWEEP_WAIT_MAX_MS = 20;

/** V8's collector, made callable once (as --expose-gc does) in a context of its own. */
let v8Gc: ((o?: { type: 'minor' | 'major' }) => void) | undefined;
function collect(type: 'minor' | 'major'): void {
  if (!v8Gc) {
    v8.setFlagsFromString('--expose-gc');
    v8Gc = vm.runInNewContext('gc') as (o?: { type: 'minor' | 'major' }) => void;
  }
  v8Gc({ type });
}

/**
 * Each RAM chunk of an export leaves ≈3 × its size of ArrayBuffers behind (the pages read, the
 * encoded message, grpc-js's framed copy of it), freed only once V8 has collected their wrappers
 * and its background threads have swept them. Left to V8's own pacing (scavenges on external
 * memory pressure) that garbage stood at up to +45 MiB on an idle host and the RSS of a 1 GiB export
 * grew by 60–70 MiB on a loaded one. The pacer bounds it: once the process's ArrayBuffer bytes stand
 * EXPORT_GARBAGE_SOFT_LIMIT above where the export found them, it runs a minor collection (≈1–3 ms;
 * the chunks' buffers are young) and gives the sweeper a few ms. A level that stays up (other
 * partitions' RAM growing meanwhile) becomes the new reference, so it never slows an export twice
 * for the same bytes.
 */
export class GarbagePacer {
  private base = process.memoryUsage().arrayBuffers;
  /** Collections asked for (for tests and figures): minor, and major (relay only). */
  collections = 0;
  majorCollections = 0;

  /**
   * `escalate` (a relay: ExportPartition through --backend agent, MigratePartition): when the minor
   * collection freed too little, a major one follows. A relay's chunk buffers do not die young: the
   * upstream call's reader holds up to 16 decoded chunks (grpc-js's object-mode Readable), so many
   * of them survive two scavenges, are promoted, and only a major collection frees them; V8 starts
   * one on its own only once external memory grew ≈64 MiB (its external allocation soft limit),
   * which is where the relay's +60–77 MiB came from.
   */
  constructor(private readonly escalate = false) {}

  private async settle(): Promise<number> {
    let level = process.memoryUsage().arrayBuffers;
    for (let waited = 0; waited < SWEEP_WAIT_MAX_MS; waited += 2) {
      if (level - this.base <= EXPORT_GARBAGE_SOFT_LIMIT / 2) return level;
      await new Promise((r) => setTimeout(r, 2));
      level = process.memoryUsage().arrayBuffers;
    }
    return level;
  }

  async pace(): Promise<void> {
    let level = process.memoryUsage().arrayBuffers;
    if (level < this.base) this.base = level;
    if (level - this.base <= EXPORT_GARBAGE_SOFT_LIMIT) return;
    collect('minor');
    this.collections++;
    level = await this.settle();
    if (this.escalate && level - this.base > EXPORT_GARBAGE_SOFT_LIMIT) {
      collect('major');
      this.majorCollections++;
      level = await this.settle();
    }
    if (level - this.base > EXPORT_GARBAGE_SOFT_LIMIT) this.base = level - EXPORT_GARBAGE_SOFT_LIMIT / 2;
  }
}

const aborted = () => new ApiError(Code.CANCELLED, 'HV_STATUS_OPERATION_FAILED', 'the client ended the stream');

/** ExportPartition: streams `p` (see proto/vsm/v1/snapshot.proto). */
export async function exportPartition(
  p: core.Partition,
  name: string,
  r: P.ExportPartitionRequest,
  sink: StreamSink<P.SnapshotChunk>,
  signal: AbortSignal,
  guest?: P.GuestRunSnapshot,
): Promise<void> {
  const base = r.baseSnapshotId;
  // EXPORT_MODE_LIVE (a migration's pre-copy round): the guest may write pages while they are read;
  // those pages are in the next epoch's log (the KVM dirty log), so they go again in the next round.
  const live = r.mode === P.ExportMode.EXPORT_MODE_LIVE;
  if (base) {
    const last = lastSnapshot.get(p);
    if (last !== base)
      throw new ApiError(
        Code.FAILED_PRECONDITION,
        'SNAPSHOT_BASE_MISMATCH',
        last
          ? `base_snapshot_id ${base} is not the last snapshot exported from ${name} (${last}): an incremental export is relative to the last one; take a full export or use ${last}`
          : `base_snapshot_id ${base}: no snapshot of ${name} was exported whole yet; take a full export first`,
      );
  }
  if (!Number.isInteger(r.chunkBytes) || r.chunkBytes < 0) throw invalidArgument('chunk_bytes must not be negative');
  const chunkPages = Math.max(1, Math.floor(Math.min(r.chunkBytes || EXPORT_CHUNK_DEFAULT, EXPORT_CHUNK_MAX) / 4096));
  const ex = core.beginExport(p, !!base);
  let ok = false;
  try {
    const send = async (m: P.SnapshotChunk) => {
      if (signal.aborted) throw aborted();
      if (!sink.write(m)) await sink.drained();
      if (signal.aborted) throw aborted();
    };
    const digest = new SegmentDigest();
    const id = randomUUID();
    const header: P.SnapshotHeader = {
      snapshot: toPbSnapshot(ex.header, name),
      snapshotId: id,
      baseSnapshotId: base,
      protectionRanges: BigInt(ex.rangeCount),
      memoryPages: BigInt(ex.pageCount),
      guest,
    };
    digest.header(header);
    await send({ chunk: { $case: 'header', value: header } });
    // Protection ranges without an object per range kept beyond its chunk: the map copies them into
    // flat arrays, and the messages' range objects are reused chunk after chunk (the sink encodes a
    // message in write(), so they are free again once send() returns). Fresh objects per range were
    // 10^6 × ~150 bytes that V8 promoted to the old generation while chunks waited for the client:
    // +135 MiB of heap during an export of 10^6 ranges, there until the next full collection.
    const flat = { starts: new Float64Array(RANGES_PER_CHUNK), ends: new Float64Array(RANGES_PER_CHUNK), masks: new Uint8Array(RANGES_PER_CHUNK) };
    const pool: P.ProtectionRangeSnapshot[] = [];
    for (let c = ex.takeRangesInto(flat); c; c = ex.takeRangesInto(flat)) {
      while (pool.length < c.count) pool.push({ start: 0n, end: 0n, mask: 0 });
      const ranges = pool.length === c.count ? pool : pool.slice(0, c.count);
      for (let i = 0; i < c.count; i++) {
        const x = ranges[i]!;
        x.start = BigInt(flat.starts[i]!);
        x.end = BigInt(flat.ends[i]!);
        x.mask = flat.masks[i]!;
        digest.range(c.vtl, x.start, x.end, x.mask);
      }
      await send({ chunk: { $case: 'protections', value: { vtl: c.vtl, ranges } } });
    }
    const garbage = new GarbagePacer();
    for (let runs = ex.takePages(chunkPages); runs.length; runs = ex.takePages(chunkPages)) {
      const pbRuns = runs.map((x) => ({ gpfn: BigInt(x.gpfn), data: x.data }));
      for (const x of pbRuns) digest.pages(x.gpfn, x.data);
      await send({ chunk: { $case: 'memory', value: { runs: pbRuns } } });
      await garbage.pace();
    }
    if (!live) ex.verify(); // nothing written behind the copy-on-write (a guest that ran meanwhile)
    await send({
      chunk: { $case: 'trailer', value: { protectionRanges: BigInt(ex.rangeCount), memoryPages: BigInt(ex.pageCount), sha256: digest.digest() } },
    });
    // Delivered (every message was taken by the transport): the base of the next incremental export.
    await sink.drained();
    if (signal.aborted) throw aborted();
    ok = true;
    lastSnapshot.set(p, id);
  } finally {
    ex.finish(ok);
  }
}

const dataLoss = (reason: string, message: string) => new ApiError(Code.DATA_LOSS, reason, message);

/** A uint64 the core keeps as a JS number (page numbers). */
const small = (v: bigint, path: string): number => {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw invalidArgument(`${path}: ${v} is out of range`);
  return Number(v);
};

/**
 * ImportPartition: builds a partition from the segments of `requests` (see snapshot.proto) with the
 * manager's beginImport. Anything refused, truncated or corrupted aborts the import: nothing is
 * created and the id stays free.
 */
export async function importPartition(
  manager: core.PartitionManager,
  requests: AsyncIterable<P.ImportPartitionRequest>,
  signal: AbortSignal,
): Promise<core.Partition> {
  let imp: core.PartitionImport | undefined;
  let partitionId: string | undefined;
  let segment = 0;
  let inSegment = false;
  let digest = new SegmentDigest();
  let expected = { ranges: 0n, pages: 0n };
  let counted = { ranges: 0n, pages: 0n };
  let currentId = '';
  let previousId = '';
  try {
    for await (const r of requests) {
      if (partitionId === undefined) partitionId = r.partitionId;
      else if (r.partitionId && r.partitionId !== partitionId)
        throw invalidArgument(`partition_id ${r.partitionId} differs from the first message's ${JSON.stringify(partitionId)}`);
      const c = r.chunk?.chunk;
      if (!c) throw invalidArgument('chunk is required in every message');
      const at = `segment ${segment}`;
      if (c.$case === 'header') {
        if (inSegment) throw dataLoss('SNAPSHOT_TRUNCATED', `${at} ended without its trailer (a new header came first)`);
        segment++;
        const h = c.value;
        if (!h.snapshot) throw invalidArgument(`segment ${segment}: header.snapshot is required`);
        if (h.snapshot.memory.length) throw invalidArgument(`segment ${segment}: header.snapshot.memory must be empty (pages come in memory chunks)`);
        if (h.snapshot.protections.some((m) => m.ranges.length))
          throw invalidArgument(`segment ${segment}: header.snapshot.protections[].ranges must be empty (ranges come in protection chunks)`);
        if (segment === 1 && h.baseSnapshotId)
          throw invalidArgument(
            `segment 1 is incremental (base_snapshot_id ${h.baseSnapshotId}): an import starts with a full snapshot, then its incremental ones in order`,
          );
        if (segment > 1 && h.baseSnapshotId !== previousId)
          throw invalidArgument(
            `segment ${segment}: base_snapshot_id ${JSON.stringify(h.baseSnapshotId)} is not the previous segment's snapshot_id ${previousId}: incremental snapshots must follow their base in order`,
          );
        // format_version and every rule of a snapshot (as RestorePartition) before anything is built.
        const cs = fromPbSnapshot(h.snapshot);
        if (!imp) imp = manager.beginImport(cs, partitionId || undefined);
        else imp.nextSegment(cs);
        digest = new SegmentDigest();
        digest.header(h);
        expected = { ranges: h.protectionRanges, pages: h.memoryPages };
        counted = { ranges: 0n, pages: 0n };
        currentId = h.snapshotId;
        inSegment = true;
        continue;
      }
      if (!inSegment || !imp) throw invalidArgument(`a ${c.$case} chunk came ${segment === 0 ? 'before the first header' : `after ${at}'s trailer`}`);
      if (c.$case === 'protections') {
        const { vtl, ranges } = c.value;
        imp.addRanges(
          vtl,
          ranges.map((x, k) => ({ start: small(x.start, `${at}: ranges[${k}].start`), end: small(x.end, `${at}: ranges[${k}].end`), mask: x.mask })),
        );
        for (const x of ranges) digest.range(vtl, x.start, x.end, x.mask);
        counted.ranges += BigInt(ranges.length);
      } else if (c.$case === 'memory') {
        for (const run of c.value.runs) {
          imp.addPages(small(run.gpfn, `${at}: memory run gpfn`), run.data);
          digest.pages(run.gpfn, run.data);
          counted.pages += BigInt(run.data.length / 4096);
        }
      } else {
        const t = c.value;
        if (counted.ranges !== expected.ranges || counted.pages !== expected.pages || t.protectionRanges !== counted.ranges || t.memoryPages !== counted.pages)
          throw dataLoss(
            'SNAPSHOT_INCOMPLETE',
            `${at}: received ${counted.ranges} protection ranges and ${counted.pages} pages; the header announced ${expected.ranges} and ${expected.pages}, the trailer ${t.protectionRanges} and ${t.memoryPages}`,
          );
        if (!digest.digest().equals(Buffer.from(t.sha256)))
          throw dataLoss('SNAPSHOT_DIGEST_MISMATCH', `${at}: the SHA-256 of what was received does not match the trailer's: the stream is corrupted`);
        inSegment = false;
        previousId = currentId;
      }
    }
    if (signal.aborted) throw aborted();
    if (!imp) throw invalidArgument('the stream held no snapshot (a header first)');
    if (inSegment) throw dataLoss('SNAPSHOT_TRUNCATED', `the stream ended inside segment ${segment} (no trailer): it is truncated; nothing was created`);
    return imp.commit();
  } catch (e) {
    imp?.abort();
    throw e;
  }
}

/** For tests: forget the last snapshot ids (none are kept beyond their partition anyway). */
export function lastSnapshotIdOf(p: core.Partition): string | undefined {
  return lastSnapshot.get(p);
}
