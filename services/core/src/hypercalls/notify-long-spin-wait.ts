// core, hypercalls: HvCallNotifyLongSpinWait (0x0008, simple; TLFS HvCallNotifyLongSpinWait.md): an
// advisory scheduling hint (SpinCount, 4 bytes, then 4 bytes RsvdZ). "There is no error status for this
// hypercall, only HV_STATUS_SUCCESS" — so the RsvdZ bytes are not checked either (the dispatcher's ABI
// checks of the input value still apply). Linux issues it as a fast call (RDX = SpinCount).
import { HvCallCode } from '../tlfs/hypercall';
import { HvStatus } from '../tlfs/status';
import { HvNotifyLongSpinWaitInputLayout } from '../tlfs/flush-ipi';
import type { HypercallHandler } from './handler';

export const HvCallNotifyLongSpinWait: HypercallHandler = {
  name: 'HvCallNotifyLongSpinWait',
  code: HvCallCode.HvCallNotifyLongSpinWait,
  rep: false,
  inputSize: HvNotifyLongSpinWaitInputLayout.size,
  handle() {
    return { status: HvStatus.HV_STATUS_SUCCESS };
  },
};
