/**
 * planBoot(): what to write into guest memory and which registers the boot processor (BSP) starts
 * with, for an image from parseGuestImage(). Pure: no KVM, no I/O; the runner applies the plan (guest
 * memory is assumed zero where nothing is written: a fresh memfd is).
 *
 * Guest-physical layout of the boot data (all below 1 MiB, away from where images load; every piece is
 * checked against the image's segments and the caller's reserved ranges):
 *
 *   [0x7000, 0x8000)   boot stack, RSP = 0x8000 (every mode; multiboot leaves ESP undefined, a valid one is harmless)
 *   [0x8000, 0x9000)   GDT (protected32/multiboot: null, 0x08 flat 32-bit code, 0x10 flat data;
 *                      long64: null, 0x08 64-bit code, 0x10 data, 0x18 64-bit TSS, TSS at 0x8080 — kvm/longmode.ts's buildGdt)
 *   multiboot only:
 *   [0x9000, 0x9500)   memory map (mmap_addr; QEMU's ADDR_E820_MAP), up to 53 entries of 24 bytes
 *   [0x9500, 0x9558)   multiboot_info (EBX; QEMU's ADDR_MBI)
 *   0x9580             module list (mods_addr; mods_count 0)
 *   [0x9600, 0x9700)   boot loader name "vsm-service"
 *   [0xa000, 0xb000)   command line (NUL-terminated, at most 4095 bytes)
 *   long64 only:
 *   [0x10000, ...)     identity page tables with 2 MiB pages (PML4, PDPT, one PD per GiB) covering
 *                      max(4 GiB, memory rounded up to 1 GiB), so the LAPIC at 0xfee00000 is mapped;
 *                      (2 + GiB) × 4 KiB, at most up to 0x9f000 (141 GiB of memory)
 *
 * The multiboot memory map (what QEMU + SeaBIOS report, simplified): [0, 0x9fc00) available,
 * [0x9fc00, 0x100000) reserved (EBDA, VGA, BIOS), [0x100000, memoryBytes) available, every caller
 * `reserved` range reserved (split out of the available ones). mem_lower/mem_upper are the contiguous
 * available KiB from 0 and from 1 MiB, as QEMU's multiboot option ROM computes them from that map.
 */
import { buildGdt, buildIdentityPageTables, CR0, CR4, EFER, GDT_LIMIT, SEL } from '../../kvm/longmode';
import { GuestImageError, hex, range } from './errors';
import {
  MULTIBOOT_BOOTLOADER_MAGIC,
  MULTIBOOT_MEMORY_AVAILABLE,
  MULTIBOOT_MEMORY_RESERVED,
  MultibootInfo,
  MultibootInfoFlag,
  MultibootMmapEntry,
} from './multiboot';
import type { EntryMode, GuestImage } from './types';

/** The GPAs of the boot data (see the file comment). */
export const BootLayout = {
  STACK_BASE: 0x7000n,
  STACK_TOP: 0x8000n,
  GDT: 0x8000n,
  GDT_AREA_END: 0x9000n,
  MB_MMAP: 0x9000n,
  MB_MMAP_SIZE: 0x500,
  MB_INFO: 0x9500n,
  MB_MODS: 0x9580n,
  MB_LOADER_NAME: 0x9600n,
  MB_LOADER_NAME_SIZE: 0x100,
  MB_CMDLINE: 0xa000n,
  MB_CMDLINE_SIZE: 0x1000,
  MB_AREA_END: 0xb000n,
  PAGE_TABLES: 0x10000n,
  PAGE_TABLES_LIMIT: 0x9f000n,
} as const;

/** Low memory the multiboot map reports available: [0, EBDA). */
export const LOW_MEMORY_END = 0x9fc00n;
/** Start of "upper memory" (mem_upper counts from here). */
export const HIGH_MEMORY_START = 0x100000n;
/** Highest memory size a multiboot guest may have: RAM must end below the IOAPIC/LAPIC MMIO at 0xfec00000. */
export const MULTIBOOT_MAX_MEMORY = 0xfec00000n;
/** The boot loader name given in multiboot_info.boot_loader_name. */
export const BOOT_LOADER_NAME = 'vsm-service';

export interface SegmentRegister {
  selector: number;
  base: bigint;
  /** Byte-granular limit as the CPU's hidden part holds it (0xffffffff for a flat 4 GiB segment with G=1), like kvm_segment.limit. */
  limit: number;
  type: number;
  s: number;
  dpl: number;
  present: number;
  db: number;
  l: number;
  g: number;
}

export interface BootRegisters {
  mode: EntryMode;
  rip: bigint;
  rsp: bigint;
  rax: bigint;
  rbx: bigint;
  rflags: bigint;
  cr0: bigint;
  cr3: bigint;
  cr4: bigint;
  efer: bigint;
  /** Absent in real16 (the CPU's reset GDTR is fine there). */
  gdt?: { base: bigint; limit: number };
  /** limit 0 outside real mode: an exception before the guest loads its own IDT is a triple fault (KVM_EXIT_SHUTDOWN). */
  idt: { base: bigint; limit: number };
  segments: {
    cs: SegmentRegister;
    ds: SegmentRegister;
    es: SegmentRegister;
    fs: SegmentRegister;
    gs: SegmentRegister;
    ss: SegmentRegister;
    tr?: SegmentRegister;
  };
}

export interface GpaRange {
  gpa: bigint;
  size: bigint;
}

export interface MemoryMapEntry {
  base: bigint;
  length: bigint;
  /** 1 available, 2 reserved (multiboot §3.3). */
  type: number;
}

export interface BootPlan {
  /** Bytes to write, image segments first (`data` of a segment views the image bytes). */
  writes: { gpa: bigint; data: Uint8Array; what: string }[];
  /** Ranges to zero (the .bss part of segments); nothing to do on freshly created (zeroed) memory. */
  zeroFill: { gpa: bigint; size: bigint; what: string }[];
  /** Boot processor state. */
  bsp: BootRegisters;
  /** The GPA ranges the boot data occupy (stack, GDT, multiboot area or page tables). */
  bootData: (GpaRange & { what: string })[];
  /** The multiboot memory map (multiboot images only). */
  memoryMap?: MemoryMapEntry[];
  /** vpCount − 1: the application processors, which start in wait-for-SIPI (KVM's default with the in-kernel irqchip). */
  apCount: number;
}

export interface PlanBootOptions {
  /** Guest RAM is [0, memoryBytes), 4 KiB aligned. */
  memoryBytes: bigint;
  /** multiboot: the command line (the guest's argv; kvm-unit-tests takes argv[0] from its first word). */
  cmdline?: string;
  /** multiboot: when set, the command line is `${kernelName} ${cmdline}` as QEMU builds it from -kernel and -append. */
  kernelName?: string;
  /** Number of virtual processors (1..255). */
  vpCount: number;
  /** GPA ranges the runner uses itself (e.g. an agent region): nothing may be loaded there; multiboot reports them reserved. */
  reserved?: GpaRange[];
}

const GIB = 1n << 30n;
const PAGE = 0x1000n;

const flat32Code = (): SegmentRegister => ({ selector: 0x08, base: 0n, limit: 0xffffffff, type: 0xb, s: 1, dpl: 0, present: 1, db: 1, l: 0, g: 1 });
const flatData = (selector: number): SegmentRegister => ({ selector, base: 0n, limit: 0xffffffff, type: 0x3, s: 1, dpl: 0, present: 1, db: 1, l: 0, g: 1 });
const dataSegments = (make: () => SegmentRegister) => ({ ds: make(), es: make(), fs: make(), gs: make(), ss: make() });

/** The protected-mode GDT (null, 0x08 flat 32-bit code 0x00cf9b000000ffff, 0x10 flat data 0x00cf93000000ffff). */
export function buildGdt32(): Uint8Array {
  const b = new Uint8Array(24);
  const v = new DataView(b.buffer);
  v.setBigUint64(0x08, 0x00cf9b000000ffffn, true);
  v.setBigUint64(0x10, 0x00cf93000000ffffn, true);
  return b;
}

/** The multiboot memory map for a guest of `memoryBytes` with the caller's reserved ranges (see the file comment). */
export function multibootMemoryMap(memoryBytes: bigint, reserved: readonly GpaRange[] = []): MemoryMapEntry[] {
  const holes: GpaRange[] = [{ gpa: LOW_MEMORY_END, size: HIGH_MEMORY_START - LOW_MEMORY_END }, ...reserved];
  const points = new Set<bigint>([0n, memoryBytes]);
  for (const h of holes) {
    points.add(h.gpa);
    points.add(h.gpa + h.size);
  }
  const sorted = [...points].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const out: MemoryMapEntry[] = [];
  for (let k = 0; k + 1 < sorted.length; k++) {
    const a = sorted[k]!;
    const b = sorted[k + 1]!;
    const type = holes.some((h) => a >= h.gpa && b <= h.gpa + h.size) ? MULTIBOOT_MEMORY_RESERVED : b <= memoryBytes ? MULTIBOOT_MEMORY_AVAILABLE : 0;
    if (type === 0) continue;
    const last = out[out.length - 1];
    if (last && last.type === type && last.base + last.length === a) last.length += b - a;
    else out.push({ base: a, length: b - a, type });
  }
  return out;
}

/** KiB of available memory contiguous from `from` (entries below 4 GiB), as the multiboot option ROM computes mem_upper. */
function contiguousKiB(map: readonly MemoryMapEntry[], from: bigint, cap: bigint): number {
  let end = from;
  for (;;) {
    const e = map.find((m) => m.type === MULTIBOOT_MEMORY_AVAILABLE && m.base <= end && end < m.base + m.length);
    if (!e) break;
    end = e.base + e.length;
  }
  if (end > cap) end = cap;
  return Number((end - from) / 1024n);
}

const overlaps = (a: GpaRange, b: GpaRange): boolean => a.gpa < b.gpa + b.size && b.gpa < a.gpa + a.size;

export function planBoot(image: GuestImage, opts: PlanBootOptions): BootPlan {
  const { memoryBytes, vpCount } = opts;
  const reserved = opts.reserved ?? [];
  if (typeof memoryBytes !== 'bigint' || memoryBytes <= 0n || memoryBytes % PAGE !== 0n) {
    throw new GuestImageError(`memoryBytes must be a positive multiple of 4 KiB (bigint); got ${String(memoryBytes)}`, 'memoryBytes');
  }
  if (!Number.isInteger(vpCount) || vpCount < 1 || vpCount > 255) throw new GuestImageError(`vpCount must be an integer 1..255; got ${vpCount}`, 'vpCount');
  reserved.forEach((r, i) => {
    if (typeof r?.gpa !== 'bigint' || typeof r.size !== 'bigint' || r.gpa < 0n || r.size <= 0n) {
      throw new GuestImageError(`reserved[${i}] must be { gpa >= 0n, size > 0n } (bigints)`, 'reserved');
    }
  });
  if (image.segments.length === 0) throw new GuestImageError('the image has no segments', 'segments');

  const memory: GpaRange = { gpa: 0n, size: memoryBytes };
  const inMemory = (r: GpaRange) => r.gpa >= 0n && r.gpa + r.size <= memoryBytes;
  const segs = image.segments.map((s, i) => ({ gpa: s.gpa, size: s.memSize, what: `segment ${i}` }));
  for (const s of segs) {
    if (!inMemory(s)) {
      throw new GuestImageError(
        `${s.what} ${range(s.gpa, s.size)} does not fit in guest memory ${range(0n, memoryBytes)} (memoryBytes ${hex(memoryBytes)})`,
        'memoryBytes',
      );
    }
    reserved.forEach((r, i) => {
      if (overlaps(s, r)) throw new GuestImageError(`${s.what} ${range(s.gpa, s.size)} overlaps reserved[${i}] ${range(r.gpa, r.size)}`, 'reserved');
    });
  }

  const bootData: (GpaRange & { what: string })[] = [];
  const writes: BootPlan['writes'] = [];
  const zeroFill: BootPlan['zeroFill'] = [];
  image.segments.forEach((s, i) => {
    if (s.data.length > 0) writes.push({ gpa: s.gpa, data: s.data, what: `segment ${i}` });
    const bss = s.memSize - BigInt(s.data.length);
    if (bss > 0n) zeroFill.push({ gpa: s.gpa + BigInt(s.data.length), size: bss, what: `segment ${i} (zero-filled part)` });
  });

  const claim = (gpa: bigint, size: bigint, what: string) => {
    const r = { gpa, size, what };
    if (!inMemory(r))
      throw new GuestImageError(
        `boot data (${what}) ${range(gpa, size)} does not fit in guest memory ${range(0n, memory.size)} (memoryBytes ${hex(memoryBytes)})`,
        'memoryBytes',
      );
    for (const s of segs) {
      if (overlaps(r, s))
        throw new GuestImageError(
          `image ${s.what} ${range(s.gpa, s.size)} overlaps the boot data (${what}) at ${range(gpa, size)}; load the image elsewhere`,
          'segments',
        );
    }
    reserved.forEach((x, i) => {
      if (overlaps(r, x))
        throw new GuestImageError(`reserved[${i}] ${range(x.gpa, x.size)} overlaps the boot data (${what}) at ${range(gpa, size)}`, 'reserved');
    });
    bootData.push(r);
  };

  const stack = () => claim(BootLayout.STACK_BASE, BootLayout.STACK_TOP - BootLayout.STACK_BASE, 'boot stack');
  const base = { rip: image.entry, rsp: BootLayout.STACK_TOP, rax: 0n, rbx: 0n, rflags: 0x2n, cr3: 0n, cr4: 0n, efer: 0n };

  switch (image.entryMode) {
    case 'real16': {
      stack();
      const csBase = image.entry & 0xf0000n;
      const seg16 = (selector: number, type: number): SegmentRegister => ({
        selector,
        base: 0n,
        limit: 0xffff,
        type,
        s: 1,
        dpl: 0,
        present: 1,
        db: 0,
        l: 0,
        g: 0,
      });
      const cs = { ...seg16(Number(csBase >> 4n), 0xb), base: csBase };
      const bsp: BootRegisters = {
        mode: 'real16',
        ...base,
        rip: image.entry - csBase,
        cr0: CR0.ET,
        idt: { base: 0n, limit: 0x3ff },
        segments: { cs, ...dataSegments(() => seg16(0, 0x3)) },
      };
      return { writes, zeroFill, bsp, bootData, apCount: vpCount - 1 };
    }
    case 'protected32': {
      stack();
      claim(BootLayout.GDT, BootLayout.GDT_AREA_END - BootLayout.GDT, 'GDT');
      const gdt = buildGdt32();
      writes.push({ gpa: BootLayout.GDT, data: gdt, what: 'GDT (protected mode)' });
      const bsp: BootRegisters = {
        mode: 'protected32',
        ...base,
        cr0: CR0.PE | CR0.ET,
        gdt: { base: BootLayout.GDT, limit: gdt.length - 1 },
        idt: { base: 0n, limit: 0 },
        segments: { cs: flat32Code(), ...dataSegments(() => flatData(0x10)) },
      };
      if (image.format !== 'multiboot') return { writes, zeroFill, bsp, bootData, apCount: vpCount - 1 };
      return planMultiboot(opts, reserved, memoryBytes, claim, writes, zeroFill, bsp, bootData);
    }
    case 'long64': {
      stack();
      claim(BootLayout.GDT, BootLayout.GDT_AREA_END - BootLayout.GDT, 'GDT + TSS');
      const gib = Math.max(4, Number((memoryBytes + GIB - 1n) / GIB));
      const ptSize = BigInt(2 + gib) * PAGE;
      if (BootLayout.PAGE_TABLES + ptSize > BootLayout.PAGE_TABLES_LIMIT) {
        throw new GuestImageError(
          `long64: an identity map of ${gib} GiB needs ${hex(ptSize)} bytes of page tables at ${hex(BootLayout.PAGE_TABLES)}, past ${hex(BootLayout.PAGE_TABLES_LIMIT)} (memoryBytes ${hex(memoryBytes)}; at most 141 GiB)`,
          'memoryBytes',
        );
      }
      claim(BootLayout.PAGE_TABLES, ptSize, `identity page tables (${gib} GiB, 2 MiB pages)`);
      const pt = buildIdentityPageTables(BootLayout.PAGE_TABLES, gib);
      writes.push({ gpa: BootLayout.GDT, data: buildGdt(BootLayout.GDT), what: 'GDT + TSS (long mode)' });
      writes.push({ gpa: pt.cr3, data: pt.bytes, what: 'identity page tables' });
      const code64: SegmentRegister = { selector: SEL.CODE64, base: 0n, limit: 0xffffffff, type: 0xb, s: 1, dpl: 0, present: 1, db: 0, l: 1, g: 1 };
      const tr: SegmentRegister = { selector: SEL.TSS, base: BootLayout.GDT + 0x80n, limit: 0x67, type: 0xb, s: 0, dpl: 0, present: 1, db: 0, l: 0, g: 0 };
      const bsp: BootRegisters = {
        mode: 'long64',
        ...base,
        cr0: CR0.PE | CR0.MP | CR0.ET | CR0.NE | CR0.WP | CR0.PG,
        cr3: pt.cr3,
        cr4: CR4.PAE | CR4.OSFXSR | CR4.OSXMMEXCPT,
        efer: EFER.LME | EFER.LMA,
        gdt: { base: BootLayout.GDT, limit: GDT_LIMIT },
        idt: { base: 0n, limit: 0 },
        segments: { cs: code64, ...dataSegments(() => flatData(SEL.DATA)), tr },
      };
      return { writes, zeroFill, bsp, bootData, apCount: vpCount - 1 };
    }
    default:
      throw new GuestImageError(`unknown entry mode '${String(image.entryMode)}'`, 'entryMode');
  }
}

function planMultiboot(
  opts: PlanBootOptions,
  reserved: readonly GpaRange[],
  memoryBytes: bigint,
  claim: (gpa: bigint, size: bigint, what: string) => void,
  writes: BootPlan['writes'],
  zeroFill: BootPlan['zeroFill'],
  bsp: BootRegisters,
  bootData: BootPlan['bootData'],
): BootPlan {
  if (memoryBytes < HIGH_MEMORY_START || memoryBytes > MULTIBOOT_MAX_MEMORY) {
    throw new GuestImageError(
      `multiboot: memoryBytes ${hex(memoryBytes)} must be between 1 MiB and ${hex(MULTIBOOT_MAX_MEMORY)} (RAM is one range below the IOAPIC/LAPIC MMIO; a split map above 4 GiB is not supported)`,
      'memoryBytes',
    );
  }
  const L = BootLayout;
  claim(L.MB_MMAP, L.MB_AREA_END - L.MB_MMAP, 'multiboot information, memory map and command line');

  const text = opts.kernelName !== undefined ? `${opts.kernelName} ${opts.cmdline ?? ''}` : (opts.cmdline ?? '');
  const cmdline = new TextEncoder().encode(text);
  if (cmdline.includes(0)) throw new GuestImageError('multiboot: the command line contains a NUL character', 'cmdline');
  if (cmdline.length + 1 > L.MB_CMDLINE_SIZE) {
    throw new GuestImageError(
      `multiboot: the command line is ${cmdline.length} bytes (UTF-8); at most ${L.MB_CMDLINE_SIZE - 1} fit at ${hex(L.MB_CMDLINE)}`,
      'cmdline',
    );
  }

  const map = multibootMemoryMap(memoryBytes, reserved);
  const mmapBytes = map.length * MultibootMmapEntry.size;
  if (mmapBytes > L.MB_MMAP_SIZE) {
    throw new GuestImageError(
      `multiboot: the memory map has ${map.length} entries (${mmapBytes} bytes); at most ${Math.floor(L.MB_MMAP_SIZE / MultibootMmapEntry.size)} fit: too many reserved ranges`,
      'reserved',
    );
  }
  const mmap = new Uint8Array(mmapBytes);
  map.forEach((e, k) => {
    MultibootMmapEntry.write(mmap, k * MultibootMmapEntry.size, { size: MultibootMmapEntry.size - 4, base_addr: e.base, length: e.length, type: e.type });
  });

  const mbi = new Uint8Array(MultibootInfo.size);
  MultibootInfo.write(mbi, 0, {
    flags: MultibootInfoFlag.MEMORY | MultibootInfoFlag.CMDLINE | MultibootInfoFlag.MODS | MultibootInfoFlag.MEM_MAP | MultibootInfoFlag.BOOT_LOADER_NAME,
    mem_lower: contiguousKiB(map, 0n, 640n * 1024n),
    mem_upper: contiguousKiB(map, HIGH_MEMORY_START, 1n << 32n),
    cmdline: Number(L.MB_CMDLINE),
    mods_count: 0,
    mods_addr: Number(L.MB_MODS),
    mmap_length: mmapBytes,
    mmap_addr: Number(L.MB_MMAP),
    boot_loader_name: Number(L.MB_LOADER_NAME),
  });
  const name = new TextEncoder().encode(`${BOOT_LOADER_NAME}\0`);
  const cmd = new Uint8Array(cmdline.length + 1);
  cmd.set(cmdline);

  writes.push({ gpa: L.MB_MMAP, data: mmap, what: 'multiboot memory map' });
  writes.push({ gpa: L.MB_INFO, data: mbi, what: 'multiboot_info' });
  writes.push({ gpa: L.MB_LOADER_NAME, data: name, what: 'multiboot boot loader name' });
  writes.push({ gpa: L.MB_CMDLINE, data: cmd, what: 'multiboot command line' });
  // Multiboot §3.2: EAX = 0x2BADB002, EBX = the multiboot_info GPA, 32-bit protected mode with paging off,
  // flat CS/DS/ES/FS/GS/SS (offset 0, limit 0xffffffff), EFLAGS.VM and IF clear, A20 enabled (KVM has no A20 gate).
  const mb: BootRegisters = { ...bsp, rax: BigInt(MULTIBOOT_BOOTLOADER_MAGIC), rbx: L.MB_INFO };
  return { writes, zeroFill, bsp: mb, bootData, memoryMap: map, apCount: opts.vpCount - 1 };
}
