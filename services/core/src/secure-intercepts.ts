// core: secure intercepts other than memory accesses (TLFS vsm.md "Secure Intercepts"; tlfs-vsm.md
// §8): a lower VTL's write of a register a higher VTL locked (HvX64RegisterCrInterceptControl), an
// MSR access it intercepts, a VP startup it intercepts (InterceptVpStartup). The instruction does not
// complete (the VP stays on it, nothing is written); the message goes to the intercepting VTL's SINT0
// and that VTL is entered with entry reason Interrupt, exactly as a memory intercept on route
// HIGHER_VTL (access.ts). Routes: 'vtl' and 'both' deliver it so (with 'both' monitors observe the
// record); on route 'monitor' the record is published to monitors with needsReply unset and the
// intercept still goes to the VTL: a monitor answers memory intercepts only (the VP is never
// suspended on one of these), see README "Secure register intercepts".
import { settleInterrupts, withInterruptsDeferred } from './rules/interrupts';
import type { PartitionState } from './state/partition';
import type { VirtualProcessor } from './state/vp';
import type { AccessOutcome, InterceptRecord } from './outcomes';
import type { AccessKind } from './protections';
import type { Vtl } from './vtl-array';
import { HvStatus, hvFail } from './tlfs/status';
import { HvVtlEntryReason } from './tlfs/vsm';
import {
  HV_SYNIC_INTERCEPTION_SINT_INDEX,
  HvInterceptAccessType,
  type HvInterceptAccessTypeValue,
  type HvX64InterceptMessageHeader,
  encodeHvMessage,
} from './tlfs/message';
import { HvRegisterName as R, reg128ToSegment } from './tlfs/registers';
import { cpl, inRealMode, reg } from './rules/processor';
import { postMessage } from './rules/synic';
import { switchVtl } from './rules/transitions';
import { resumeStub } from './stub-return';

/** HV_INTERCEPT_ACCESS_TYPE of an access kind (tlfs-intercepts.md §6.3). */
export const INTERCEPT_ACCESS_TYPE: Record<AccessKind, HvInterceptAccessTypeValue> = {
  read: HvInterceptAccessType.HV_INTERCEPT_ACCESS_READ,
  write: HvInterceptAccessType.HV_INTERCEPT_ACCESS_WRITE,
  execute: HvInterceptAccessType.HV_INTERCEPT_ACCESS_EXECUTE,
};

/** HV_X64_INTERCEPT_MESSAGE_HEADER for the VP's state now (RIP on the intercepted instruction). */
export function interceptHeader(vp: VirtualProcessor, kind: AccessKind, instructionLength = 0): HvX64InterceptMessageHeader {
  const cs = vp.vtls.get(vp.activeVtl).regs.get(R.HvX64RegisterCs);
  return {
    vpIndex: vp.index,
    instructionLength,
    interceptAccessType: INTERCEPT_ACCESS_TYPE[kind],
    executionState: {
      cpl: cpl(vp),
      cr0Pe: !inRealMode(vp),
      cr0Am: (reg(vp, R.HvX64RegisterCr0) & (1n << 18n)) !== 0n,
      eferLma: (reg(vp, R.HvX64RegisterEfer) & 0x400n) !== 0n,
      debugActive: (reg(vp, R.HvX64RegisterDr7) & 0xffn) !== 0n,
      interruptionPending: false,
      vtl: vp.activeVtl,
    },
    csSegment: cs ? reg128ToSegment(cs) : { base: 0n, limit: 0, selector: 0, attributes: 0 },
    rip: reg(vp, R.HvX64RegisterRip),
    rflags: reg(vp, R.HvX64RegisterRflags),
  };
}

/**
 * Raises a secure intercept of the VP's active VTL to `interceptingVtl` with `payload` as the
 * HV_MESSAGE of `messageType` (OriginationId 0, as OpenHCL sends). Returns the intercepted outcome
 * (heldBack when the intercepting VTL's SINT0 queue is full: nothing changed, repeat later).
 */
export function raiseSecureIntercept(
  p: PartitionState,
  vp: VirtualProcessor,
  interceptingVtl: Vtl,
  messageType: number,
  payload: Buffer,
  kind: AccessKind,
): AccessOutcome {
  if (vp.suspendedOn !== null) hvFail(HvStatus.HV_STATUS_INVALID_VP_STATE, `VP ${vp.index} is suspended on intercept ${vp.suspendedOn}; it raises no other`);
  const message = encodeHvMessage({ messageType, payloadSize: payload.length, messageFlags: 0, originationId: 0n }, payload);
  const rec: InterceptRecord = {
    id: p.intercepts.allocateId(),
    vpIndex: vp.index,
    vtl: vp.activeVtl,
    protectingVtl: interceptingVtl,
    kind,
    gpa: 0n,
    length: 0,
    generation: p.viewGeneration,
    message,
    needsReply: false,
    timeUnixUs: p.clock.nowUnixUs(),
    deliveries: 0,
  };
  p.intercepts.raised(rec);
  // SINT0's interrupt is evaluated once the VP entered the intercepting VTL (rules/interrupts.ts).
  const posted = withInterruptsDeferred(p, vp, () => postMessage(p, vp, interceptingVtl, HV_SYNIC_INTERCEPTION_SINT_INDEX, message));
  if (posted === 'full') return { status: 'intercepted', intercept: rec, awaitingMonitor: false, heldBack: true };
  if (p.interceptRoute !== 'vtl') p.intercepts.publish(rec);
  const ev = switchVtl(p, vp, interceptingVtl, HvVtlEntryReason.HvVtlEntryInterrupt, false);
  resumeStub(vp);
  settleInterrupts(p, vp);
  return { status: 'intercepted', intercept: rec, vtlSwitch: ev, awaitingMonitor: false };
}
