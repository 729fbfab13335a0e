// core, rules: VTL transitions (tlfs-vsm.md §5-6). Every switch of a VP's active VTL goes through
// switchVtl: the entered VTL learns why it was entered (its entry reason, also in
// HV_VP_VTL_CONTROL of its VP assist page) and observers get a numbered, timestamped record.
import type { PartitionState } from '../state/partition';
import type { VirtualProcessor } from '../state/vp';
import type { Vtl } from '../vtl-array';
import type { VtlSwitchEvent, VtlTransitionRecord } from '../outcomes';
import { HvVpAssistPage } from '../tlfs/vsm';

export function onTransition(p: PartitionState, fn: (t: VtlTransitionRecord) => void): () => void {
  p.transitionListeners.add(fn);
  return () => p.transitionListeners.delete(fn);
}

/** Switches the VP's active VTL and records the transition. */
export function switchVtl(p: PartitionState, vp: VirtualProcessor, to: Vtl, entryReason: number, isReturn: boolean, fastReturn = false): VtlSwitchEvent {
  const ev: VtlSwitchEvent = { fromVtl: vp.activeVtl, toVtl: to, entryReason, isReturn, fastReturn };
  const from = vp.activeVtl;
  vp.activeVtl = to;
  if (!isReturn) {
    const entered = vp.vtls.get(to);
    entered.entryReason = entryReason;
    // Where this VTL's VtlReturn goes (returnTarget): the VTL it was entered from.
    entered.enteredFrom = from;
    // HV_VP_VTL_CONTROL.EntryReason of the entered VTL's VP assist page (tlfs-vsm.md §5.1).
    const assist = p.overlays.find('vp-assist', to, vp.index);
    if (assist) assist.page.writeUInt32LE(entryReason, HvVpAssistPage.EntryReason);
  }
  const sequence = ++p.transitionSeq;
  // The record (and its clock read) only when someone observes transitions.
  if (p.transitionListeners.size > 0) {
    const rec: VtlTransitionRecord = { ...ev, sequence, vpIndex: vp.index, timeUnixUs: p.clock.nowUnixUs() };
    for (const l of p.transitionListeners) l(rec);
  }
  return ev;
}

/**
 * The VTL a VtlReturn from the VP's active VTL goes to: the VTL it was entered from (by a VtlCall, a
 * secure interrupt or an intercept), when that VTL is still enabled on the VP; otherwise (the VTL
 * was not entered from below: a VP started in it) the next lower enabled VTL. With three VTLs, a
 * VTL0 access that intercepts straight into VTL2 therefore returns to VTL0, not to VTL1, which was
 * never entered: the TLFS (vsm.md "VTL Return") says only "a switch into a lower VTL", and OpenHCL
 * resumes the VTL the exit came from (`exit_vtl` / the intercepted VTL of the message). See README
 * "VtlReturn with three VTLs".
 */
export function returnTarget(vp: VirtualProcessor): Vtl | undefined {
  const from = vp.vtls.get(vp.activeVtl).enteredFrom;
  if (from !== null && from < vp.activeVtl && vp.vtls.get(from).enabled) return from;
  return vp.nextLowerVtl();
}
