// core, rules: interrupts and VTLs (tlfs-vsm.md §10, TLFS vsm.md "VTL Interrupt Management"; OpenHCL
// `cvm_handle_cross_vtl_interrupts`). Every interrupt the hypervisor raises for a VP (a SynIC SINT, a
// direct-mode synthetic timer, a synthetic IPI, a VINA notification) goes through requestInterrupt:
//  - the platform raises it in that VTL's own interrupt controller (PlatformHooks.raiseInterrupt: on
//    the KVM agent with a running guest, the (VP, VTL) vCPU's in-kernel LAPIC);
//  - the core's model of that VTL's local APIC records it (IRR), unless the platform's APICs deliver
//    (PlatformHooks.platformApic);
//  - secure interrupt: an interrupt deliverable in a VTL above the active one switches the VP to it at
//    once with entry reason HvVtlEntryInterrupt (2) (RFLAGS.IF of the running lower VTL is ignored;
//    the highest such VTL wins); one its TPR blocks stays pending without a switch;
//  - an interrupt for a VTL below the active one waits until the VP runs that VTL; if the active VTL
//    enabled HvRegisterVsmVina and VINA is not asserted, its Vector is raised in the active VTL and
//    VinaStatus.VinaAsserted set in its HV_VP_VTL_CONTROL (§10.1; no further VINA while asserted);
//  - VtlReturn clears VinaAsserted of the returning VTL when its VINA has AutoReset (as OpenHCL does,
//    on return) and re-evaluates: a VTL above the one returned to with a deliverable interrupt is
//    entered at once (with three VTLs: VTL2 returning to VTL0 while VTL1 has one re-enters VTL1).
// The emulator's APIC model (SDM Vol. 3A §11.8): IRR, ISR and TPR per VTL; a vector is deliverable
// when the APIC is enabled (IA32_APIC_BASE.EN) and its priority class is above the processor
// priority's (PPR: the higher of TPR[7:4] and the highest in-service vector's class). The emulator has
// no instruction stream, so the active VTL is taken to accept its deliverable vectors at once (as a
// VTL running with RFLAGS.IF = 1 would: IRR -> ISR; RFLAGS.IF is not modelled); an auto-EOI vector
// (SINT AutoEOI, VINA AutoEoi) leaves no ISR bit; EOI (HV_X64_MSR_EOI, or the x2APIC EOI MSR in
// x2APIC mode) clears the highest ISR bit. IPIs through the ICR (HV_X64_MSR_ICR, x2APIC ICR) stay in
// the sender's VTL: fixed delivery to the VPs the destination and shorthand name, in that VTL (a target
// running a lower VTL is preempted). The LAPIC timer and the other delivery modes are not modelled.
import type { PartitionState } from '../state/partition';
import type { VirtualProcessor } from '../state/vp';
import { type Vtl, VTLS } from '../vtl-array';
import type { VtlSwitchEvent } from '../outcomes';
import { HvRegisterName as R } from '../tlfs/registers';
import { HvRegisterVsmVinaLayout, HvVpAssistPage, HvVtlEntryReason } from '../tlfs/vsm';
import { APIC_ICR_BROADCAST, APIC_ICR_DEFINED, ApicIcrLayout, Ia32ApicBaseLayout, apicBaseReset, priorityClass } from '../tlfs/apic';
import { apicIdOf } from './startup';
import { switchVtl } from './transitions';
import { vpAssistPage } from './memory-view';

/** Whether the platform's own interrupt controllers deliver (a running guest on the KVM agent). */
export function platformApic(p: PartitionState): boolean {
  return p.spec.platform?.platformApic?.() === true;
}

/** IA32_APIC_BASE of (vp, vtl): the VTL's register, or the reset value (enabled, xAPIC mode). */
export function apicBase(vp: VirtualProcessor, vtl: Vtl): bigint {
  return vp.vtls.get(vtl).regs.get(R.HvX64RegisterApicBase)?.low ?? apicBaseReset(vp.index);
}

/** x2APIC mode of (vp, vtl): IA32_APIC_BASE.EN and .EXTD. */
export function x2apicMode(vp: VirtualProcessor, vtl: Vtl): boolean {
  const b = Ia32ApicBaseLayout.unpack(apicBase(vp, vtl));
  return b.enable && b.extd;
}

/** Processor-priority class of (vp, vtl): max(TPR[7:4], class of the highest in-service vector). */
function pprClass(vp: VirtualProcessor, vtl: Vtl): number {
  const st = vp.vtls.get(vtl);
  let c = priorityClass(st.tpr);
  for (const v of st.isr) c = Math.max(c, priorityClass(v));
  return c;
}

/** The highest requested vector of (vp, vtl) its processor priority lets through, in the core's APIC model. */
export function deliverableVector(vp: VirtualProcessor, vtl: Vtl): number | undefined {
  const st = vp.vtls.get(vtl);
  // Nothing requested: nothing deliverable (the common case; skips decoding IA32_APIC_BASE).
  if (st.irr.size === 0) return undefined;
  if (!Ia32ApicBaseLayout.unpack(apicBase(vp, vtl)).enable) return undefined;
  const ppr = pprClass(vp, vtl);
  let best: number | undefined;
  for (const v of st.irr.keys()) if (priorityClass(v) > ppr && (best === undefined || v > best)) best = v;
  return best;
}

/** The active VTL accepts its deliverable vectors (IRR -> ISR; auto-EOI ones leave no ISR bit). */
function accept(vp: VirtualProcessor): void {
  const st = vp.vtls.get(vp.activeVtl);
  for (let v = deliverableVector(vp, vp.activeVtl); v !== undefined; v = deliverableVector(vp, vp.activeVtl)) {
    const autoEoi = st.irr.get(v) === true;
    st.irr.delete(v);
    if (!autoEoi) st.isr.add(v);
  }
}

/** VinaStatus.VinaAsserted of (vp, vtl): its VP assist page's byte when it has one. */
export function vinaAsserted(p: PartitionState, vp: VirtualProcessor, vtl: Vtl): boolean {
  const page = vpAssistPage(p, vp, vtl);
  return page ? (page[HvVpAssistPage.VinaStatus]! & 1) === 1 : vp.vtls.get(vtl).vinaAsserted;
}

function setVinaAsserted(p: PartitionState, vp: VirtualProcessor, vtl: Vtl, on: boolean): void {
  vp.vtls.get(vtl).vinaAsserted = on;
  const page = vpAssistPage(p, vp, vtl);
  if (page) page[HvVpAssistPage.VinaStatus] = (page[HvVpAssistPage.VinaStatus]! & ~1) | (on ? 1 : 0);
}

/** Whether (vp, vtl) has an interrupt ready for delivery; `raised` is the one just requested. */
function pending(p: PartitionState, vp: VirtualProcessor, vtl: Vtl, raised?: { vtl: Vtl; vector: number }): boolean {
  if (!vp.vtls.get(vtl).enabled) return false;
  if (platformApic(p)) {
    // The LAPIC holds the IRR and TPR: the interrupt just raised counts; otherwise ask the platform.
    if (raised && raised.vtl === vtl) return true;
    return p.spec.platform?.interruptPending?.(vp.index, vtl) === true;
  }
  return deliverableVector(vp, vtl) !== undefined;
}

/**
 * Raises `vector` for VTL `vtl` of `vp` (the single path of every hypervisor-raised interrupt; see the
 * file comment). Returns the VTL switch it caused, if any.
 */
export function requestInterrupt(p: PartitionState, vp: VirtualProcessor, vtl: Vtl, vector: number, opts: { autoEoi: boolean }): VtlSwitchEvent | undefined {
  p.spec.platform?.raiseInterrupt?.(vp.index, vtl, vector, opts);
  if (!platformApic(p)) vp.vtls.get(vtl).irr.set(vector, opts.autoEoi);
  // The VP executing an instruction finishes it in its VTL first (executeVmcall evaluates after).
  if (p.executingVp === vp) {
    vp.interruptCheck = true;
    return undefined;
  }
  return evaluateInterrupts(p, vp, { vtl, vector }, 'async');
}

/**
 * A platform whose APICs deliver (PlatformHooks.platformApic) stopped VP `vp` at an instruction
 * boundary after onInterruptPending, its running VTL's state stored in the core: the secure-interrupt
 * switch happens now. Returns it, if any.
 */
export function deliverInterrupts(p: PartitionState, vp: VirtualProcessor): VtlSwitchEvent | undefined {
  return evaluateInterrupts(p, vp, undefined, 'boundary');
}

/**
 * Runs `fn`, a part of an instruction `vp` executes (a VMCALL, an intercept's message post before its
 * VTL switch): interrupts requested for `vp` meanwhile are evaluated by settleInterrupts afterwards,
 * so that the instruction completes (or switches) first.
 */
export function withInterruptsDeferred<T>(p: PartitionState, vp: VirtualProcessor, fn: () => T): T {
  const prev = p.executingVp;
  p.executingVp = vp;
  try {
    return fn();
  } finally {
    p.executingVp = prev;
  }
}

/** Evaluates what was deferred for `vp` (unless an enclosing instruction still runs). */
export function settleInterrupts(p: PartitionState, vp: VirtualProcessor): VtlSwitchEvent | undefined {
  if (!vp.interruptCheck || p.executingVp === vp) return undefined;
  return evaluateInterrupts(p, vp);
}

/**
 * Re-evaluates the interrupts of `vp` (after an interrupt was requested, a VtlReturn, an EOI or a TPR
 * write): a deliverable interrupt of a higher VTL enters it (entry reason Interrupt); the active VTL's
 * auto-EOI vectors are completed; a deliverable interrupt of a lower VTL asserts the active VTL's VINA.
 */
export function evaluateInterrupts(
  p: PartitionState,
  vp: VirtualProcessor,
  raised?: { vtl: Vtl; vector: number },
  when: 'async' | 'instruction' | 'boundary' = 'instruction',
): VtlSwitchEvent | undefined {
  vp.interruptCheck = false;
  if (p.state !== 'active' || p.deleted) return undefined;
  let ev: VtlSwitchEvent | undefined;
  // A VP suspended on a monitor intercept stays at the faulting access in its VTL until answered.
  if (vp.suspendedOn === null && p.spec.architecture === 'x64') {
    // The highest VTL above the active one with an interrupt ready (loops: no arrays or closures per call).
    let target: Vtl | undefined;
    for (let i = VTLS.length - 1; i >= 0; i--) {
      const v = VTLS[i]!;
      if (v > vp.activeVtl && pending(p, vp, v, raised)) {
        target = v;
        break;
      }
    }
    // A VP the platform runs (its own APICs) is switched at an instruction boundary the platform
    // picks (onInterruptPending -> deliverInterrupts), not in the middle of what its thread does.
    if (target !== undefined && platformApic(p) && when === 'async') p.spec.platform?.onInterruptPending?.(vp.index);
    else if (target !== undefined) ev = switchVtl(p, vp, target, HvVtlEntryReason.HvVtlEntryInterrupt, false);
  }
  const active = vp.activeVtl;
  if (!platformApic(p)) accept(vp);
  for (const v of VTLS) {
    if (v < active && pending(p, vp, v, raised)) {
      notifyVina(p, vp, active);
      break;
    }
  }
  return ev;
}

/** VINA (tlfs-vsm.md §10.1): the active VTL is told a lower VTL has an interrupt ready. */
function notifyVina(p: PartitionState, vp: VirtualProcessor, vtl: Vtl): void {
  if (vtl === 0) return;
  const vina = HvRegisterVsmVinaLayout.unpack(vp.vtls.get(vtl).vina);
  if (!vina.enabled || vinaAsserted(p, vp, vtl)) return;
  setVinaAsserted(p, vp, vtl, true);
  // The VINA vector is for the active VTL itself: recorded (and raised) without a further evaluation
  // beyond its auto-EOI completion.
  p.spec.platform?.raiseInterrupt?.(vp.index, vtl, vina.vector, { autoEoi: vina.autoEoi });
  if (!platformApic(p)) {
    vp.vtls.get(vtl).irr.set(vina.vector, vina.autoEoi);
    accept(vp);
  }
}

/** VtlReturn from `from` is about to switch: AutoReset clears VinaAsserted (OpenHCL `vtl_return`). */
export function beforeVtlReturn(p: PartitionState, vp: VirtualProcessor, from: Vtl): void {
  if (from === 0) return;
  if (HvRegisterVsmVinaLayout.unpack(vp.vtls.get(from).vina).autoReset) setVinaAsserted(p, vp, from, false);
}

/** EOI by the active VTL (HV_X64_MSR_EOI / x2APIC EOI): clears its highest in-service vector. */
export function endOfInterrupt(p: PartitionState, vp: VirtualProcessor): VtlSwitchEvent | undefined {
  if (platformApic(p)) return undefined;
  const isr = vp.vtls.get(vp.activeVtl).isr;
  if (isr.size > 0) isr.delete(Math.max(...isr));
  return evaluateInterrupts(p, vp);
}

/** TPR write by the active VTL (HV_X64_MSR_TPR / x2APIC TPR; bits 7:0). */
export function setTaskPriority(p: PartitionState, vp: VirtualProcessor, tpr: number): VtlSwitchEvent | undefined {
  vp.vtls.get(vp.activeVtl).tpr = tpr & 0xff;
  if (platformApic(p)) return undefined; // the LAPIC's TPR is the platform's
  return evaluateInterrupts(p, vp);
}

/**
 * A write of the active VTL's ICR (HV_X64_MSR_ICR, or the x2APIC ICR in x2APIC mode): an IPI in that
 * VTL (each VTL has its own APIC, tlfs-vsm.md §9.1). Fixed delivery, physical destination (APIC id =
 * VP index; 0xFFFFFFFF all) or a shorthand (self, all, all but self); vectors 0-15 are illegal and
 * dropped, as the APIC does (SDM §11.5.3, its ESR is not modelled). Reserved bits set, logical
 * destination mode or another delivery mode (not modelled): 'gp', nothing sent.
 */
export function sendIpi(p: PartitionState, vp: VirtualProcessor, icr: bigint): 'gp' | VtlSwitchEvent | undefined {
  if ((icr & ~APIC_ICR_DEFINED) !== 0n) return 'gp';
  const c = ApicIcrLayout.unpack(icr);
  if (c.deliveryMode !== 0 || c.logical) return 'gp';
  const vtl = vp.activeVtl;
  vp.vtls.get(vtl).icr = icr;
  if (c.vector < 16) return undefined;
  const all = p.vps.filter((t) => t.vtls.get(vtl).enabled);
  const targets =
    c.shorthand === 1
      ? [vp]
      : c.shorthand === 2
        ? all
        : c.shorthand === 3
          ? all.filter((t) => t !== vp)
          : c.destination === APIC_ICR_BROADCAST
            ? all
            : all.filter((t) => BigInt(apicIdOf(t)) === c.destination);
  let own: VtlSwitchEvent | undefined;
  for (const t of targets) {
    const ev = requestInterrupt(p, t, vtl, c.vector, { autoEoi: false });
    if (t === vp) own = ev;
  }
  return own;
}

/** The interrupt state of (vp, vtl) for observers (GetVirtualProcessor). */
export interface VtlInterruptState {
  vtl: Vtl;
  pendingVectors: number[];
  inServiceVectors: number[];
  tpr: number;
  apicBase: bigint;
  x2apic: boolean;
  vina: bigint;
  vinaAsserted: boolean;
}

export function interruptState(p: PartitionState, vp: VirtualProcessor, vtl: Vtl): VtlInterruptState {
  const st = vp.vtls.get(vtl);
  return {
    vtl,
    pendingVectors: [...st.irr.keys()].sort((a, b) => b - a),
    inServiceVectors: [...st.isr].sort((a, b) => b - a),
    tpr: st.tpr,
    apicBase: apicBase(vp, vtl),
    x2apic: x2apicMode(vp, vtl),
    vina: st.vina,
    vinaAsserted: vinaAsserted(p, vp, vtl),
  };
}
