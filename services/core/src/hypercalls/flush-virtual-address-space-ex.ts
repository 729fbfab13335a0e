// core, hypercalls: HvCallFlushVirtualAddressSpaceEx (0x0013, simple with a variable header; TLFS
// HvCallFlushVirtualAddressSpaceEx.md): AddressSpace, Flags, HV_VP_SET (Format, ValidBanksMask in the
// fixed header, BankContents as the variable header, as Linux and KVM lay it out).
import { HvCallCode } from '../tlfs/hypercall';
import { HvFlushVirtualAddressSpaceExInputLayout } from '../tlfs/flush-ipi';
import type { HypercallHandler } from './handler';
import { checkFlushFlags, flush, flushTargets } from './flush-common';
import { variableHeaderQwords } from './ipi-common';

export const HvCallFlushVirtualAddressSpaceEx: HypercallHandler = {
  name: 'HvCallFlushVirtualAddressSpaceEx',
  code: HvCallCode.HvCallFlushVirtualAddressSpaceEx,
  rep: false,
  inputSize: HvFlushVirtualAddressSpaceExInputLayout.size,
  variableHeader: true,
  handle(ctx, input) {
    const i = HvFlushVirtualAddressSpaceExInputLayout.decode(input);
    checkFlushFlags(i.flags, false);
    const banks = variableHeaderQwords(input, HvFlushVirtualAddressSpaceExInputLayout.size, input.length);
    return flush(ctx, flushTargets(ctx, i.flags, { format: i.format, validBanksMask: i.validBanksMask, banks }));
  },
};
