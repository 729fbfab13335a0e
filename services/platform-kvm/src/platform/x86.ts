/**
 * Just enough x86 to describe a faulting instruction of a whole-guest run in an intercept message:
 * the guest's linear → physical translation (its own page tables, read from guest RAM), an
 * instruction length decoder for the one-byte and 0F maps (legacy and REX prefixes; VEX/EVEX and
 * 16-bit addressing are not decoded), and the effective address of a ModRM memory operand.
 *
 * Why the agent needs it: KVM reports an MMIO *read* before the instruction executes (RIP at it), but
 * it completes an MMIO *write* before exiting (RIP already past it, registers written back). The
 * intercept message must carry the faulting instruction's RIP, so for writes the agent finds the
 * instruction that ends at RIP: the candidate start whose decoding is a plain store (no register
 * side effects) of the right size, ending exactly at RIP, whose memory operand translates to the
 * faulting GPA (instructionBeforeRip). For those stores the registers after equal the registers
 * before, so the intercepted state is exactly the state before the instruction.
 */
import type { KvmRegs, KvmSregs } from '../kvm';

// ---- paging ------------------------------------------------------------------------------------

const CR0_PG = 1n << 31n;
const CR4_PAE = 1n << 5n;
const CR4_PSE = 1n << 4n;
const CR4_LA57 = 1n << 12n;
const EFER_LMA = 1n << 10n;
const P = 1n;
const PS = 1n << 7n;
const ADDR_MASK = 0x000f_ffff_ffff_f000n;

/**
 * Reads guest-physical memory (undefined outside RAM). `u64`, when given, reads one aligned 64-bit
 * entry without a Buffer (the page walks use it).
 */
export type PhysReader = ((gpa: bigint, length: number) => Buffer | undefined) & { u64?: (gpa: bigint) => bigint | undefined };

/**
 * Guest-physical address of linear address `la` under the guest's paging (CR0/CR3/CR4/EFER), or
 * undefined when a level is not present or outside RAM. Permissions are not checked: the CPU
 * already executed the access.
 */
export function translate(sregs: Pick<KvmSregs, 'cr0' | 'cr3' | 'cr4' | 'efer'>, la: bigint, read: PhysReader): bigint | undefined {
  if ((sregs.cr0 & CR0_PG) === 0n) return la & 0xffff_ffffn;
  const entry = (table: bigint, index: bigint, size: 4 | 8): bigint | undefined => {
    if (size === 8 && read.u64) return read.u64(table + index * 8n);
    const b = read(table + index * BigInt(size), size);
    if (!b) return undefined;
    return size === 8 ? b.readBigUInt64LE(0) : BigInt(b.readUInt32LE(0));
  };
  if ((sregs.efer & EFER_LMA) !== 0n) {
    const levels = (sregs.cr4 & CR4_LA57) !== 0n ? 5 : 4;
    let table = sregs.cr3 & ADDR_MASK;
    for (let level = levels; level >= 1; level--) {
      const shift = BigInt(12 + 9 * (level - 1));
      const e = entry(table, (la >> shift) & 0x1ffn, 8);
      if (e === undefined || (e & P) === 0n) return undefined;
      if ((level === 2 || level === 3) && (e & PS) !== 0n) {
        const pageMask = (1n << shift) - 1n;
        return (e & ADDR_MASK & ~pageMask) | (la & pageMask);
      }
      table = e & ADDR_MASK;
    }
    return table | (la & 0xfffn);
  }
  if ((sregs.cr4 & CR4_PAE) !== 0n) {
    const pdpte = entry(sregs.cr3 & 0xffff_ffe0n, (la >> 30n) & 3n, 8);
    if (pdpte === undefined || (pdpte & P) === 0n) return undefined;
    const pde = entry(pdpte & ADDR_MASK, (la >> 21n) & 0x1ffn, 8);
    if (pde === undefined || (pde & P) === 0n) return undefined;
    if ((pde & PS) !== 0n) return (pde & ADDR_MASK & ~0x1f_ffffn) | (la & 0x1f_ffffn);
    const pte = entry(pde & ADDR_MASK, (la >> 12n) & 0x1ffn, 8);
    if (pte === undefined || (pte & P) === 0n) return undefined;
    return (pte & ADDR_MASK) | (la & 0xfffn);
  }
  const pde = entry(sregs.cr3 & 0xffff_f000n, (la >> 22n) & 0x3ffn, 4);
  if (pde === undefined || (pde & P) === 0n) return undefined;
  if ((pde & PS) !== 0n && (sregs.cr4 & CR4_PSE) !== 0n) return (pde & 0xffc0_0000n) | (la & 0x3f_ffffn);
  const pte = entry(pde & 0xffff_f000n, (la >> 12n) & 0x3ffn, 4);
  if (pte === undefined || (pte & P) === 0n) return undefined;
  return (pte & 0xffff_f000n) | (la & 0xfffn);
}

/** A linear → physical translation (translate() with its paging state bound). */
export type Translator = (la: bigint) => bigint | undefined;

/**
 * translate() for one decoding: each linear page is walked once (the faulting RIP's page, the page
 * before it, the store's target), then served from the memo. Only for the duration of one exit's
 * work: the guest can change its page tables whenever it runs.
 */
export function pageTranslator(sregs: Pick<KvmSregs, 'cr0' | 'cr3' | 'cr4' | 'efer'>, read: PhysReader): Translator {
  const pages = new Map<bigint, bigint | undefined>();
  return (la) => {
    const page = la >> 12n;
    let base = pages.get(page);
    if (base === undefined && !pages.has(page)) {
      const gpa = translate(sregs, page << 12n, read);
      base = gpa === undefined ? undefined : gpa & ~0xfffn;
      pages.set(page, base);
    }
    return base === undefined ? undefined : base | (la & 0xfffn);
  };
}

/** Up to `length` bytes at linear address `la` (page by page), fewer when a page is not mapped. */
export function readLinear(
  sregs: Pick<KvmSregs, 'cr0' | 'cr3' | 'cr4' | 'efer'>,
  la: bigint,
  length: number,
  read: PhysReader,
  tr: Translator = (at) => translate(sregs, at, read),
): Buffer {
  const parts: Buffer[] = [];
  let done = 0;
  while (done < length) {
    const at = la + BigInt(done);
    const n = Math.min(length - done, 4096 - Number(at & 0xfffn));
    const gpa = tr(at);
    const b = gpa === undefined ? undefined : read(gpa, n);
    if (!b) break;
    parts.push(b);
    done += n;
  }
  return Buffer.concat(parts);
}

// ---- decoding ----------------------------------------------------------------------------------

export type CpuMode = 64 | 32 | 16;

/** The mode the code segment selects: 64-bit (EFER.LMA and CS.L), 32-bit (CS.D), else 16-bit. */
export function cpuMode(sregs: Pick<KvmSregs, 'cs' | 'efer' | 'cr0'>): CpuMode {
  if ((sregs.efer & EFER_LMA) !== 0n && sregs.cs.l) return 64;
  if ((sregs.cr0 & 1n) !== 0n && sregs.cs.db) return 32;
  return 16;
}

export interface MemOperand {
  /** Base register number (0-15, RAX..R15), 'rip', or none. */
  base?: number | 'rip';
  index?: number;
  scale: number;
  disp: bigint;
  addressSize: 64 | 32;
  /** Segment override prefix (0x26 ES, 0x2E CS, 0x36 SS, 0x3E DS, 0x64 FS, 0x65 GS). */
  segment?: number;
}

export interface DecodedInsn {
  length: number;
  /** Opcode: one byte, or 0x0Fxx for the two-byte map. */
  opcode: number;
  mem?: MemOperand;
  /** A store with no other architectural effect (MOV forms): its register state after = before. */
  pureStore: boolean;
  /** Bytes the store writes (pure stores only). */
  storeSize: number;
}

// One-byte opcodes with a ModRM byte.
const MODRM1 = new Set<number>([
  ...[0x00, 0x08, 0x10, 0x18, 0x20, 0x28, 0x30, 0x38].flatMap((b) => [b, b + 1, b + 2, b + 3]),
  0x63,
  0x69,
  0x6b,
  ...Array.from({ length: 16 }, (_, i) => 0x80 + i),
  0xc0,
  0xc1,
  0xc6,
  0xc7,
  0xd0,
  0xd1,
  0xd2,
  0xd3,
  ...Array.from({ length: 8 }, (_, i) => 0xd8 + i),
  0xf6,
  0xf7,
  0xfe,
  0xff,
]);
// Two-byte (0F xx) opcodes WITHOUT a ModRM byte.
const NO_MODRM2 = new Set<number>([
  0x05,
  0x06,
  0x07,
  0x08,
  0x09,
  0x0b,
  0x0e,
  0x30,
  0x31,
  0x32,
  0x33,
  0x34,
  0x35,
  0x37,
  0x77,
  ...Array.from({ length: 16 }, (_, i) => 0x80 + i),
  0xa0,
  0xa1,
  0xa2,
  0xa8,
  0xa9,
  0xaa,
  ...Array.from({ length: 8 }, (_, i) => 0xc8 + i),
]);
const IMM8_2 = new Set<number>([0x70, 0x71, 0x72, 0x73, 0xa4, 0xac, 0xba, 0xc2, 0xc4, 0xc5, 0xc6]);

/**
 * Decodes one instruction at the start of `b` (at most 15 bytes are looked at). Returns undefined for
 * what this decoder does not handle (VEX/EVEX, 16-bit mode or addressing, truncated bytes).
 */
export function decodeInsn(b: Buffer, mode: CpuMode): DecodedInsn | undefined {
  if (mode === 16) return undefined;
  let i = 0;
  let opsize16 = false;
  let addr32 = mode === 32;
  let rep: number | undefined;
  let segment: number | undefined;
  const at = (k: number) => (k < b.length && k < 15 ? b[k] : undefined);
  for (;;) {
    const x = at(i);
    if (x === undefined) return undefined;
    if (x === 0x66) opsize16 = true;
    else if (x === 0x67) {
      if (mode === 32) return undefined; // 16-bit addressing
      addr32 = true;
    } else if (x === 0xf2 || x === 0xf3) rep = x;
    else if (x === 0xf0) {
      /* lock */
    } else if (x === 0x26 || x === 0x2e || x === 0x36 || x === 0x3e || x === 0x64 || x === 0x65) segment = x;
    else break;
    i++;
  }
  let rex = 0;
  if (mode === 64 && (at(i)! & 0xf0) === 0x40) rex = at(i++)!;
  const w = (rex & 8) !== 0;
  let op = at(i++);
  if (op === undefined) return undefined;
  let hasModrm: boolean;
  let imm = 0;
  const iz = opsize16 ? 2 : 4; // imm16/32
  if (op === 0x0f) {
    const op2 = at(i++);
    if (op2 === undefined) return undefined;
    if (op2 === 0x38 || op2 === 0x3a) {
      if (at(i++) === undefined) return undefined;
      hasModrm = true;
      imm = op2 === 0x3a ? 1 : 0;
    } else {
      hasModrm = !NO_MODRM2.has(op2);
      if (IMM8_2.has(op2) || op2 === 0x0f) imm = 1;
      if (op2 >= 0x80 && op2 <= 0x8f) imm = 4; // jcc rel32
    }
    op = 0x0f00 | op2;
  } else {
    if ((op === 0xc4 || op === 0xc5 || op === 0x62) && mode === 64) return undefined; // VEX / EVEX
    hasModrm = MODRM1.has(op) || ((op === 0xc4 || op === 0xc5 || op === 0x62) && mode === 32);
    if ([0x04, 0x0c, 0x14, 0x1c, 0x24, 0x2c, 0x34, 0x3c, 0x6a, 0xa8, 0xcd, 0xd4, 0xd5, 0xeb, 0x6b, 0x80, 0x82, 0x83, 0xc0, 0xc1, 0xc6].includes(op)) imm = 1;
    else if (op >= 0x70 && op <= 0x7f) imm = 1;
    else if (op >= 0xe0 && op <= 0xe7) imm = 1;
    else if (op >= 0xb0 && op <= 0xb7) imm = 1;
    else if ([0x05, 0x0d, 0x15, 0x1d, 0x25, 0x2d, 0x35, 0x3d, 0x68, 0xa9, 0x69, 0x81, 0xc7].includes(op)) imm = iz;
    else if (op === 0xe8 || op === 0xe9) imm = 4;
    else if (op >= 0xb8 && op <= 0xbf) imm = w ? 8 : iz;
    else if (op === 0xc2 || op === 0xca) imm = 2;
    else if (op === 0xc8) imm = 3;
    else if (op >= 0xa0 && op <= 0xa3)
      imm = mode === 64 && !addr32 ? 8 : 4; // moffs
    else if ((op === 0x9a || op === 0xea) && mode === 32) imm = iz + 2;
  }
  let mem: MemOperand | undefined;
  let reg = 0;
  if (hasModrm) {
    const modrm = at(i++);
    if (modrm === undefined) return undefined;
    const mod = modrm >> 6;
    reg = (modrm >> 3) & 7;
    const rm = modrm & 7;
    // F6 /0,/1 and F7 /0,/1 (TEST) carry an immediate.
    if (op === 0xf6 && reg <= 1) imm = 1;
    if (op === 0xf7 && reg <= 1) imm = iz;
    if (mod !== 3) {
      const m: MemOperand = { scale: 1, disp: 0n, addressSize: addr32 ? 32 : 64, segment };
      let dispSize = mod === 1 ? 1 : mod === 2 ? 4 : 0;
      if (rm === 4) {
        const sib = at(i++);
        if (sib === undefined) return undefined;
        const base = sib & 7;
        const index = ((sib >> 3) & 7) | ((rex & 2) << 2);
        if (index !== 4) {
          m.index = index;
          m.scale = 1 << (sib >> 6);
        }
        if (base === 5 && mod === 0) dispSize = 4;
        else m.base = base | ((rex & 1) << 3);
      } else if (rm === 5 && mod === 0) {
        dispSize = 4;
        if (mode === 64) m.base = 'rip';
      } else m.base = rm | ((rex & 1) << 3);
      if (i + dispSize > b.length) return undefined;
      if (dispSize === 1) m.disp = BigInt(b.readInt8(i));
      if (dispSize === 4) m.disp = BigInt(b.readInt32LE(i));
      i += dispSize;
      mem = m;
    }
  } else if (op >= 0xa0 && op <= 0xa3) {
    if (i + imm > b.length) return undefined;
    const disp = imm === 8 ? b.readBigUInt64LE(i) : BigInt(b.readUInt32LE(i));
    mem = { scale: 1, disp, addressSize: addr32 ? 32 : 64, segment };
  }
  i += imm;
  if (i > 15 || i > b.length) return undefined;
  const size = w ? 8 : opsize16 ? 2 : 4;
  let storeSize = 0;
  if (mem) {
    switch (op) {
      case 0x88:
      case 0xa2:
        storeSize = 1;
        break;
      case 0x89:
      case 0xa3:
        storeSize = size;
        break;
      case 0xc6:
        storeSize = reg === 0 ? 1 : 0;
        break;
      case 0xc7:
        storeSize = reg === 0 ? size : 0;
        break;
      case 0x8c:
        storeSize = 2;
        break;
      case 0x0f11:
        storeSize = rep === 0xf3 ? 4 : rep === 0xf2 ? 8 : 16;
        break; // movups/movupd/movss/movsd store
      case 0x0f13:
      case 0x0f17:
      case 0x0fd6:
        storeSize = 8;
        break; // movlps/movhps/movq
      case 0x0f29:
      case 0x0f2b:
      case 0x0fe7:
        storeSize = opsize16 || op === 0x0f29 || op === 0x0f2b ? 16 : 8;
        break;
      case 0x0f7f:
        storeSize = opsize16 || rep === 0xf3 ? 16 : 8;
        break; // movdqa/movdqu, MMX movq
      case 0x0f7e:
        storeSize = rep === 0xf3 ? 0 : w ? 8 : 4;
        break; // movd/movq r/m, (x)mm (F3: a load)
      case 0x0fc3:
        storeSize = w ? 8 : 4;
        break; // movnti
      default:
        if (op >= 0x0f90 && op <= 0x0f9f) storeSize = 1; // setcc
    }
  }
  return { length: i, opcode: op, mem, pureStore: storeSize > 0, storeSize };
}

/** Linear address of a memory operand (segment bases: FS/GS in 64-bit mode, any in 32-bit mode). */
export function linearAddress(m: MemOperand, regs: KvmRegs, sregs: KvmSregs, nextRip: bigint, mode: CpuMode): bigint {
  const gpr = [
    regs.rax,
    regs.rcx,
    regs.rdx,
    regs.rbx,
    regs.rsp,
    regs.rbp,
    regs.rsi,
    regs.rdi,
    regs.r8,
    regs.r9,
    regs.r10,
    regs.r11,
    regs.r12,
    regs.r13,
    regs.r14,
    regs.r15,
  ];
  let ea = m.disp;
  if (m.base === 'rip') ea += nextRip;
  else if (m.base !== undefined) ea += gpr[m.base]!;
  if (m.index !== undefined) ea += gpr[m.index]! * BigInt(m.scale);
  ea = m.addressSize === 32 ? ea & 0xffff_ffffn : BigInt.asUintN(64, ea);
  let base = 0n;
  if (mode === 64) {
    if (m.segment === 0x64) base = sregs.fs.base;
    if (m.segment === 0x65) base = sregs.gs.base;
  } else {
    const seg =
      m.segment === 0x26
        ? sregs.es
        : m.segment === 0x2e
          ? sregs.cs
          : m.segment === 0x36
            ? sregs.ss
            : m.segment === 0x64
              ? sregs.fs
              : m.segment === 0x65
                ? sregs.gs
                : m.segment === 0x3e
                  ? sregs.ds
                  : m.base === 4 || m.base === 5
                    ? sregs.ss
                    : sregs.ds;
    base = seg.base;
  }
  return mode === 64 ? BigInt.asUintN(64, base + ea) : (base + ea) & 0xffff_ffffn;
}

export interface FaultingInstruction {
  /** Address (RIP) of the instruction and of the next one. */
  start: bigint;
  end: bigint;
  /** Its length (0 = unknown) and up to 16 bytes from `start` (what could be read). */
  length: number;
  bytes: Buffer;
}

/**
 * The store instruction that ends at `rip` (KVM completed it before the MMIO write exit) and wrote
 * `length` bytes at `gpa`: the shortest candidate that decodes as a pure store of at least that size,
 * ends exactly at `rip`, and whose operand (or its part on the next page) translates to `gpa`.
 */
export function instructionBeforeRip(
  rip: bigint,
  gpa: bigint,
  length: number,
  regs: KvmRegs,
  sregs: KvmSregs,
  read: PhysReader,
): FaultingInstruction | undefined {
  const mode = cpuMode(sregs);
  if (mode === 16) return undefined;
  const csBase = mode === 64 ? 0n : sregs.cs.base;
  const tr = pageTranslator(sregs, read);
  // The bytes before RIP inside RIP's own page first (the candidates that fit there, shortest
  // first, are usually the answer); the 15 bytes across the page before only when a longer
  // candidate is needed (reading a page the guest never wrote costs a pread(2) each time). When the
  // page before is not mapped, each longer candidate reads its own bytes.
  const near = Math.min(15, Number((csBase + rip) & 0xfffn));
  const nearBytes = near > 0 ? readLinear(sregs, csBase + rip - BigInt(near), near, read, tr) : Buffer.alloc(0);
  let back: Buffer | undefined;
  for (let L = 1; L <= 15; L++) {
    const start = rip - BigInt(L);
    let bytes: Buffer;
    if (L <= near && nearBytes.length === near) bytes = nearBytes.subarray(near - L);
    else {
      back ??= readLinear(sregs, csBase + rip - 15n, 15, read, tr);
      bytes = back.length === 15 ? back.subarray(15 - L) : readLinear(sregs, csBase + start, L, read, tr);
    }
    if (bytes.length !== L) continue;
    const d = decodeInsn(bytes, mode);
    if (!d || d.length !== L || !d.pureStore || !d.mem || d.storeSize < length) continue;
    const la = linearAddress(d.mem, regs, sregs, rip, mode);
    const first = tr(la);
    const toNextPage = 4096n - (la & 0xfffn);
    const second = toNextPage < BigInt(d.storeSize) ? tr(la + toNextPage) : undefined;
    const hits = (base: bigint | undefined, size: bigint) => base !== undefined && gpa >= base && gpa + BigInt(length) <= base + size;
    if (!hits(first, BigInt(d.storeSize) < toNextPage ? BigInt(d.storeSize) : toNextPage) && !hits(second, BigInt(d.storeSize) - toNextPage)) continue;
    return { start, end: rip, length: L, bytes: readLinear(sregs, csBase + start, 16, read, tr) };
  }
  return undefined;
}

/** The instruction at `rip` (an MMIO read exit: KVM has not executed it yet). */
export function instructionAtRip(rip: bigint, sregs: KvmSregs, read: PhysReader): FaultingInstruction {
  const mode = cpuMode(sregs);
  const csBase = mode === 64 ? 0n : sregs.cs.base;
  const bytes = readLinear(sregs, csBase + rip, 16, read, pageTranslator(sregs, read));
  const d = bytes.length ? decodeInsn(bytes, mode) : undefined;
  const length = d?.length ?? 0;
  return { start: rip, end: rip + BigInt(length), length, bytes };
}
