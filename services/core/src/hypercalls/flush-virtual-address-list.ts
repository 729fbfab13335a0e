// core, hypercalls: HvCallFlushVirtualAddressList (0x0003, rep; TLFS HvCallFlushVirtualAddressList.md):
// the fixed header of HvCallFlushVirtualAddressSpace, then GVA ranges (8 bytes each: the base GVA, its
// low 12 bits the number of further pages). Invalid GVAs are ignored (TLFS), so every element completes.
import { HvCallCode } from '../tlfs/hypercall';
import { HvFlushVirtualAddressSpaceInputLayout } from '../tlfs/flush-ipi';
import type { HypercallHandler } from './handler';
import { checkFlushFlags, flush, flushTargets } from './flush-common';

export const HvCallFlushVirtualAddressList: HypercallHandler = {
  name: 'HvCallFlushVirtualAddressList',
  code: HvCallCode.HvCallFlushVirtualAddressList,
  rep: true,
  inputSize: HvFlushVirtualAddressSpaceInputLayout.size,
  repInputElementSize: 8,
  handle(ctx, input, rep) {
    const i = HvFlushVirtualAddressSpaceInputLayout.decode(input);
    checkFlushFlags(i.flags, true);
    return flush(ctx, flushTargets(ctx, i.flags, { mask: i.processorMask }), rep);
  },
};
