// core, rules: the SynIC of a VP in a VTL (tlfs-overlays-synic.md §5) as the partition wires it: its
// SIM and SIEF pages are that VTL's SIMP/SIEFP overlays, its enable bit SCONTROL, its SINTs the
// VTL's SINTx registers. The queueing and delivery rules themselves are in ../synic.ts.
import type { PartitionState } from '../state/partition';
import type { VirtualProcessor } from '../state/vp';
import type { Vtl } from '../vtl-array';
import type { PostResult, SynicView } from '../synic';
import { HvRegisterName as R } from '../tlfs/registers';
import { HV_SCONTROL_ENABLE, HV_SINT_MASKED } from '../tlfs/msr';

export function synicView(p: PartitionState, vp: VirtualProcessor, vtl: Vtl): SynicView {
  const st = vp.vtls.get(vtl);
  return {
    simPage: () => p.overlays.find('simp', vtl, vp.index)?.page,
    siefPage: () => p.overlays.find('siefp', vtl, vp.index)?.page,
    enabled: () => ((st.regs.get(R.HvRegisterScontrol)?.low ?? 0n) & HV_SCONTROL_ENABLE) !== 0n,
    sint: (n) => st.regs.get(R.HvRegisterSint0 + n)?.low ?? HV_SINT_MASKED,
  };
}

/** Queues an HV_MESSAGE for SINTn of (vp, vtl) and delivers it if its SIM slot is free. */
export function postMessage(p: PartitionState, vp: VirtualProcessor, vtl: Vtl, sint: number, message: Buffer): PostResult {
  return vp.vtls.get(vtl).synic.post(synicView(p, vp, vtl), sint, message);
}

/** HV_X64_MSR_EOM semantics (and what enabling SCONTROL or a SIM page does): deliver what is queued. */
export function rescan(p: PartitionState, vp: VirtualProcessor, vtl: Vtl): void {
  vp.vtls.get(vtl).synic.eom(synicView(p, vp, vtl));
}
