// core, hypercalls: checks several VSM hypercalls share (partition/VP "self" rules, HV_INPUT_VTL).
import type { VirtualProcessor } from '../partition';
import { type Vtl, isVtl } from '../vtl-array';
import { HvStatus, hvFail } from '../tlfs/status';
import { HV_PARTITION_ID_SELF, HV_VP_INDEX_SELF, decodeInputVtl } from '../tlfs/vsm';
import type { HypercallContext } from './handler';

/** Resolves the target VTL of Get/SetVpRegisters (HV_INPUT_VTL) under the cross-VTL rule. */
export function targetVtlOf(ctx: HypercallContext, inputVtl: number): Vtl {
  const iv = decodeInputVtl(inputVtl);
  if (iv.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'HV_INPUT_VTL reserved bits are set');
  if (!iv.useTargetVtl) return ctx.callerVtl;
  if (!isVtl(iv.targetVtl)) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `target VTL ${iv.targetVtl} is not implemented`);
  // A VTL may access its own and lower VTLs' registers, never a higher VTL's (tlfs-hypercalls.md §2.7).
  if (iv.targetVtl > ctx.callerVtl) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${ctx.callerVtl} may not access VTL ${iv.targetVtl} registers`);
  return iv.targetVtl;
}

/** A guest names only its own partition; a VP index is its own (HV_VP_INDEX_SELF) or an existing one. */
export function selfChecks(ctx: HypercallContext, partitionId: bigint, vpIndex?: number): VirtualProcessor {
  if (partitionId !== HV_PARTITION_ID_SELF) hvFail(HvStatus.HV_STATUS_INVALID_PARTITION_ID, 'only HV_PARTITION_ID_SELF is accepted from a guest');
  if (vpIndex === undefined) return ctx.vp;
  if (vpIndex === HV_VP_INDEX_SELF) return ctx.vp;
  return ctx.partition.vp(vpIndex);
}
