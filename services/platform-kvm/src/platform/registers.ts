/**
 * Moving register state between the core's register file (HV_REGISTER_NAME → HV_REGISTER_VALUE,
 * per VTL for private registers, per VP for shared ones) and a KVM vCPU (kvm_regs, kvm_sregs,
 * MSRs). The core is the source of truth between runs.
 */
import * as core from '@vsm/core';
import type { Reg128, VirtualProcessor, Vtl } from '@vsm/core';
import type { KvmDtable, KvmRegs, KvmSegment, KvmSregs, MsrEntry, RegName, SegmentName } from '../kvm';
import type { KvmFpu } from '../kvm/layout';

const N = core.HvRegisterName;

/** kvm_regs general registers ↔ HV_REGISTER_NAME (RSP is private to a VTL, the others shared). */
export const GPRS: readonly [Exclude<RegName, 'rip' | 'rflags'>, number][] = [
  ['rax', N.HvX64RegisterRax],
  ['rcx', N.HvX64RegisterRcx],
  ['rdx', N.HvX64RegisterRdx],
  ['rbx', N.HvX64RegisterRbx],
  ['rsp', N.HvX64RegisterRsp],
  ['rbp', N.HvX64RegisterRbp],
  ['rsi', N.HvX64RegisterRsi],
  ['rdi', N.HvX64RegisterRdi],
  ['r8', N.HvX64RegisterRax + 8],
  ['r9', N.HvX64RegisterRax + 9],
  ['r10', N.HvX64RegisterRax + 10],
  ['r11', N.HvX64RegisterRax + 11],
  ['r12', N.HvX64RegisterRax + 12],
  ['r13', N.HvX64RegisterRax + 13],
  ['r14', N.HvX64RegisterRax + 14],
  ['r15', N.HvX64RegisterR15],
];

const SEGMENTS: readonly [SegmentName, number][] = [
  ['es', N.HvX64RegisterEs],
  ['cs', N.HvX64RegisterCs],
  ['ss', N.HvX64RegisterSs],
  ['ds', N.HvX64RegisterDs],
  ['fs', N.HvX64RegisterFs],
  ['gs', N.HvX64RegisterGs],
  ['ldt', N.HvX64RegisterLdtr],
  ['tr', N.HvX64RegisterTr],
];

/** Architectural MSRs the core models as registers, moved with KVM_GET/SET_MSRS. */
export const MSR_REGISTERS: readonly [number, number][] = [
  [0x277, N.HvX64RegisterPat],
  [0x174, N.HvX64RegisterSysenterCs],
  [0x175, N.HvX64RegisterSysenterEsp],
  [0x176, N.HvX64RegisterSysenterEip],
  [0xc0000081, N.HvX64RegisterStar],
  [0xc0000082, N.HvX64RegisterLstar],
  [0xc0000083, N.HvX64RegisterCstar],
  [0xc0000084, N.HvX64RegisterSfmask],
  [0xc0000102, N.HvX64RegisterKernelGsBase],
];

/** The map that holds `name` for (vp, vtl): shared registers live once per VP. */
function store(vp: VirtualProcessor, vtl: Vtl, name: number): Map<number, Reg128> {
  return core.registerInfo(name)?.scope === 'shared' ? vp.shared : vp.vtls.get(vtl).regs;
}
export function getReg(vp: VirtualProcessor, vtl: Vtl, name: number): bigint {
  return store(vp, vtl, name).get(name)?.low ?? 0n;
}
export function setReg(vp: VirtualProcessor, vtl: Vtl, name: number, value: bigint): void {
  store(vp, vtl, name).set(name, core.reg64(value));
}
function getRaw(vp: VirtualProcessor, vtl: Vtl, name: number): Reg128 {
  return store(vp, vtl, name).get(name) ?? { low: 0n, high: 0n };
}

/** HV_X64_SEGMENT_REGISTER → kvm_segment (attributes: type 3:0, S 4, DPL 6:5, P 7, AVL 12, L 13, D/B 14, G 15). */
export function segmentToKvm(r: Reg128): KvmSegment {
  const s = core.reg128ToSegment(r);
  const a = s.attributes;
  const present = (a >> 7) & 1;
  return {
    base: s.base,
    limit: s.limit >>> 0,
    selector: s.selector,
    type: a & 0xf,
    s: (a >> 4) & 1,
    dpl: (a >> 5) & 3,
    present,
    avl: (a >> 12) & 1,
    l: (a >> 13) & 1,
    db: (a >> 14) & 1,
    g: (a >> 15) & 1,
    unusable: present ? 0 : 1,
  };
}
export function segmentFromKvm(s: KvmSegment): Reg128 {
  const present = s.unusable ? 0 : s.present;
  const attributes =
    (s.type & 0xf) |
    ((s.s & 1) << 4) |
    ((s.dpl & 3) << 5) |
    ((present & 1) << 7) |
    ((s.avl & 1) << 12) |
    ((s.l & 1) << 13) |
    ((s.db & 1) << 14) |
    ((s.g & 1) << 15);
  return core.segmentToReg128({ base: s.base, limit: s.limit >>> 0, selector: s.selector, attributes });
}
export function tableToKvm(r: Reg128): KvmDtable {
  const t = core.reg128ToTable(r);
  return { base: t.base, limit: t.limit };
}
export function tableFromKvm(t: KvmDtable): Reg128 {
  return core.tableToReg128({ base: t.base, limit: t.limit });
}

/** kvm_regs of (vp, vtl) as the core holds them. */
export function coreRegs(vp: VirtualProcessor, vtl: Vtl): KvmRegs {
  const r = {} as KvmRegs;
  for (const [k, name] of GPRS) r[k] = getReg(vp, vtl, name);
  r.rip = getReg(vp, vtl, N.HvX64RegisterRip);
  r.rflags = getReg(vp, vtl, N.HvX64RegisterRflags);
  return r;
}

/** General registers of the vCPU into the core (all but RSP/RIP/RFLAGS when `gprsOnly`). */
export function storeRegs(vp: VirtualProcessor, vtl: Vtl, r: KvmRegs, gprsOnly: boolean): void {
  for (const [k, name] of GPRS) {
    if (gprsOnly && k === 'rsp') continue;
    setReg(vp, vtl, name, r[k]);
  }
  if (gprsOnly) return;
  setReg(vp, vtl, N.HvX64RegisterRip, r.rip);
  setReg(vp, vtl, N.HvX64RegisterRflags, r.rflags);
}

/** kvm_sregs of (vp, vtl) as the core holds them (APIC base and pending interrupts kept from `current`). */
export function coreSregs(vp: VirtualProcessor, vtl: Vtl, current: KvmSregs): KvmSregs {
  const s: KvmSregs = { ...current };
  for (const [k, name] of SEGMENTS) s[k] = segmentToKvm(getRaw(vp, vtl, name));
  s.gdt = tableToKvm(getRaw(vp, vtl, N.HvX64RegisterGdtr));
  s.idt = tableToKvm(getRaw(vp, vtl, N.HvX64RegisterIdtr));
  s.cr0 = getReg(vp, vtl, N.HvX64RegisterCr0);
  s.cr2 = getReg(vp, vtl, N.HvX64RegisterCr2);
  s.cr3 = getReg(vp, vtl, N.HvX64RegisterCr3);
  s.cr4 = getReg(vp, vtl, N.HvX64RegisterCr4);
  s.cr8 = getReg(vp, vtl, N.HvX64RegisterCr8);
  s.efer = getReg(vp, vtl, N.HvX64RegisterEfer);
  s.interruptBitmap = [0n, 0n, 0n, 0n];
  return s;
}

export function storeSregs(vp: VirtualProcessor, vtl: Vtl, s: KvmSregs): void {
  const regs = (name: number) => store(vp, vtl, name);
  for (const [k, name] of SEGMENTS) regs(name).set(name, segmentFromKvm(s[k]));
  regs(N.HvX64RegisterGdtr).set(N.HvX64RegisterGdtr, tableFromKvm(s.gdt));
  regs(N.HvX64RegisterIdtr).set(N.HvX64RegisterIdtr, tableFromKvm(s.idt));
  setReg(vp, vtl, N.HvX64RegisterCr0, s.cr0);
  setReg(vp, vtl, N.HvX64RegisterCr2, s.cr2);
  setReg(vp, vtl, N.HvX64RegisterCr3, s.cr3);
  setReg(vp, vtl, N.HvX64RegisterCr4, s.cr4);
  setReg(vp, vtl, N.HvX64RegisterCr8, s.cr8);
  setReg(vp, vtl, N.HvX64RegisterEfer, s.efer);
}

export function coreMsrs(vp: VirtualProcessor, vtl: Vtl): MsrEntry[] {
  return MSR_REGISTERS.map(([index, name]) => ({ index, data: getReg(vp, vtl, name) }));
}
export function storeMsrs(vp: VirtualProcessor, vtl: Vtl, entries: readonly MsrEntry[]): void {
  const byIndex = new Map(MSR_REGISTERS);
  for (const e of entries) {
    const name = byIndex.get(e.index);
    if (name !== undefined) setReg(vp, vtl, name, e.data);
  }
}

// ---- XMM0..XMM15 (kvm_fpu.xmm): shared by all VTLs; XMM0-5 carry XMM fast hypercall input and output
// (tlfs-hypercalls.md §1.4). Moved only around fast hypercalls (and the Hypercall action), so other
// hypercalls cost no extra ioctl.

/** Whether the VP's RCX in `vtl` asks for a fast (register or XMM) hypercall. */
export function isFastCall(vp: VirtualProcessor, vtl: Vtl): boolean {
  return core.decodeHypercallInput(getReg(vp, vtl, N.HvX64RegisterRcx)).fast;
}
/** The vCPU's XMM0..XMM15 into the core's (shared) register file. */
export function storeXmm(vp: VirtualProcessor, fpu: KvmFpu): void {
  for (let i = 0; i < 16; i++) {
    const x = fpu.xmm[i];
    if (x) vp.shared.set(N.HvX64RegisterXmm0 + i, { low: x.readBigUInt64LE(0), high: x.readBigUInt64LE(8) });
  }
}
/** `fpu` with XMM0..XMM15 from the core. */
export function withCoreXmm(vp: VirtualProcessor, fpu: KvmFpu): KvmFpu {
  const xmm = fpu.xmm.map((b, i) => {
    const r = vp.shared.get(N.HvX64RegisterXmm0 + i);
    if (!r) return b;
    const x = Buffer.alloc(16);
    x.writeBigUInt64LE(r.low, 0);
    x.writeBigUInt64LE(r.high, 8);
    return x;
  });
  return { ...fpu, xmm };
}
