// core, hypercalls: HvCallEnableVpVtl (tlfs-hypercalls.md §2.5): enables a VTL on one VP with its initial context.
import { HvCallCode } from '../tlfs/hypercall';
import type { HypercallHandler } from './handler';
import { HvStatus, hvFail } from '../tlfs/status';
import { HV_ENABLE_VP_VTL_INPUT_SIZE, decodeEnableVpVtlInput } from '../tlfs/vsm';
import { selfChecks } from './common';

export const HvCallEnableVpVtl: HypercallHandler = {
  name: 'HvCallEnableVpVtl',
  code: HvCallCode.HvCallEnableVpVtl,
  rep: false,
  inputSize: HV_ENABLE_VP_VTL_INPUT_SIZE,
  handle(ctx, input) {
    const i = decodeEnableVpVtlInput(input);
    const vp = selfChecks(ctx, i.targetPartitionId, i.vpIndex);
    if (i.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'RsvdZ bytes of the input are set');
    ctx.partition.enableVpVtl(ctx.callerVtl, vp.index, i.targetVtl, i.vpVtlContext, ctx.vp.index);
    return { status: HvStatus.HV_STATUS_SUCCESS };
  },
};
