/**
 * 64-bit long-mode set-up for a vCPU (identity-mapped page tables + a flat GDT with a TSS,
 * placed in guest memory at caller-chosen GPAs) and a tiny x86-64 assembler for the few
 * instructions the agent's stubs and the tests need. Every encoding is documented with its
 * mnemonic (Intel SDM vol. 2 / AMD APM vol. 3).
 */
import type { KvmSegment, KvmSregs } from './layout';

/** Anything that can write guest-physical memory (KvmVm implements it through its memslots). */
export interface GpaWriter {
  writeGpa(gpa: bigint, data: Uint8Array): void;
}

/** The vCPU operations longmode needs (KvmVcpu implements them). */
export interface LongModeVcpu {
  getSregs(): KvmSregs;
  setSregs(s: KvmSregs): void;
  updateRegs(partial: { rip?: bigint; rsp?: bigint; rflags?: bigint }): void;
}

// ---------------------------------------------------------------------------------------------
// Architectural bits
// ---------------------------------------------------------------------------------------------
export const CR0 = { PE: 1n << 0n, MP: 1n << 1n, ET: 1n << 4n, NE: 1n << 5n, WP: 1n << 16n, AM: 1n << 18n, PG: 1n << 31n } as const;
export const CR4 = { PSE: 1n << 4n, PAE: 1n << 5n, PGE: 1n << 7n, OSFXSR: 1n << 9n, OSXMMEXCPT: 1n << 10n } as const;
export const EFER = { SCE: 1n << 0n, LME: 1n << 8n, LMA: 1n << 10n, NXE: 1n << 11n } as const;
/** Page-table entry bits: present, writable, accessed, dirty, page size (2 MiB / 1 GiB leaf). */
export const PTE = { P: 1n << 0n, RW: 1n << 1n, US: 1n << 2n, A: 1n << 5n, D: 1n << 6n, PS: 1n << 7n } as const;

/** Selectors of the GDT built by buildGdt(). */
export const SEL = { NULL: 0x00, CODE64: 0x08, DATA: 0x10, TSS: 0x18 } as const;

const GIB = 1n << 30n;
const MIB2 = 1n << 21n;

// ---------------------------------------------------------------------------------------------
// Page tables
// ---------------------------------------------------------------------------------------------

export interface PageTableImage {
  /** GPA of the PML4 (the value for CR3). */
  cr3: bigint;
  /** Bytes to place at `cr3`: PML4, PDPT, then one PD per GiB. */
  bytes: Buffer;
}

/**
 * Identity map of [0, gib GiB) with 2 MiB pages (PS=1 in the PDs; 2 MiB pages need no CPUID
 * feature, unlike 1 GiB ones). Layout at `base` (4 KiB aligned): PML4 @+0, PDPT @+0x1000,
 * PD for GiB i @+0x2000+i×0x1000 — (2 + gib) × 4 KiB in total. Accessed/dirty bits are preset
 * so the (shadow) MMU never has to write the tables.
 */
export function buildIdentityPageTables(base: bigint, gib = 4): PageTableImage {
  if (base % 4096n !== 0n) throw new RangeError('page table base must be 4 KiB aligned');
  if (!Number.isInteger(gib) || gib < 1 || gib > 512) throw new RangeError('gib must be 1..512');
  const bytes = Buffer.alloc((2 + gib) * 4096);
  const table = PTE.P | PTE.RW | PTE.A;
  bytes.writeBigUInt64LE((base + 0x1000n) | table, 0); // PML4[0] → PDPT
  for (let g = 0; g < gib; g++) {
    const pd = base + 0x2000n + BigInt(g) * 0x1000n;
    bytes.writeBigUInt64LE(pd | table, 0x1000 + g * 8); // PDPT[g] → PD g
    for (let i = 0; i < 512; i++) {
      const phys = BigInt(g) * GIB + BigInt(i) * MIB2;
      bytes.writeBigUInt64LE(phys | PTE.P | PTE.RW | PTE.A | PTE.D | PTE.PS, 0x2000 + g * 0x1000 + i * 8);
    }
  }
  return { cr3: base, bytes };
}

// ---------------------------------------------------------------------------------------------
// GDT + TSS
// ---------------------------------------------------------------------------------------------

/** Size of the region buildGdt() fills: GDT (5 × 8 bytes) at +0, 64-bit TSS (0x68 bytes) at +0x80. */
export const GDT_REGION_SIZE = 0x80 + 0x68;
export const GDT_LIMIT = 5 * 8 - 1;
const TSS_OFFSET = 0x80;
const TSS_LIMIT = 0x67;

/**
 * Flat long-mode GDT at `base`:
 *   0x00 null
 *   0x08 64-bit code, DPL 0: 0x00AF9B000000FFFF (P, S, type 0xB exec/read/accessed, L=1, G=1)
 *   0x10 data, DPL 0:        0x00CF93000000FFFF (P, S, type 0x3 read/write/accessed, D/B=1, G=1)
 *   0x18 64-bit TSS (16-byte system descriptor, type 0xB busy) → TSS at base+0x80, limit 0x67
 */
export function buildGdt(base: bigint): Buffer {
  const b = Buffer.alloc(GDT_REGION_SIZE);
  b.writeBigUInt64LE(0x00af9b000000ffffn, 0x08);
  b.writeBigUInt64LE(0x00cf93000000ffffn, 0x10);
  const tss = base + BigInt(TSS_OFFSET);
  const lo =
    BigInt(TSS_LIMIT & 0xffff) |
    ((tss & 0xffffffn) << 16n) |
    (0x8bn << 40n) | // P=1, DPL=0, S=0, type=0xB (64-bit TSS, busy)
    (BigInt((TSS_LIMIT >> 16) & 0xf) << 48n) |
    (((tss >> 24n) & 0xffn) << 56n);
  b.writeBigUInt64LE(lo, 0x18);
  b.writeBigUInt64LE((tss >> 32n) & 0xffffffffn, 0x20);
  // the TSS itself stays zero (no RSPn/ISTs: no privilege changes happen in these guests);
  // I/O map base = sizeof(TSS) → no I/O permission bitmap.
  b.writeUInt16LE(0x68, TSS_OFFSET + 0x66);
  return b;
}

function seg(selector: number, type: number, code: boolean): KvmSegment {
  return {
    base: 0n,
    limit: 0xffffffff,
    selector,
    type,
    present: 1,
    dpl: 0,
    db: code ? 0 : 1,
    s: 1,
    l: code ? 1 : 0,
    g: 1,
    avl: 0,
    unusable: 0,
  };
}

export interface LongModeOptions {
  /** Where the identity-map page tables go ((2 + identityMapGiB) × 4 KiB, 4 KiB aligned). */
  pageTableGpa: bigint;
  /** Where the GDT + TSS go (GDT_REGION_SIZE bytes, 8-byte aligned). */
  gdtGpa: bigint;
  /** GiB identity-mapped from GPA 0 (default 4). */
  identityMapGiB?: number;
  /** Initial RIP / RSP (default: leave as is). */
  rip?: bigint;
  rsp?: bigint;
  /** IDT base/limit (default: none, limit 0 — any exception becomes a triple fault → KVM_EXIT_SHUTDOWN). */
  idt?: { base: bigint; limit: number };
  /** Set EFER.NXE (only if the guest CPUID has NX, see KvmVcpu.setCpuid). */
  nxe?: boolean;
  /** Skip writing the tables (another vCPU/VM sharing the memory already wrote them). */
  tablesAlreadyWritten?: boolean;
}

/** The special-register values for flat 64-bit mode with the given CR3/GDT (pure; no I/O). */
export function longModeSregs(current: KvmSregs, cr3: bigint, gdtGpa: bigint, o: Pick<LongModeOptions, 'idt' | 'nxe'> = {}): KvmSregs {
  const data = seg(SEL.DATA, 0x3, false);
  return {
    ...current,
    cs: seg(SEL.CODE64, 0xb, true),
    ds: data,
    es: { ...data },
    fs: { ...data },
    gs: { ...data },
    ss: { ...data },
    tr: { base: gdtGpa + BigInt(TSS_OFFSET), limit: TSS_LIMIT, selector: SEL.TSS, type: 0xb, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 },
    ldt: { base: 0n, limit: 0xffff, selector: 0, type: 0x2, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 1 },
    gdt: { base: gdtGpa, limit: GDT_LIMIT },
    idt: o.idt ?? { base: 0n, limit: 0 },
    cr0: CR0.PE | CR0.MP | CR0.ET | CR0.NE | CR0.WP | CR0.PG,
    cr3,
    cr4: CR4.PAE | CR4.OSFXSR | CR4.OSXMMEXCPT,
    efer: EFER.LME | EFER.LMA | (o.nxe ? EFER.NXE : 0n),
  };
}

/**
 * Writes the identity page tables and the GDT/TSS into guest memory (through `mem`, e.g. the
 * KvmVm) and puts the vCPU in 64-bit mode (CPL 0, CS=0x08, data segments 0x10, TR=0x18),
 * RFLAGS = 0x2 (interrupts off). Returns CR3.
 */
export function setupLongMode(vcpu: LongModeVcpu, mem: GpaWriter, o: LongModeOptions): bigint {
  const pt = buildIdentityPageTables(o.pageTableGpa, o.identityMapGiB ?? 4);
  if (o.gdtGpa % 8n !== 0n) throw new RangeError('GDT must be 8-byte aligned');
  if (!o.tablesAlreadyWritten) {
    mem.writeGpa(o.pageTableGpa, pt.bytes);
    mem.writeGpa(o.gdtGpa, buildGdt(o.gdtGpa));
  }
  vcpu.setSregs(longModeSregs(vcpu.getSregs(), pt.cr3, o.gdtGpa, o));
  const regs: { rip?: bigint; rsp?: bigint; rflags: bigint } = { rflags: 0x2n };
  if (o.rip !== undefined) regs.rip = o.rip;
  if (o.rsp !== undefined) regs.rsp = o.rsp;
  vcpu.updateRegs(regs);
  return pt.cr3;
}

// ---------------------------------------------------------------------------------------------
// Tiny assembler
// ---------------------------------------------------------------------------------------------

/** 64-bit general registers by encoding number. */
export const R = {
  rax: 0,
  rcx: 1,
  rdx: 2,
  rbx: 3,
  rsp: 4,
  rbp: 5,
  rsi: 6,
  rdi: 7,
  r8: 8,
  r9: 9,
  r10: 10,
  r11: 11,
  r12: 12,
  r13: 13,
  r14: 14,
  r15: 15,
} as const;
export type Reg = keyof typeof R;

/**
 * Fixed byte sequences (each with its mnemonic), for stubs that are easier to write as bytes.
 */
export const OP = {
  /** hlt */
  HLT: [0xf4],
  /** wrmsr — writes EDX:EAX to MSR[ECX] */
  WRMSR: [0x0f, 0x30],
  /** rdmsr — EDX:EAX ← MSR[ECX] */
  RDMSR: [0x0f, 0x32],
  /** ret (near) */
  RET: [0xc3],
  /** nop */
  NOP: [0x90],
  /** out dx, al */
  OUT_DX_AL: [0xee],
  /** out dx, eax */
  OUT_DX_EAX: [0xef],
  /** in al, dx */
  IN_AL_DX: [0xec],
  /** in eax, dx */
  IN_EAX_DX: [0xed],
  /** cpuid */
  CPUID: [0x0f, 0xa2],
  /** vmcall (Intel; KVM on AMD patches/emulates it) — listed for reference, unused here */
  VMCALL: [0x0f, 0x01, 0xc1],
  /** vmmcall (AMD) — listed for reference, unused here */
  VMMCALL: [0x0f, 0x01, 0xd9],
} as const;

function u32le(v: number): number[] {
  const x = v >>> 0;
  return [x & 0xff, (x >>> 8) & 0xff, (x >>> 16) & 0xff, (x >>> 24) & 0xff];
}
function u64le(v: bigint): number[] {
  const out: number[] = [];
  let x = BigInt.asUintN(64, v);
  for (let i = 0; i < 8; i++) {
    out.push(Number(x & 0xffn));
    x >>= 8n;
  }
  return out;
}

type Fixup = { at: number; label: string; kind: 'rel8' | 'rel32' };

/**
 * Minimal x86-64 assembler: emits bytes for a handful of instructions, with labels for
 * jumps/calls (rel8/rel32, resolved by bytes()). Memory operands are [base] with a base
 * register other than rsp/rbp/r12/r13 (those need SIB/disp encodings, not supported).
 */
export class Asm {
  private readonly out: number[] = [];
  private readonly labels = new Map<string, number>();
  private readonly fixups: Fixup[] = [];

  /** Current offset (bytes emitted so far). */
  get length(): number {
    return this.out.length;
  }

  /** Raw bytes. */
  raw(bytes: readonly number[]): this {
    for (const b of bytes) this.out.push(b & 0xff);
    return this;
  }

  label(name: string): this {
    if (this.labels.has(name)) throw new Error(`duplicate label ${name}`);
    this.labels.set(name, this.out.length);
    return this;
  }

  /** Offset of a label (after it is defined). */
  offsetOf(name: string): number {
    const o = this.labels.get(name);
    if (o === undefined) throw new Error(`undefined label ${name}`);
    return o;
  }

  /** hlt — F4 */
  hlt(): this {
    return this.raw(OP.HLT);
  }
  /** wrmsr — 0F 30 */
  wrmsr(): this {
    return this.raw(OP.WRMSR);
  }
  /** rdmsr — 0F 32 */
  rdmsr(): this {
    return this.raw(OP.RDMSR);
  }
  /** ret — C3 */
  ret(): this {
    return this.raw(OP.RET);
  }
  /** nop — 90 */
  nop(): this {
    return this.raw(OP.NOP);
  }
  /** cpuid — 0F A2 */
  cpuid(): this {
    return this.raw(OP.CPUID);
  }

  /** out imm8, al — E6 ib */
  outImm8Al(port: number): this {
    return this.raw([0xe6, port & 0xff]);
  }
  /** out imm8, eax — E7 ib */
  outImm8Eax(port: number): this {
    return this.raw([0xe7, port & 0xff]);
  }
  /** out dx, al — EE */
  outDxAl(): this {
    return this.raw(OP.OUT_DX_AL);
  }
  /** out dx, eax — EF */
  outDxEax(): this {
    return this.raw(OP.OUT_DX_EAX);
  }
  /** in al, imm8 — E4 ib */
  inAlImm8(port: number): this {
    return this.raw([0xe4, port & 0xff]);
  }
  /** in eax, imm8 — E5 ib */
  inEaxImm8(port: number): this {
    return this.raw([0xe5, port & 0xff]);
  }
  /** in al, dx — EC */
  inAlDx(): this {
    return this.raw(OP.IN_AL_DX);
  }
  /** in eax, dx — ED */
  inEaxDx(): this {
    return this.raw(OP.IN_EAX_DX);
  }

  /** mov r32, imm32 — [REX.B] B8+rd id (zero-extends into the 64-bit register) */
  movR32Imm32(reg: Reg, imm: number): this {
    const r = R[reg];
    if (r >= 8) this.raw([0x41]);
    return this.raw([0xb8 + (r & 7), ...u32le(imm)]);
  }

  /** mov r64, imm64 — REX.W[+B] B8+rd io */
  movR64Imm64(reg: Reg, imm: bigint): this {
    const r = R[reg];
    return this.raw([0x48 | (r >= 8 ? 1 : 0), 0xb8 + (r & 7), ...u64le(imm)]);
  }

  /** mov dst, src (64-bit) — REX.W[+R][+B] 89 /r (ModRM mod=11 reg=src rm=dst) */
  movRR(dst: Reg, src: Reg): this {
    const d = R[dst];
    const s = R[src];
    return this.raw([0x48 | (s >= 8 ? 4 : 0) | (d >= 8 ? 1 : 0), 0x89, 0xc0 | ((s & 7) << 3) | (d & 7)]);
  }

  /** ModRM (+ disp8) of [base] or [base + disp]: mod 00, or mod 01 with a signed 8-bit displacement. */
  private memModrm(base: Reg, reg: number, disp: number): number[] {
    const b = R[base];
    if ((b & 7) === 4) throw new Error(`[${base}] needs SIB encoding (unsupported)`);
    if (!Number.isInteger(disp) || disp < -128 || disp > 127) throw new Error(`displacement ${disp} is not a signed byte`);
    if (disp === 0 && (b & 7) !== 5) return [((reg & 7) << 3) | (b & 7)];
    return [0x40 | ((reg & 7) << 3) | (b & 7), disp & 0xff]; // [rbp]/[r13] have no mod-00 form: disp8 0
  }

  private rex(w: boolean, reg: number, base: Reg): number[] {
    const b = R[base];
    const rex = 0x40 | (w ? 8 : 0) | (reg >= 8 ? 4 : 0) | (b >= 8 ? 1 : 0);
    return rex === 0x40 ? [] : [rex];
  }

  /**
   * mov [base + disp], src — store of `size` bytes (disp: signed byte, mod 01 when non-zero):
   *   1: [REX] 88 /r   (mov byte [base], r8 — src must be al/cl/dl/bl or r8b..r15b here)
   *   2: 66 [REX] 89 /r
   *   4: [REX] 89 /r
   *   8: REX.W 89 /r
   */
  store(base: Reg, src: Reg, size: 1 | 2 | 4 | 8 = 8, disp = 0): this {
    const s = R[src];
    if (size === 1 && s >= 4 && s < 8) throw new Error('byte store from spl/bpl/sil/dil not supported');
    const prefix = size === 2 ? [0x66] : [];
    const op = size === 1 ? 0x88 : 0x89;
    return this.raw([...prefix, ...this.rex(size === 8, s, base), op, ...this.memModrm(base, s, disp)]);
  }

  /**
   * mov dst, [base + disp] — load of `size` bytes (disp: signed byte, mod 01 when non-zero):
   *   1: [REX] 0F B6 /r  (movzx r32, byte [base])
   *   2: [REX] 0F B7 /r  (movzx r32, word [base])
   *   4: [REX] 8B /r     (mov r32, [base]; zero-extends)
   *   8: REX.W 8B /r
   */
  load(dst: Reg, base: Reg, size: 1 | 2 | 4 | 8 = 8, disp = 0): this {
    const d = R[dst];
    const op = size === 1 ? [0x0f, 0xb6] : size === 2 ? [0x0f, 0xb7] : [0x8b];
    return this.raw([...this.rex(size === 8, d, base), ...op, ...this.memModrm(base, d, disp)]);
  }

  /** inc r64 — REX.W[+B] FF /0 */
  incR64(reg: Reg): this {
    const r = R[reg];
    return this.raw([0x48 | (r >= 8 ? 1 : 0), 0xff, 0xc0 | (r & 7)]);
  }

  /** dec r32 — [REX.B] FF /1 (sets ZF for jnz loops) */
  decR32(reg: Reg): this {
    const r = R[reg];
    return this.raw([...(r >= 8 ? [0x41] : []), 0xff, 0xc8 | (r & 7)]);
  }

  /** shl r64, imm8 — REX.W[+B] C1 /4 ib */
  shlR64Imm8(reg: Reg, imm: number): this {
    const r = R[reg];
    return this.raw([0x48 | (r >= 8 ? 1 : 0), 0xc1, 0xe0 | (r & 7), imm & 0xff]);
  }

  /** or dst, src (64-bit) — REX.W[+R][+B] 09 /r */
  orRR(dst: Reg, src: Reg): this {
    const d = R[dst];
    const s = R[src];
    return this.raw([0x48 | (s >= 8 ? 4 : 0) | (d >= 8 ? 1 : 0), 0x09, 0xc0 | ((s & 7) << 3) | (d & 7)]);
  }

  /** add dst, src (64-bit) — REX.W[+R][+B] 01 /r */
  addRR(dst: Reg, src: Reg): this {
    const d = R[dst];
    const s = R[src];
    return this.raw([0x48 | (s >= 8 ? 4 : 0) | (d >= 8 ? 1 : 0), 0x01, 0xc0 | ((s & 7) << 3) | (d & 7)]);
  }

  /** xor r32, r32 (zeroes the 64-bit register) — [REX] 31 /r */
  zero(reg: Reg): this {
    const r = R[reg];
    return this.raw([...(r >= 8 ? [0x45] : []), 0x31, 0xc0 | ((r & 7) << 3) | (r & 7)]);
  }

  /** push r64 — [REX.B] 50+rd */
  push(reg: Reg): this {
    const r = R[reg];
    return this.raw([...(r >= 8 ? [0x41] : []), 0x50 + (r & 7)]);
  }

  /** pop r64 — [REX.B] 58+rd */
  pop(reg: Reg): this {
    const r = R[reg];
    return this.raw([...(r >= 8 ? [0x41] : []), 0x58 + (r & 7)]);
  }

  /** jmp rel8 (EB cb) to a label within ±127 bytes, else jmp rel32 (E9 cd) for forward/unknown labels. */
  jmp(label: string): this {
    return this.branch([0xeb], [0xe9], label);
  }

  /** jnz rel8 (75 cb), or jnz rel32 (0F 85 cd). */
  jnz(label: string): this {
    return this.branch([0x75], [0x0f, 0x85], label);
  }

  /** jz rel8 (74 cb), or jz rel32 (0F 84 cd). */
  jz(label: string): this {
    return this.branch([0x74], [0x0f, 0x84], label);
  }

  /** call rel32 — E8 cd */
  call(label: string): this {
    this.raw([0xe8]);
    this.fixups.push({ at: this.out.length, label, kind: 'rel32' });
    return this.raw([0, 0, 0, 0]);
  }

  /** call r64 (absolute, through a register) — [REX.B] FF /2 */
  callReg(reg: Reg): this {
    const r = R[reg];
    return this.raw([...(r >= 8 ? [0x41] : []), 0xff, 0xd0 | (r & 7)]);
  }

  /** Absolute call: mov rax, imm64 (48 B8 io); call rax (FF D0). Clobbers RAX. */
  callAbs(target: bigint, scratch: Reg = 'rax'): this {
    return this.movR64Imm64(scratch, target).callReg(scratch);
  }

  /** jmp r64 — [REX.B] FF /4 */
  jmpReg(reg: Reg): this {
    const r = R[reg];
    return this.raw([...(r >= 8 ? [0x41] : []), 0xff, 0xe0 | (r & 7)]);
  }

  private branch(short: number[], long: number[], label: string): this {
    const target = this.labels.get(label);
    if (target !== undefined) {
      const rel8 = target - (this.out.length + short.length + 1);
      if (rel8 >= -128 && rel8 <= 127) return this.raw([...short, rel8 & 0xff]);
      const rel32 = target - (this.out.length + long.length + 4);
      return this.raw([...long, ...u32le(rel32)]);
    }
    this.raw(long);
    this.fixups.push({ at: this.out.length, label, kind: 'rel32' });
    return this.raw([0, 0, 0, 0]);
  }

  /** The machine code, with label references resolved. */
  bytes(): Buffer {
    const b = Buffer.from(this.out);
    for (const f of this.fixups) {
      const t = this.labels.get(f.label);
      if (t === undefined) throw new Error(`undefined label ${f.label}`);
      b.writeInt32LE(t - (f.at + 4), f.at);
    }
    return b;
  }
}
