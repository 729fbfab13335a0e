// core, hypercalls: HvCallSendSyntheticClusterIpi (0x000B, simple; TLFS HvCallSendSyntheticClusterIpi.md).
// Linux issues it as a fast call: RDX = Vector | TargetVtl << 32, R8 = ProcessorMask. See ipi-common.ts.
import { HvCallCode } from '../tlfs/hypercall';
import { HvStatus } from '../tlfs/status';
import { HvSendSyntheticClusterIpiInputLayout, vpsOfMask } from '../tlfs/flush-ipi';
import type { HypercallHandler } from './handler';
import { deliverIpi, ipiTarget } from './ipi-common';

export const HvCallSendSyntheticClusterIpi: HypercallHandler = {
  name: 'HvCallSendSyntheticClusterIpi',
  code: HvCallCode.HvCallSendSyntheticClusterIpi,
  rep: false,
  inputSize: HvSendSyntheticClusterIpiInputLayout.size,
  handle(ctx, input) {
    const i = HvSendSyntheticClusterIpiInputLayout.decode(input);
    const vtl = ipiTarget(ctx, i.vector, i.targetVtl, i.rsvdZ);
    const vps = ctx.partition.vps;
    deliverIpi(
      ctx,
      vpsOfMask(i.processorMask)
        .filter((n) => n < vps.length)
        .map((n) => vps[n]!),
      vtl,
      i.vector,
    );
    return { status: HvStatus.HV_STATUS_SUCCESS };
  },
};
