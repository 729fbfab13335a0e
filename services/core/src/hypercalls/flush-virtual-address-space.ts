// core, hypercalls: HvCallFlushVirtualAddressSpace (0x0002, simple; TLFS HvCallFlushVirtualAddressSpace.md).
import { HvCallCode } from '../tlfs/hypercall';
import { HvFlushVirtualAddressSpaceInputLayout } from '../tlfs/flush-ipi';
import type { HypercallHandler } from './handler';
import { checkFlushFlags, flush, flushTargets } from './flush-common';

export const HvCallFlushVirtualAddressSpace: HypercallHandler = {
  name: 'HvCallFlushVirtualAddressSpace',
  code: HvCallCode.HvCallFlushVirtualAddressSpace,
  rep: false,
  inputSize: HvFlushVirtualAddressSpaceInputLayout.size,
  handle(ctx, input) {
    const i = HvFlushVirtualAddressSpaceInputLayout.decode(input);
    checkFlushFlags(i.flags, false);
    return flush(ctx, flushTargets(ctx, i.flags, { mask: i.processorMask }));
  },
};
