// core, hypercalls: the hypercalls this hypervisor implements, as one explicit list, and the
// VMCALL path (executeVmcall) that reads the caller's registers, dispatches, writes the output block
// and the result value. VtlCall/VtlReturn are handled in vtl-switch.ts because their failures are
// #UD, not statuses. Adding a hypercall: one file here with its handler, one line in the list below.
import { type GuestOutcome, type Partition, type VirtualProcessor, X64Exception } from '../partition';
import { HvError, HvStatus } from '../tlfs/status';
import { HvCallCode, HvHypercallInputLayout, decodeHypercallInput, encodeHypercallInput, encodeHypercallResult } from '../tlfs/hypercall';
import { RegisterValueMemo, registerValue } from '../rules/processor';
import { HvRegisterName as R } from '../tlfs/registers';
import { type HypercallCallSite, vtlCall, vtlReturn } from '../vtl-switch';
import type { AccessOutcome } from '../access';
import { type FastOutput, HypercallDispatcher, type HypercallInvocation } from './dispatcher';
import type { HypercallHandler } from './handler';
import { HvCallEnablePartitionVtl } from './enable-partition-vtl';
import { HvCallEnableVpVtl } from './enable-vp-vtl';
import { HvCallGetVpRegisters } from './get-vp-registers';
import { HvCallSetVpRegisters } from './set-vp-registers';
import { HvCallModifyVtlProtectionMask } from './modify-vtl-protection-mask';
import { HvCallSignalEvent } from './signal-event';
import { HvCallPostMessage } from './post-message';
import { HvCallFlushVirtualAddressSpace } from './flush-virtual-address-space';
import { HvCallFlushVirtualAddressList } from './flush-virtual-address-list';
import { HvCallFlushVirtualAddressSpaceEx } from './flush-virtual-address-space-ex';
import { HvCallFlushVirtualAddressListEx } from './flush-virtual-address-list-ex';
import { HvCallSendSyntheticClusterIpi } from './send-synthetic-cluster-ipi';
import { HvCallSendSyntheticClusterIpiEx } from './send-synthetic-cluster-ipi-ex';
import { HvCallNotifyLongSpinWait } from './notify-long-spin-wait';
import { HvCallTranslateVirtualAddress } from './translate-virtual-address';
import { HvCallTranslateVirtualAddressEx } from './translate-virtual-address-ex';
import { writeFastBlock } from './xmm';
import { settleInterrupts } from '../rules/interrupts';
import type { Vtl } from '../vtl-array';
import { HvCallStartVirtualProcessor } from './start-virtual-processor';
import { HvCallGetVpIndexFromApicId } from './get-vp-index-from-apic-id';

export type { HypercallContext, HandlerResult, HypercallHandler } from './handler';
export { HypercallDispatcher } from './dispatcher';
export type { HypercallInvocation, DispatchResult, FastOutput } from './dispatcher';

/** Every hypercall the dispatcher serves (besides VtlCall/VtlReturn). */
export const VSM_HYPERCALLS: readonly HypercallHandler[] = [
  HvCallEnablePartitionVtl,
  HvCallEnableVpVtl,
  HvCallGetVpRegisters,
  HvCallSetVpRegisters,
  HvCallModifyVtlProtectionMask,
  HvCallSignalEvent,
  HvCallPostMessage,
  HvCallFlushVirtualAddressSpace,
  HvCallFlushVirtualAddressList,
  HvCallFlushVirtualAddressSpaceEx,
  HvCallFlushVirtualAddressListEx,
  HvCallSendSyntheticClusterIpi,
  HvCallSendSyntheticClusterIpiEx,
  HvCallNotifyLongSpinWait,
  HvCallTranslateVirtualAddress,
  HvCallTranslateVirtualAddressEx,
  HvCallStartVirtualProcessor,
  HvCallGetVpIndexFromApicId,
];

const VSM_DISPATCHER = new HypercallDispatcher(VSM_HYPERCALLS);

/** Codes this hypervisor implements (the capability report falls out of the list above). */
export function implementedHypercalls(): number[] {
  return [...VSM_DISPATCHER.codes(), HvCallCode.HvCallVtlCall, HvCallCode.HvCallVtlReturn].sort((a, b) => a - b);
}

export interface HypercallOutcome extends GuestOutcome {
  resultValue: bigint;
  /**
   * Set when a parameter block is on a page the caller's VTL may not read (input) or write
   * (output): the hypervisor raises a memory intercept instead of completing the call
   * (tlfs-hypercalls.md §1.1); RIP and RAX are unchanged.
   */
  parameterIntercept?: AccessOutcome;
  /**
   * The call returned early for continuation (HandlerResult.continuation): RIP stays on the
   * instruction, RAX is unchanged, RCX (EDX:EAX) holds `controlAfter`; the guest re-executes it.
   */
  continuation?: boolean;
  /** The input value in RCX (EDX:EAX) after the call: rewritten with the new rep start index on a continuation. */
  controlAfter?: bigint;
  /** XMM fast output written into RDX, R8, XMM0..XMM5 (offset in that 112-byte block, and the bytes). */
  fastOutput?: FastOutput;
}

const FAST = HvHypercallInputLayout.mask('fast');
const fastBit = new RegisterValueMemo((rcx) => (rcx.low & FAST) !== 0n, false);
/**
 * Whether the hypercall input value in RCX has Fast set (tlfs-hypercalls.md §1.2): what a platform
 * whose XMM registers live outside the core (the KVM agent) checks before a call, to move them in.
 */
export function hypercallInputIsFast(vp: VirtualProcessor): boolean {
  return fastBit.of(registerValue(vp, R.HvX64RegisterRcx));
}

/** Reads RCX/RDX/R8 (64-bit callers) or EDX:EAX/EBX:ECX/EDI:ESI (32-bit) (tlfs-hypercalls.md §1.4). */
export function hypercallRegisters(p: Partition, vp: VirtualProcessor): HypercallInvocation {
  if (p.is64Bit(vp)) return { control: p.reg(vp, R.HvX64RegisterRcx), inputGpa: p.reg(vp, R.HvX64RegisterRdx), outputGpa: p.reg(vp, R.HvX64RegisterR8) };
  const pair = (hi: number, lo: number) => ((p.reg(vp, hi) & 0xffffffffn) << 32n) | (p.reg(vp, lo) & 0xffffffffn);
  return {
    control: pair(R.HvX64RegisterRdx, R.HvX64RegisterRax),
    inputGpa: pair(R.HvX64RegisterRbx, R.HvX64RegisterRcx),
    outputGpa: pair(R.HvX64RegisterRdi, R.HvX64RegisterRsi),
  };
}

/** Instruction lengths 0..15 as bigints, made once (RIP arithmetic of every call). */
const INSTRUCTION_LENGTHS: readonly bigint[] = Array.from({ length: 16 }, (_, i) => BigInt(i));

/**
 * Executes the VMCALL/VMMCALL instruction of the VP's active VTL with the registers it holds.
 * Writes the result value into RAX (EDX:EAX) as the TLFS specifies; returns the outcome.
 * `callSite`: the caller's RAX/RCX when the instruction runs inside a hypercall-page stub.
 */
export function executeVmcall(p: Partition, vp: VirtualProcessor, opts: { instructionLength?: number; callSite?: HypercallCallSite } = {}): HypercallOutcome {
  const insnLen = INSTRUCTION_LENGTHS[opts.instructionLength ?? 3] ?? BigInt(opts.instructionLength ?? 3);
  // A VP suspended on a monitor intercept executes nothing (its dispatcher errors would otherwise
  // become the call's status: a suspended VP completing a VMCALL).
  p.assertVpCanAct(vp);
  if (p.spec.architecture !== 'x64')
    throw new HvError(HvStatus.HV_STATUS_FEATURE_UNAVAILABLE, 'arm64 hypercalls (HVC #0/#2/#3) are not modelled by this emulator; only memory intercepts are');
  const callerVtl = vp.activeVtl;
  // Legal environment: CPL0 in protected mode; otherwise #UD (tlfs-hypercalls.md §1.1).
  if (p.cpl(vp) !== 0 || p.inRealMode(vp)) return { exception: X64Exception.UD, activeVtl: callerVtl, resultValue: 0n };
  const inv = hypercallRegisters(p, vp);
  const input = decodeHypercallInput(inv.control);
  if (input.callCode === HvCallCode.HvCallVtlCall || input.callCode === HvCallCode.HvCallVtlReturn) {
    // Every bit of the input value other than the call code must be 0, else #UD (OpenVMM).
    if (inv.control !== BigInt(input.callCode)) return { exception: X64Exception.UD, activeVtl: callerVtl, resultValue: 0n };
    // The VTL control input is in RAX for 64-bit callers and in ECX for 32-bit callers (§2.6).
    const controlInput = p.is64Bit(vp) ? p.reg(vp, R.HvX64RegisterRax) : p.reg(vp, R.HvX64RegisterRcx) & 0xffffffffn;
    const o: HypercallOutcome = Object.assign(
      input.callCode === HvCallCode.HvCallVtlCall ? vtlCall(p, vp, controlInput, insnLen, opts.callSite) : vtlReturn(p, vp, controlInput, insnLen),
      { resultValue: 0n },
    );
    return o;
  }
  // Interrupts requested for this VP while it executes the call are evaluated once it completed
  // (withInterruptsDeferred, inlined: no closure per call on the hypercall path).
  const prevExecuting = p.executingVp;
  p.executingVp = vp;
  let o: HypercallOutcome;
  try {
    o = dispatchVmcall(p, vp, inv, input, callerVtl, insnLen);
  } finally {
    p.executingVp = prevExecuting;
  }
  const ev = settleInterrupts(p, vp);
  if (ev) return { ...o, activeVtl: vp.activeVtl, ...(o.vtlSwitch ? { reentry: ev } : { vtlSwitch: ev }) };
  return o;
}

function dispatchVmcall(
  p: Partition,
  vp: VirtualProcessor,
  inv: HypercallInvocation,
  input: ReturnType<typeof decodeHypercallInput>,
  callerVtl: Vtl,
  insnLen: bigint,
): HypercallOutcome {
  const d = VSM_DISPATCHER.dispatch(p, vp, inv, input);
  if ('parameterIntercept' in d)
    return {
      activeVtl: vp.activeVtl,
      vtlSwitch: d.parameterIntercept.status === 'intercepted' ? d.parameterIntercept.vtlSwitch : undefined,
      resultValue: 0n,
      parameterIntercept: d.parameterIntercept,
    };
  const { status, repsCompleted, output, outputOffset } = d;
  const resultValue = encodeHypercallResult(status, repsCompleted);
  const done = status === HvStatus.HV_STATUS_SUCCESS || d.continuation === true;
  if (done && d.fastOutput) writeFastBlock(vp, d.fastOutput.offset, d.fastOutput.bytes);
  else if (done && output && output.length > 0 && !input.fast)
    p.writeView(callerVtl, vp.index, outputOffset ? inv.outputGpa + BigInt(outputOffset) : inv.outputGpa, output);
  if (d.continuation) {
    // Returned early (tlfs-hypercalls.md §1.4 rule 2): the input value with the new rep start index
    // goes back into RCX (EDX:EAX); RIP stays on the instruction and RAX is not written.
    const controlAfter = encodeHypercallInput({ ...input, repStartIndex: repsCompleted });
    if (p.is64Bit(vp)) p.setReg(vp, R.HvX64RegisterRcx, controlAfter);
    else {
      p.setReg(vp, R.HvX64RegisterRax, controlAfter & 0xffffffffn);
      p.setReg(vp, R.HvX64RegisterRdx, controlAfter >> 32n);
    }
    return { activeVtl: vp.activeVtl, resultValue: 0n, continuation: true, controlAfter };
  }
  // The VMCALL completed: RIP moves past it (3 bytes; 0 when the platform's exit already did).
  p.setReg(vp, R.HvX64RegisterRip, p.reg(vp, R.HvX64RegisterRip) + insnLen);
  if (p.is64Bit(vp)) p.setReg(vp, R.HvX64RegisterRax, resultValue);
  else {
    p.setReg(vp, R.HvX64RegisterRax, resultValue & 0xffffffffn);
    p.setReg(vp, R.HvX64RegisterRdx, resultValue >> 32n);
  }
  // fastOutput only when written (set after the literal: an object spread here cost about a
  // microsecond per hypercall, a fifth of the agent's JS on the hypercall path).
  const out: HypercallOutcome = { activeVtl: vp.activeVtl, resultValue, controlAfter: inv.control };
  if (done && d.fastOutput) out.fastOutput = d.fastOutput;
  return out;
}
