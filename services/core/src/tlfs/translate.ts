// tlfs layer: HvCallTranslateVirtualAddress (0x0052) and HvCallTranslateVirtualAddressEx (0x00AC).
// Sources: TLFS markdown hypercalls/HvCallTranslateVirtualAddress.md, HvCallTranslateVirtualAddressEx.md,
// datatypes/hv_translate_gva_control_flags.md, hv_translate_gva_result.md, hv_translate_gva_result_ex.md;
// OpenVMM vm/hv1/hvdef (TranslateGvaControlFlagsX64, TranslateVirtualAddressX64, TranslateGvaResult,
// TranslateVirtualAddressExOutputX64, HvX64PendingEvent).
//
// Unconfirmed (the sources disagree): the Ex output. The TLFS page gives TranslationResult 16 bytes and
// GpaPage at +16, while its own HV_TRANSLATE_GVA_RESULT_EX (x64) holds an HV_X64_PENDING_EVENT (32
// bytes) after the result; OpenVMM, "confirmed via debugger", lays it out as Result (8), Reserved (8),
// EventInfo (32), GpaPage at +0x30, Reserved (8): 64 bytes. OpenVMM's layout is used here.
import { at, bigBits, bitfield, bits, bytes, type CodecValue, flag, struct, u32, u64 } from './layout';

/** HV_TRANSLATE_GVA_CONTROL_FLAGS, x64 (datatypes/hv_translate_gva_control_flags.md; OpenVMM TranslateGvaControlFlagsX64). */
export const HvTranslateGvaControlFlagsLayout = bitfield('HV_TRANSLATE_GVA_CONTROL_FLAGS', 64, {
  validateRead: flag(0), // HV_TRANSLATE_GVA_VALIDATE_READ
  validateWrite: flag(1), // HV_TRANSLATE_GVA_VALIDATE_WRITE
  validateExecute: flag(2), // HV_TRANSLATE_GVA_VALIDATE_EXECUTE
  privilegeExempt: flag(3), // HV_TRANSLATE_GVA_PRIVILEGE_EXEMPT: no user/supervisor, SMEP or SMAP checks
  setPageTableBits: flag(4), // HV_TRANSLATE_GVA_SET_PAGE_TABLE_BITS: accessed/dirty bits
  tlbFlushInhibit: flag(5), // HV_TRANSLATE_GVA_TLB_FLUSH_INHIBIT
  supervisorAccess: flag(6), // HV_TRANSLATE_GVA_SUPERVISOR_ACCESS
  userAccess: flag(7), // HV_TRANSLATE_GVA_USER_ACCESS
  enforceSmap: flag(8), // HV_TRANSLATE_GVA_ENFORCE_SMAP
  overrideSmap: flag(9), // HV_TRANSLATE_GVA_OVERRIDE_SMAP
  shadowStack: flag(10), // HV_TRANSLATE_GVA_SHADOW_STACK
  rsvd: bigBits(55, 11), // reserved
  inputVtl: bits(63, 56), // HV_TRANSLATE_GVA_INPUT_VTL_MASK: an HV_INPUT_VTL
});
export type HvTranslateGvaControlFlags = CodecValue<typeof HvTranslateGvaControlFlagsLayout>;

/** HV_TRANSLATE_GVA_RESULT_CODE (datatypes/hv_translate_gva_result.md). */
export const HvTranslateGvaResultCode = {
  HvTranslateGvaSuccess: 0,
  HvTranslateGvaPageNotPresent: 1,
  HvTranslateGvaPrivilegeViolation: 2,
  HvTranslateGvaInvalidPageTableFlags: 3,
  HvTranslateGvaGpaUnmapped: 4,
  HvTranslateGvaGpaNoReadAccess: 5,
  HvTranslateGvaGpaNoWriteAccess: 6,
  HvTranslateGvaGpaIllegalOverlayAccess: 7,
  HvTranslateGvaIntercept: 8,
  HvTranslateGvaGpaUnaccepted: 9,
} as const;
export type HvTranslateGvaResultCodeValue = (typeof HvTranslateGvaResultCode)[keyof typeof HvTranslateGvaResultCode];

/** HV_TRANSLATE_GVA_RESULT, 64 bits: ResultCode 31:0, CacheType 39:32, OverlayPage 40, Reserved 63:41. */
export const HvTranslateGvaResultLayout = bitfield('HV_TRANSLATE_GVA_RESULT', 64, {
  resultCode: bits(31, 0), // ResultCode
  cacheType: bits(39, 32), // CacheType (HV_CACHE_TYPE)
  overlayPage: flag(40), // OverlayPage
});
export type HvTranslateGvaResult = CodecValue<typeof HvTranslateGvaResultLayout>;

/** HvCallTranslateVirtualAddress(Ex) input, 32 bytes (the TLFS table has no field at +12; OpenVMM: Reserved, required by alignment, "confirmed via debugger"). */
export const HvTranslateVirtualAddressInputLayout = struct('HvCallTranslateVirtualAddress input', 32, {
  partitionId: at(0, u64, 'PartitionId'),
  vpIndex: at(8, u32, 'VpIndex'),
  rsvdZ: at(12, u32, 'Reserved'),
  controlFlags: at(16, HvTranslateGvaControlFlagsLayout, 'ControlFlags'),
  gvaPage: at(24, u64, 'GvaPage'), // HV_GVA_PAGE_NUMBER
});
export type HvTranslateVirtualAddressInput = CodecValue<typeof HvTranslateVirtualAddressInputLayout>;

/** HvCallTranslateVirtualAddress output, 16 bytes. */
export const HvTranslateVirtualAddressOutputLayout = struct('HvCallTranslateVirtualAddress output', 16, {
  translationResult: at(0, HvTranslateGvaResultLayout, 'TranslationResult'),
  gpaPage: at(8, u64, 'GpaPage'), // valid on success
});
export type HvTranslateVirtualAddressOutput = CodecValue<typeof HvTranslateVirtualAddressOutputLayout>;

/** HvCallTranslateVirtualAddressEx output, x64, 64 bytes (OpenVMM layout; see the header: unconfirmed). EventInfo is an HV_X64_PENDING_EVENT (32 bytes), written zero here. */
export const HvTranslateVirtualAddressExOutputLayout = struct('HvCallTranslateVirtualAddressEx output', 64, {
  translationResult: at(0, HvTranslateGvaResultLayout, 'TranslationResult.Result'),
  eventInfo: at(16, bytes(32), 'TranslationResult.EventInfo'),
  gpaPage: at(48, u64, 'GpaPage'),
});
export type HvTranslateVirtualAddressExOutput = CodecValue<typeof HvTranslateVirtualAddressExOutputLayout>;
