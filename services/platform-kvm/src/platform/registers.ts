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

/**
 * kvm_sregs into the core. A register whose value did not change keeps its object (RegisterShadow
 * compares objects: the other VTL's vCPU then does not reload the shared CR2 for nothing).
 */
export function storeSregs(vp: VirtualProcessor, vtl: Vtl, s: KvmSregs): void {
  const put = (name: number, r: Reg128) => {
    const m = store(vp, vtl, name);
    const cur = m.get(name);
    if (cur === undefined || cur.low !== r.low || cur.high !== r.high) m.set(name, r);
  };
  for (const [k, name] of SEGMENTS) put(name, segmentFromKvm(s[k]));
  put(N.HvX64RegisterGdtr, tableFromKvm(s.gdt));
  put(N.HvX64RegisterIdtr, tableFromKvm(s.idt));
  put(N.HvX64RegisterCr0, core.reg64(s.cr0));
  put(N.HvX64RegisterCr2, core.reg64(s.cr2));
  put(N.HvX64RegisterCr3, core.reg64(s.cr3));
  put(N.HvX64RegisterCr4, core.reg64(s.cr4));
  put(N.HvX64RegisterCr8, core.reg64(s.cr8));
  put(N.HvX64RegisterEfer, core.reg64(s.efer));
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

// XMM0..XMM15 in the XSAVE image (struct kvm_xsave, standard format; Intel SDM Vol. 1 §13.4): the legacy
// region holds XMM i at byte 160 + 16 i, the XSAVE header's XSTATE_BV (byte 512) says which components
// hold data. KVM_SET_FPU writes the legacy region only: when XSTATE_BV.SSE (bit 1) is clear, XRSTOR
// puts SSE in its init state (XMM = 0) and the values never reach the guest, which made a fast
// hypercall's XMM input read back as 0 now and then (agent-differential). Hence XMM moves through the
// XSAVE image with XSTATE_BV.SSE set where KVM has KVM_GET/SET_XSAVE.
const XSAVE_XMM0 = 160;
const XSAVE_XSTATE_BV = 512;
const XFEATURE_MASK_SSE = 1n << 1n;

/** XMM0..XMM15 of an XSAVE image into the core: zero where XSTATE_BV says SSE is in its init state. */
export function storeXmmFromXsave(vp: VirtualProcessor, xsave: Buffer): void {
  const sse = (xsave.readBigUInt64LE(XSAVE_XSTATE_BV) & XFEATURE_MASK_SSE) !== 0n;
  for (let i = 0; i < 16; i++) {
    const at = XSAVE_XMM0 + 16 * i;
    vp.shared.set(N.HvX64RegisterXmm0 + i, sse ? { low: xsave.readBigUInt64LE(at), high: xsave.readBigUInt64LE(at + 8) } : { low: 0n, high: 0n });
  }
}

/** The core's XMM0..XMM15 into an XSAVE image (other components untouched), XSTATE_BV.SSE set. */
export function putCoreXmmInXsave(vp: VirtualProcessor, xsave: Buffer): void {
  const sse = (xsave.readBigUInt64LE(XSAVE_XSTATE_BV) & XFEATURE_MASK_SSE) !== 0n;
  for (let i = 0; i < 16; i++) {
    const at = XSAVE_XMM0 + 16 * i;
    const r = vp.shared.get(N.HvX64RegisterXmm0 + i);
    if (r) {
      xsave.writeBigUInt64LE(r.low, at);
      xsave.writeBigUInt64LE(r.high, at + 8);
    } else if (!sse) xsave.fill(0, at, at + 16); // init state: the guest saw zeros there
  }
  xsave.writeBigUInt64LE(xsave.readBigUInt64LE(XSAVE_XSTATE_BV) | XFEATURE_MASK_SSE, XSAVE_XSTATE_BV);
}

// ---- Moving only what changed (runVp's exit path; services/kvm-agent/README.md, "Registers") ----------
//
// A vCPU in guest mode remembers, per register class, the core's HV_REGISTER_VALUE objects it last
// exchanged with the core (RegisterShadow). The core replaces a register's object whenever it sets
// it (setReg, the register API, snapshots), so "the core changed X since" is `map.get(X) !== shadow`:
// a few Map lookups instead of re-encoding and reloading the whole state. The other direction
// (what the guest changed) comes from kvm_run's sync-regs area: kvm_regs at every exit, kvm_sregs
// compared byte for byte with the copy last exchanged, MSRs fetched lazily (VpVtlState.lazyRegs).

/** kvm_regs fields in RegisterShadow.regs order: GPRS, then RIP and RFLAGS. */
const REGS_FIELDS: readonly RegName[] = [...GPRS.map(([k]) => k), 'rip', 'rflags'];
const REGS_NAMES: readonly number[] = [...GPRS.map(([, n]) => n), N.HvX64RegisterRip, N.HvX64RegisterRflags];
/** kvm_sregs registers the core models (SEGMENTS, GDTR, IDTR, CR0/2/3/4/8, EFER). */
const SREGS_NAMES: readonly number[] = [
  ...SEGMENTS.map(([, n]) => n),
  N.HvX64RegisterGdtr,
  N.HvX64RegisterIdtr,
  N.HvX64RegisterCr0,
  N.HvX64RegisterCr2,
  N.HvX64RegisterCr3,
  N.HvX64RegisterCr4,
  N.HvX64RegisterCr8,
  N.HvX64RegisterEfer,
];
const MSR_NAMES: readonly number[] = MSR_REGISTERS.map(([, n]) => n);
const isShared = (names: readonly number[]): boolean[] => names.map((n) => core.registerInfo(n)?.scope === 'shared');
const REGS_SHARED = isShared(REGS_NAMES);
const SREGS_SHARED = isShared(SREGS_NAMES);
const MSR_SHARED = isShared(MSR_NAMES);

/** The core's current objects of `names` for (vp, vtl). */
function objectsOf(vp: VirtualProcessor, vtl: Vtl, names: readonly number[], shared: readonly boolean[]): (Reg128 | undefined)[] {
  const priv = vp.vtls.get(vtl).regs;
  const out = new Array<Reg128 | undefined>(names.length);
  for (let i = 0; i < names.length; i++) out[i] = (shared[i] ? vp.shared : priv).get(names[i]!);
  return out;
}

/** Indices of `names` whose core object is not the one in `seen`. */
function changed(vp: VirtualProcessor, vtl: Vtl, names: readonly number[], shared: readonly boolean[], seen: (Reg128 | undefined)[]): number[] {
  const priv = vp.vtls.get(vtl).regs;
  const out: number[] = [];
  for (let i = 0; i < names.length; i++) if ((shared[i] ? vp.shared : priv).get(names[i]!) !== seen[i]) out.push(i);
  return out;
}

const MSR_NAME_SET = new Set(MSR_NAMES);
/** Whether the core's `name` is one of the MSRs moved with KVM_GET/SET_MSRS (MSR_REGISTERS). */
export function isMsrRegister(name: number): boolean {
  return MSR_NAME_SET.has(name);
}

/** A shadow entry that matches no core object: the register is loaded at the next entry. */
const UNKNOWN: Reg128 = Object.freeze({ low: 0n, high: 0n });

/** Where a register name sits in the shadow: class (0 kvm_regs, 1 kvm_sregs, 2 MSR) and index. */
const SHADOW_SLOT = new Map<number, { cls: 0 | 1 | 2; i: number }>([
  ...REGS_NAMES.map((n, i) => [n, { cls: 0 as const, i }] as const),
  ...SREGS_NAMES.map((n, i) => [n, { cls: 1 as const, i }] as const),
  ...MSR_NAMES.map((n, i) => [n, { cls: 2 as const, i }] as const),
]);

/** What a guest-mode vCPU of (vp, vtl) holds, in terms of the core's register objects (see above). */
export class RegisterShadow {
  regs: (Reg128 | undefined)[] = [];
  sregs: (Reg128 | undefined)[] = [];
  msrs: (Reg128 | undefined)[] = [];
  /**
   * kvm_regs then kvm_sregs as last exchanged with the core, laid out as in kvm_run's sync area
   * (struct kvm_sync_regs): an exit that finds the same 456 bytes there stores nothing, found with one
   * comparison (regsBytes and sregsBytes are its two parts).
   */
  readonly syncBytes = Buffer.alloc(144 + 312);
  /** kvm_sregs as last exchanged with the core (compared with kvm_run's copy after an exit). */
  readonly sregsBytes = this.syncBytes.subarray(144);
  /**
   * kvm_regs as last exchanged with the core (what the vCPU was loaded with, or last stored): an exit
   * that finds the same bytes stores nothing. Filled with 0xff = unknown.
   */
  readonly regsBytes = this.syncBytes.subarray(0, 144).fill(0xff);
  /** The vCPU's MSRs may be ahead of the core (the guest ran since they were last fetched). */
  msrsAhead = false;
  /**
   * The `changes` counts of the VTL's private register file and of the VP's shared one up to which
   * the shadow matches the core: a register neither file changed since then holds the shadow's
   * object (RegisterFile's change log; -1: compare everything at the next load).
   */
  seenPrivate = -1;
  seenShared = -1;
  /** The registers may have changed behind the shadow's back (a completion ran): reload kvm_regs and kvm_sregs. */
  forgetRegs(): void {
    this.regs = REGS_NAMES.map(() => UNKNOWN);
    this.sregs = SREGS_NAMES.map(() => UNKNOWN);
    this.regsBytes.fill(0xff);
    this.seenPrivate = this.seenShared = -1;
  }
  /** Whether neither file changed since the shadow last matched the core. */
  current(vp: VirtualProcessor, vtl: Vtl): boolean {
    return vp.vtls.get(vtl).regs.changes === this.seenPrivate && vp.shared.changes === this.seenShared;
  }
  /** The shadow matches the core as the files are now. */
  seeNow(vp: VirtualProcessor, vtl: Vtl): void {
    this.seenPrivate = vp.vtls.get(vtl).regs.changes;
    this.seenShared = vp.shared.changes;
  }
}

/** Loads (vp, vtl)'s whole state from the core into `vcpu` and returns the shadow of what it now holds. */
export function loadAll(vcpu: KvmVcpuLike, vp: VirtualProcessor, vtl: Vtl): RegisterShadow {
  const sh = new RegisterShadow();
  sh.sregs = objectsOf(vp, vtl, SREGS_NAMES, SREGS_SHARED);
  sh.regs = objectsOf(vp, vtl, REGS_NAMES, REGS_SHARED);
  sh.msrs = objectsOf(vp, vtl, MSR_NAMES, MSR_SHARED);
  const s = coreSregs(vp, vtl, vcpu.getSregs());
  vcpu.setSregs(s);
  vcpu.setRegs(coreRegs(vp, vtl));
  vcpu.setMsrs(coreMsrs(vp, vtl));
  if (vcpu.syncedSregsFresh) vcpu.syncedSregsBytes.copy(sh.sregsBytes);
  else sh.sregsBytes.fill(0xff); // unknown: the next exit's sregs are stored
  if (vcpu.syncedRegsFresh) vcpu.syncedRegsBytes.copy(sh.regsBytes);
  sh.seeNow(vp, vtl);
  return sh;
}

/**
 * Scratch of changedClasses: the kvm_regs indices named by the change logs (duplicates harmless), the
 * first loggedCount of them. A typed array and a count, not an array emptied by `length = 0` (which
 * gives its backing store up: one allocation per exit).
 */
const loggedRegs = new Int32Array(64);
let loggedCount = 0;

/**
 * Which register classes the core changed since the shadow last matched it, from the files' change
 * logs: bit 0 kvm_regs (their indices in loggedRegs), 1 kvm_sregs, 2 MSRs; -1 when a log no longer
 * reaches back (compare everything).
 */
function changedClasses(vp: VirtualProcessor, vtl: Vtl, sh: RegisterShadow): number {
  loggedCount = 0;
  const priv = vp.vtls.get(vtl).regs;
  const shared = vp.shared;
  if (!priv.remembersSince(sh.seenPrivate) || !shared.remembersSince(sh.seenShared)) return -1;
  return logClasses(priv, sh.seenPrivate) | logClasses(shared, sh.seenShared);
}

/** changedClasses for one file's changes since `since`. */
function logClasses(file: core.RegisterFile, since: number): number {
  let classes = 0;
  for (let k = since; k < file.changes; k++) {
    const slot = SHADOW_SLOT.get(file.changedName(k));
    if (slot === undefined) continue; // not a register the vCPU holds
    classes |= 1 << slot.cls;
    if (slot.cls === 0) loggedRegs[loggedCount++] = slot.i; // at most 2 x 32 (two logs of 32)
  }
  return classes;
}

/**
 * Loads into `vcpu` (in guest mode, kvm_run's sync area fresh) only the registers of (vp, vtl) the
 * core changed since `sh` was taken: general registers through kvm_run.s.regs (one dirty bit, no
 * ioctl), sregs the same way, MSRs with one KVM_SET_MSRS of those that changed. Which ones: the
 * register files' change logs name them (RegisterFile); when a log no longer reaches back, every
 * register's object is compared with the shadow's.
 */
export function loadChanged(vcpu: KvmVcpuLike, vp: VirtualProcessor, vtl: Vtl, sh: RegisterShadow): void {
  if (sh.current(vp, vtl)) return;
  const classes = changedClasses(vp, vtl, sh);
  if (classes & 2) {
    const s = changed(vp, vtl, SREGS_NAMES, SREGS_SHARED, sh.sregs);
    if (s.length > 0) {
      vcpu.setSregs(coreSregs(vp, vtl, vcpu.getSregs()));
      sh.sregs = objectsOf(vp, vtl, SREGS_NAMES, SREGS_SHARED);
      vcpu.syncedSregsBytes.copy(sh.sregsBytes);
    }
  }
  if (classes === -1) loadChangedRegs(vcpu, vp, vtl, sh);
  else if (classes & 1) loadRegsAt(vcpu, vp, vtl, sh, loggedRegs, loggedCount);
  if (classes & 4) {
    const m = changed(vp, vtl, MSR_NAMES, MSR_SHARED, sh.msrs);
    if (m.length > 0) {
      vcpu.setMsrs(m.map((i) => ({ index: MSR_REGISTERS[i]![0], data: getReg(vp, vtl, MSR_NAMES[i]!) })));
      for (const i of m) sh.msrs[i] = (MSR_SHARED[i] ? vp.shared : vp.vtls.get(vtl).regs).get(MSR_NAMES[i]!);
    }
  }
  sh.seeNow(vp, vtl);
}

/** The general registers (and RIP, RFLAGS) of (vp, vtl) the core changed since `sh`, into kvm_run.s.regs. */
export function loadChangedRegs(vcpu: KvmVcpuLike, vp: VirtualProcessor, vtl: Vtl, sh: RegisterShadow): void {
  loadRegsAt(vcpu, vp, vtl, sh, ALL_REGS, ALL_REGS.length);
}

const ALL_REGS = Int32Array.from(REGS_NAMES, (_, i) => i);

/** Of the first `count` kvm_regs indices of `at`, those whose core object is not the shadow's, into kvm_run.s.regs. */
function loadRegsAt(vcpu: KvmVcpuLike, vp: VirtualProcessor, vtl: Vtl, sh: RegisterShadow, at: Int32Array, count: number): void {
  const priv = vp.vtls.get(vtl).regs;
  let wrote = false;
  for (let k = 0; k < count; k++) {
    const i = at[k]!;
    const o = (REGS_SHARED[i] ? vp.shared : priv).get(REGS_NAMES[i]!);
    if (o === sh.regs[i]) continue;
    vcpu.setSyncedReg(REGS_FIELDS[i]!, o?.low ?? 0n);
    sh.regs[i] = o;
    wrote = true;
  }
  if (wrote) vcpu.syncedRegsBytes.copy(sh.regsBytes);
}

/**
 * After an exit: the vCPU's kvm_regs (and its kvm_sregs when their bytes changed since they were
 * last exchanged) from kvm_run's sync area into the core; the shadow follows. MSRs are not read
 * (the caller marks them ahead).
 */
export function storeExit(vcpu: KvmVcpuLike, vp: VirtualProcessor, vtl: Vtl, sh: RegisterShadow): void {
  const wasCurrent = sh.current(vp, vtl);
  // The guest changed nothing the core holds since the last exchange (a loop calling a hypercall):
  // kvm_regs and kvm_sregs compared in one go, nothing stored.
  if (wasCurrent && vcpu.syncedBytes.equals(sh.syncBytes)) return;
  const regsBytes = vcpu.syncedRegsBytes;
  // The same kvm_regs as last exchanged, and the core still holds the shadow's objects: nothing to store.
  if (!regsBytes.equals(sh.regsBytes) || (!wasCurrent && changed(vp, vtl, REGS_NAMES, REGS_SHARED, sh.regs).length > 0))
    storeChangedRegs(vcpu, vp, vtl, sh, regsBytes);
  storeExitSregs(vcpu, vp, vtl, sh);
  // What this store changed the shadow follows; changes made before it by others (none while the
  // guest ran: every run starts with loadChanged) are still to be compared.
  if (wasCurrent) sh.seeNow(vp, vtl);
}

function storeChangedRegs(vcpu: KvmVcpuLike, vp: VirtualProcessor, vtl: Vtl, sh: RegisterShadow, regsBytes: Buffer): void {
  const priv = vp.vtls.get(vtl).regs;
  for (let i = 0; i < REGS_NAMES.length; i++) {
    const v = vcpu.syncedReg(REGS_FIELDS[i]!);
    const map = REGS_SHARED[i] ? vp.shared : priv;
    const cur = map.get(REGS_NAMES[i]!);
    if (cur !== undefined && cur.low === v && cur.high === 0n) {
      sh.regs[i] = cur; // unchanged: the core keeps its object
      continue;
    }
    const o = core.reg64(v);
    map.set(REGS_NAMES[i]!, o);
    sh.regs[i] = o;
  }
  regsBytes.copy(sh.regsBytes);
}

function storeExitSregs(vcpu: KvmVcpuLike, vp: VirtualProcessor, vtl: Vtl, sh: RegisterShadow): void {
  const bytes = vcpu.syncedSregsBytes;
  if (!bytes.equals(sh.sregsBytes)) {
    storeSregs(vp, vtl, vcpu.getSregs());
    bytes.copy(sh.sregsBytes);
    sh.sregs = objectsOf(vp, vtl, SREGS_NAMES, SREGS_SHARED);
  }
  // Same bytes as last exchanged: the core holds these values (every run was preceded by loadChanged).
}

/** The vCPU's MSRs into the core (one KVM_GET_MSRS); the shadow follows. */
export function fetchMsrs(vcpu: KvmVcpuLike, vp: VirtualProcessor, vtl: Vtl, sh: RegisterShadow): void {
  const wasCurrent = sh.current(vp, vtl);
  storeMsrs(vp, vtl, vcpu.getMsrs(MSR_REGISTERS.map(([i]) => i)));
  sh.msrs = objectsOf(vp, vtl, MSR_NAMES, MSR_SHARED);
  sh.msrsAhead = false;
  if (wasCurrent) sh.seeNow(vp, vtl);
}

/** What the shadow functions need of a KvmVcpu. */
export interface KvmVcpuLike {
  getRegs(): KvmRegs;
  setRegs(r: KvmRegs): void;
  getSregs(): KvmSregs;
  setSregs(s: KvmSregs): void;
  getMsrs(indices: readonly number[]): MsrEntry[];
  setMsrs(entries: readonly MsrEntry[]): void;
  setSyncedReg(name: RegName, value: bigint): void;
  syncedReg(name: RegName): bigint;
  readonly syncedSregsFresh: boolean;
  readonly syncedSregsBytes: Buffer;
  readonly syncedRegsFresh: boolean;
  readonly syncedRegsBytes: Buffer;
  /** kvm_regs and kvm_sregs of the sync area together (syncedRegsBytes then syncedSregsBytes). */
  readonly syncedBytes: Buffer;
}
