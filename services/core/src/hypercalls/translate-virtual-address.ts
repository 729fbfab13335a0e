// core, hypercalls: HvCallTranslateVirtualAddress (0x0052, simple; TLFS HvCallTranslateVirtualAddress.md):
// input 32 bytes, output HV_TRANSLATE_GVA_RESULT + GpaPage (16 bytes). See translate-common.ts.
import { HvCallCode } from '../tlfs/hypercall';
import { HvStatus } from '../tlfs/status';
import { HvTranslateVirtualAddressInputLayout, HvTranslateVirtualAddressOutputLayout } from '../tlfs/translate';
import type { HypercallHandler } from './handler';
import { translateForCaller } from './translate-common';

export const HvCallTranslateVirtualAddress: HypercallHandler = {
  name: 'HvCallTranslateVirtualAddress',
  code: HvCallCode.HvCallTranslateVirtualAddress,
  rep: false,
  inputSize: HvTranslateVirtualAddressInputLayout.size,
  outputElementSize: HvTranslateVirtualAddressOutputLayout.size,
  handle(ctx, input) {
    const t = translateForCaller(ctx, HvTranslateVirtualAddressInputLayout.decode(input));
    return { status: HvStatus.HV_STATUS_SUCCESS, output: HvTranslateVirtualAddressOutputLayout.encode({ translationResult: t.result, gpaPage: t.gpaPage }) };
  },
};
