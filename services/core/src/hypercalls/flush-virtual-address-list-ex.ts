// core, hypercalls: HvCallFlushVirtualAddressListEx (0x0014, rep with a variable header; TLFS
// HvCallFlushVirtualAddressListEx.md): the Ex header and its HV_VP_SET banks, then GVA ranges.
import { HvCallCode } from '../tlfs/hypercall';
import { HvFlushVirtualAddressSpaceExInputLayout } from '../tlfs/flush-ipi';
import type { HypercallHandler } from './handler';
import { checkFlushFlags, flush, flushTargets } from './flush-common';
import { variableHeaderQwords } from './ipi-common';

export const HvCallFlushVirtualAddressListEx: HypercallHandler = {
  name: 'HvCallFlushVirtualAddressListEx',
  code: HvCallCode.HvCallFlushVirtualAddressListEx,
  rep: true,
  inputSize: HvFlushVirtualAddressSpaceExInputLayout.size,
  repInputElementSize: 8,
  variableHeader: true,
  handle(ctx, input, rep) {
    const i = HvFlushVirtualAddressSpaceExInputLayout.decode(input);
    checkFlushFlags(i.flags, true);
    // The variable header is what lies between the fixed header and the rep elements.
    const headerEnd = input.length - 8 * rep.count;
    const banks = variableHeaderQwords(input, HvFlushVirtualAddressSpaceExInputLayout.size, headerEnd);
    return flush(ctx, flushTargets(ctx, i.flags, { format: i.format, validBanksMask: i.validBanksMask, banks }), rep);
  },
};
