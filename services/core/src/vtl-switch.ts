// core: HvCallVtlCall / HvCallVtlReturn (tlfs-vsm.md §6, tlfs-hypercalls.md §2.6). Invalid calls
// inject #UD into the caller and switch nothing.
import type { PartitionState } from './state/partition';
import type { VirtualProcessor } from './state/vp';
import { type GuestOutcome, X64Exception } from './outcomes';
import { HvRegisterName as R } from './tlfs/registers';
import { HvVpAssistPage, HvVtlEntryReason } from './tlfs/vsm';
import { resumeStub } from './stub-return';
import { resumePendingAccess } from './access';
import { cpl, inRealMode, is64Bit, reg, setReg } from './rules/processor';
import { returnTarget, switchVtl } from './rules/transitions';
import { assertVpCanAct } from './rules/lifecycle';
import { vpAssistPage } from './rules/memory-view';
import { beforeVtlReturn, evaluateInterrupts } from './rules/interrupts';

/**
 * RAX and RCX at the CALL into the hypercall page, before the page's code clobbered them: part of
 * the stub's execution (stub.ts, the KVM agent's callHypercallPage), handed to the VMCALL it makes.
 */
export interface HypercallCallSite {
  rax: bigint;
  rcx: bigint;
}

/**
 * VtlCall: switch to the next higher VTL enabled on the VP with entry reason HvVtlEntryVtlCall.
 * `controlInput` is the VTL call control input (RAX at the VMCALL after the stub): must be 0.
 * `callSite`: the caller's RAX/RCX when the VMCALL runs inside a hypercall-page stub (else the
 * registers as they are).
 */
export function vtlCall(p: PartitionState, vp: VirtualProcessor, controlInput: bigint, instructionLength = 3n, callSite?: HypercallCallSite): GuestOutcome {
  // A VP suspended on a monitor intercept stays in the VTL it intercepted in until it is answered.
  assertVpCanAct(p, vp);
  const from = vp.activeVtl;
  const target = vp.nextHigherVtl();
  if (controlInput !== 0n || target === undefined || cpl(vp) !== 0 || inRealMode(vp)) return { exception: X64Exception.UD, activeVtl: from };
  const { rax: callerRax, rcx: callerRcx } = callSite ?? { rax: reg(vp, R.HvX64RegisterRax), rcx: reg(vp, R.HvX64RegisterRcx) };
  advancePastVmcall(vp, instructionLength);
  const ev = switchVtl(p, vp, target, HvVtlEntryReason.HvVtlEntryVtlCall, false);
  // Implementation choice (unconfirmed in the TLFS): the hypervisor records the caller's RAX/RCX
  // (as they were before the call sequence clobbered them) in the entered VTL's HV_VP_VTL_CONTROL,
  // so that a normal VtlReturn gives them back unless the higher VTL changes them.
  const assist = vpAssistPage(p, vp, target);
  if (assist) {
    assist.writeBigUInt64LE(callerRax, HvVpAssistPage.VtlReturnX64Rax);
    assist.writeBigUInt64LE(callerRcx, HvVpAssistPage.VtlReturnX64Rcx);
  }
  resumeStub(vp);
  // The entered VTL takes its deliverable interrupts; lower VTLs' pending ones assert its VINA.
  evaluateInterrupts(p, vp);
  return { activeVtl: vp.activeVtl, vtlSwitch: ev };
}

/**
 * VtlReturn: back to the VTL the active VTL was entered from (rules/transitions.ts returnTarget;
 * the next lower enabled VTL when it was not entered from below). Control input bit 0 = fast return; other
 * bits RsvdZ (#UD). A normal return loads the lower VTL's RAX/RCX from VtlReturnX64Rax/Rcx of the
 * returning VTL's HV_VP_VTL_CONTROL; with no VP assist page enabled there is nothing to load. Then VINA
 * AutoReset and the re-evaluation of pending interrupts (rules/interrupts.ts): `reentry` is the switch
 * back up when a higher VTL still has a deliverable interrupt.
 */
export function vtlReturn(p: PartitionState, vp: VirtualProcessor, controlInput: bigint, instructionLength = 3n): GuestOutcome {
  assertVpCanAct(p, vp);
  const from = vp.activeVtl;
  const target = returnTarget(vp);
  if ((controlInput & ~1n) !== 0n || target === undefined || cpl(vp) !== 0 || inRealMode(vp)) return { exception: X64Exception.UD, activeVtl: from };
  const fast = (controlInput & 1n) === 1n;
  const assist = vpAssistPage(p, vp, from);
  advancePastVmcall(vp, instructionLength);
  beforeVtlReturn(p, vp, from);
  const ev = switchVtl(p, vp, target, HvVtlEntryReason.HvVtlEntryReserved, true, fast);
  if (!fast && assist) {
    if (is64Bit(vp)) {
      setReg(vp, R.HvX64RegisterRax, assist.readBigUInt64LE(HvVpAssistPage.VtlReturnX64Rax));
      setReg(vp, R.HvX64RegisterRcx, assist.readBigUInt64LE(HvVpAssistPage.VtlReturnX64Rcx));
    } else {
      // x86: VtlReturnX86Eax @16, VtlReturnX86Ecx @20, VtlReturnX86Edx @24 (tlfs-vsm.md §5.2).
      setReg(vp, R.HvX64RegisterRax, BigInt(assist.readUInt32LE(HvVpAssistPage.VtlReturnX86Eax)));
      setReg(vp, R.HvX64RegisterRcx, BigInt(assist.readUInt32LE(HvVpAssistPage.VtlReturnX86Ecx)));
      setReg(vp, R.HvX64RegisterRdx, BigInt(assist.readUInt32LE(HvVpAssistPage.VtlReturnX86Edx)));
    }
  }
  resumeStub(vp);
  // The lower VTL re-executes an access that intercepted, unless the higher VTL moved its RIP.
  const resumedAccess = resumePendingAccess(p, vp);
  // Pending interrupts are re-evaluated (tlfs-vsm.md §6.2, §10): a higher VTL's interrupt still
  // pending re-enters it at once (entry reason Interrupt; activeVtl then names it).
  const reentry = vp.activeVtl === target ? evaluateInterrupts(p, vp) : undefined;
  const o: GuestOutcome = { activeVtl: vp.activeVtl, vtlSwitch: ev, resumedAccess };
  if (reentry) o.reentry = reentry; // present only when it happened (no object spread on the switch path)
  return o;
}

/** The caller's RIP moves past the 3-byte VMCALL/VMMCALL before the switch (OpenVMM advance_ip). */
function advancePastVmcall(vp: VirtualProcessor, length: bigint): void {
  setReg(vp, R.HvX64RegisterRip, reg(vp, R.HvX64RegisterRip) + length);
}
