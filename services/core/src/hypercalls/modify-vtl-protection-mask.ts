// core, hypercalls: HvCallModifyVtlProtectionMask (tlfs-hypercalls.md §2.3), rep: a higher VTL restricts lower VTLs' access to pages.
import { HvCallCode } from '../tlfs/hypercall';
import type { HypercallHandler } from './handler';
import { HvStatus, hvFail } from '../tlfs/status';
import { HV_PARTITION_ID_SELF, decodeInputVtl } from '../tlfs/vsm';
import { HV_MODIFY_VTL_PROTECTION_MASK_HEADER_SIZE, decodeModifyVtlProtectionMaskHeader } from '../tlfs/message';

export const HvCallModifyVtlProtectionMask: HypercallHandler = {
  name: 'HvCallModifyVtlProtectionMask',
  code: HvCallCode.HvCallModifyVtlProtectionMask,
  rep: true,
  inputSize: HV_MODIFY_VTL_PROTECTION_MASK_HEADER_SIZE,
  repInputElementSize: 8,
  handle(ctx, input, rep) {
    const h = decodeModifyVtlProtectionMaskHeader(input);
    // OpenHCL's checks (tlfs-hypercalls.md §2.3): partition != SELF -> ACCESS_DENIED; TargetVtl names
    // the protecting VTL (default: the caller's); VTL0 -> INVALID_PARAMETER; above the caller ->
    // ACCESS_DENIED.
    if (h.targetPartitionId !== HV_PARTITION_ID_SELF) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, 'only HV_PARTITION_ID_SELF');
    if (h.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'RsvdZ bytes of the header are set');
    const iv = decodeInputVtl(h.targetVtl);
    if (iv.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'HV_INPUT_VTL reserved bits are set');
    const target = iv.useTargetVtl ? iv.targetVtl : ctx.callerVtl;
    if (target > ctx.callerVtl) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${ctx.callerVtl} may not set VTL ${target}'s protections`);
    const pages = ctx.partition.memory.sizeBytes >> 12n;
    // Rep semantics: elements in order; the first non-RAM page stops the call, earlier ones apply.
    const runs: { start: bigint; count: bigint }[] = [];
    let done = rep.start;
    let failed = false;
    for (let i = rep.start; i < rep.count; i++) {
      const gpfn = input.readBigUInt64LE(HV_MODIFY_VTL_PROTECTION_MASK_HEADER_SIZE + 8 * i);
      if (gpfn >= pages) {
        failed = true;
        break;
      }
      const last = runs[runs.length - 1];
      if (last && last.start + last.count === gpfn) last.count++;
      else runs.push({ start: gpfn, count: 1n });
      done = i + 1;
    }
    if (runs.length) ctx.partition.modifyVtlProtectionMask(ctx.callerVtl, target, h.mapFlags, runs);
    else ctx.partition.modifyVtlProtectionMask(ctx.callerVtl, target, h.mapFlags, []); // state checks still apply
    if (failed) return { status: HvStatus.HV_STATUS_INVALID_PARAMETER, repsCompleted: done };
    return { status: HvStatus.HV_STATUS_SUCCESS, repsCompleted: rep.count };
  },
};
