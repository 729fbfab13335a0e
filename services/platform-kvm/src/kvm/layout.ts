/**
 * x86-64 layouts of the KVM UAPI structures used by this layer, with encode/decode helpers that
 * work on a Buffer at a base offset (so the same code serves ioctl argument buffers and the
 * sync-regs area inside the mmap'ed kvm_run page).
 *
 * Offsets were taken from include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h and
 * checked against offsetof() of the installed headers; test/kvm-layout.test.ts pins them.
 */

/**
 * A DataView over a Buffer's bytes, made once per Buffer (the ioctl buffers and the kvm_run page are
 * long-lived): 64-bit fields are read and written through it, a write ≈23 ns against ≈66 for
 * Buffer.writeBigUInt64LE, which does its BigInt arithmetic in JS (the register moves of every exit).
 */
const dataViews = new WeakMap<Buffer, DataView>();
export function bufferDataView(buf: Buffer): DataView {
  let v = dataViews.get(buf);
  if (v === undefined) {
    v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    dataViews.set(buf, v);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// struct kvm_run (mmap'ed from the vCPU fd at offset 0)
// ---------------------------------------------------------------------------------------------
export const RUN = {
  /** __u8 request_interrupt_window (in) */
  requestInterruptWindow: 0,
  /** __u8 immediate_exit (in): KVM_RUN returns -EINTR at once (after completing pending I/O). */
  immediateExit: 1,
  /** __u32 exit_reason (out) */
  exitReason: 8,
  /** __u8 ready_for_interrupt_injection (out) */
  readyForInterruptInjection: 12,
  /** __u8 if_flag (out) */
  ifFlag: 13,
  /** __u16 flags (out) */
  flags: 14,
  /** __u64 cr8 (in/out) */
  cr8: 16,
  /** __u64 apic_base (in/out) */
  apicBase: 24,
  /** start of the 256-byte exit union */
  exit: 32,
  /** __u64 kvm_valid_regs: register classes KVM stores into s.regs on every exit */
  kvmValidRegs: 288,
  /** __u64 kvm_dirty_regs: register classes KVM loads from s.regs before entering */
  kvmDirtyRegs: 296,
  /** struct kvm_sync_regs s.regs: { kvm_regs regs; kvm_sregs sregs; kvm_vcpu_events events; } */
  syncRegs: 304,
  syncSregs: 304 + 144,
  syncEvents: 304 + 144 + 312,
  /** sizeof(struct kvm_run) on x86-64 */
  size: 2352,
} as const;

/** Offsets of the exit-union members, relative to the start of kvm_run. */
export const EXIT = {
  /** KVM_EXIT_UNKNOWN: __u64 hardware_exit_reason */
  hwExitReason: 32,
  /** KVM_EXIT_FAIL_ENTRY: __u64 hardware_entry_failure_reason; __u32 cpu */
  failEntryReason: 32,
  failEntryCpu: 40,
  /** KVM_EXIT_EXCEPTION: __u32 exception; __u32 error_code */
  exException: 32,
  exErrorCode: 36,
  /** KVM_EXIT_IO: __u8 direction; __u8 size; __u16 port; __u32 count; __u64 data_offset */
  ioDirection: 32,
  ioSize: 33,
  ioPort: 34,
  ioCount: 36,
  ioDataOffset: 40,
  /** KVM_EXIT_DEBUG: kvm_debug_exit_arch { __u32 exception; __u32 pad; __u64 pc, dr6, dr7 } */
  debugException: 32,
  debugPc: 40,
  debugDr6: 48,
  debugDr7: 56,
  /** KVM_EXIT_MMIO: __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write */
  mmioPhysAddr: 32,
  mmioData: 40,
  mmioLen: 48,
  mmioIsWrite: 52,
  /** KVM_EXIT_INTERNAL_ERROR: __u32 suberror; __u32 ndata; __u64 data[16] */
  internalSuberror: 32,
  internalNdata: 36,
  internalData: 40,
  /** KVM_EXIT_SYSTEM_EVENT: __u32 type; __u32 ndata; __u64 data[16] */
  systemEventType: 32,
  systemEventNdata: 36,
  systemEventData: 40,
  /** KVM_EXIT_X86_RDMSR/WRMSR: __u8 error (in); __u8 pad[7]; __u32 reason; __u32 index; __u64 data */
  msrError: 32,
  msrReason: 40,
  msrIndex: 44,
  msrData: 48,
  /** KVM_EXIT_MEMORY_FAULT: __u64 flags; __u64 gpa; __u64 size */
  memFaultFlags: 32,
  memFaultGpa: 40,
  memFaultSize: 48,
} as const;

// ---------------------------------------------------------------------------------------------
// struct kvm_regs (144 bytes): 18 × __u64
// ---------------------------------------------------------------------------------------------
export const REG_NAMES = [
  'rax',
  'rbx',
  'rcx',
  'rdx',
  'rsi',
  'rdi',
  'rsp',
  'rbp',
  'r8',
  'r9',
  'r10',
  'r11',
  'r12',
  'r13',
  'r14',
  'r15',
  'rip',
  'rflags',
] as const;
export type RegName = (typeof REG_NAMES)[number];
export type KvmRegs = Record<RegName, bigint>;
/** struct kvm_regs with every register 0 and RFLAGS = 0x2 (its reserved bit 1), plus `o`: the register file a vCPU starts a stub or a boot with. */
export function zeroRegs(o: Partial<KvmRegs> = {}): KvmRegs {
  const r = Object.fromEntries(REG_NAMES.map((n) => [n, 0n])) as KvmRegs;
  r.rflags = 0x2n;
  return Object.assign(r, o);
}
/** Byte offset of each general register inside struct kvm_regs. */
export const REG_OFFSET: Readonly<Record<RegName, number>> = Object.fromEntries(REG_NAMES.map((n, i) => [n, i * 8])) as Record<RegName, number>;

export function decodeRegs(buf: Buffer, base = 0): KvmRegs {
  const v = bufferDataView(buf);
  return {
    rax: v.getBigUint64(base + 0, true),
    rbx: v.getBigUint64(base + 8, true),
    rcx: v.getBigUint64(base + 16, true),
    rdx: v.getBigUint64(base + 24, true),
    rsi: v.getBigUint64(base + 32, true),
    rdi: v.getBigUint64(base + 40, true),
    rsp: v.getBigUint64(base + 48, true),
    rbp: v.getBigUint64(base + 56, true),
    r8: v.getBigUint64(base + 64, true),
    r9: v.getBigUint64(base + 72, true),
    r10: v.getBigUint64(base + 80, true),
    r11: v.getBigUint64(base + 88, true),
    r12: v.getBigUint64(base + 96, true),
    r13: v.getBigUint64(base + 104, true),
    r14: v.getBigUint64(base + 112, true),
    r15: v.getBigUint64(base + 120, true),
    rip: v.getBigUint64(base + 128, true),
    rflags: v.getBigUint64(base + 136, true),
  };
}

export function encodeRegs(buf: Buffer, regs: Partial<KvmRegs>, base = 0): void {
  const view = bufferDataView(buf);
  for (const n of REG_NAMES) {
    const v = regs[n];
    if (v !== undefined) view.setBigUint64(base + REG_OFFSET[n], BigInt.asUintN(64, v), true);
  }
}

// ---------------------------------------------------------------------------------------------
// struct kvm_segment (24 bytes), struct kvm_dtable (16 bytes), struct kvm_sregs (312 bytes)
//   kvm_segment: base u64 @0, limit u32 @8, selector u16 @12, type @14, present @15, dpl @16,
//                db @17, s @18, l @19, g @20, avl @21, unusable @22, padding @23
//   kvm_dtable:  base u64 @0, limit u16 @8, padding[3] u16
//   kvm_sregs:   cs @0, ds @24, es @48, fs @72, gs @96, ss @120, tr @144, ldt @168,
//                gdt @192, idt @208, cr0 @224, cr2 @232, cr3 @240, cr4 @248, cr8 @256,
//                efer @264, apic_base @272, interrupt_bitmap[4] u64 @280
// ---------------------------------------------------------------------------------------------
export interface KvmSegment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}
export interface KvmDtable {
  base: bigint;
  limit: number;
}
export interface KvmSregs {
  cs: KvmSegment;
  ds: KvmSegment;
  es: KvmSegment;
  fs: KvmSegment;
  gs: KvmSegment;
  ss: KvmSegment;
  tr: KvmSegment;
  ldt: KvmSegment;
  gdt: KvmDtable;
  idt: KvmDtable;
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  cr8: bigint;
  efer: bigint;
  apicBase: bigint;
  /** 256 bits of pending external interrupts (4 × u64) */
  interruptBitmap: [bigint, bigint, bigint, bigint];
}
export const SEGMENT_NAMES = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
export type SegmentName = (typeof SEGMENT_NAMES)[number];
export const SREGS = {
  cs: 0,
  ds: 24,
  es: 48,
  fs: 72,
  gs: 96,
  ss: 120,
  tr: 144,
  ldt: 168,
  gdt: 192,
  idt: 208,
  cr0: 224,
  cr2: 232,
  cr3: 240,
  cr4: 248,
  cr8: 256,
  efer: 264,
  apicBase: 272,
  interruptBitmap: 280,
  size: 312,
} as const;

export function decodeSegment(buf: Buffer, o: number, view: DataView = bufferDataView(buf)): KvmSegment {
  return {
    base: view.getBigUint64(o, true),
    limit: buf.readUInt32LE(o + 8),
    selector: buf.readUInt16LE(o + 12),
    type: buf[o + 14] ?? 0,
    present: buf[o + 15] ?? 0,
    dpl: buf[o + 16] ?? 0,
    db: buf[o + 17] ?? 0,
    s: buf[o + 18] ?? 0,
    l: buf[o + 19] ?? 0,
    g: buf[o + 20] ?? 0,
    avl: buf[o + 21] ?? 0,
    unusable: buf[o + 22] ?? 0,
  };
}

export function encodeSegment(buf: Buffer, o: number, s: KvmSegment, view: DataView = bufferDataView(buf)): void {
  view.setBigUint64(o, BigInt.asUintN(64, s.base), true);
  buf.writeUInt32LE(s.limit >>> 0, o + 8);
  buf.writeUInt16LE(s.selector & 0xffff, o + 12);
  buf[o + 14] = s.type;
  buf[o + 15] = s.present;
  buf[o + 16] = s.dpl;
  buf[o + 17] = s.db;
  buf[o + 18] = s.s;
  buf[o + 19] = s.l;
  buf[o + 20] = s.g;
  buf[o + 21] = s.avl;
  buf[o + 22] = s.unusable;
  buf[o + 23] = 0;
}

function decodeDtable(buf: Buffer, o: number, view: DataView): KvmDtable {
  return { base: view.getBigUint64(o, true), limit: buf.readUInt16LE(o + 8) };
}
function encodeDtable(buf: Buffer, o: number, d: KvmDtable, view: DataView): void {
  view.setBigUint64(o, BigInt.asUintN(64, d.base), true);
  buf.writeUInt16LE(d.limit & 0xffff, o + 8);
  buf.fill(0, o + 10, o + 16);
}

export function decodeSregs(buf: Buffer, base = 0): KvmSregs {
  const b = base;
  const v = bufferDataView(buf);
  return {
    cs: decodeSegment(buf, b + SREGS.cs, v),
    ds: decodeSegment(buf, b + SREGS.ds, v),
    es: decodeSegment(buf, b + SREGS.es, v),
    fs: decodeSegment(buf, b + SREGS.fs, v),
    gs: decodeSegment(buf, b + SREGS.gs, v),
    ss: decodeSegment(buf, b + SREGS.ss, v),
    tr: decodeSegment(buf, b + SREGS.tr, v),
    ldt: decodeSegment(buf, b + SREGS.ldt, v),
    gdt: decodeDtable(buf, b + SREGS.gdt, v),
    idt: decodeDtable(buf, b + SREGS.idt, v),
    cr0: v.getBigUint64(b + SREGS.cr0, true),
    cr2: v.getBigUint64(b + SREGS.cr2, true),
    cr3: v.getBigUint64(b + SREGS.cr3, true),
    cr4: v.getBigUint64(b + SREGS.cr4, true),
    cr8: v.getBigUint64(b + SREGS.cr8, true),
    efer: v.getBigUint64(b + SREGS.efer, true),
    apicBase: v.getBigUint64(b + SREGS.apicBase, true),
    interruptBitmap: [
      v.getBigUint64(b + SREGS.interruptBitmap, true),
      v.getBigUint64(b + SREGS.interruptBitmap + 8, true),
      v.getBigUint64(b + SREGS.interruptBitmap + 16, true),
      v.getBigUint64(b + SREGS.interruptBitmap + 24, true),
    ],
  };
}

export function encodeSregs(buf: Buffer, s: KvmSregs, base = 0): void {
  const b = base;
  const v = bufferDataView(buf);
  for (const n of SEGMENT_NAMES) encodeSegment(buf, b + SREGS[n], s[n], v);
  encodeDtable(buf, b + SREGS.gdt, s.gdt, v);
  encodeDtable(buf, b + SREGS.idt, s.idt, v);
  v.setBigUint64(b + SREGS.cr0, BigInt.asUintN(64, s.cr0), true);
  v.setBigUint64(b + SREGS.cr2, BigInt.asUintN(64, s.cr2), true);
  v.setBigUint64(b + SREGS.cr3, BigInt.asUintN(64, s.cr3), true);
  v.setBigUint64(b + SREGS.cr4, BigInt.asUintN(64, s.cr4), true);
  v.setBigUint64(b + SREGS.cr8, BigInt.asUintN(64, s.cr8), true);
  v.setBigUint64(b + SREGS.efer, BigInt.asUintN(64, s.efer), true);
  v.setBigUint64(b + SREGS.apicBase, BigInt.asUintN(64, s.apicBase), true);
  for (let i = 0; i < 4; i++) {
    v.setBigUint64(b + SREGS.interruptBitmap + 8 * i, BigInt.asUintN(64, s.interruptBitmap[i] ?? 0n), true);
  }
}

// ---------------------------------------------------------------------------------------------
// struct kvm_fpu (416 bytes)
//   fpr[8][16] @0, fcw u16 @128, fsw u16 @130, ftwx u8 @132, pad1 @133, last_opcode u16 @134,
//   last_ip u64 @136, last_dp u64 @144, xmm[16][16] @152, mxcsr u32 @408, pad2 u32 @412
// ---------------------------------------------------------------------------------------------
export interface KvmFpu {
  /** 8 × 16-byte x87/MMX registers (FXSAVE layout) */
  fpr: Buffer[];
  fcw: number;
  fsw: number;
  /** abridged tag word (FXSAVE format) */
  ftwx: number;
  lastOpcode: number;
  lastIp: bigint;
  lastDp: bigint;
  /** 16 × 16-byte XMM registers */
  xmm: Buffer[];
  mxcsr: number;
}
export const FPU = { fpr: 0, fcw: 128, fsw: 130, ftwx: 132, lastOpcode: 134, lastIp: 136, lastDp: 144, xmm: 152, mxcsr: 408, size: 416 } as const;

export function decodeFpu(buf: Buffer): KvmFpu {
  const fpr: Buffer[] = [];
  for (let i = 0; i < 8; i++) fpr.push(Buffer.from(buf.subarray(FPU.fpr + 16 * i, FPU.fpr + 16 * i + 16)));
  const xmm: Buffer[] = [];
  for (let i = 0; i < 16; i++) xmm.push(Buffer.from(buf.subarray(FPU.xmm + 16 * i, FPU.xmm + 16 * i + 16)));
  return {
    fpr,
    fcw: buf.readUInt16LE(FPU.fcw),
    fsw: buf.readUInt16LE(FPU.fsw),
    ftwx: buf[FPU.ftwx] ?? 0,
    lastOpcode: buf.readUInt16LE(FPU.lastOpcode),
    lastIp: buf.readBigUInt64LE(FPU.lastIp),
    lastDp: buf.readBigUInt64LE(FPU.lastDp),
    xmm,
    mxcsr: buf.readUInt32LE(FPU.mxcsr),
  };
}

export function encodeFpu(buf: Buffer, f: KvmFpu): void {
  buf.fill(0, 0, FPU.size);
  for (let i = 0; i < 8; i++) f.fpr[i]?.copy(buf, FPU.fpr + 16 * i, 0, 16);
  buf.writeUInt16LE(f.fcw, FPU.fcw);
  buf.writeUInt16LE(f.fsw, FPU.fsw);
  buf[FPU.ftwx] = f.ftwx;
  buf.writeUInt16LE(f.lastOpcode, FPU.lastOpcode);
  buf.writeBigUInt64LE(BigInt.asUintN(64, f.lastIp), FPU.lastIp);
  buf.writeBigUInt64LE(BigInt.asUintN(64, f.lastDp), FPU.lastDp);
  for (let i = 0; i < 16; i++) f.xmm[i]?.copy(buf, FPU.xmm + 16 * i, 0, 16);
  buf.writeUInt32LE(f.mxcsr >>> 0, FPU.mxcsr);
}

// ---------------------------------------------------------------------------------------------
// Other ioctl argument layouts
// ---------------------------------------------------------------------------------------------
/** struct kvm_userspace_memory_region (32): slot u32 @0, flags u32 @4, guest_phys_addr @8, memory_size @16, userspace_addr @24 */
export const MEMREGION = { slot: 0, flags: 4, gpa: 8, size: 16, uaddr: 24, sizeof: 32 } as const;
/** struct kvm_enable_cap (104): cap u32 @0, flags u32 @4, args[4] u64 @8, pad[64] @40 */
export const ENABLE_CAP = { cap: 0, flags: 4, args: 8, sizeof: 104 } as const;
/**
 * struct kvm_msr_filter (392): flags u32 @0, ranges[16] @8;
 * struct kvm_msr_filter_range (24): flags u32 @0, nmsrs u32 @4, base u32 @8, bitmap ptr @16
 */
export const MSR_FILTER = {
  flags: 0,
  ranges: 8,
  rangeSize: 24,
  rFlags: 0,
  rNmsrs: 4,
  rBase: 8,
  rBitmap: 16,
  maxRanges: 16,
  maxBitmapBytes: 0x600,
  sizeof: 392,
} as const;
/** struct kvm_msrs: nmsrs u32 @0, pad @4, entries @8; struct kvm_msr_entry (16): index u32 @0, reserved @4, data u64 @8 */
export const MSRS = { nmsrs: 0, entries: 8, entrySize: 16, eIndex: 0, eData: 8 } as const;
/**
 * struct kvm_cpuid2: nent u32 @0, padding @4, entries @8;
 * struct kvm_cpuid_entry2 (40): function @0, index @4, flags @8, eax @12, ebx @16, ecx @20, edx @24, padding[3] @28
 */
export const CPUID2 = { nent: 0, entries: 8, entrySize: 40, function: 0, index: 4, flags: 8, eax: 12, ebx: 16, ecx: 20, edx: 24 } as const;
