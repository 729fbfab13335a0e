// core: streamed and incremental snapshots (issue #17), as plain data; the service maps them to the
// vsm.v1 SnapshotChunk stream. An export is the partition's state at the moment it began, whatever
// the partition does while it is read: the VSM state is copied at once (it is small), the protection
// maps are copy-on-write clones, and RAM is a copy-on-write freeze (ram-tracking.ts). An import
// builds a partition from one or more segments (a full snapshot, then incremental ones) with every
// rule of validateSnapshot applied as the pieces arrive; the partition is listed only at commit().
import type { Clock } from './clock';
import { DEFAULT_LIMITS } from './limits';
import type { Partition } from './partition';
import type { PlatformHooks } from './platform';
import { ProtectionMap, type ProtectionRange, type RangeArrays } from './protections';
import type { RamFreeze, WriteLog } from './ram-tracking';
import { restorePartition, snapshotPartition } from './snapshot';
import type { CoreSnapshot } from './snapshot-types';
import { type SnapshotLimits, checkMemoryPage, checkProtectionRange, validateSnapshot } from './snapshot-validate';
import { HvError, HvStatus, type HvStatusValue } from './tlfs/status';
import type { Vtl } from './vtl-array';

const PAGE = 4096;

/** An export in progress: the header at once, then protection ranges and RAM runs in order, then finish(). */
export interface CoreExport {
  /** Everything but the protection ranges and RAM (memory: [], protections[].ranges: []). */
  readonly header: CoreSnapshot;
  /** Whether only the pages written since the previous export are sent. */
  readonly incremental: boolean;
  /** Protection ranges that takeRanges() will return, over every VTL. */
  readonly rangeCount: number;
  /** RAM pages that takePages() will return. */
  readonly pageCount: number;
  /** The next protection ranges of one VTL (ascending; VTL by VTL), at most `max`; null once all were taken. */
  takeRanges(max: number): { vtl: Vtl; ranges: ProtectionRange[] } | null;
  /**
   * takeRanges without a per-range object: the next ranges of one VTL copied into `out` (at most its
   * length); null once all were taken. Mixing both is allowed: they share the position.
   */
  takeRangesInto(out: RangeArrays): { vtl: Vtl; count: number } | null;
  /** The next RAM pages as runs of consecutive pages (ascending), at most `maxPages` pages; empty once all were taken. */
  takePages(maxPages: number): { gpfn: number; data: Buffer }[];
  /** Pages copied because they changed while the export read them. */
  readonly copies: number;
  /**
   * Throws HV_STATUS_OPERATION_FAILED if pages of the export were written behind its copy-on-write
   * (a guest running during the export, seen in the platform's dirty log): the export is not the
   * state at its start. Call before declaring the export complete.
   */
  verify(): void;
  /**
   * Ends the export. `ok`: it was delivered whole, so the next incremental export is relative to it;
   * otherwise the pages it would have covered stay in the write log.
   */
  finish(ok: boolean): void;
}

const failed = (status: HvStatusValue, message: string): never => {
  throw new HvError(status, message);
};

/**
 * Begins an export of `p`. `incremental`: only the RAM pages written since the previous export
 * began (which the caller must have delivered whole); refused (HV_STATUS_OPERATION_DENIED) when there
 * was none or the RAM was reset since. Refused too while another export of `p` is in progress.
 */
export function beginExport(p: Partition, incremental: boolean): CoreExport {
  const tracking = p.memory.tracking;
  if (!tracking) return failed(HvStatus.HV_STATUS_FEATURE_UNAVAILABLE, 'this partition’s RAM has no write tracking: it cannot be exported while it runs');
  const prior: WriteLog | null = tracking.beginEpoch();
  let freeze: RamFreeze | undefined;
  let ended = false;
  try {
    let pages: Uint32Array;
    if (incremental) {
      if (!prior) failed(HvStatus.HV_STATUS_OPERATION_DENIED, 'no write log: an incremental export needs a full export of this partition first');
      if (prior!.reset) failed(HvStatus.HV_STATUS_OPERATION_DENIED, 'the partition’s RAM was reset since the base snapshot: take a full export');
      pages = prior!.pages.toSortedArray();
    } else {
      pages = p.memory.touchedPagesSorted?.() ?? Uint32Array.from(p.memory.touchedPages()).sort();
    }
    const header = snapshotPartition(p, { memory: false, protectionRanges: false });
    const maps = p.protections.map((m) => (m ? m.clone() : null));
    freeze = tracking.freeze(pages, (gpfn, count) => p.memory.read(BigInt(gpfn) * BigInt(PAGE), count * PAGE));
    const f = freeze;
    let rangeCount = 0;
    for (const m of maps) rangeCount += m?.rangeCount ?? 0;
    let vtl = 0;
    let after = -1;
    return {
      header,
      incremental,
      rangeCount,
      pageCount: pages.length,
      takeRanges(max) {
        while (vtl < maps.length) {
          const m = maps[vtl];
          const ranges = m ? m.rangesFrom(after, Math.max(1, max)) : [];
          if (ranges.length) {
            after = ranges[ranges.length - 1]!.end; // the next range ends after this one's end
            return { vtl: vtl as Vtl, ranges };
          }
          vtl++;
          after = -1;
        }
        return null;
      },
      takeRangesInto(out) {
        if (out.starts.length === 0) throw new RangeError('takeRangesInto: empty arrays');
        while (vtl < maps.length) {
          const m = maps[vtl];
          const count = m ? m.rangesInto(after, out) : 0;
          if (count) {
            after = out.ends[count - 1]!;
            return { vtl: vtl as Vtl, count };
          }
          vtl++;
          after = -1;
        }
        return null;
      },
      takePages: (maxPages) => f.take(maxPages),
      get copies() {
        return f.copies;
      },
      verify() {
        tracking.sync();
        if (f.lost > 0)
          failed(
            HvStatus.HV_STATUS_OPERATION_FAILED,
            `the guest wrote ${f.lost} page${f.lost === 1 ? '' : 's'} of RAM itself while the export read them (it ran during the export): pause it (PausePartition) and export again`,
          );
      },
      finish(ok) {
        if (ended) return;
        ended = true;
        f.close();
        tracking.endEpoch(ok, prior);
      },
    };
  } catch (e) {
    freeze?.close();
    if (!ended) tracking.endEpoch(false, prior);
    throw e;
  }
}

/** What the manager gives an import: build the partition and list it, or give everything back. */
export interface ImportHost {
  commit(build: (clock?: Clock) => Partition): Partition;
  abort(): void;
}

/** The spec fields every segment of an import must repeat (the RAM and VPs were sized by the first). */
const SAME_SPEC = ['architecture', 'vpCount', 'memoryBytes', 'maximumVtl', 'vendor'] as const;

/**
 * A partition being imported from streamed segments (PartitionManager.beginImport): the first
 * segment's header made its platform and RAM; pages are written into that RAM as they arrive, each
 * segment's protection ranges build that segment's maps, and the last segment's header is the state
 * the partition gets at commit(). Every piece is checked as it arrives (the rules of
 * validateSnapshot); a refused piece leaves the import to be aborted, never half-listed.
 */
export class PartitionImport {
  private header: CoreSnapshot;
  private maps: (ProtectionMap | null)[] = [];
  private readonly pages: number;
  private lastGpfn = -1;
  private lastVtl = 0;
  private lastRange: { end: number; mask: number } | undefined;
  private ended = false;
  /** Segments received (the first is 1). */
  segments = 1;

  constructor(
    first: CoreSnapshot,
    readonly id: string,
    private readonly hooks: PlatformHooks,
    private readonly limits: SnapshotLimits = DEFAULT_LIMITS,
    private readonly host: ImportHost,
  ) {
    this.header = first;
    this.pages = Number(first.spec.memoryBytes >> 12n);
    this.startMaps();
  }

  private startMaps(): void {
    this.maps = this.header.protections.map((m) => (m ? new ProtectionMap(m.defaultMask) : null));
    this.lastVtl = 0;
    this.lastRange = undefined;
    this.lastGpfn = -1;
  }

  private alive(): void {
    if (this.ended) failed(HvStatus.HV_STATUS_INVALID_PARTITION_STATE, `the import of ${this.id} has ended`);
  }

  /** The header of the next segment (an incremental snapshot on top of what was received). */
  nextSegment(header: CoreSnapshot): void {
    this.alive();
    validateSnapshot(header, this.limits);
    for (const k of SAME_SPEC) {
      if (header.spec[k] !== this.header.spec[k])
        failed(
          HvStatus.HV_STATUS_INVALID_PARAMETER,
          `segment ${this.segments + 1}: ${k} ${String(header.spec[k])} differs from the first segment's ${String(this.header.spec[k])}`,
        );
    }
    this.header = header;
    this.segments++;
    this.startMaps();
  }

  /** Protection ranges of VTL `vtl`, continuing the segment's previous ones (VTL by VTL, ascending). */
  addRanges(vtl: number, ranges: readonly ProtectionRange[]): void {
    this.alive();
    const at = `segment ${this.segments}: protections[${vtl}]`;
    const map = Number.isInteger(vtl) ? this.maps[vtl] : undefined;
    if (!map) failed(HvStatus.HV_STATUS_INVALID_PARAMETER, `${at}: VTL ${vtl} has no protection map in the header`);
    if (vtl < this.lastVtl) failed(HvStatus.HV_STATUS_INVALID_PARAMETER, `${at}: ranges come VTL by VTL, ascending (VTL ${this.lastVtl} was sent already)`);
    if (vtl > this.lastVtl) {
      this.lastVtl = vtl;
      this.lastRange = undefined;
    }
    const mbec = this.header.vtls[vtl]!.mbec;
    for (const r of ranges) {
      checkProtectionRange(`${at}.ranges[${map!.rangeCount}]`, r, this.lastRange, this.pages, mbec);
      map!.set(r.start, r.end - r.start, r.mask);
      this.lastRange = r;
    }
  }

  /** Consecutive RAM pages from `gpfn` (`data`: whole pages), continuing the segment's previous ones. */
  addPages(gpfn: number, data: Uint8Array): void {
    this.alive();
    const at = `segment ${this.segments}: memory`;
    if (data.length === 0 || data.length % PAGE !== 0) failed(HvStatus.HV_STATUS_INVALID_PARAMETER, `${at}: ${data.length} bytes are not whole pages`);
    const n = data.length / PAGE;
    checkMemoryPage(at, gpfn, this.lastGpfn, this.pages);
    if (gpfn + n > this.pages)
      failed(HvStatus.HV_STATUS_INVALID_PARAMETER, `${at}: pages ${gpfn}..${gpfn + n} reach beyond the partition (${this.pages} pages)`);
    // Throws HV_STATUS_INSUFFICIENT_MEMORY (resident-RAM limit) before any byte of it lands.
    this.hooks.ram!.write(BigInt(gpfn) * BigInt(PAGE), data);
    this.lastGpfn = gpfn + n - 1;
  }

  /** Builds the partition from the last segment's header, the maps and the RAM received, and lists it. */
  commit(): Partition {
    this.alive();
    this.ended = true;
    const header = this.header;
    const maps = this.maps;
    return this.host.commit((clock) => restorePartition(header, this.id, this.hooks, this.limits, clock, maps));
  }

  /** Gives back the id, the RAM and the platform (idempotent). */
  abort(): void {
    if (this.ended) return;
    this.ended = true;
    this.host.abort();
  }
}
