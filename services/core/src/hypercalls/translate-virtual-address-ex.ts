// core, hypercalls: HvCallTranslateVirtualAddressEx (0x00AC, simple; TLFS HvCallTranslateVirtualAddressEx.md):
// the same input and translation as HvCallTranslateVirtualAddress, output HV_TRANSLATE_GVA_RESULT_EX +
// GpaPage in OpenVMM's 64-byte x64 layout (tlfs/translate.ts: unconfirmed). EventInfo is zero (no event
// is proposed for injection).
import { HvCallCode } from '../tlfs/hypercall';
import { HvStatus } from '../tlfs/status';
import { HvTranslateVirtualAddressExOutputLayout, HvTranslateVirtualAddressInputLayout } from '../tlfs/translate';
import type { HypercallHandler } from './handler';
import { translateForCaller } from './translate-common';

export const HvCallTranslateVirtualAddressEx: HypercallHandler = {
  name: 'HvCallTranslateVirtualAddressEx',
  code: HvCallCode.HvCallTranslateVirtualAddressEx,
  rep: false,
  inputSize: HvTranslateVirtualAddressInputLayout.size,
  outputElementSize: HvTranslateVirtualAddressExOutputLayout.size,
  handle(ctx, input) {
    const t = translateForCaller(ctx, HvTranslateVirtualAddressInputLayout.decode(input));
    return {
      status: HvStatus.HV_STATUS_SUCCESS,
      output: HvTranslateVirtualAddressExOutputLayout.encode({ translationResult: t.result, eventInfo: Buffer.alloc(32), gpaPage: t.gpaPage }),
    };
  },
};
