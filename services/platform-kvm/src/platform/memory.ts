/**
 * Guest memory of a KVM partition: RAM as one memfd (GuestRam for the core), the overlay pages
 * as 4 KiB pages of a second memfd (so each can be a memslot over a VTL's view), both mmap'ed
 * MAP_SHARED once in this process. Every VTL VM maps the same backings; nothing is copied.
 */
import { type GuestRam, PageBitmap, RamTracking } from '@vsm/core';
import { GuestMemory, PAGE_SIZE } from '../kvm/kvm';
import { SEEK_DATA, SEEK_HOLE, sysPread, sysSeek } from './libc';

/**
 * GuestRam over a memfd. Like the emulator's SparseMemory, untouched pages hold nothing:
 * - reads use pread(2), which returns zeros for holes without allocating them;
 * - a write of an all-zero page chunk into a hole is skipped (it already reads as zeros);
 * - touchedPages() asks the kernel which pages hold data (SEEK_DATA/SEEK_HOLE), so pages the
 *   guest itself wrote (through KVM) count too.
 */
export class MemfdRam implements GuestRam {
  readonly sizeBytes: bigint;
  /** sizeBytes as a number (at most 2^53, checked at construction). */
  private readonly size: number;
  readonly memory: GuestMemory;
  /**
   * Write log and copy-on-write freezes for streamed snapshots (core ram-tracking.ts): told before the
   * core writes a page here, and by the engine before a guest action's store runs on the vCPU.
   */
  readonly tracking = new RamTracking();
  /**
   * Pages known to hold data: written through write(), or read back with a non-zero byte (a hole
   * reads as zeros). Small reads inside them copy from the mapping (no pread(2) — the hypercall
   * input, the page walks of an intercept): touching a page that holds data allocates nothing.
   */
  private readonly dataPages = new PageBitmap();
  /**
   * Pages a one-page read found all-zero and SEEK_DATA was asked about once (a hole then; the guest
   * may fill it later through KVM, which pread sees: a non-zero read adds the page to dataPages).
   */
  private readonly zeroChecked = new PageBitmap();

  constructor(sizeBytes: bigint, name = 'vsm-ram') {
    if (sizeBytes <= 0n || sizeBytes % BigInt(PAGE_SIZE) !== 0n || sizeBytes > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new RangeError(`RAM size ${sizeBytes} must be a positive multiple of 4096`);
    }
    this.sizeBytes = sizeBytes;
    this.size = Number(sizeBytes);
    this.memory = GuestMemory.create(Number(sizeBytes), name);
  }

  private check(gpa: bigint, length: number): number {
    // In numbers (exact below 2^53; a larger GPA stays larger than the RAM): no bigint per access.
    if (gpa < 0n || length < 0 || Number(gpa) + length > this.size) {
      throw new RangeError(`GPA range 0x${gpa.toString(16)}+${length} is outside RAM (${this.sizeBytes} bytes)`);
    }
    return Number(gpa);
  }

  read(gpa: bigint, length: number): Buffer {
    const off = this.check(gpa, length);
    const page = Math.floor(off / PAGE_SIZE);
    const onePage = length > 0 && off + length <= (page + 1) * PAGE_SIZE;
    if (onePage && this.dataPages.has(page)) return this.memory.read(off, length);
    const out = Buffer.alloc(length);
    if (length === 0) return out;
    if (length > PAGE_SIZE) {
      // A long read (a snapshot's chunk): one pread(2), holes read as zeros without being allocated.
      sysPread(this.memory.fd, out, off);
      return out;
    }
    // Short reads (one or two pages: the 15 bytes before a guest's RIP often cross into the page
    // before): each page from the mapping when it holds data, else by pread(2).
    for (let pos = 0; pos < length; ) {
      const cur = off + pos;
      const p = Math.floor(cur / PAGE_SIZE);
      const n = Math.min((p + 1) * PAGE_SIZE - cur, length - pos);
      const chunk = out.subarray(pos, pos + n);
      if (this.dataPages.has(p)) chunk.set(this.memory.view(cur, n));
      else {
        sysPread(this.memory.fd, chunk, cur);
        this.learn(p, chunk, cur);
      }
      pos += n;
    }
    return out;
  }

  /** After a pread of `bytes` at `offset` in page `page`: whether the page holds data, for the next reads. */
  private learn(page: number, bytes: Buffer, offset: number): void {
    if (!isZero(bytes)) this.dataPages.add(page);
    else if (!this.zeroChecked.has(page)) {
      // Zero bytes of a page that may hold data elsewhere (the bytes before a guest's code, an
      // empty page-table slot): ask the kernel once (SEEK_DATA). Without it every such read was a
      // pread(2) (≈2-3 µs here), one per intercept on the agent's instruction fetch.
      this.zeroChecked.add(page);
      if (!this.isHole(offset)) this.dataPages.add(page);
    }
  }

  /**
   * `length` bytes at `gpa` inside one page, for reading right away: a view of the mapping when the
   * page is known to hold data (valid until the memory closes; not a copy), else a pread copy.
   */
  peek(gpa: bigint, length: number): Buffer {
    const off = this.check(gpa, length);
    const page = Math.floor(off / PAGE_SIZE);
    if (length > 0 && off + length <= (page + 1) * PAGE_SIZE && this.dataPages.has(page)) return this.memory.view(off, length);
    return this.read(gpa, length);
  }

  /** The 64-bit little-endian value at `gpa` (inside one page), from the mapping when the page holds data. */
  peekU64(gpa: bigint): bigint {
    const off = this.check(gpa, 8);
    const page = Math.floor(off / PAGE_SIZE);
    if (off + 8 <= (page + 1) * PAGE_SIZE && this.dataPages.has(page)) return this.memory.readU64(off);
    return this.read(gpa, 8).readBigUInt64LE(0);
  }

  write(gpa: bigint, data: Uint8Array): void {
    const off = this.check(gpa, data.length);
    let pos = 0;
    while (pos < data.length) {
      const cur = off + pos;
      const n = Math.min(PAGE_SIZE - (cur % PAGE_SIZE), data.length - pos);
      const page = Math.floor(cur / PAGE_SIZE);
      const chunk = n === data.length ? data : data.subarray(pos, pos + n);
      // A page known to hold data is no hole (this RAM never punches one): no zero scan, no lseek.
      if (this.dataPages.has(page) || !(isZero(chunk) && this.isHole(cur))) {
        this.beforeWrite(cur, n);
        this.memory.write(cur, chunk);
        this.dataPages.add(page);
      }
      pos += n;
    }
  }

  /** Tells the tracking about the pages of [offset, offset + length) about to change (their bytes now, for a freeze). */
  beforeWrite(offset: number, length: number): void {
    // The page's bytes are read only for a freeze (a reader made per page only then, outside this
    // loop: a closure over the loop's page would cost a context per page even when not made; every
    // guest write of a hypercall's output comes through here).
    const freezing = this.tracking.freezing;
    for (let page = Math.floor(offset / PAGE_SIZE); page * PAGE_SIZE < offset + length; page++) {
      this.tracking.beforeWrite(page, freezing ? this.pageReader(page) : NO_FREEZE_READS);
    }
  }

  /** Reads page `page`'s current bytes (for a freeze's copy-on-write). */
  private pageReader(page: number): () => Buffer {
    return () => this.memory.read(page * PAGE_SIZE, PAGE_SIZE);
  }

  /** Whether the page containing byte `offset` holds no data. */
  private isHole(offset: number): boolean {
    const page = offset - (offset % PAGE_SIZE);
    const next = sysSeek(this.memory.fd, page, SEEK_DATA);
    return next === undefined || next >= page + PAGE_SIZE;
  }

  touchedPages(): number[] {
    const pages: number[] = [];
    let off = 0;
    const size = this.memory.size;
    while (off < size) {
      const start = sysSeek(this.memory.fd, off, SEEK_DATA);
      if (start === undefined) break;
      const end = sysSeek(this.memory.fd, start, SEEK_HOLE) ?? size;
      for (let p = Math.floor(start / PAGE_SIZE); p < Math.ceil(end / PAGE_SIZE); p++) pages.push(p);
      off = end;
    }
    return pages;
  }

  /** touchedPages() as a sorted Uint32Array (4 bytes a page: what a streamed export keeps). */
  touchedPagesSorted(): Uint32Array {
    let out = new Uint32Array(1024);
    let n = 0;
    let off = 0;
    const size = this.memory.size;
    while (off < size) {
      const start = sysSeek(this.memory.fd, off, SEEK_DATA);
      if (start === undefined) break;
      const end = sysSeek(this.memory.fd, start, SEEK_HOLE) ?? size;
      for (let p = Math.floor(start / PAGE_SIZE); p < Math.ceil(end / PAGE_SIZE); p++) {
        if (n === out.length) {
          const grown = new Uint32Array(out.length * 2);
          grown.set(out);
          out = grown;
        }
        out[n++] = p;
      }
      off = end;
    }
    return out.slice(0, n);
  }

  get pagesTouched(): number {
    return this.touchedPages().length;
  }

  close(): void {
    this.memory.close();
  }
}

/** beforeWrite's reader while no freeze exists (nothing calls it then). */
const NO_FREEZE_READS = (): Buffer | undefined => {
  throw new Error('a page was read for a freeze that does not exist');
};

function isZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/**
 * Backing of the core's overlay pages (allocOverlayPage hook): a memfd with one 4 KiB page per
 * possible overlay slot. Each page handed to the core is a Buffer aliasing the mapping, so what
 * the core writes (hypercall page code, VP assist EntryReason, ...) is what the guest reads
 * through the overlay memslot, and vice versa.
 */
export class OverlayPages {
  readonly memory: GuestMemory;
  private next = 0;
  private readonly offsets = new Map<Buffer, number>();

  constructor(
    readonly capacity: number,
    name = 'vsm-overlays',
  ) {
    this.memory = GuestMemory.create(capacity * PAGE_SIZE, name);
  }

  /** Number of overlay slots a partition can ever need: per VTL, the partition-wide hypercall and reference TSC pages plus VP assist, SIMP and SIEFP per VP. */
  static capacityFor(vpCount: number, vtls = 3): number {
    return (2 + 3 * vpCount) * vtls;
  }

  alloc(): Buffer {
    if (this.next >= this.capacity) throw new Error(`overlay page pool exhausted (${this.capacity} pages)`);
    const offset = this.next++ * PAGE_SIZE;
    const page = this.memory.view(offset, PAGE_SIZE);
    this.offsets.set(page, offset);
    return page;
  }

  /** Offset inside `memory` of a page returned by alloc(). */
  offsetOf(page: Buffer): number {
    const o = this.offsets.get(page);
    if (o === undefined) throw new Error('not an overlay page of this partition');
    return o;
  }

  get allocated(): number {
    return this.next;
  }

  close(): void {
    this.offsets.clear();
    this.memory.close();
  }
}
