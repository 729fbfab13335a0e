// core: VTL protection masks (tlfs-vsm.md §7) as ranges, not per-page objects. One map per
// protecting VTL: a sorted list of disjoint [start, end) page ranges with an explicit
// HV_MAP_GPA_FLAGS mask; pages outside every range have the VTL's DefaultVtlProtectionMask.
// Setting a mask on N contiguous pages is O(log n + ranges touched); a lookup is a binary search.
// Adjacent ranges with equal masks are merged, so protecting 1,048,576 contiguous pages stores one
// range.
import { HvMapGpaFlags } from './tlfs/vsm';

export interface ProtectionRange {
  start: number; // first GPA page number
  end: number; // one past the last
  mask: number; // HV_MAP_GPA_FLAGS protection bits
}

export class ProtectionMap {
  private ranges: ProtectionRange[] = [];
  /** Flat copies of the range bounds for lookups (rebuilt lazily after a change). */
  private starts = new Float64Array(0);
  private ends = new Float64Array(0);
  private masks = new Uint8Array(0);
  private dirty = false;

  constructor(public defaultMask: number) {}

  get rangeCount(): number {
    return this.ranges.length;
  }
  list(): readonly ProtectionRange[] {
    return this.ranges;
  }

  /** Mask in force for a page: a binary search over flat typed arrays. */
  get(gpfn: number): number {
    if (this.dirty) this.flatten();
    const starts = this.starts;
    // Last range whose start <= gpfn.
    let lo = 0;
    let hi = starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (starts[mid]! <= gpfn) lo = mid + 1;
      else hi = mid;
    }
    const i = lo - 1;
    return i >= 0 && gpfn < this.ends[i]! ? this.masks[i]! : this.defaultMask;
  }

  private flatten(): void {
    const n = this.ranges.length;
    this.starts = new Float64Array(n);
    this.ends = new Float64Array(n);
    this.masks = new Uint8Array(n);
    this.ranges.forEach((r, i) => {
      this.starts[i] = r.start;
      this.ends[i] = r.end;
      this.masks[i] = r.mask;
    });
    this.dirty = false;
  }

  /** Sets `mask` on pages [start, start + count). */
  set(start: number, count: number, mask: number): void {
    if (count <= 0) return;
    this.dirty = true;
    const end = start + count;
    const r = this.ranges;
    // First range that ends after `start`, and first range that starts at or after `end`.
    let i = lowerBound(r, (x) => x.end > start);
    const j = lowerBound(r, (x) => x.start >= end);
    const keep: ProtectionRange[] = [];
    if (i < j && r[i]!.start < start) keep.push({ start: r[i]!.start, end: start, mask: r[i]!.mask });
    keep.push({ start, end, mask });
    if (j > i && r[j - 1]!.end > end) keep.push({ start: end, end: r[j - 1]!.end, mask: r[j - 1]!.mask });
    r.splice(i, j - i, ...keep);
    // Merge with neighbours of equal mask (and drop ranges equal to the default, which are redundant
    // only when they touch nothing else: keep them explicit so later default changes don't apply).
    i = Math.max(0, i - 1);
    const stop = Math.min(r.length - 1, i + keep.length + 1);
    for (let k = stop; k > i; k--) {
      const a = r[k - 1]!;
      const b = r[k]!;
      if (a.end === b.start && a.mask === b.mask) {
        a.end = b.end;
        r.splice(k, 1);
      }
    }
  }

  clone(): ProtectionMap {
    const m = new ProtectionMap(this.defaultMask);
    m.ranges = this.ranges.map((x) => ({ ...x }));
    return m;
  }
}

function lowerBound<T>(a: T[], pred: (x: T) => boolean): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (pred(a[mid]!)) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

export type AccessKind = 'read' | 'write' | 'execute';

/** The HV_MAP_GPA_FLAGS bit an access needs. Execute: KX, or UX for user mode when MBEC is on. */
export function requiredFlag(kind: AccessKind, userMode: boolean, mbec: boolean): number {
  if (kind === 'read') return HvMapGpaFlags.HV_MAP_GPA_READABLE;
  if (kind === 'write') return HvMapGpaFlags.HV_MAP_GPA_WRITABLE;
  return mbec && userMode ? HvMapGpaFlags.HV_MAP_GPA_USER_EXECUTABLE : HvMapGpaFlags.HV_MAP_GPA_KERNEL_EXECUTABLE;
}

/**
 * Validates HV_MAP_GPA_FLAGS for ModifyVtlProtectionMask (tlfs-vsm.md §7.1): only bits 3:0; if any
 * of W/KX/UX is set, R must be set (write-only / execute-only are illegal); without MBEC, UX is
 * ignored (KX controls all execution) and normalized to KX; with MBEC, KX=1 UX=0 is undefined
 * behaviour and refused. Returns the normalized mask or a reason.
 */
export function normalizeMapFlags(flags: number, mbec: boolean): number | string {
  if ((flags & ~0xf) !== 0) return `HV_MAP_GPA_FLAGS bits 0x${(flags & ~0xf).toString(16)} are not protection bits`;
  const R = HvMapGpaFlags.HV_MAP_GPA_READABLE;
  if ((flags & 0xe) !== 0 && (flags & R) === 0) return 'write or execute without read is not a legal protection';
  if (!mbec) {
    const kx = flags & HvMapGpaFlags.HV_MAP_GPA_KERNEL_EXECUTABLE;
    return (flags & 0x7) | (kx ? HvMapGpaFlags.HV_MAP_GPA_USER_EXECUTABLE : 0);
  }
  if ((flags & 0x4) !== 0 && (flags & 0x8) === 0) return 'KMX without UMX is undefined with MBEC';
  return flags;
}
