// core, rules: the SynIC of a VP in a VTL (tlfs-overlays-synic.md §5) as the partition wires it: its
// SIM and SIEF pages are that VTL's SIMP/SIEFP overlays, its enable bit SCONTROL, its SINTs the
// VTL's SINTx registers, and an asserted SINT raises its vector through the platform
// (rules/interrupts.ts requestInterrupt: the platform's APIC, secure interrupts, VINA). The queueing and delivery rules themselves are in ../synic.ts.
import type { PartitionState } from '../state/partition';
import type { VirtualProcessor } from '../state/vp';
import type { Vtl } from '../vtl-array';
import type { PostResult, SynicView } from '../synic';
import { HvRegisterName as R } from '../tlfs/registers';
import { requestInterrupt } from './interrupts';
import { HV_SCONTROL_ENABLE, HV_SINT_MASKED, HvSynicSintLayout } from '../tlfs/msr';

/** SINTn's register of (vp, vtl). */
export function sintValue(vp: VirtualProcessor, vtl: Vtl, n: number): bigint {
  return vp.vtls.get(vtl).regs.get(R.HvRegisterSint0 + n)?.low ?? HV_SINT_MASKED;
}

export function synicView(p: PartitionState, vp: VirtualProcessor, vtl: Vtl): SynicView {
  const st = vp.vtls.get(vtl);
  return {
    simPage: () => p.overlays.find('simp', vtl, vp.index)?.page,
    siefPage: () => p.overlays.find('siefp', vtl, vp.index)?.page,
    enabled: () => ((st.regs.get(R.HvRegisterScontrol)?.low ?? 0n) & HV_SCONTROL_ENABLE) !== 0n,
    sint: (n) => sintValue(vp, vtl, n),
    assert: (n) => assertSint(p, vp, vtl, n),
  };
}

/**
 * SINTn of (vp, vtl) is asserted: raise its vector (edge) unless it is masked or in polling mode
 * (tlfs-overlays-synic.md §5.1, §5.4 rule 2, §5.6). Returns whether an interrupt was raised.
 */
export function assertSint(p: PartitionState, vp: VirtualProcessor, vtl: Vtl, n: number): boolean {
  const s = HvSynicSintLayout.unpack(sintValue(vp, vtl, n));
  if (s.masked || s.polling) return false;
  requestInterrupt(p, vp, vtl, s.vector, { autoEoi: s.autoEoi });
  return true;
}

/** Queues an HV_MESSAGE for SINTn of (vp, vtl) and delivers it if its SIM slot is free. */
export function postMessage(p: PartitionState, vp: VirtualProcessor, vtl: Vtl, sint: number, message: Buffer): PostResult {
  return vp.vtls.get(vtl).synic.post(synicView(p, vp, vtl), sint, message);
}

/** Sets event flag `flag` of SINTn of (vp, vtl) (§5.6); a newly set flag asserts the SINT. */
export function signalEvent(p: PartitionState, vp: VirtualProcessor, vtl: Vtl, sint: number, flag: number): boolean | 'disabled' | 'masked' {
  return vp.vtls.get(vtl).synic.signalEvent(synicView(p, vp, vtl), sint, flag);
}

/** Delivers what is queued (the message part of HV_X64_MSR_EOM; see stimers.ts acknowledgeSynic). */
export function rescan(p: PartitionState, vp: VirtualProcessor, vtl: Vtl): void {
  vp.vtls.get(vtl).synic.eom(synicView(p, vp, vtl));
}
