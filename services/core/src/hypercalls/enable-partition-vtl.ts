// core, hypercalls: HvCallEnablePartitionVtl (tlfs-hypercalls.md §2.4): enables a VTL for the partition.
import { HvCallCode } from '../tlfs/hypercall';
import type { HypercallHandler } from './handler';
import { HvStatus, hvFail } from '../tlfs/status';
import { HV_ENABLE_PARTITION_VTL_INPUT_SIZE, decodeEnablePartitionVtlInput } from '../tlfs/vsm';
import { selfChecks } from './common';

export const HvCallEnablePartitionVtl: HypercallHandler = {
  name: 'HvCallEnablePartitionVtl',
  code: HvCallCode.HvCallEnablePartitionVtl,
  rep: false,
  inputSize: HV_ENABLE_PARTITION_VTL_INPUT_SIZE,
  handle(ctx, input) {
    const i = decodeEnablePartitionVtlInput(input);
    selfChecks(ctx, i.targetPartitionId);
    if (i.rsvdZ !== 0n) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'RsvdZ bytes of the input are set');
    ctx.partition.enablePartitionVtl(ctx.callerVtl, i.targetVtl, i.flags);
    return { status: HvStatus.HV_STATUS_SUCCESS };
  },
};
