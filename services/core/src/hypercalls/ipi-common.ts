// core, hypercalls: what the synthetic cluster IPI hypercalls share (TLFS HvCallSendSyntheticClusterIpi.md,
// HvCallSendSyntheticClusterIpiEx.md). A fixed interrupt `Vector` (0x10..0xFF) goes to the VPs named,
// in the VTL TargetVtl names (HV_INPUT_VTL; the caller's own VTL when UseTargetVtl is 0), through the
// interrupt path (rules/interrupts.ts requestInterrupt: on the KVM agent the target VP's LAPIC of
// that VTL; a target VP running a lower VTL is preempted into that VTL, entry reason Interrupt). Statuses, checked in this order: the padding byte OpenVMM reads as flags and the other
// padding bytes non-zero, or HV_INPUT_VTL reserved bits -> INVALID_PARAMETER (OpenVMM); a target VTL
// above the caller -> ACCESS_DENIED (OpenVMM target_vtl_no_higher: a VTL may interrupt its own level
// and lower ones); a vector outside 0x10..0xFF -> INVALID_HYPERCALL_INPUT (KVM's status); a malformed
// HV_VP_SET -> INVALID_HYPERCALL_INPUT (KVM). VPs that do not exist, or where the target VTL is not
// enabled, are skipped (KVM skips unknown VP indices).
import type { VirtualProcessor } from '../partition';
import { type Vtl, isVtl } from '../vtl-array';
import { HvStatus, hvFail } from '../tlfs/status';
import { decodeInputVtl } from '../tlfs/vsm';
import { HV_IPI_HIGH_VECTOR, HV_IPI_LOW_VECTOR, decodeVpSet } from '../tlfs/flush-ipi';
import type { HypercallContext } from './handler';
import { requestInterrupt } from '../rules/interrupts';

/** The QWORDs of a variable header between byte `from` and `to` of the input. */
export function variableHeaderQwords(input: Buffer, from: number, to: number): bigint[] {
  const out: bigint[] = [];
  for (let o = from; o + 8 <= to; o += 8) out.push(input.readBigUInt64LE(o));
  return out;
}

/** Checks and resolves an IPI's target VTL and vector. */
export function ipiTarget(ctx: HypercallContext, vector: number, inputVtl: number, rsvdZ: bigint): Vtl {
  if (rsvdZ !== 0n) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'the padding after TargetVtl is not zero');
  const iv = decodeInputVtl(inputVtl);
  if (iv.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'HV_INPUT_VTL reserved bits are set');
  const vtl = iv.useTargetVtl ? iv.targetVtl : ctx.callerVtl;
  if (vtl > ctx.callerVtl) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${ctx.callerVtl} may not interrupt VTL ${vtl}`);
  if (!isVtl(vtl)) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `VTL ${vtl} is not implemented`);
  if (vector < HV_IPI_LOW_VECTOR || vector > HV_IPI_HIGH_VECTOR)
    hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, `vector 0x${vector.toString(16)} is outside 0x10..0xFF`);
  return vtl;
}

/** The VPs of a sparse or all-VP HV_VP_SET that exist. */
export function vpSetTargets(ctx: HypercallContext, format: bigint, validBanksMask: bigint, banks: bigint[]): VirtualProcessor[] {
  const d = decodeVpSet(format, validBanksMask, banks);
  if ('error' in d) hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, d.error);
  const vps = ctx.partition.vps;
  if (d.vps === 'all') return [...vps];
  return d.vps.filter((i) => i < vps.length).map((i) => vps[i]!);
}

/** Raises `vector` in VTL `vtl` of every target VP where that VTL is enabled; returns how many got it. */
export function deliverIpi(ctx: HypercallContext, targets: VirtualProcessor[], vtl: Vtl, vector: number): number {
  let n = 0;
  for (const t of targets) {
    if (!t.vtls.get(vtl).enabled) continue;
    requestInterrupt(ctx.partition, t, vtl, vector, { autoEoi: false });
    n++;
  }
  return n;
}
