// core: HvCallVtlCall / HvCallVtlReturn (tlfs-vsm.md §6, tlfs-hypercalls.md §2.6). Invalid calls
// inject #UD into the caller and switch nothing.
import { GuestOutcome, Partition, VirtualProcessor, X64Exception } from './partition';
import { HvRegisterName as R } from './tlfs/registers';
import { HvVpAssistPage, HvVtlEntryReason } from './tlfs/vsm';
import { resumeStub } from './stub-return';
import { resumePendingAccess } from './access';

/**
 * VtlCall: switch to the next higher VTL enabled on the VP with entry reason HvVtlEntryVtlCall.
 * `controlInput` is the VTL call control input (RAX at the VMCALL after the stub): must be 0.
 */
export function vtlCall(p: Partition, vp: VirtualProcessor, controlInput: bigint, instructionLength = 3n): GuestOutcome {
  const from = vp.activeVtl;
  const target = vp.nextHigherVtl();
  if (controlInput !== 0n || target === undefined || p.cpl(vp) !== 0 || p.inRealMode(vp)) return { exception: X64Exception.UD, activeVtl: from };
  const [callerRax, callerRcx] = vp.callSiteRaxRcx ?? [p.reg(vp, R.HvX64RegisterRax), p.reg(vp, R.HvX64RegisterRcx)];
  advancePastVmcall(p, vp, instructionLength);
  const ev = p.switchVtl(vp, target, HvVtlEntryReason.HvVtlEntryVtlCall, false);
  // Implementation choice (unconfirmed in the TLFS): the hypervisor records the caller's RAX/RCX
  // (as they were before the call sequence clobbered them) in the entered VTL's HV_VP_VTL_CONTROL,
  // so that a normal VtlReturn gives them back unless the higher VTL changes them.
  const assist = p.vpAssistPage(vp, target);
  if (assist) {
    assist.writeBigUInt64LE(callerRax, HvVpAssistPage.VtlReturnX64Rax);
    assist.writeBigUInt64LE(callerRcx, HvVpAssistPage.VtlReturnX64Rcx);
  }
  resumeStub(p, vp);
  return { activeVtl: vp.activeVtl, vtlSwitch: ev };
}

/**
 * VtlReturn: back to the next lower VTL enabled on the VP. Control input bit 0 = fast return; other
 * bits RsvdZ (#UD). A normal return loads the lower VTL's RAX/RCX from VtlReturnX64Rax/Rcx of the
 * returning VTL's HV_VP_VTL_CONTROL; with no VP assist page enabled there is nothing to load.
 */
export function vtlReturn(p: Partition, vp: VirtualProcessor, controlInput: bigint, instructionLength = 3n): GuestOutcome {
  const from = vp.activeVtl;
  const target = vp.nextLowerVtl();
  if ((controlInput & ~1n) !== 0n || target === undefined || p.cpl(vp) !== 0 || p.inRealMode(vp)) return { exception: X64Exception.UD, activeVtl: from };
  const fast = (controlInput & 1n) === 1n;
  const assist = p.vpAssistPage(vp, from);
  advancePastVmcall(p, vp, instructionLength);
  const ev = p.switchVtl(vp, target, HvVtlEntryReason.HvVtlEntryReserved, true, fast);
  if (!fast && assist) {
    if (p.is64Bit(vp)) {
      p.setReg(vp, R.HvX64RegisterRax, assist.readBigUInt64LE(HvVpAssistPage.VtlReturnX64Rax));
      p.setReg(vp, R.HvX64RegisterRcx, assist.readBigUInt64LE(HvVpAssistPage.VtlReturnX64Rcx));
    } else {
      // x86: VtlReturnX86Eax @16, VtlReturnX86Ecx @20, VtlReturnX86Edx @24 (tlfs-vsm.md §5.2).
      p.setReg(vp, R.HvX64RegisterRax, BigInt(assist.readUInt32LE(HvVpAssistPage.VtlReturnX64Rax)));
      p.setReg(vp, R.HvX64RegisterRcx, BigInt(assist.readUInt32LE(HvVpAssistPage.VtlReturnX64Rax + 4)));
      p.setReg(vp, R.HvX64RegisterRdx, BigInt(assist.readUInt32LE(HvVpAssistPage.VtlReturnX64Rcx)));
    }
  }
  resumeStub(p, vp);
  // The lower VTL re-executes an access that intercepted, unless the higher VTL moved its RIP.
  const resumedAccess = resumePendingAccess(p, vp);
  return { activeVtl: vp.activeVtl, vtlSwitch: ev, resumedAccess };
}

/** The caller's RIP moves past the 3-byte VMCALL/VMMCALL before the switch (OpenVMM advance_ip). */
function advancePastVmcall(p: Partition, vp: VirtualProcessor, length: bigint): void {
  p.setReg(vp, R.HvX64RegisterRip, p.reg(vp, R.HvX64RegisterRip) + length);
}
