// core: VTL protection masks (tlfs-vsm.md §7) as ranges, not per-page objects. One map per
// protecting VTL: a sorted sequence of disjoint [start, end) page ranges with an explicit
// HV_MAP_GPA_FLAGS mask; pages outside every range have the VTL's DefaultVtlProtectionMask.
// Adjacent ranges with equal masks are merged, so protecting 1,048,576 contiguous pages stores one
// range.
//
// Storage: leaves of at most LEAF_MAX ranges in flat typed arrays (start, end, mask), in order,
// with an index of each leaf's first start. A lookup is two binary searches (index, then leaf). A
// change of N pages touching k ranges finds its place in O(log n), rewrites the k ranges, and moves
// at most one leaf's entries (≤ LEAF_MAX); a leaf that fills up is split in two, one index entry
// moved per LEAF_MAX/2 insertions. The cost is the same whatever the order of the changes (the
// former single sorted array paid an O(n) splice per insertion: 65,536 single-page changes in
// descending order over 10^6 ranges took 45 s; issue #17). Memory: ≤ 2 × 17 bytes per range plus
// one index entry per leaf (leaves stay at least a quarter full, or merge).
//
// Lookups (issue #13): once a map has been looked up often enough since its last change (a quarter
// of its range count, at least LOOKUP_INDEX_AFTER), get() builds a flat lookup index: the ranges
// copied into contiguous arrays and a bucket table over the page span (≤ 4 buckets per range),
// each bucket holding the position of the first range that ends after the bucket's first page. A
// lookup is then one bucket read and a short scan (a binary search within the bucket if it holds
// more than LINEAR_SCAN_MAX ranges), so 10,000 ranges cost about what one does. Any change drops
// the index in O(1) (changes keep their O(log n + ranges touched) cost); the build is O(n), paid
// for by the ≥ n/4 slower lookups before it. Memory: ≤ 17 + 4 × 4 bytes per range. Maps above
// LOOKUP_INDEX_MAX ranges keep the two binary searches (a build there would hold the event loop
// for milliseconds: ≈2 ms at 65,536 ranges here).
import { HvMapGpaFlags } from './tlfs/vsm';

export interface ProtectionRange {
  start: number; // first GPA page number
  end: number; // one past the last
  mask: number; // HV_MAP_GPA_FLAGS protection bits
}

const LEAF_MAX = 256;
const LEAF_MIN = LEAF_MAX / 4;
/** Lookups since the last change before the flat lookup index is built (and at least count / 4). */
const LOOKUP_INDEX_AFTER = 64;
/** Largest map given a lookup index (its O(n) build stays ≲ 2 ms on this host). */
const LOOKUP_INDEX_MAX = 1 << 16;
/** A bucket holding more ranges than this is binary-searched instead of scanned. */
const LINEAR_SCAN_MAX = 8;

/**
 * The flat lookup index of a map at one version: ranges in contiguous arrays, and `first[b]` = the
 * position of the first range whose end > base + b × 2^shift (for b in 0..buckets, the last = n).
 */
class LookupIndex {
  readonly starts: Float64Array;
  readonly ends: Float64Array;
  readonly masks: Uint8Array;
  readonly first: Int32Array;
  readonly base: number;
  readonly span: number;
  /** 2^-shift: a bucket is floor((page − base) × scale), exact in binary floating point. */
  readonly scale: number;

  constructor(leaves: readonly Leaf[], n: number) {
    const starts = new Float64Array(n);
    const ends = new Float64Array(n);
    const masks = new Uint8Array(n);
    let k = 0;
    for (const leaf of leaves) {
      starts.set(leaf.starts.subarray(0, leaf.n), k);
      ends.set(leaf.ends.subarray(0, leaf.n), k);
      masks.set(leaf.masks.subarray(0, leaf.n), k);
      k += leaf.n;
    }
    this.starts = starts;
    this.ends = ends;
    this.masks = masks;
    this.base = n > 0 ? starts[0]! : 0;
    this.span = n > 0 ? ends[n - 1]! - this.base : 0;
    // Bucket width: the smallest power of two giving at most 2 × n (rounded up to a power of two) buckets.
    const want = n > 0 ? 2 ** Math.ceil(Math.log2(2 * n)) : 1;
    let shift = 0;
    while (this.span / 2 ** shift > want) shift++;
    this.scale = 2 ** -shift;
    const buckets = Math.max(1, Math.ceil(this.span * this.scale));
    const first = new Int32Array(buckets + 1);
    let i = 0;
    for (let b = 0; b < buckets; b++) {
      const page = this.base + b * 2 ** shift;
      while (i < n && ends[i]! <= page) i++;
      first[b] = i;
    }
    first[buckets] = n;
    this.first = first;
  }

  /** The mask of the range holding `page`, or `dflt`. */
  get(page: number, dflt: number): number {
    const rel = page - this.base;
    if (!(rel >= 0 && rel < this.span)) return dflt;
    const b = Math.floor(rel * this.scale);
    const ends = this.ends;
    let i = this.first[b]!;
    const last = this.first[b + 1]!; // the range holding page is at a position in [i, last]
    if (last - i <= LINEAR_SCAN_MAX) {
      while (ends[i]! <= page) i++; // stops: page < span end = the last range's end
    } else {
      let hi = last;
      while (i < hi) {
        const mid = (i + hi) >>> 1;
        if (ends[mid]! > page) hi = mid;
        else i = mid + 1;
      }
    }
    return this.starts[i]! <= page ? this.masks[i]! : dflt;
  }
}

class Leaf {
  n = 0;
  constructor(
    /** The map (its ownership token) that may change this leaf in place; any other copies it first. */
    public owner: object,
    readonly starts = new Float64Array(LEAF_MAX),
    readonly ends = new Float64Array(LEAF_MAX),
    readonly masks = new Uint8Array(LEAF_MAX),
  ) {}
  /** First position whose end > page (n when none). */
  firstEndAfter(page: number): number {
    let lo = 0;
    let hi = this.n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid]! > page) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }
  /** First position whose start > page (n when none). */
  firstStartAfter(page: number): number {
    let lo = 0;
    let hi = this.n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.starts[mid]! > page) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }
  /** Replaces positions [i, j) by `add` (flat start,end,mask triples); the caller keeps n + add − (j − i) ≤ LEAF_MAX. */
  replace(i: number, j: number, add: readonly number[]): void {
    const k = add.length / 3;
    const tail = this.n - j;
    if (k !== j - i && tail > 0) {
      this.starts.copyWithin(i + k, j, this.n);
      this.ends.copyWithin(i + k, j, this.n);
      this.masks.copyWithin(i + k, j, this.n);
    }
    for (let x = 0; x < k; x++) {
      this.starts[i + x] = add[3 * x]!;
      this.ends[i + x] = add[3 * x + 1]!;
      this.masks[i + x] = add[3 * x + 2]!;
    }
    this.n = i + k + tail;
  }
}

/** Ranges as parallel arrays (start, end, mask at the same position), for copying without per-range objects. */
export interface RangeArrays {
  starts: Float64Array;
  ends: Float64Array;
  masks: Uint8Array;
}

/** Listener told the page window [lo, hi) whose range starts may have changed (removed, added or resized). */
export type ProtectionChangeListener = (lo: number, hi: number) => void;

export class ProtectionMap {
  /** Leaves whose owner is this token may be changed in place; others are shared with a clone or draft. */
  private token: object = {};
  private leaves: Leaf[] = [new Leaf(this.token)];
  /** leaves[i].starts[0] for every non-empty leaf (the single leaf may be empty). */
  private firsts: number[] = [];
  private count = 0;
  private readonly listeners = new Set<ProtectionChangeListener>();
  /** Bumped by every change (set, adopt). */
  version = 0;
  /** For a draft: the windows it changed (replayed to the live map's watchers on adopt) and the version it started from. */
  private draftOf?: { base: number; windows: number[] };
  /** The flat lookup index of the current contents (dropped by every change), and the lookups made without it since. */
  private lookupIndex?: LookupIndex;
  private slowLookups = 0;

  constructor(public defaultMask: number) {}

  get rangeCount(): number {
    return this.count;
  }

  /** Every range in order (a copy: O(n); prefer rangesFrom for large maps). */
  list(): ProtectionRange[] {
    const out: ProtectionRange[] = [];
    for (const leaf of this.leaves) for (let x = 0; x < leaf.n; x++) out.push({ start: leaf.starts[x]!, end: leaf.ends[x]!, mask: leaf.masks[x]! });
    return out;
  }

  /** The ranges that end after `page`, in order, at most `limit` of them: O(log n + limit). */
  rangesFrom(page: number, limit = Infinity): ProtectionRange[] {
    const out: ProtectionRange[] = [];
    let [l, x] = this.locateEndAfter(page);
    while (l < this.leaves.length && out.length < limit) {
      const leaf = this.leaves[l]!;
      for (; x < leaf.n && out.length < limit; x++) out.push({ start: leaf.starts[x]!, end: leaf.ends[x]!, mask: leaf.masks[x]! });
      l++;
      x = 0;
    }
    return out;
  }

  /**
   * rangesFrom without allocating: copies the ranges that end after `page`, in order, at most
   * `out.starts.length` of them, into `out`'s arrays; returns how many (O(log n + that)).
   */
  rangesInto(page: number, out: RangeArrays): number {
    const max = Math.min(out.starts.length, out.ends.length, out.masks.length);
    let k = 0;
    let [l, x] = this.locateEndAfter(page);
    while (l < this.leaves.length && k < max) {
      const leaf = this.leaves[l]!;
      const n = Math.min(leaf.n - x, max - k);
      out.starts.set(leaf.starts.subarray(x, x + n), k);
      out.ends.set(leaf.ends.subarray(x, x + n), k);
      out.masks.set(leaf.masks.subarray(x, x + n), k);
      k += n;
      l++;
      x = 0;
    }
    return k;
  }

  /** Mask in force for a page: through the lookup index once built, else two binary searches over flat typed arrays. */
  get(gpfn: number): number {
    const ix = this.lookupIndex;
    if (ix !== undefined) return ix.get(gpfn, this.defaultMask);
    if (++this.slowLookups >= LOOKUP_INDEX_AFTER && this.slowLookups >= this.count >>> 2 && this.count <= LOOKUP_INDEX_MAX) {
      this.lookupIndex = new LookupIndex(this.leaves, this.count);
      return this.lookupIndex.get(gpfn, this.defaultMask);
    }
    const leaf = this.leaves[this.leafFor(gpfn)]!;
    const i = leaf.firstStartAfter(gpfn) - 1;
    return i >= 0 && gpfn < leaf.ends[i]! ? leaf.masks[i]! : this.defaultMask;
  }

  /** Calls `fn` after every change with the page window whose ranges changed; returns the unsubscribe. */
  watch(fn: ProtectionChangeListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Sets `mask` on pages [start, start + count). */
  set(start: number, count: number, mask: number): void {
    if (count <= 0) return;
    const end = start + count;
    // Affected: the ranges that overlap or touch [start, end) (touching ones may merge), i.e. from
    // the first whose end >= start to the last whose start <= end.
    const [li, xi] = this.locateEndAfter(start - 1);
    const [lj, xj] = this.locateStartAfter(end);
    // Replacement: what survives of the first and last affected ranges around the new one, merged.
    const pieces: number[] = [];
    let lo = start;
    let hi = end;
    const hasAffected = li < lj || (li === lj && xi < xj);
    let newStart = start;
    let newEnd = end;
    if (hasAffected) {
      const a = this.leaves[li]!;
      const aStart = a.starts[xi]!;
      const aMask = a.masks[xi]!;
      const [lz, xz] = xj > 0 ? [lj, xj - 1] : [lj - 1, this.leaves[lj - 1]!.n - 1];
      const z = this.leaves[lz]!;
      const zEnd = z.ends[xz]!;
      const zMask = z.masks[xz]!;
      lo = Math.min(lo, aStart);
      hi = Math.max(hi, zEnd);
      if (aStart < start) {
        if (aMask === mask) newStart = aStart;
        else pieces.push(aStart, start, aMask);
      }
      let right: number[] = [];
      if (zEnd > end) {
        if (zMask === mask) newEnd = zEnd;
        else right = [end, zEnd, zMask];
      }
      pieces.push(newStart, newEnd, mask, ...right);
    } else pieces.push(start, end, mask);
    this.replaceRange(li, xi, lj, xj, pieces);
    this.changed();
    this.draftOf?.windows.push(lo, hi);
    for (const fn of this.listeners) fn(lo, hi);
  }

  /** An independent copy: O(n / 256) now, leaves copied when either side first changes them. */
  clone(): ProtectionMap {
    const m = new ProtectionMap(this.defaultMask);
    m.leaves = this.leaves.slice();
    m.firsts = this.firsts.slice();
    m.count = this.count;
    this.token = {}; // every leaf is shared from now on: neither side changes one in place
    return m;
  }

  /**
   * A copy to prepare a large change on, over several steps, while this map stays in force
   * (copy-on-write: costs what the change touches). adopt() puts it in force at once.
   */
  draft(): ProtectionMap {
    const d = this.clone();
    d.draftOf = { base: this.version, windows: [] };
    return d;
  }

  /** Whether this map changed since `draft` was taken from it (adopting would lose those changes). */
  changedSince(draft: ProtectionMap): boolean {
    return draft.draftOf?.base !== this.version;
  }

  /** Puts a draft of this map in force (its changes all at once); the draft must not be used afterwards. */
  adopt(draft: ProtectionMap): void {
    if (!draft.draftOf) throw new Error('adopt() takes a draft()');
    this.leaves = draft.leaves;
    this.firsts = draft.firsts;
    this.count = draft.count;
    this.token = draft.token;
    draft.token = {};
    this.changed();
    const w = draft.draftOf.windows;
    draft.draftOf = undefined;
    for (let i = 0; i < w.length; i += 2) for (const fn of this.listeners) fn(w[i]!, w[i + 1]!);
  }

  /** After any change of the ranges: a new version, the lookup index dropped (O(1)). */
  private changed(): void {
    this.version++;
    this.lookupIndex = undefined;
    this.slowLookups = 0;
  }

  /** Whether get() currently goes through the flat lookup index (for tests). */
  get indexed(): boolean {
    return this.lookupIndex !== undefined;
  }

  /** Leaf `l`, copied first if it is shared. */
  private own(l: number): Leaf {
    const leaf = this.leaves[l]!;
    if (leaf.owner === this.token) return leaf;
    const c = new Leaf(this.token, leaf.starts.slice(), leaf.ends.slice(), leaf.masks.slice());
    c.n = leaf.n;
    this.leaves[l] = c;
    return c;
  }

  /** Index of the leaf whose first start is the last <= page (0 when none). */
  private leafFor(page: number): number {
    const f = this.firsts;
    let lo = 0;
    let hi = f.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (f[mid]! <= page) lo = mid + 1;
      else hi = mid;
    }
    return Math.max(0, lo - 1);
  }

  /** Position (leaf, index) of the first range whose end > page; (leaves.length, 0) past the last. */
  private locateEndAfter(page: number): [number, number] {
    // Ends are sorted like starts; the range sought is in the leaf holding `page` or the next one.
    let l = this.leafFor(page);
    let x = this.leaves[l]!.firstEndAfter(page);
    while (l < this.leaves.length && x >= this.leaves[l]!.n) {
      l++;
      x = 0;
    }
    return l < this.leaves.length ? [l, x] : [this.leaves.length, 0];
  }

  /** Position of the first range whose start > page; (leaves.length, 0) past the last. */
  private locateStartAfter(page: number): [number, number] {
    let l = this.leafFor(page);
    let x = this.leaves[l]!.firstStartAfter(page);
    while (l < this.leaves.length && x >= this.leaves[l]!.n) {
      l++;
      x = 0;
    }
    return l < this.leaves.length ? [l, x] : [this.leaves.length, 0];
  }

  /** Replaces the ranges from position (li, xi) up to (lj, xj) (exclusive) by `pieces` (flat triples). */
  private replaceRange(li: number, xi: number, lj: number, xj: number, pieces: number[]): void {
    const k = pieces.length / 3;
    if (li >= this.leaves.length) {
      // Past the last range: append to the last leaf.
      li = this.leaves.length - 1;
      xi = this.leaves[li]!.n;
      lj = li;
      xj = xi;
    }
    let removed = 0;
    if (lj > li) {
      // Spans leaves: cut the first leaf after xi, drop whole leaves between, cut the last before xj.
      const first = this.own(li);
      removed += first.n - xi;
      first.n = xi;
      if (lj < this.leaves.length) {
        const last = this.own(lj);
        removed += xj;
        last.replace(0, xj, []);
      }
      for (let l = li + 1; l < Math.min(lj, this.leaves.length); l++) removed += this.leaves[l]!.n;
      const drop = Math.min(lj, this.leaves.length) - (li + 1);
      if (drop > 0) {
        this.leaves.splice(li + 1, drop);
        this.firsts.splice(li + 1, drop);
      }
      lj = li;
      xj = xi;
    } else removed = xj - xi;
    const leaf = this.own(li);
    this.count += k - removed;
    if (leaf.n - (xj - xi) + k <= LEAF_MAX) leaf.replace(xi, xj, pieces);
    else {
      // Split: the leaf's entries with the replacement in place, in two halves.
      const all: number[] = [];
      for (let x = 0; x < xi; x++) all.push(leaf.starts[x]!, leaf.ends[x]!, leaf.masks[x]!);
      all.push(...pieces);
      for (let x = xj; x < leaf.n; x++) all.push(leaf.starts[x]!, leaf.ends[x]!, leaf.masks[x]!);
      const half = Math.ceil(all.length / 3 / 2);
      leaf.n = 0;
      leaf.replace(0, 0, all.slice(0, half * 3));
      const next = new Leaf(this.token);
      next.replace(0, 0, all.slice(half * 3));
      this.leaves.splice(li + 1, 0, next);
      this.firsts.splice(li + 1, 0, next.starts[0]!);
    }
    this.fixLeaf(li);
    if (li + 1 < this.leaves.length) this.fixLeaf(li + 1);
  }

  /** Keeps the index right after leaf `l` changed: its first start, no empty leaf (but one), small neighbours merged. */
  private fixLeaf(l: number): void {
    const leaf = this.leaves[l]!; // read only, unless merged below
    if (leaf.n === 0) {
      if (this.leaves.length > 1) {
        this.leaves.splice(l, 1);
        this.firsts.splice(l, 1);
      } else this.firsts = [];
      return;
    }
    this.firsts[l] = leaf.starts[0]!;
    if (leaf.n < LEAF_MIN && this.leaves.length > 1) {
      // Merge with a neighbour when both fit in one leaf (keeps memory O(ranges)).
      const m = l + 1 < this.leaves.length ? l + 1 : l - 1;
      const other = this.leaves[m]!;
      if (leaf.n + other.n <= LEAF_MAX / 2) {
        const a = this.own(Math.min(l, m));
        const b = this.leaves[Math.max(l, m)]!;
        const tail: number[] = [];
        for (let x = 0; x < b.n; x++) tail.push(b.starts[x]!, b.ends[x]!, b.masks[x]!);
        a.replace(a.n, a.n, tail);
        const gone = Math.max(l, m);
        this.leaves.splice(gone, 1);
        this.firsts.splice(gone, 1);
      }
    }
  }
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
