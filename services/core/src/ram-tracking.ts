// core: write tracking of guest RAM for streamed and incremental snapshots (issue #17). A RAM
// (SparseMemory; the KVM agent's memfd RAM) calls beforeWrite() before bytes of a page change, and
// its RamTracking keeps:
// - the write log: the pages written since the current epoch began (an export begins an epoch; the
//   next incremental export sends exactly those pages). Platforms whose guest writes RAM behind the
//   core's back (KVM) add a `harvest` source (the KVM dirty log) that is drained into the log;
// - freezes: the RAM as it was when an export began, copy-on-write. A page that the export has not
//   sent yet is copied the first time it is about to change, so the export reads the old bytes while
//   the partition goes on. The copies are bounded by what changes during the export, not by the RAM.
// Memory: the log is a sparse bitmap (4 KiB per 32,768 pages written); a freeze holds the sorted list
// of the pages it sends (4 bytes a page) and the copies.
import { HvError, HvStatus } from './tlfs/status';

const BLOCK_BITS = 15; // 32,768 pages (128 MiB of RAM) per bitmap block of 4 KiB
const BLOCK_WORDS = (1 << BLOCK_BITS) / 32;

/** A set of page numbers as a sparse bitmap, iterated in ascending order. */
export class PageBitmap {
  private readonly blocks = new Map<number, Uint32Array>();
  private n = 0;

  get size(): number {
    return this.n;
  }

  add(gpfn: number): void {
    const key = Math.floor(gpfn / 2 ** BLOCK_BITS);
    let b = this.blocks.get(key);
    if (!b) this.blocks.set(key, (b = new Uint32Array(BLOCK_WORDS)));
    const bit = gpfn - key * 2 ** BLOCK_BITS;
    const w = bit >>> 5;
    const m = 1 << (bit & 31);
    if ((b[w]! & m) === 0) {
      b[w] = b[w]! | m;
      this.n++;
    }
  }

  has(gpfn: number): boolean {
    const key = Math.floor(gpfn / 2 ** BLOCK_BITS);
    const b = this.blocks.get(key);
    if (!b) return false;
    const bit = gpfn - key * 2 ** BLOCK_BITS;
    return (b[bit >>> 5]! & (1 << (bit & 31))) !== 0;
  }

  /** Adds every page of `other`. */
  merge(other: PageBitmap): void {
    for (const g of other.ascending()) this.add(g);
  }

  /** The pages, ascending. */
  *ascending(): IterableIterator<number> {
    for (const key of [...this.blocks.keys()].sort((a, b) => a - b)) {
      const b = this.blocks.get(key)!;
      const base = key * 2 ** BLOCK_BITS;
      for (let w = 0; w < BLOCK_WORDS; w++) {
        let word = b[w]!;
        while (word !== 0) {
          const low = word & -word;
          yield base + w * 32 + (31 - Math.clz32(low));
          word ^= low;
        }
      }
    }
  }

  /** The pages as a sorted Uint32Array (page numbers below 2^32: 16 TiB of GPA space). */
  toSortedArray(): Uint32Array {
    const out = new Uint32Array(this.n);
    let i = 0;
    for (const g of this.ascending()) out[i++] = g;
    return out;
  }
}

/** What a freeze reads: the bytes of `count` consecutive pages from `gpfn`, as they are now. */
export type RamReader = (gpfn: number, count: number) => Buffer;

/**
 * RAM pages as they were when the freeze began (copy-on-write), read once each in ascending order
 * with take(). Pages written after the freeze began that were not in its list are not its concern.
 */
export class RamFreeze {
  /** Index in `pages` of the next page take() returns. */
  private next = 0;
  private readonly preserved = new Map<number, Buffer>();
  /** Pages copied because they were about to change (for tests and figures). */
  copies = 0;
  /** Pages of the freeze announced by beforeWrite() before they changed (their old bytes are safe). */
  private readonly announced = new Set<number>();
  /** Pages of the freeze that changed without being announced (the guest wrote them itself): their old bytes are lost. */
  lost = 0;

  constructor(
    /** The pages this freeze sends, ascending. */
    readonly pages: Uint32Array,
    private readonly read: RamReader,
    private readonly onClose: (f: RamFreeze) => void,
  ) {}

  get remaining(): number {
    return this.pages.length - this.next;
  }

  /** Whether page `gpfn` is still to be sent (binary search over the unsent part). */
  private pending(gpfn: number, from = this.next): boolean {
    let lo = from;
    let hi = this.pages.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.pages[mid]! < gpfn) lo = mid + 1;
      else hi = mid;
    }
    return lo < this.pages.length && this.pages[lo] === gpfn;
  }

  /** Called before page `gpfn` changes; `current` gives its bytes now (a copy is kept unless `owned`). */
  preserve(gpfn: number, current: () => Buffer | undefined, owned = false): void {
    if (this.preserved.has(gpfn)) return;
    if (!this.pending(gpfn)) {
      if (this.pending(gpfn, 0)) this.announced.add(gpfn);
      return;
    }
    this.announced.add(gpfn);
    const now = current();
    this.preserved.set(gpfn, now ? (owned ? now : Buffer.from(now)) : Buffer.alloc(4096));
    this.copies++;
  }

  /**
   * The next pages as runs of consecutive pages, at most `maxPages` pages in all, with their bytes as
   * they were when the freeze began. Empty once every page was taken.
   */
  take(maxPages: number): { gpfn: number; data: Buffer }[] {
    const out: { gpfn: number; data: Buffer }[] = [];
    let left = Math.max(1, maxPages);
    while (left > 0 && this.next < this.pages.length) {
      const first = this.pages[this.next]!;
      let n = 1;
      while (n < left && this.next + n < this.pages.length && this.pages[this.next + n] === first + n) n++;
      const data = this.read(first, n);
      for (let k = 0; k < n; k++) {
        const old = this.preserved.get(first + k);
        if (old) {
          old.copy(data, k * 4096);
          this.preserved.delete(first + k);
        }
      }
      out.push({ gpfn: first, data });
      this.next += n;
      left -= n;
    }
    return out;
  }

  /** Page `gpfn` was written behind the RAM's back (a platform's dirty log): counted as lost unless it was announced first. */
  overwritten(gpfn: number): void {
    if (!this.announced.has(gpfn) && this.pending(gpfn, 0)) this.lost++;
  }

  /** Ends the freeze (its copies are dropped). */
  close(): void {
    this.preserved.clear();
    this.onClose(this);
  }
}

/** The pages written during an epoch, handed to the export that ended it. */
export interface WriteLog {
  pages: PageBitmap;
  /** The RAM was dropped as a whole (reset) during the epoch: only a full snapshot describes it. */
  reset: boolean;
}

export class RamTracking {
  private log: WriteLog | null = null;
  private readonly freezes = new Set<RamFreeze>();
  /** An export holds the epoch (one at a time). */
  private held = false;
  /** Pages written behind the core's back since the last call (the KVM dirty log), drained into the log. */
  harvest?: () => Iterable<number>;

  /** Whether pages written are being logged (an export began an epoch). */
  get logging(): boolean {
    return this.log !== null;
  }

  get exporting(): boolean {
    return this.held;
  }

  /** Whether an export's freeze may ask beforeWrite() for a page's current bytes. */
  get freezing(): boolean {
    return this.freezes.size > 0;
  }

  /** Called by the RAM before page `gpfn` changes; `current` gives its bytes now (undefined: all zero). */
  beforeWrite(gpfn: number, current: () => Buffer | undefined): void {
    this.log?.pages.add(gpfn);
    for (const f of this.freezes) f.preserve(gpfn, current);
  }

  /** Called by the RAM before it drops every page (`pages`: each page it held, ascending or not, and its buffer, given up). */
  beforeReset(pages: Iterable<[number, Buffer]>): void {
    if (this.log) this.log.reset = true;
    if (this.freezes.size === 0) return;
    for (const [gpfn, buf] of pages) for (const f of this.freezes) f.preserve(gpfn, () => buf, this.freezes.size === 1);
  }

  /** Drains the platform's own log (harvest) into the current one. */
  private drain(): void {
    if (!this.harvest) return;
    for (const g of this.harvest()) {
      this.log?.pages.add(g);
      for (const f of this.freezes) f.overwritten(g);
    }
  }

  /** Drains the platform's log now: each freeze learns whether pages of it were written behind its back (RamFreeze.lost). */
  sync(): void {
    this.drain();
  }

  /**
   * Starts an epoch for an export: returns the pages logged since the previous epoch began (null when
   * nothing was being logged), and logs from now on. Throws HV_STATUS_OPERATION_DENIED while another
   * export holds the epoch. end(ok) must follow.
   */
  beginEpoch(): WriteLog | null {
    if (this.held) throw new HvError(HvStatus.HV_STATUS_OPERATION_DENIED, 'another export of this partition is in progress; try again when it has ended');
    this.drain();
    const prior = this.log;
    this.log = { pages: new PageBitmap(), reset: false };
    this.held = true;
    return prior;
  }

  /**
   * Ends the epoch begun by beginEpoch(). A failed export (`ok` false) gives the pages it took back
   * to the log, so the next incremental export, still against the previous snapshot, sends them;
   * when nothing was logged before, logging stops again.
   */
  endEpoch(ok: boolean, prior: WriteLog | null): void {
    this.held = false;
    if (ok) return;
    if (!prior) {
      this.log = null;
      return;
    }
    this.drain();
    if (this.log) {
      prior.pages.merge(this.log.pages);
      prior.reset ||= this.log.reset;
    }
    this.log = prior;
  }

  /** A copy-on-write view of `pages` (ascending) read through `read`. */
  freeze(pages: Uint32Array, read: RamReader): RamFreeze {
    const f = new RamFreeze(pages, read, (x) => this.freezes.delete(x));
    this.freezes.add(f);
    return f;
  }
}
