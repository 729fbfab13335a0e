// core, hypercalls: HvCallSendSyntheticClusterIpiEx (0x0015, simple with a variable header; TLFS
// HvCallSendSyntheticClusterIpiEx.md): Vector, TargetVtl, HV_VP_SET (Format and ValidBanksMask in the
// fixed header, BankContents as the variable header, as Linux struct hv_send_ipi_ex and KVM read it).
import { HvCallCode } from '../tlfs/hypercall';
import { HvStatus } from '../tlfs/status';
import { HvSendSyntheticClusterIpiExInputLayout } from '../tlfs/flush-ipi';
import type { HypercallHandler } from './handler';
import { deliverIpi, ipiTarget, variableHeaderQwords, vpSetTargets } from './ipi-common';

export const HvCallSendSyntheticClusterIpiEx: HypercallHandler = {
  name: 'HvCallSendSyntheticClusterIpiEx',
  code: HvCallCode.HvCallSendSyntheticClusterIpiEx,
  rep: false,
  inputSize: HvSendSyntheticClusterIpiExInputLayout.size,
  variableHeader: true,
  handle(ctx, input) {
    const i = HvSendSyntheticClusterIpiExInputLayout.decode(input);
    const vtl = ipiTarget(ctx, i.vector, i.targetVtl, i.rsvdZ);
    const banks = variableHeaderQwords(input, HvSendSyntheticClusterIpiExInputLayout.size, input.length);
    deliverIpi(ctx, vpSetTargets(ctx, i.format, i.validBanksMask, banks), vtl, i.vector);
    return { status: HvStatus.HV_STATUS_SUCCESS };
  },
};
