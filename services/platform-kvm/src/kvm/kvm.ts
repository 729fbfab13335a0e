/**
 * Thin, synchronous object layer over /dev/kvm: KvmSystem → KvmVm → KvmVcpu, and GuestMemory
 * (one shared memfd backing that several VMs — one per VTL — map at arbitrary offsets).
 *
 * All 64-bit guest-visible values (GPAs, registers, MSR data) are bigint; host offsets and
 * lengths inside a GuestMemory are numbers.
 */
import * as fs from 'node:fs';
import {
  KVM_CHECK_EXTENSION,
  KVM_CREATE_VCPU,
  KVM_CREATE_VM,
  KVM_ENABLE_CAP,
  KVM_GET_API_VERSION,
  KVM_GET_FPU,
  KVM_GET_MSRS,
  KVM_GET_REGS,
  KVM_GET_SREGS,
  KVM_GET_SUPPORTED_CPUID,
  KVM_GET_VCPU_EVENTS,
  KVM_GET_VCPU_MMAP_SIZE,
  KVM_RUN,
  KVM_SET_CPUID2,
  KVM_SET_FPU,
  KVM_GET_XSAVE,
  KVM_SET_XSAVE,
  SIZEOF_KVM_XSAVE,
  KVM_SET_MSRS,
  KVM_SET_REGS,
  KVM_SET_SREGS,
  KVM_SET_USER_MEMORY_REGION,
  KVM_SET_VCPU_EVENTS,
  KVM_X86_SET_MSR_FILTER,
  KVM_CREATE_IRQCHIP,
  KVM_SET_TSS_ADDR,
  KVM_SET_IDENTITY_MAP_ADDR,
  KVM_SIGNAL_MSI,
  KVM_GET_LAPIC,
  KVM_SET_LAPIC,
  KVM_GET_MP_STATE,
  KVM_SET_MP_STATE,
  KVM_GET_TSC_KHZ,
  SIZEOF_KVM_LAPIC_STATE,
  SIZEOF_KVM_MSI,
  MAP_SHARED,
  NativeScratch,
  O_CLOEXEC,
  O_RDWR,
  PROT_READ,
  PROT_WRITE,
  SIZEOF_KVM_VCPU_EVENTS,
  SysError,
  errno,
  ioctlPtr,
  KVM_GET_DIRTY_LOG,
  ioctlVal,
  ioctlValRaw,
  nativeView,
  sysClose,
  sysFtruncate,
  sysMemfdCreate,
  sysMmap,
  sysMunmap,
  sysOpen,
  ERRNO,
} from './ioctl';
import {
  CPUID2,
  ENABLE_CAP,
  EXIT,
  FPU,
  type KvmFpu,
  type KvmRegs,
  type KvmSregs,
  MEMREGION,
  MSRS,
  MSR_FILTER,
  REG_OFFSET,
  RUN,
  type RegName,
  SREGS,
  decodeFpu,
  decodeRegs,
  decodeSregs,
  bufferDataView,
  encodeFpu,
  encodeRegs,
  encodeSregs,
} from './layout';
import {
  HV_MSR_BASE,
  HV_MSR_COUNT,
  KVM_API_VERSION,
  KVM_CAP,
  KVM_EXIT,
  KVM_EXIT_IO_OUT,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  KVM_MSR_EXIT_REASON_FILTER,
  KVM_MSR_FILTER_DEFAULT_ALLOW,
  KVM_MSR_FILTER_DEFAULT_DENY,
  KVM_MSR_FILTER_READ,
  KVM_MSR_FILTER_WRITE,
  KVM_SYNC_X86_REGS,
  KVM_SYNC_X86_SREGS,
} from './constants';

export const PAGE_SIZE = 4096;

function assertPageAligned(what: string, v: number | bigint): void {
  if (BigInt(v) % BigInt(PAGE_SIZE) !== 0n) throw new RangeError(`${what} (0x${v.toString(16)}) is not 4 KiB aligned`);
}

// =============================================================================================
// KvmSystem
// =============================================================================================

export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

/** /dev/kvm. */
export class KvmSystem {
  readonly fd: number;
  private mmapSize = -1;
  private closed = false;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /** Why KVM cannot be used here, or undefined when /dev/kvm exists and is read/write accessible. */
  static unavailableReason(path = '/dev/kvm'): string | undefined {
    if (!fs.existsSync(path)) return `${path} does not exist`;
    try {
      fs.accessSync(path, fs.constants.R_OK | fs.constants.W_OK);
    } catch (e) {
      return `${path} is not read/write accessible: ${(e as Error).message}`;
    }
    return undefined;
  }

  /** Opens /dev/kvm and checks KVM_GET_API_VERSION == 12. */
  static open(path = '/dev/kvm'): KvmSystem {
    const fd = sysOpen(path, O_RDWR | O_CLOEXEC);
    const sys = new KvmSystem(fd);
    const v = sys.apiVersion();
    if (v !== KVM_API_VERSION) {
      sys.close();
      throw new Error(`KVM API version ${v}, expected ${KVM_API_VERSION}`);
    }
    return sys;
  }

  apiVersion(): number {
    return ioctlVal(this.fd, KVM_GET_API_VERSION, 0, 'KVM_GET_API_VERSION');
  }

  /** KVM_CHECK_EXTENSION: 0 when absent, else a capability-specific value (often 1). */
  checkExtension(cap: number): number {
    return ioctlVal(this.fd, KVM_CHECK_EXTENSION, cap, 'KVM_CHECK_EXTENSION');
  }

  /** KVM_GET_VCPU_MMAP_SIZE (cached). */
  vcpuMmapSize(): number {
    if (this.mmapSize < 0) this.mmapSize = ioctlVal(this.fd, KVM_GET_VCPU_MMAP_SIZE, 0, 'KVM_GET_VCPU_MMAP_SIZE');
    return this.mmapSize;
  }

  /** KVM_GET_SUPPORTED_CPUID: the CPUID leaves KVM can expose to a guest (for KvmVcpu.setCpuid). */
  getSupportedCpuid(): CpuidEntry[] {
    for (let nent = 128; nent <= 4096; nent *= 2) {
      const buf = Buffer.alloc(CPUID2.entries + nent * CPUID2.entrySize);
      buf.writeUInt32LE(nent, CPUID2.nent);
      try {
        ioctlPtr(this.fd, KVM_GET_SUPPORTED_CPUID, buf, 'KVM_GET_SUPPORTED_CPUID');
      } catch (e) {
        if (e instanceof SysError && e.code === 'E2BIG') continue;
        throw e;
      }
      const n = buf.readUInt32LE(CPUID2.nent);
      const out: CpuidEntry[] = [];
      for (let i = 0; i < n; i++) {
        const o = CPUID2.entries + i * CPUID2.entrySize;
        out.push({
          function: buf.readUInt32LE(o + CPUID2.function),
          index: buf.readUInt32LE(o + CPUID2.index),
          flags: buf.readUInt32LE(o + CPUID2.flags),
          eax: buf.readUInt32LE(o + CPUID2.eax),
          ebx: buf.readUInt32LE(o + CPUID2.ebx),
          ecx: buf.readUInt32LE(o + CPUID2.ecx),
          edx: buf.readUInt32LE(o + CPUID2.edx),
        });
      }
      return out;
    }
    throw new Error('KVM_GET_SUPPORTED_CPUID: too many entries');
  }

  /** KVM_CREATE_VM (machine type 0). */
  createVm(type = 0): KvmVm {
    return new KvmVm(this, ioctlVal(this.fd, KVM_CREATE_VM, type, 'KVM_CREATE_VM'));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    sysClose(this.fd);
  }
}

// =============================================================================================
// GuestMemory
// =============================================================================================

const CHUNK = 1 << 30; // cached ArrayBuffer views are made per 1 GiB chunk

/**
 * One memfd of `size` bytes, mmap'ed MAP_SHARED once into this process. Memslots of any number
 * of VMs point into this single mapping, so all of them (and the host) see the same pages.
 */
export class GuestMemory {
  readonly fd: number;
  readonly size: number;
  /** Host virtual address of byte 0 of the mapping. */
  readonly hostAddress: bigint;
  private readonly chunks: (ArrayBuffer | undefined)[] = [];
  private readonly chunkViews: (DataView | undefined)[] = [];
  private readonly chunkBuffers: (Buffer | undefined)[] = [];
  private closed = false;

  private constructor(fd: number, size: number, hostAddress: bigint) {
    this.fd = fd;
    this.size = size;
    this.hostAddress = hostAddress;
  }

  /** memfd_create + ftruncate + mmap(MAP_SHARED). `size` must be a multiple of 4 KiB. The memory starts zeroed. */
  static create(size: number, name = 'vsm-guest-memory'): GuestMemory {
    if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`bad guest memory size ${size}`);
    assertPageAligned('guest memory size', size);
    const fd = sysMemfdCreate(name);
    try {
      sysFtruncate(fd, size);
      const addr = sysMmap(size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      return new GuestMemory(fd, size, addr);
    } catch (e) {
      sysClose(fd);
      throw e;
    }
  }

  private checkRange(offset: number, length: number): void {
    if (this.closed) throw new Error('GuestMemory is closed');
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`guest memory range [0x${offset.toString(16)}, +0x${length.toString(16)}) outside [0, 0x${this.size.toString(16)})`);
    }
  }

  /**
   * A Buffer that aliases [offset, offset+length) of the mapping (writes go straight to guest
   * memory). Valid until close().
   */
  view(offset: number, length: number): Buffer {
    this.checkRange(offset, length);
    const ci = Math.floor(offset / CHUNK);
    if (Math.floor((offset + length - 1) / CHUNK) === ci || length === 0) return Buffer.from(this.chunk(ci), offset - ci * CHUNK, length);
    return nativeView(this.hostAddress + BigInt(offset), length);
  }

  /** The ArrayBuffer over 1 GiB chunk `ci` of the mapping (made once). */
  private chunk(ci: number): ArrayBuffer {
    let ab = this.chunks[ci];
    if (ab === undefined) {
      const clen = Math.min(CHUNK, this.size - ci * CHUNK);
      ab = nativeView(this.hostAddress + BigInt(ci * CHUNK), clen).buffer as ArrayBuffer;
      this.chunks[ci] = ab;
    }
    return ab;
  }

  /** A Buffer over the whole of 1 GiB chunk `ci` (made once): copies in and out of it need no view per call. */
  private chunkBuffer(ci: number): Buffer {
    let b = this.chunkBuffers[ci];
    if (b === undefined) this.chunkBuffers[ci] = b = Buffer.from(this.chunk(ci));
    return b;
  }

  /** A copy of [offset, offset+length). */
  read(offset: number, length: number): Buffer {
    const ci = Math.floor(offset / CHUNK);
    if (length === 0 || Math.floor((offset + length - 1) / CHUNK) !== ci) return Buffer.from(this.view(offset, length));
    // Inside one chunk (every short read): one pooled Buffer, copied into from the chunk's Buffer.
    // A view per read plus its copy cost two allocations, about a fifth of a µs after a KVM_RUN.
    this.checkRange(offset, length);
    const out = Buffer.allocUnsafe(length);
    const at = offset - ci * CHUNK;
    const chunk = this.chunkBuffer(ci);
    // A short read byte by byte: Buffer.copy of part of a buffer makes a view of it first.
    if (length <= 64) for (let i = 0; i < length; i++) out[i] = chunk[at + i]!;
    else chunk.copy(out, 0, at, at + length);
    return out;
  }

  write(offset: number, data: Uint8Array): void {
    const ci = Math.floor(offset / CHUNK);
    if (data.length === 0 || Math.floor((offset + data.length - 1) / CHUNK) !== ci) return void this.view(offset, data.length).set(data);
    this.checkRange(offset, data.length);
    this.chunkBuffer(ci).set(data, offset - ci * CHUNK);
  }

  fill(offset: number, length: number, value = 0): void {
    this.view(offset, length).fill(value);
  }

  readU64(offset: number): bigint {
    // Through a DataView of the chunk (made once per chunk): no Buffer per read (guest page-table
    // walks read several entries per intercept).
    const ci = Math.floor(offset / CHUNK);
    if (Math.floor((offset + 7) / CHUNK) !== ci) return this.view(offset, 8).readBigUInt64LE(0);
    this.checkRange(offset, 8);
    let dv = this.chunkViews[ci];
    if (dv === undefined) this.chunkViews[ci] = dv = new DataView(this.chunk(ci));
    return dv.getBigUint64(offset - ci * CHUNK, true);
  }

  writeU64(offset: number, value: bigint): void {
    this.view(offset, 8).writeBigUInt64LE(BigInt.asUintN(64, value), 0);
  }

  /** Unmaps and closes the memfd. Views obtained earlier must not be touched afterwards. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.chunks.length = 0;
    this.chunkViews.length = 0;
    this.chunkBuffers.length = 0;
    sysMunmap(this.hostAddress, this.size);
    sysClose(this.fd);
  }
}

// =============================================================================================
// KvmVm
// =============================================================================================

/** One memslot of a VM: [gpa, gpa+size) → memory[offset, offset+size). */
export interface MemoryMapping {
  readonly slot: number;
  readonly gpa: bigint;
  readonly size: number;
  readonly memory: GuestMemory;
  readonly offset: number;
  readonly readonly: boolean;
}

export interface MapOptions {
  gpa: bigint;
  size: number;
  memory: GuestMemory;
  /** Byte offset inside `memory` (4 KiB aligned). */
  offset: number;
  /** KVM_MEM_READONLY: guest writes exit to userspace as KVM_EXIT_MMIO; reads and fetches succeed. */
  readonly?: boolean;
}

/** One range of an MSR filter. MSRs whose bit in `allow` is 0 (the default) are denied, i.e. exit to userspace. */
export interface MsrFilterRange {
  /** First MSR index of the range. */
  base: number;
  /** Number of MSRs (bits); at most 0x600 × 8. */
  count: number;
  /** Filter RDMSR (default true). */
  read?: boolean;
  /** Filter WRMSR (default true). */
  write?: boolean;
  /** Allow bitmap (bit i set = MSR base+i allowed); all zero when omitted. */
  allow?: Uint8Array;
}

export interface RawMemoryRegion {
  slot: number;
  flags: number;
  gpa: bigint;
  /** 0 deletes the slot. */
  size: number;
  hostAddress: bigint;
}

/** A KVM VM: its memslot layout (its view of the shared guest memory), MSR filter and vCPUs. */
export class KvmVm {
  readonly system: KvmSystem;
  readonly fd: number;
  private readonly layout: MemoryMapping[] = []; // sorted by gpa, non-overlapping
  private readonly usedSlots = new Set<number>();
  /** Slot numbers freed by deletions (reused first), and the next never-used one. */
  private readonly freeSlots: number[] = [];
  private nextSlot = 0;
  private readonly vcpus = new Set<KvmVcpu>();
  private readonly regionBuf = Buffer.alloc(MEMREGION.sizeof);
  private closed = false;
  /** Number of KVM_SET_USER_MEMORY_REGION calls made so far (for cost accounting). */
  memslotChanges = 0;
  /**
   * Dirty logging (logDirty): the memory whose writable slots carry KVM_MEM_LOG_DIRTY_PAGES, and where
   * the pages the guest wrote go (page numbers inside that memory), harvested from a slot's bitmap
   * before the slot is deleted and on harvestDirty().
   */
  private dirty?: { memory: GuestMemory; sink: (page: number) => void; scratch?: NativeScratch };

  constructor(system: KvmSystem, fd: number) {
    this.system = system;
    this.fd = fd;
  }

  /** VM-level KVM_CHECK_EXTENSION. */
  checkExtension(cap: number): number {
    return ioctlVal(this.fd, KVM_CHECK_EXTENSION, cap, 'KVM_CHECK_EXTENSION(vm)');
  }

  /** KVM_ENABLE_CAP on the VM. */
  enableCap(cap: number, args: readonly bigint[] = [], flags = 0): void {
    enableCapOn(this.fd, cap, args, flags, 'KVM_ENABLE_CAP(vm)');
  }

  /** Raw KVM_SET_USER_MEMORY_REGION (no layout bookkeeping; prefer map()/unmap()). */
  setUserMemoryRegion(r: RawMemoryRegion): void {
    const b = this.regionBuf;
    b.writeUInt32LE(r.slot, MEMREGION.slot);
    b.writeUInt32LE(r.flags, MEMREGION.flags);
    b.writeBigUInt64LE(r.gpa, MEMREGION.gpa);
    b.writeBigUInt64LE(BigInt(r.size), MEMREGION.size);
    b.writeBigUInt64LE(r.hostAddress, MEMREGION.uaddr);
    this.memslotChanges++;
    ioctlPtr(this.fd, KVM_SET_USER_MEMORY_REGION, b, `KVM_SET_USER_MEMORY_REGION(slot ${r.slot}, gpa 0x${r.gpa.toString(16)}, size 0x${r.size.toString(16)})`);
  }

  private allocSlot(): number {
    for (;;) {
      const s = this.freeSlots.pop() ?? this.nextSlot++;
      if (!this.usedSlots.has(s)) return s;
    }
  }

  /** Creates the memslot; `place` = false leaves the layout array to the caller (setLayout). */
  private addSlot(m: Omit<MemoryMapping, 'slot'>, place = true): MemoryMapping {
    const slot = this.allocSlot();
    try {
      this.setUserMemoryRegion({
        slot,
        flags: m.readonly ? KVM_MEM_READONLY : this.logs(m) ? KVM_MEM_LOG_DIRTY_PAGES : 0,
        gpa: m.gpa,
        size: m.size,
        hostAddress: m.memory.hostAddress + BigInt(m.offset),
      });
    } catch (e) {
      this.freeSlots.push(slot);
      throw e;
    }
    this.usedSlots.add(slot);
    const mapping: MemoryMapping = { gpa: m.gpa, size: m.size, memory: m.memory, offset: m.offset, readonly: m.readonly, slot };
    if (place) this.layout.splice(this.indexAfter(m.gpa), 0, mapping);
    return mapping;
  }

  /** `unplace` = false leaves the layout array to the caller (setLayout). */
  private deleteSlot(m: MemoryMapping, unplace = true): void {
    if (this.logs(m)) this.harvestSlot(m); // its bitmap goes with it
    this.setUserMemoryRegion({ slot: m.slot, flags: 0, gpa: m.gpa, size: 0, hostAddress: 0n });
    this.usedSlots.delete(m.slot);
    this.freeSlots.push(m.slot);
    if (!unplace) return;
    const i = this.layout.indexOf(m);
    if (i >= 0) this.layout.splice(i, 1);
  }

  /** Whether slot `m` logs the guest's writes (dirty logging is on for its memory, and it is writable). */
  private logs(m: Omit<MemoryMapping, 'slot'>): boolean {
    return !!this.dirty && m.memory === this.dirty.memory && !m.readonly;
  }

  /**
   * Logs the guest's writes to `memory` from now on (KVM_MEM_LOG_DIRTY_PAGES on every writable slot
   * backed by it, present and future): harvestDirty() hands each page written (its number inside
   * `memory`) to `sink`. One memory per VM.
   */
  logDirty(memory: GuestMemory, sink: (page: number) => void): void {
    if (this.dirty) {
      if (this.dirty.memory !== memory) throw new Error('this VM logs the writes of another memory already');
      this.dirty.sink = sink;
      return;
    }
    this.dirty = { memory, sink };
    for (const m of this.layout) {
      if (!this.logs(m)) continue;
      // A flags-only change of an existing slot (KVM_MR_FLAGS_ONLY).
      this.setUserMemoryRegion({
        slot: m.slot,
        flags: KVM_MEM_LOG_DIRTY_PAGES,
        gpa: m.gpa,
        size: m.size,
        hostAddress: m.memory.hostAddress + BigInt(m.offset),
      });
    }
  }

  /** Hands every page written since the last harvest (KVM_GET_DIRTY_LOG of each logging slot) to the sink. */
  harvestDirty(): void {
    if (!this.dirty) return;
    for (const m of this.layout) if (this.logs(m)) this.harvestSlot(m);
  }

  private harvestSlot(m: MemoryMapping): void {
    const d = this.dirty!;
    const pages = m.size / 4096;
    const bytes = Math.ceil(pages / 64) * 8;
    if (!d.scratch || d.scratch.length < bytes) {
      d.scratch?.free();
      d.scratch = new NativeScratch(bytes);
    }
    const arg = Buffer.alloc(16);
    arg.writeUInt32LE(m.slot, 0);
    arg.writeBigUInt64LE(d.scratch.address, 8);
    ioctlPtr(this.fd, KVM_GET_DIRTY_LOG, arg, `KVM_GET_DIRTY_LOG(slot ${m.slot})`);
    const bits = d.scratch.buffer;
    const first = m.offset / 4096;
    for (let i = 0; i < bytes; i += 4) {
      let w = bits.readUInt32LE(i);
      if (w === 0) continue;
      while (w !== 0) {
        const low = w & -w;
        const bit = i * 8 + (31 - Math.clz32(low));
        if (bit < pages) d.sink(first + bit);
        w ^= low;
      }
    }
  }

  /** Index of the first mapping whose gpa is greater than `gpa` (binary search). */
  private indexAfter(gpa: bigint): number {
    let lo = 0;
    let hi = this.layout.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.layout[mid] as MemoryMapping).gpa <= gpa) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * Makes this VM's memslots inside [lo, hi) exactly `want` (sorted by gpa, non-overlapping, page
   * aligned, inside [lo, hi)): mappings that already match are kept, the others deleted, the
   * missing ones created. Deletions go first (KVM refuses overlapping slots); no vCPU of the VM may
   * be inside KVM_RUN meanwhile (the agent runs vCPUs on its own thread only). Mappings outside
   * [lo, hi) must not straddle its edges. Returns the number of KVM_SET_USER_MEMORY_REGION calls.
   * Costs O(n) here plus one ioctl per slot changed; a failure leaves the layout consistent with
   * KVM (what was deleted is gone, what was created is there).
   */
  setLayout(lo: bigint, hi: bigint, want: readonly Omit<MemoryMapping, 'slot'>[]): number {
    const key = (m: Omit<MemoryMapping, 'slot'>) => `${m.gpa}:${m.size}:${m.memory.hostAddress + BigInt(m.offset)}:${m.readonly ? 1 : 0}`;
    const inside = (m: { gpa: bigint; size: number }) => m.gpa >= lo && m.gpa + BigInt(m.size) <= hi;
    const overlaps = (m: { gpa: bigint; size: number }) => m.gpa < hi && m.gpa + BigInt(m.size) > lo;
    let prevEnd = lo;
    for (const w of want) {
      assertPageAligned('gpa', w.gpa);
      assertPageAligned('size', w.size);
      assertPageAligned('offset', w.offset);
      if (w.size <= 0 || w.gpa < prevEnd || !inside(w))
        throw new RangeError(`setLayout: mapping at 0x${w.gpa.toString(16)} is not sorted, overlaps or lies outside the range`);
      if (w.offset + w.size > w.memory.size) throw new RangeError('mapping exceeds the guest memory backing');
      prevEnd = w.gpa + BigInt(w.size);
    }
    const current = new Map<string, MemoryMapping>();
    for (const m of this.layout) {
      if (!overlaps(m)) continue;
      if (!inside(m)) throw new RangeError(`setLayout: the mapping at 0x${m.gpa.toString(16)} straddles the range`);
      current.set(key(m), m);
    }
    const wanted = new Set(want.map(key));
    const before = this.memslotChanges;
    const removed = new Set<MemoryMapping>();
    const added: MemoryMapping[] = [];
    try {
      for (const [k, m] of current) {
        if (wanted.has(k)) continue;
        this.deleteSlot(m, false);
        removed.add(m);
      }
      for (const w of want) if (!current.has(key(w))) added.push(this.addSlot(w, false));
    } finally {
      const next = this.layout.filter((m) => !removed.has(m)).concat(added);
      next.sort((a, b) => (a.gpa < b.gpa ? -1 : a.gpa > b.gpa ? 1 : 0));
      this.layout.length = 0;
      for (const m of next) this.layout.push(m);
    }
    return this.memslotChanges - before;
  }

  /** Number of memslots of this VM. */
  get slotCount(): number {
    return this.layout.length;
  }

  /** Removes [gpa, gpa+size) from the layout, splitting mappings that straddle its edges. */
  private punch(gpa: bigint, size: number): void {
    const end = gpa + BigInt(size);
    const hit = this.layout.filter((m) => m.gpa < end && m.gpa + BigInt(m.size) > gpa);
    const keep: Omit<MemoryMapping, 'slot'>[] = [];
    for (const m of hit) {
      const mEnd = m.gpa + BigInt(m.size);
      if (m.gpa < gpa) keep.push({ gpa: m.gpa, size: Number(gpa - m.gpa), memory: m.memory, offset: m.offset, readonly: m.readonly });
      if (mEnd > end) {
        keep.push({ gpa: end, size: Number(mEnd - end), memory: m.memory, offset: m.offset + Number(end - m.gpa), readonly: m.readonly });
      }
    }
    for (const m of hit) this.deleteSlot(m);
    for (const k of keep) this.addSlot(k);
  }

  /**
   * Maps [gpa, gpa+size) → memory[offset, …) in this VM, replacing whatever this VM mapped
   * there (existing memslots are split; bytes of the underlying memory are never touched).
   * This is how an overlay page or a read-only protection is placed over a VTL's view.
   * Costs one KVM_SET_USER_MEMORY_REGION per slot deleted/created (0.1–0.5 ms each on kvm_pvm).
   */
  map(o: MapOptions): MemoryMapping {
    assertPageAligned('gpa', o.gpa);
    assertPageAligned('size', o.size);
    assertPageAligned('offset', o.offset);
    if (o.size <= 0) throw new RangeError('map size must be > 0');
    if (o.offset + o.size > o.memory.size) throw new RangeError('mapping exceeds the guest memory backing');
    const readonly = o.readonly ?? false;
    const same = this.layout.find((m) => m.gpa === o.gpa && m.size === o.size && m.memory === o.memory && m.offset === o.offset && m.readonly === readonly);
    if (same) return same;
    this.punch(o.gpa, o.size);
    return this.addSlot({ gpa: o.gpa, size: o.size, memory: o.memory, offset: o.offset, readonly });
  }

  /** Leaves [gpa, gpa+size) without a memslot in this VM: every guest access there exits (KVM_EXIT_MMIO). */
  unmap(gpa: bigint, size: number): void {
    assertPageAligned('gpa', gpa);
    assertPageAligned('size', size);
    this.punch(gpa, size);
  }

  /** This VM's memslots, sorted by GPA. */
  mappings(): readonly MemoryMapping[] {
    return [...this.layout];
  }

  /** The mapping that contains `gpa`, if any. */
  lookup(gpa: bigint): MemoryMapping | undefined {
    const m = this.layout[this.indexAfter(gpa) - 1];
    return m && gpa < m.gpa + BigInt(m.size) ? m : undefined;
  }

  /** Host view (aliasing) of [gpa, gpa+length) through this VM's layout; must lie in one mapping. */
  gpaView(gpa: bigint, length: number): Buffer {
    const m = this.lookup(gpa);
    if (!m || gpa + BigInt(length) > m.gpa + BigInt(m.size)) {
      throw new RangeError(`GPA range [0x${gpa.toString(16)}, +0x${length.toString(16)}) is not inside one memslot of this VM`);
    }
    return m.memory.view(m.offset + Number(gpa - m.gpa), length);
  }

  /** Host write through this VM's layout (ignores KVM_MEM_READONLY: it only restricts the guest). May span contiguous mappings. */
  writeGpa(gpa: bigint, data: Uint8Array): void {
    let done = 0;
    while (done < data.length) {
      const g = gpa + BigInt(done);
      const m = this.lookup(g);
      if (!m) throw new RangeError(`GPA 0x${g.toString(16)} is not mapped in this VM`);
      const n = Math.min(data.length - done, Number(m.gpa + BigInt(m.size) - g));
      m.memory.write(m.offset + Number(g - m.gpa), data.subarray(done, done + n));
      done += n;
    }
  }

  /** Host read (copy) through this VM's layout. May span contiguous mappings. */
  readGpa(gpa: bigint, length: number): Buffer {
    const out = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const g = gpa + BigInt(done);
      const m = this.lookup(g);
      if (!m) throw new RangeError(`GPA 0x${g.toString(16)} is not mapped in this VM`);
      const n = Math.min(length - done, Number(m.gpa + BigInt(m.size) - g));
      m.memory.view(m.offset + Number(g - m.gpa), n).copy(out, done);
      done += n;
    }
    return out;
  }

  /**
   * KVM_CAP_X86_USER_SPACE_MSR: MSR accesses refused for the given reasons exit to userspace
   * (KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR) instead of injecting #GP. Default: FILTER only.
   */
  enableUserSpaceMsr(reasons = KVM_MSR_EXIT_REASON_FILTER): void {
    this.enableCap(KVM_CAP.X86_USER_SPACE_MSR, [BigInt(reasons)]);
  }

  /**
   * KVM_X86_SET_MSR_FILTER. MSRs outside all ranges follow the default (allow unless
   * `defaultDeny`). An empty `ranges` with default allow removes the filter. KVM copies the
   * bitmaps, so nothing needs to stay alive after the call.
   */
  setMsrFilter(ranges: readonly MsrFilterRange[], opts: { defaultDeny?: boolean } = {}): void {
    if (ranges.length > MSR_FILTER.maxRanges) throw new RangeError(`at most ${MSR_FILTER.maxRanges} MSR filter ranges`);
    const arg = Buffer.alloc(MSR_FILTER.sizeof);
    arg.writeUInt32LE(opts.defaultDeny ? KVM_MSR_FILTER_DEFAULT_DENY : KVM_MSR_FILTER_DEFAULT_ALLOW, MSR_FILTER.flags);
    const scratch = new NativeScratch(MSR_FILTER.maxRanges * MSR_FILTER.maxBitmapBytes);
    try {
      ranges.forEach((r, i) => {
        const bytes = Math.ceil(r.count / 8);
        if (r.count <= 0 || bytes > MSR_FILTER.maxBitmapBytes) throw new RangeError(`bad MSR filter range size ${r.count}`);
        const bmOff = i * MSR_FILTER.maxBitmapBytes;
        scratch.buffer.fill(0, bmOff, bmOff + bytes);
        if (r.allow) scratch.buffer.set(r.allow.subarray(0, bytes), bmOff);
        const o = MSR_FILTER.ranges + i * MSR_FILTER.rangeSize;
        const flags = ((r.read ?? true) ? KVM_MSR_FILTER_READ : 0) | ((r.write ?? true) ? KVM_MSR_FILTER_WRITE : 0);
        arg.writeUInt32LE(flags, o + MSR_FILTER.rFlags);
        arg.writeUInt32LE(r.count, o + MSR_FILTER.rNmsrs);
        arg.writeUInt32LE(r.base >>> 0, o + MSR_FILTER.rBase);
        arg.writeBigUInt64LE(scratch.address + BigInt(bmOff), o + MSR_FILTER.rBitmap);
      });
      ioctlPtr(this.fd, KVM_X86_SET_MSR_FILTER, arg, 'KVM_X86_SET_MSR_FILTER');
    } finally {
      scratch.free();
    }
  }

  /**
   * The usual set-up for the agent: every RDMSR/WRMSR of MSRs [base, base+count) (default the
   * Hyper-V range 0x40000000–0x400000FF) exits to userspace; so does every WRMSR of the MSRs in
   * `writes` (one range each, write only: their reads stay in KVM) and every RDMSR of those in `reads`
   * (read only); other MSRs behave as usual. KVM applies a new filter to running vCPUs at their next
   * entry (KVM_REQ_MSR_FILTER_CHANGED).
   */
  trapMsrs(base = HV_MSR_BASE, count = HV_MSR_COUNT, writes: readonly number[] = [], reads: readonly number[] = []): void {
    this.enableUserSpaceMsr(KVM_MSR_EXIT_REASON_FILTER);
    this.setMsrFilter([
      { base, count },
      ...writes.map((m) => ({ base: m, count: 1, read: false, write: true })),
      ...reads.map((m) => ({ base: m, count: 1, read: true, write: false })),
    ]);
  }

  /** KVM_CREATE_VCPU + mmap of its kvm_run area. */
  /**
   * KVM_CREATE_IRQCHIP: the in-kernel PIC, IOAPIC and a LAPIC per vCPU (LAPIC MMIO at 0xFEE00000,
   * INIT/SIPI, IPIs, LAPIC timer and HLT all handled in the kernel). Must precede createVcpu.
   */
  createIrqchip(): void {
    if (this.vcpus.size > 0) throw new Error('KVM_CREATE_IRQCHIP must precede the first vCPU');
    ioctlVal(this.fd, KVM_CREATE_IRQCHIP, 0, 'KVM_CREATE_IRQCHIP');
    this.irqchip = true;
  }

  /** Whether createIrqchip() was called. */
  irqchip = false;

  /**
   * KVM_SET_TSS_ADDR and KVM_SET_IDENTITY_MAP_ADDR (as QEMU places them, below 4 GiB): the pages
   * KVM needs to run real-mode code (an AP's SIPI trampoline) on hosts without unrestricted guest.
   * Returns the reason when the host refused (it then needs neither).
   */
  setRealModePages(tssAddr = 0xfeffd000n, identityMapAddr = 0xfeffc000n): string | undefined {
    try {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(identityMapAddr);
      ioctlPtr(this.fd, KVM_SET_IDENTITY_MAP_ADDR, b, 'KVM_SET_IDENTITY_MAP_ADDR');
      ioctlVal(this.fd, KVM_SET_TSS_ADDR, tssAddr, 'KVM_SET_TSS_ADDR');
      return undefined;
    } catch (e) {
      return (e as Error).message;
    }
  }

  private readonly msiBuf = Buffer.alloc(SIZEOF_KVM_MSI);

  /**
   * KVM_SIGNAL_MSI: an MSI write (address 0xFEE0_0000 | dest APIC id << 12; data = vector | delivery
   * mode << 8) to the in-kernel LAPICs. Returns >0 when delivered, 0 when the guest blocked it.
   */
  signalMsi(addressLo: number, data: number, addressHi = 0): number {
    const b = this.msiBuf;
    b.fill(0);
    b.writeUInt32LE(addressLo >>> 0, 0);
    b.writeUInt32LE(addressHi >>> 0, 4);
    b.writeUInt32LE(data >>> 0, 8);
    return ioctlPtr(this.fd, KVM_SIGNAL_MSI, b, 'KVM_SIGNAL_MSI');
  }

  createVcpu(id = 0): KvmVcpu {
    const v = new KvmVcpu(this, id);
    this.vcpus.add(v);
    return v;
  }

  /** @internal */
  forgetVcpu(v: KvmVcpu): void {
    this.vcpus.delete(v);
  }

  /** Closes the vCPUs and the VM fd (the GuestMemory stays: other VMs may use it). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const v of [...this.vcpus]) v.close();
    sysClose(this.fd);
    this.dirty?.scratch?.free();
  }
}

function enableCapOn(fd: number, cap: number, args: readonly bigint[], flags: number, what: string): void {
  const b = Buffer.alloc(ENABLE_CAP.sizeof);
  b.writeUInt32LE(cap, ENABLE_CAP.cap);
  b.writeUInt32LE(flags, ENABLE_CAP.flags);
  args.slice(0, 4).forEach((a, i) => {
    b.writeBigUInt64LE(BigInt.asUintN(64, a), ENABLE_CAP.args + 8 * i);
  });
  ioctlPtr(fd, KVM_ENABLE_CAP, b, `${what} cap ${cap}`);
}

// =============================================================================================
// Exits
// =============================================================================================

/** KVM_EXIT_IO. For OUT, `data` holds the bytes written; for IN, fill it (or call completeIoIn) before the next run. */
export interface IoExit {
  kind: 'io';
  reason: 2;
  direction: 'in' | 'out';
  port: number;
  /** access size in bytes (1, 2 or 4) */
  size: number;
  /** repetitions (> 1 only for string I/O) */
  count: number;
  /** aliases the PIO data area of the kvm_run mapping (size × count bytes); valid until the next run */
  data: Buffer;
  /** the first element as an unsigned number (OUT: the value written) */
  value: number;
}
/** KVM_EXIT_MMIO: an access to a GPA without a memslot, or a write to a read-only memslot. */
export interface MmioExit {
  kind: 'mmio';
  reason: 6;
  gpa: bigint;
  len: number;
  isWrite: boolean;
  /** aliases kvm_run.mmio.data[len]; for reads, fill it (or call completeMmioRead) before the next run */
  data: Buffer;
  /** writes: the little-endian value written (data[0..len)); reads: 0n */
  value: bigint;
}
/** KVM_EXIT_X86_RDMSR: complete with completeMsr({ data }) or ({ error: true }) for #GP. */
export interface RdmsrExit {
  kind: 'rdmsr';
  reason: 29;
  index: number;
  /** KVM_MSR_EXIT_REASON_* */
  msrReason: number;
}
/** KVM_EXIT_X86_WRMSR: complete with completeMsr({ error: true }) to inject #GP; otherwise the write succeeds. */
export interface WrmsrExit {
  kind: 'wrmsr';
  reason: 30;
  index: number;
  data: bigint;
  msrReason: number;
}
export interface HltExit {
  kind: 'hlt';
  reason: 5;
}
export interface ShutdownExit {
  kind: 'shutdown';
  reason: 8;
}
export interface FailEntryExit {
  kind: 'fail_entry';
  reason: 9;
  hardwareEntryFailureReason: bigint;
  cpu: number;
}
export interface InternalErrorExit {
  kind: 'internal_error';
  reason: 17;
  suberror: number;
  data: bigint[];
}
/** KVM_EXIT_MEMORY_FAULT (KVM_RUN failed with EFAULT/EHWPOISON and described the faulting range). */
export interface MemoryFaultExit {
  kind: 'memory_fault';
  reason: 39;
  flags: bigint;
  gpa: bigint;
  size: bigint;
}
export interface SystemEventExit {
  kind: 'system_event';
  reason: 24;
  type: number;
  data: bigint[];
}
export interface ExceptionExit {
  kind: 'exception';
  reason: 1;
  exception: number;
  errorCode: number;
}
export interface DebugExit {
  kind: 'debug';
  reason: 4;
  exception: number;
  pc: bigint;
  dr6: bigint;
  dr7: bigint;
}
/** KVM_EXIT_INTR: KVM_RUN returned EINTR (immediate_exit set, or a signal was pending). */
export interface IntrExit {
  kind: 'intr';
  reason: 10;
}
export interface UnknownExit {
  kind: 'unknown';
  reason: 0;
  hardwareExitReason: bigint;
}
/** Any other exit reason (not decoded). */
export interface OtherExit {
  kind: 'other';
  reason: number;
}

export type KvmExit =
  | IoExit
  | MmioExit
  | RdmsrExit
  | WrmsrExit
  | HltExit
  | ShutdownExit
  | FailEntryExit
  | InternalErrorExit
  | MemoryFaultExit
  | SystemEventExit
  | ExceptionExit
  | DebugExit
  | IntrExit
  | UnknownExit
  | OtherExit;

export interface MsrEntry {
  index: number;
  data: bigint;
}

// =============================================================================================
// KvmVcpu
// =============================================================================================

/** A vCPU and its mmap'ed kvm_run page. run() is synchronous and blocks the calling thread while the guest runs. */
export class KvmVcpu {
  readonly vm: KvmVm;
  readonly id: number;
  readonly fd: number;
  /** The whole vCPU mapping (struct kvm_run, then the PIO data page, ...); aliases kernel-shared memory. */
  readonly runPage: Buffer;
  /** A DataView of runPage (the register moves of every exit: no lookup of it per access). */
  private readonly runView: DataView;
  private readonly runAddr: bigint;
  private readonly runSize: number;
  private readonly regsBuf = Buffer.alloc(144);
  private readonly sregsBuf = Buffer.alloc(SREGS.size);
  private readonly fpuBuf = Buffer.alloc(FPU.size);
  /** register classes (KVM_SYNC_X86_*) whose copy in kvm_run.s.regs equals the vCPU's state */
  private syncFresh = 0;
  private closed = false;
  /** KVM_RUN calls made so far. */
  runs = 0;

  constructor(vm: KvmVm, id: number) {
    this.vm = vm;
    this.id = id;
    this.fd = ioctlVal(vm.fd, KVM_CREATE_VCPU, id, 'KVM_CREATE_VCPU');
    try {
      this.runSize = vm.system.vcpuMmapSize();
      this.runAddr = sysMmap(this.runSize, PROT_READ | PROT_WRITE, MAP_SHARED, this.fd, 0);
      this.runPage = nativeView(this.runAddr, this.runSize);
      this.runView = bufferDataView(this.runPage);
    } catch (e) {
      sysClose(this.fd);
      throw e;
    }
  }

  // ------------------------------------------------------------------ running

  /**
   * KVM_RUN once and decode the exit. Throws SysError for failures other than EINTR
   * (→ { kind: 'intr' }) and annotated memory faults (→ { kind: 'memory_fault' }).
   */
  run(): KvmExit {
    return this.decodeExit(this.runRaw());
  }

  /** KVM_RUN once; returns the exit reason only (fast path for loops). See run() for errors. */
  runRaw(): number {
    const run = this.runPage;
    run.writeUInt32LE(KVM_EXIT.UNKNOWN, RUN.exitReason);
    this.runs++;
    const r = ioctlValRaw(this.fd, KVM_RUN, 0);
    const validRegs = run[RUN.kvmValidRegs] ?? 0;
    if (r < 0) {
      const e = errno();
      const reason = run.readUInt32LE(RUN.exitReason);
      if (e === ERRNO.EINTR || e === ERRNO.EAGAIN) {
        this.syncFresh = validRegs;
        return KVM_EXIT.INTR;
      }
      this.syncFresh = 0;
      if ((e === ERRNO.EFAULT || e === ERRNO.EHWPOISON) && reason === KVM_EXIT.MEMORY_FAULT) return reason;
      throw new SysError('KVM_RUN', e);
    }
    this.syncFresh = validRegs;
    return run.readUInt32LE(RUN.exitReason);
  }

  /** After runRaw() returned KVM_EXIT.IO: whether the exit is an OUT of `size` bytes to `port` (read from kvm_run; no exit object). */
  isPortOut(port: number, size: number): boolean {
    const run = this.runPage;
    return run[EXIT.ioDirection] === KVM_EXIT_IO_OUT && run[EXIT.ioSize] === size && run.readUInt16LE(EXIT.ioPort) === port;
  }

  /** The last port I/O data view handed out (kvm_run's data offset is fixed per vCPU: reused, not one per exit). */
  private ioDataAt = -1;
  private ioDataView: Buffer = Buffer.alloc(0);
  private ioData(off: number, len: number): Buffer {
    if (off !== this.ioDataAt || len !== this.ioDataView.length) {
      this.ioDataView = this.runPage.subarray(off, off + len);
      this.ioDataAt = off;
    }
    return this.ioDataView;
  }

  /** Decodes kvm_run for the given exit reason (as returned by runRaw()). */
  decodeExit(reason: number): KvmExit {
    const run = this.runPage;
    switch (reason) {
      case KVM_EXIT.IO: {
        const size = run[EXIT.ioSize] ?? 0;
        const count = run.readUInt32LE(EXIT.ioCount);
        // kvm_run.io.data_offset (u64) in two halves: no bigint per exit.
        const off = this.runView.getUint32(EXIT.ioDataOffset + 4, true) * 0x1_0000_0000 + this.runView.getUint32(EXIT.ioDataOffset, true);
        const data = this.ioData(off, size * count);
        const value = size === 1 ? (data[0] ?? 0) : size === 2 ? data.readUInt16LE(0) : data.readUInt32LE(0);
        return {
          kind: 'io',
          reason: 2,
          direction: run[EXIT.ioDirection] === KVM_EXIT_IO_OUT ? 'out' : 'in',
          port: run.readUInt16LE(EXIT.ioPort),
          size,
          count,
          data,
          value,
        };
      }
      case KVM_EXIT.MMIO: {
        const len = run.readUInt32LE(EXIT.mmioLen);
        const data = run.subarray(EXIT.mmioData, EXIT.mmioData + Math.min(len, 8));
        const isWrite = run[EXIT.mmioIsWrite] !== 0;
        let value = 0n;
        if (isWrite) for (let i = data.length - 1; i >= 0; i--) value = (value << 8n) | BigInt(data[i] ?? 0);
        return { kind: 'mmio', reason: 6, gpa: run.readBigUInt64LE(EXIT.mmioPhysAddr), len, isWrite, data, value };
      }
      case KVM_EXIT.X86_RDMSR:
        return { kind: 'rdmsr', reason: 29, index: run.readUInt32LE(EXIT.msrIndex), msrReason: run.readUInt32LE(EXIT.msrReason) };
      case KVM_EXIT.X86_WRMSR:
        return {
          kind: 'wrmsr',
          reason: 30,
          index: run.readUInt32LE(EXIT.msrIndex),
          data: run.readBigUInt64LE(EXIT.msrData),
          msrReason: run.readUInt32LE(EXIT.msrReason),
        };
      case KVM_EXIT.HLT:
        return { kind: 'hlt', reason: 5 };
      case KVM_EXIT.SHUTDOWN:
        return { kind: 'shutdown', reason: 8 };
      case KVM_EXIT.FAIL_ENTRY:
        return {
          kind: 'fail_entry',
          reason: 9,
          hardwareEntryFailureReason: run.readBigUInt64LE(EXIT.failEntryReason),
          cpu: run.readUInt32LE(EXIT.failEntryCpu),
        };
      case KVM_EXIT.INTERNAL_ERROR: {
        const n = Math.min(16, run.readUInt32LE(EXIT.internalNdata));
        const data: bigint[] = [];
        for (let i = 0; i < n; i++) data.push(run.readBigUInt64LE(EXIT.internalData + 8 * i));
        return { kind: 'internal_error', reason: 17, suberror: run.readUInt32LE(EXIT.internalSuberror), data };
      }
      case KVM_EXIT.MEMORY_FAULT:
        return {
          kind: 'memory_fault',
          reason: 39,
          flags: run.readBigUInt64LE(EXIT.memFaultFlags),
          gpa: run.readBigUInt64LE(EXIT.memFaultGpa),
          size: run.readBigUInt64LE(EXIT.memFaultSize),
        };
      case KVM_EXIT.SYSTEM_EVENT: {
        const n = Math.min(16, run.readUInt32LE(EXIT.systemEventNdata));
        const data: bigint[] = [];
        for (let i = 0; i < n; i++) data.push(run.readBigUInt64LE(EXIT.systemEventData + 8 * i));
        return { kind: 'system_event', reason: 24, type: run.readUInt32LE(EXIT.systemEventType), data };
      }
      case KVM_EXIT.EXCEPTION:
        return { kind: 'exception', reason: 1, exception: run.readUInt32LE(EXIT.exException), errorCode: run.readUInt32LE(EXIT.exErrorCode) };
      case KVM_EXIT.DEBUG:
        return {
          kind: 'debug',
          reason: 4,
          exception: run.readUInt32LE(EXIT.debugException),
          pc: run.readBigUInt64LE(EXIT.debugPc),
          dr6: run.readBigUInt64LE(EXIT.debugDr6),
          dr7: run.readBigUInt64LE(EXIT.debugDr7),
        };
      case KVM_EXIT.INTR:
        return { kind: 'intr', reason: 10 };
      case KVM_EXIT.UNKNOWN:
        return { kind: 'unknown', reason: 0, hardwareExitReason: run.readBigUInt64LE(EXIT.hwExitReason) };
      default:
        return { kind: 'other', reason };
    }
  }

  /** kvm_run.immediate_exit: while set, KVM_RUN completes pending I/O and returns EINTR without entering the guest. */
  get immediateExit(): boolean {
    return this.runPage[RUN.immediateExit] !== 0;
  }
  set immediateExit(v: boolean) {
    this.runPage[RUN.immediateExit] = v ? 1 : 0;
  }

  // ------------------------------------------------------------------ completions

  /** Supplies the value read by a pending IN (the exit currently in kvm_run must be an IN). */
  completeIoIn(value: number): void {
    const run = this.runPage;
    if (run.readUInt32LE(RUN.exitReason) !== KVM_EXIT.IO) throw new Error('no pending I/O exit');
    const size = run[EXIT.ioSize] ?? 0;
    const off = Number(run.readBigUInt64LE(EXIT.ioDataOffset));
    if (size === 1) run[off] = value & 0xff;
    else if (size === 2) run.writeUInt16LE(value & 0xffff, off);
    else run.writeUInt32LE(value >>> 0, off);
  }

  /** Supplies the data of a pending MMIO read (little-endian, `len` bytes used). */
  completeMmioRead(value: bigint | Uint8Array): void {
    const run = this.runPage;
    if (run.readUInt32LE(RUN.exitReason) !== KVM_EXIT.MMIO) throw new Error('no pending MMIO exit');
    if (typeof value === 'bigint') run.writeBigUInt64LE(BigInt.asUintN(64, value), EXIT.mmioData);
    else {
      run.fill(0, EXIT.mmioData, EXIT.mmioData + 8);
      run.set(value.subarray(0, 8), EXIT.mmioData);
    }
  }

  /**
   * Completes a pending RDMSR/WRMSR exit: `data` is the value RDMSR returns in EDX:EAX; `error`
   * makes the instruction raise #GP instead.
   */
  completeMsr(c: { data?: bigint; error?: boolean }): void {
    const run = this.runPage;
    const r = run.readUInt32LE(RUN.exitReason);
    if (r !== KVM_EXIT.X86_RDMSR && r !== KVM_EXIT.X86_WRMSR) throw new Error('no pending MSR exit');
    run[EXIT.msrError] = c.error ? 1 : 0;
    if (c.data !== undefined) run.writeBigUInt64LE(BigInt.asUintN(64, c.data), EXIT.msrData);
  }

  // ------------------------------------------------------------------ sync regs (KVM_CAP_SYNC_REGS)

  /**
   * Sets kvm_run.kvm_valid_regs: after every KVM_RUN, KVM stores these register classes
   * (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS) into kvm_run.s.regs, and
   * getRegs()/setRegs() (resp. sregs) then work on that copy without ioctls; changes are marked
   * in kvm_dirty_regs and loaded by KVM at the next KVM_RUN.
   */
  setSyncRegs(mask: number): void {
    this.runPage.writeBigUInt64LE(BigInt(mask), RUN.kvmValidRegs);
    this.syncFresh &= mask;
  }

  get syncRegsMask(): number {
    return Number(this.runPage.readBigUInt64LE(RUN.kvmValidRegs));
  }

  get dirtyRegsMask(): number {
    return Number(this.runPage.readBigUInt64LE(RUN.kvmDirtyRegs));
  }

  private markDirty(bits: number): void {
    const d = this.runPage[RUN.kvmDirtyRegs] ?? 0;
    this.runPage[RUN.kvmDirtyRegs] = d | bits;
  }

  /** True when kvm_run.s.regs currently holds this vCPU's general registers (after a run with KVM_SYNC_X86_REGS). */
  get syncedRegsFresh(): boolean {
    return (this.syncFresh & KVM_SYNC_X86_REGS) !== 0;
  }

  /** One general register from kvm_run.s.regs.regs (no ioctl). Only meaningful when syncedRegsFresh. */
  syncedReg(name: RegName): bigint {
    return this.runView.getBigUint64(RUN.syncRegs + REG_OFFSET[name], true);
  }

  /** Writes one general register into kvm_run.s.regs and marks KVM_SYNC_X86_REGS dirty (requires syncedRegsFresh). */
  setSyncedReg(name: RegName, value: bigint): void {
    if (!this.syncedRegsFresh) throw new Error('kvm_run.s.regs is not fresh: enable KVM_SYNC_X86_REGS and run first, or use setRegs()');
    this.runView.setBigUint64(RUN.syncRegs + REG_OFFSET[name], value, true); // ToBigUint64: modulo 2^64
    this.markDirty(KVM_SYNC_X86_REGS);
  }

  // ------------------------------------------------------------------ registers

  /** General registers: from kvm_run.s.regs when fresh, else KVM_GET_REGS. */
  getRegs(): KvmRegs {
    if (this.syncFresh & KVM_SYNC_X86_REGS) return decodeRegs(this.runPage, RUN.syncRegs);
    ioctlPtr(this.fd, KVM_GET_REGS, this.regsBuf, 'KVM_GET_REGS');
    return decodeRegs(this.regsBuf);
  }

  /** Sets all general registers: through kvm_run.s.regs (dirty bit) when fresh, else KVM_SET_REGS. */
  setRegs(regs: KvmRegs): void {
    if (this.syncFresh & KVM_SYNC_X86_REGS) {
      encodeRegs(this.runPage, regs, RUN.syncRegs);
      this.markDirty(KVM_SYNC_X86_REGS);
      return;
    }
    encodeRegs(this.regsBuf, regs);
    ioctlPtr(this.fd, KVM_SET_REGS, this.regsBuf, 'KVM_SET_REGS');
    if (this.syncRegsMask & KVM_SYNC_X86_REGS) {
      // keep the shared copy coherent so a later setSyncedReg() cannot resurrect stale values
      this.regsBuf.copy(this.runPage, RUN.syncRegs, 0, 144);
      this.syncFresh |= KVM_SYNC_X86_REGS;
    }
  }

  /** Read-modify-write of some general registers. */
  updateRegs(partial: Partial<KvmRegs>): void {
    this.setRegs({ ...this.getRegs(), ...partial });
  }

  /** Special registers: from kvm_run.s.regs when KVM_SYNC_X86_SREGS is fresh, else KVM_GET_SREGS. */
  getSregs(): KvmSregs {
    if (this.syncFresh & KVM_SYNC_X86_SREGS) return decodeSregs(this.runPage, RUN.syncSregs);
    ioctlPtr(this.fd, KVM_GET_SREGS, this.sregsBuf, 'KVM_GET_SREGS');
    return decodeSregs(this.sregsBuf);
  }

  setSregs(s: KvmSregs): void {
    if (this.syncFresh & KVM_SYNC_X86_SREGS) {
      encodeSregs(this.runPage, s, RUN.syncSregs);
      this.markDirty(KVM_SYNC_X86_SREGS);
      return;
    }
    encodeSregs(this.sregsBuf, s);
    ioctlPtr(this.fd, KVM_SET_SREGS, this.sregsBuf, 'KVM_SET_SREGS');
    if (this.syncRegsMask & KVM_SYNC_X86_SREGS) {
      this.sregsBuf.copy(this.runPage, RUN.syncSregs, 0, SREGS.size);
      this.syncFresh |= KVM_SYNC_X86_SREGS;
    }
  }

  getFpu(): KvmFpu {
    ioctlPtr(this.fd, KVM_GET_FPU, this.fpuBuf, 'KVM_GET_FPU');
    return decodeFpu(this.fpuBuf);
  }

  setFpu(f: KvmFpu): void {
    encodeFpu(this.fpuBuf, f);
    ioctlPtr(this.fd, KVM_SET_FPU, this.fpuBuf, 'KVM_SET_FPU');
  }

  /**
   * KVM_GET_FPU into `out` (struct kvm_fpu, 416 bytes: x87, XMM0-15, MXCSR), no decoding: the VTL
   * switch compares and copies these bytes between vCPUs (services/kvm-agent/README.md, "Registers").
   */
  getFpuRaw(out: Buffer): Buffer {
    ioctlPtr(this.fd, KVM_GET_FPU, out, 'KVM_GET_FPU');
    return out;
  }

  setFpuRaw(b: Buffer): void {
    ioctlPtr(this.fd, KVM_SET_FPU, b, 'KVM_SET_FPU');
  }

  /** KVM_GET_XSAVE into `out` (struct kvm_xsave, 4096 bytes in XSAVE format: x87, SSE, AVX, ...). */
  getXsaveRaw(out: Buffer): Buffer {
    if (out.length < SIZEOF_KVM_XSAVE) throw new RangeError(`KVM_GET_XSAVE needs ${SIZEOF_KVM_XSAVE} bytes`);
    ioctlPtr(this.fd, KVM_GET_XSAVE, out, 'KVM_GET_XSAVE');
    return out;
  }

  setXsaveRaw(b: Buffer): void {
    if (b.length < SIZEOF_KVM_XSAVE) throw new RangeError(`KVM_SET_XSAVE needs ${SIZEOF_KVM_XSAVE} bytes`);
    ioctlPtr(this.fd, KVM_SET_XSAVE, b, 'KVM_SET_XSAVE');
  }

  /** True when kvm_run.s.regs currently holds this vCPU's special registers (after a run with KVM_SYNC_X86_SREGS). */
  get syncedSregsFresh(): boolean {
    return (this.syncFresh & KVM_SYNC_X86_SREGS) !== 0;
  }

  /** The bytes of kvm_run.s.regs.sregs (struct kvm_sregs, aliasing the run page). Only meaningful when syncedSregsFresh. */
  get syncedSregsBytes(): Buffer {
    this.sregsView ??= this.runPage.subarray(RUN.syncSregs, RUN.syncSregs + SREGS.size);
    return this.sregsView;
  }
  private sregsView: Buffer | undefined;

  /** The bytes of kvm_run.s.regs.regs (struct kvm_regs, 144 bytes, aliasing the run page). Only meaningful when syncedRegsFresh. */
  /** kvm_run.s.regs.regs and .sregs together (contiguous in struct kvm_sync_regs): both compared in one call. */
  get syncedBytes(): Buffer {
    this.syncedView ??= this.runPage.subarray(RUN.syncRegs, RUN.syncSregs + SREGS.size);
    return this.syncedView;
  }
  get syncedRegsBytes(): Buffer {
    this.regsView ??= this.runPage.subarray(RUN.syncRegs, RUN.syncRegs + 144);
    return this.regsView;
  }
  private regsView: Buffer | undefined;
  private syncedView: Buffer | undefined;

  /** The MSR request buffers of getMsrs/setMsrs, by entry count (reused: no allocation per call). */
  private readonly msrBufs = new Map<number, Buffer>();
  private msrBuf(n: number): Buffer {
    let b = this.msrBufs.get(n);
    if (!b) this.msrBufs.set(n, (b = Buffer.alloc(MSRS.entries + n * MSRS.entrySize)));
    else b.fill(0);
    return b;
  }

  /** KVM_GET_MSRS (in-kernel MSR state; filtered MSRs are not consulted). */
  getMsrs(indices: readonly number[]): MsrEntry[] {
    const b = this.msrBuf(indices.length);
    b.writeUInt32LE(indices.length, MSRS.nmsrs);
    indices.forEach((idx, i) => {
      b.writeUInt32LE(idx >>> 0, MSRS.entries + i * MSRS.entrySize + MSRS.eIndex);
    });
    const n = ioctlPtr(this.fd, KVM_GET_MSRS, b, 'KVM_GET_MSRS');
    if (n !== indices.length) throw new Error(`KVM_GET_MSRS: MSR 0x${(indices[n] ?? 0).toString(16)} not readable`);
    return indices.map((index, i) => ({ index, data: b.readBigUInt64LE(MSRS.entries + i * MSRS.entrySize + MSRS.eData) }));
  }

  setMsrs(entries: readonly MsrEntry[]): void {
    const b = this.msrBuf(entries.length);
    b.writeUInt32LE(entries.length, MSRS.nmsrs);
    entries.forEach((e, i) => {
      b.writeUInt32LE(e.index >>> 0, MSRS.entries + i * MSRS.entrySize + MSRS.eIndex);
      b.writeBigUInt64LE(BigInt.asUintN(64, e.data), MSRS.entries + i * MSRS.entrySize + MSRS.eData);
    });
    const n = ioctlPtr(this.fd, KVM_SET_MSRS, b, 'KVM_SET_MSRS');
    if (n !== entries.length) throw new Error(`KVM_SET_MSRS: MSR 0x${(entries[n]?.index ?? 0).toString(16)} not writable`);
  }

  /** KVM_SET_CPUID2 (e.g. with KvmSystem.getSupportedCpuid()); must precede the first KVM_RUN. */
  setCpuid(entries: readonly CpuidEntry[]): void {
    const b = Buffer.alloc(CPUID2.entries + entries.length * CPUID2.entrySize);
    b.writeUInt32LE(entries.length, CPUID2.nent);
    entries.forEach((e, i) => {
      const o = CPUID2.entries + i * CPUID2.entrySize;
      b.writeUInt32LE(e.function >>> 0, o + CPUID2.function);
      b.writeUInt32LE(e.index >>> 0, o + CPUID2.index);
      b.writeUInt32LE(e.flags >>> 0, o + CPUID2.flags);
      b.writeUInt32LE(e.eax >>> 0, o + CPUID2.eax);
      b.writeUInt32LE(e.ebx >>> 0, o + CPUID2.ebx);
      b.writeUInt32LE(e.ecx >>> 0, o + CPUID2.ecx);
      b.writeUInt32LE(e.edx >>> 0, o + CPUID2.edx);
    });
    ioctlPtr(this.fd, KVM_SET_CPUID2, b, 'KVM_SET_CPUID2');
  }

  /** KVM_GET_VCPU_EVENTS as the raw 64-byte struct kvm_vcpu_events. */
  getEventsRaw(): Buffer {
    const b = Buffer.alloc(SIZEOF_KVM_VCPU_EVENTS);
    ioctlPtr(this.fd, KVM_GET_VCPU_EVENTS, b, 'KVM_GET_VCPU_EVENTS');
    return b;
  }

  setEventsRaw(b: Buffer): void {
    if (b.length !== SIZEOF_KVM_VCPU_EVENTS) throw new RangeError('struct kvm_vcpu_events is 64 bytes');
    ioctlPtr(this.fd, KVM_SET_VCPU_EVENTS, b, 'KVM_SET_VCPU_EVENTS');
  }

  /** KVM_ENABLE_CAP on the vCPU. */
  /**
   * Records a KVM_RUN made on another thread (a running guest's VP thread) with this vCPU's kvm_run
   * page: the register classes KVM stored into kvm_run.s.regs are fresh again (as after run()).
   */
  noteRunElsewhere(failed: boolean): void {
    this.runs++;
    this.syncFresh = failed ? 0 : (this.runPage[RUN.kvmValidRegs] ?? 0);
  }

  /** Host address and size of the vCPU mapping (kvm_run first): a vCPU thread maps the same memory. */
  get runMapping(): { address: bigint; size: number } {
    return { address: this.runAddr, size: this.runSize };
  }

  /** KVM_GET_LAPIC: the LAPIC's 1 KiB register page (in-kernel irqchip only). */
  getLapic(): Buffer {
    const b = Buffer.alloc(SIZEOF_KVM_LAPIC_STATE);
    ioctlPtr(this.fd, KVM_GET_LAPIC, b, 'KVM_GET_LAPIC');
    return b;
  }

  /** KVM_SET_LAPIC. */
  setLapic(b: Buffer): void {
    if (b.length !== SIZEOF_KVM_LAPIC_STATE) throw new RangeError('kvm_lapic_state is 1024 bytes');
    ioctlPtr(this.fd, KVM_SET_LAPIC, b, 'KVM_SET_LAPIC');
  }

  /** KVM_GET_MP_STATE (KVM_MP_STATE_RUNNABLE 0, UNINITIALIZED 1, INIT_RECEIVED 2, HALTED 3, SIPI_RECEIVED 4). */
  getMpState(): number {
    const b = Buffer.alloc(4);
    ioctlPtr(this.fd, KVM_GET_MP_STATE, b, 'KVM_GET_MP_STATE');
    return b.readUInt32LE(0);
  }

  /** KVM_SET_MP_STATE. */
  setMpState(state: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(state);
    ioctlPtr(this.fd, KVM_SET_MP_STATE, b, 'KVM_SET_MP_STATE');
  }

  /** KVM_GET_TSC_KHZ: the guest TSC frequency of this vCPU in kHz. */
  tscKhz(): number {
    return ioctlVal(this.fd, KVM_GET_TSC_KHZ, 0, 'KVM_GET_TSC_KHZ');
  }

  enableCap(cap: number, args: readonly bigint[] = [], flags = 0): void {
    enableCapOn(this.fd, cap, args, flags, 'KVM_ENABLE_CAP(vcpu)');
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    sysMunmap(this.runAddr, this.runSize);
    sysClose(this.fd);
    this.vm.forgetVcpu(this);
  }
}
