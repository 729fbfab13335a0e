// core: the Partition facade. A partition's state is typed data (state/partition.ts, state/vp.ts);
// its rules are modules, one per subject (rules/*.ts: lifecycle, enablement, registers, MSRs,
// overlay sync, SynIC, protections, memory views, transitions). This class is the state plus the
// public methods the service, the KVM agent and the hypercall handlers call; each delegates to the
// rule module that owns it.
import { PartitionState, type PartitionSpec, type PartitionEnd } from './state/partition';
import type { VirtualProcessor } from './state/vp';
import type { GuestEngine } from './engine';
import type { PostResult, SynicView } from './synic';
import type { Vtl } from './vtl-array';
import type { Reg128, RegisterInfo } from './tlfs/registers';
import type { HvInitialVpContext } from './tlfs/vsm';
import type { VtlSwitchEvent, VtlTransitionRecord, X64ExceptionVector } from './outcomes';
import * as lifecycle from './rules/lifecycle';
import * as transitions from './rules/transitions';
import * as enablement from './rules/enablement';
import * as registers from './rules/registers';
import * as msrs from './rules/msrs';
import * as synic from './rules/synic';
import * as protections from './rules/protections';
import * as memoryView from './rules/memory-view';
import * as processor from './rules/processor';
import * as interrupts from './rules/interrupts';
import * as registerIntercepts from './rules/register-intercepts';
import { type AccessOutcome, X64Exception } from './outcomes';
import { HvRegisterName, reg64 } from './tlfs/registers';
import { HvError, HvStatus } from './tlfs/status';
import { type InterceptAction, type InterceptRoute, setInterceptRoute } from './intercepts';

export { PartitionState, PartitionVtlState } from './state/partition';
export type { Architecture, PartitionSpec, PartitionEnd, PartitionRunState } from './state/partition';
export { VirtualProcessor, VpVtlState } from './state/vp';
export type { PendingAccess } from './state/vp';
export { RegisterFile } from './state/vp';
export { X64Exception } from './outcomes';
export type { GuestOutcome, VtlSwitchEvent, VtlTransitionRecord, X64ExceptionVector } from './outcomes';
export { longModeContext } from './rules/enablement';

export class Partition extends PartitionState {
  /** What executes this partition's guest actions (set by its platform; default: engine.ts emulatedEngine). */
  engine: GuestEngine | undefined;

  constructor(spec: PartitionSpec) {
    super(spec);
    enablement.initializePartition(this);
  }

  // ---- life (rules/lifecycle.ts) -----------------------------------------------------------------
  vp(index: number): VirtualProcessor {
    return lifecycle.vpOf(this, index);
  }
  assertActive(): void {
    lifecycle.assertActive(this);
  }
  assertVpCanAct(vp: VirtualProcessor): void {
    lifecycle.assertVpCanAct(this, vp);
  }
  onEnd(fn: (why: PartitionEnd) => void): () => void {
    return lifecycle.onEnd(this, fn);
  }
  crash(reason: string): void {
    lifecycle.crash(this, reason);
  }
  markDeleted(): void {
    lifecycle.markDeleted(this);
  }

  // ---- intercepts (intercepts.ts) ----------------------------------------------------------------
  /** SetInterceptRoute: the route of intercepts raised from now on and the monitor-answer deadline policy. */
  setInterceptRoute(route: InterceptRoute, deadline?: { ms: number; action: InterceptAction }): void {
    setInterceptRoute(this, route, deadline);
  }

  // ---- VTL transitions (rules/transitions.ts) ----------------------------------------------------
  onTransition(fn: (t: VtlTransitionRecord) => void): () => void {
    return transitions.onTransition(this, fn);
  }
  switchVtl(vp: VirtualProcessor, to: Vtl, entryReason: number, isReturn: boolean, fastReturn = false): VtlSwitchEvent {
    return transitions.switchVtl(this, vp, to, entryReason, isReturn, fastReturn);
  }

  // ---- VTL enablement (rules/enablement.ts) ------------------------------------------------------
  enablePartitionVtl(caller: Vtl | 'host', targetVtl: number, flags: number): void {
    enablement.enablePartitionVtl(this, caller, targetVtl, flags);
  }
  enableVpVtl(caller: Vtl | 'host', vpIndex: number, targetVtl: number, ctx: HvInitialVpContext, callerVp?: number): void {
    enablement.enableVpVtl(this, caller, vpIndex, targetVtl, ctx, callerVp);
  }

  // ---- registers and MSRs (rules/registers.ts, rules/msrs.ts) ------------------------------------
  getRegister(vp: VirtualProcessor, vtl: number, name: number): Reg128 {
    return registers.getRegister(this, vp, vtl, name);
  }
  prepareSetRegister(vp: VirtualProcessor, vtl: number, name: number, value: Reg128, caller: Vtl | 'host'): () => void {
    return registers.prepareSetRegister(this, vp, vtl, name, value, caller);
  }
  setRegisters(vp: VirtualProcessor, vtl: number, regs: { name: number; value: Reg128 }[], caller: Vtl | 'host'): void {
    registers.setRegisters(this, vp, vtl, regs, caller);
  }
  static modeledRegisters(): readonly RegisterInfo[] {
    return registers.modeledRegisters();
  }
  readMsr(vp: VirtualProcessor, msr: number): { value: bigint; exception?: X64ExceptionVector; intercepted?: { heldBack: boolean } } {
    return msrs.readMsr(this, vp, msr);
  }
  writeMsr(vp: VirtualProcessor, msr: number, value: bigint): { exception?: X64ExceptionVector; intercepted?: { heldBack: boolean } } {
    return msrs.writeMsr(this, vp, msr, value);
  }
  /**
   * The architectural MSRs whose WRMSR by `vtl` some enabled higher VTL of some VP intercepts
   * (HvX64RegisterCrInterceptControl, rules/register-intercepts.ts), ascending: what a platform that
   * runs `vtl`'s code must trap (the KVM agent's MSR filter).
   */
  msrWritesInterceptedFor(vtl: Vtl): readonly number[] {
    return registerIntercepts.msrAccessesInterceptedFor(this, vtl, 'write');
  }
  /** As msrWritesInterceptedFor, for RDMSR (the read bits: EFER, STAR, LSTAR, CSTAR, APIC_BASE). */
  msrReadsInterceptedFor(vtl: Vtl): readonly number[] {
    return registerIntercepts.msrAccessesInterceptedFor(this, vtl, 'read');
  }

  // ---- processor state of the active VTL (rules/processor.ts) -----------------------------------
  reg(vp: VirtualProcessor, name: number): bigint {
    return processor.reg(vp, name);
  }
  setReg(vp: VirtualProcessor, name: number, value: bigint): void {
    processor.setReg(vp, name, value);
  }
  cpl(vp: VirtualProcessor): number {
    return processor.cpl(vp);
  }
  inRealMode(vp: VirtualProcessor): boolean {
    return processor.inRealMode(vp);
  }
  is64Bit(vp: VirtualProcessor): boolean {
    return processor.is64Bit(vp);
  }

  // ---- SynIC (rules/synic.ts) --------------------------------------------------------------------
  synicView(vp: VirtualProcessor, vtl: Vtl): SynicView {
    return synic.synicView(this, vp, vtl);
  }
  postMessage(vp: VirtualProcessor, vtl: Vtl, sint: number, message: Buffer): PostResult {
    return synic.postMessage(this, vp, vtl, sint, message);
  }
  /** Sets an event flag (§5.6); a newly set flag raises the SINT's interrupt (PlatformHooks.raiseInterrupt). */
  signalEvent(vp: VirtualProcessor, vtl: Vtl, sint: number, flag: number): boolean | 'disabled' | 'masked' {
    return synic.signalEvent(this, vp, vtl, sint, flag);
  }

  // ---- VTL protections (rules/protections.ts) ----------------------------------------------------
  modifyVtlProtectionMask(caller: Vtl | 'host', protectingVtl: number, mapFlags: number, runs: { start: bigint; count: bigint }[]): number {
    return protections.modifyVtlProtectionMask(this, caller, protectingVtl, mapFlags, runs);
  }
  /** The same change prepared in steps on a draft and put in force at once (for requests with many runs). */
  prepareVtlProtectionChange(
    caller: Vtl | 'host',
    protectingVtl: number,
    mapFlags: number,
    runs: { start: bigint; count: bigint }[],
  ): protections.ProtectionChangeJob {
    return protections.prepareVtlProtectionChange(this, caller, protectingVtl, mapFlags, runs);
  }
  protectionOf(protectingVtl: Vtl, gpfn: number): number | undefined {
    return protections.protectionOf(this, protectingVtl, gpfn);
  }

  // ---- guest memory through a VTL's view (rules/memory-view.ts) ----------------------------------
  readView(vtl: Vtl, vpIndex: number, gpa: bigint, length: number): Buffer {
    return memoryView.readView(this, vtl, vpIndex, gpa, length);
  }
  writeView(vtl: Vtl, vpIndex: number, gpa: bigint, data: Buffer): boolean {
    return memoryView.writeView(this, vtl, vpIndex, gpa, data);
  }
  checkRange(gpa: bigint, length: number): void {
    memoryView.checkRange(this, gpa, length);
  }
  vpAssistPage(vp: VirtualProcessor, vtl: Vtl): Buffer | undefined {
    return memoryView.vpAssistPage(this, vp, vtl);
  }

  // ---- interrupts (rules/interrupts.ts) and control-register writes ---------------------------
  /** Each VTL's own local APIC and VINA state (tlfs-vsm.md §9.1, §10). */
  interruptState(vp: VirtualProcessor, vtl: Vtl): interrupts.VtlInterruptState {
    return interrupts.interruptState(this, vp, vtl);
  }
  /**
   * MOV to CR0/CR4 by the VP in its active VTL (rules/register-intercepts.ts guestRegisterWrite): a
   * change of a bit a higher VTL locked intercepts; a value the register rules refuse is #GP.
   */
  writeControlRegister(vp: VirtualProcessor, name: number, value: bigint): AccessOutcome {
    lifecycle.assertVpCanAct(this, vp);
    if (this.spec.architecture !== 'x64') return { status: 'exception', exception: X64Exception.UD };
    if (name !== HvRegisterName.HvX64RegisterCr0 && name !== HvRegisterName.HvX64RegisterCr4)
      throw new HvError(HvStatus.HV_STATUS_INVALID_PARAMETER, `register 0x${name.toString(16)} is not CR0 or CR4`);
    const vtl = vp.activeVtl;
    let commit: () => void;
    try {
      commit = registers.prepareSetRegister(this, vp, vtl, name, reg64(value), vtl);
    } catch (e) {
      if (e instanceof HvError) return { status: 'exception', exception: X64Exception.GP };
      throw e;
    }
    return registerIntercepts.guestRegisterWrite(this, vp, name, reg64(value), commit);
  }
}
