// tlfs layer: the hypercall ABI. HV_HYPERCALL_INPUT (tlfs-hypercalls.md §1.2), the result value
// (§1.3) and the call codes (§2.1). The two bit layouts drive their encoders and decoders (./layout.ts).
import { HvStatus, type HvStatusValue, hvFail } from './status';
import { bitfield, bits, type CodecValue, flag, isExactNumber } from './layout';

/** Hypercall call codes (TLFS Appendix A; tlfs-hypercalls.md §2.1). */
export const HvCallCode = {
  HvCallFlushVirtualAddressSpace: 0x0002,
  HvCallFlushVirtualAddressList: 0x0003,
  HvCallNotifyLongSpinWait: 0x0008,
  HvCallSendSyntheticClusterIpi: 0x000b,
  HvCallModifyVtlProtectionMask: 0x000c,
  HvCallEnablePartitionVtl: 0x000d,
  HvCallEnableVpVtl: 0x000f,
  HvCallVtlCall: 0x0011,
  HvCallVtlReturn: 0x0012,
  HvCallFlushVirtualAddressSpaceEx: 0x0013,
  HvCallFlushVirtualAddressListEx: 0x0014,
  HvCallSendSyntheticClusterIpiEx: 0x0015,
  HvCallGetVpRegisters: 0x0050,
  HvCallSetVpRegisters: 0x0051,
  HvCallTranslateVirtualAddress: 0x0052,
  HvCallPostMessage: 0x005c,
  HvCallSignalEvent: 0x005d,
  HvCallStartVirtualProcessor: 0x0099, // TLFS HvCallStartVirtualProcessor.md (simple)
  HvCallGetVpIndexFromApicId: 0x009a, // TLFS HvCallGetVpIndexFromApicId.md (rep)
  HvCallTranslateVirtualAddressEx: 0x00ac, // TLFS HvCallTranslateVirtualAddressEx.md, OpenVMM hvdef
} as const;
export type HvCallCodeName = keyof typeof HvCallCode;

/** HV_HYPERCALL_INPUT (tlfs-hypercalls.md §1.2; current markdown/Linux/OpenVMM layout). */
export const HvHypercallInputLayout = bitfield('HV_HYPERCALL_INPUT', 64, {
  callCode: bits(15, 0), // CallCode
  fast: flag(16), // Fast
  variableHeaderSize: bits(26, 17), // VariableHeaderSize, in QWORDs
  rsvdZ1: bits(30, 27), // RsvdZ
  isNested: flag(31), // IsNested
  repCount: bits(43, 32), // RepCount
  rsvdZ2: bits(47, 44), // RsvdZ
  repStartIndex: bits(59, 48), // RepStartIndex
  rsvdZ3: bits(63, 60), // RsvdZ
});
/** Decoded HV_HYPERCALL_INPUT. */
export type HvHypercallInput = CodecValue<typeof HvHypercallInputLayout>;
export const decodeHypercallInput = (value: bigint): HvHypercallInput => HvHypercallInputLayout.unpack(value);
export const encodeHypercallInput = (i: Partial<HvHypercallInput> & { callCode: number }): bigint => HvHypercallInputLayout.pack(i);

/** HV_HYPERCALL_RESULT_VALUE (tlfs-hypercalls.md §1.3); 31:16 and 63:44 RsvdZ. */
export const HvHypercallResultValueLayout = bitfield('HV_HYPERCALL_RESULT_VALUE', 64, {
  status: bits(15, 0), // Result (HV_STATUS)
  repsCompleted: bits(43, 32), // RepsCompleted
});
/** HV_STATUS_SUCCESS result values for 0..63 reps completed, made once (the common results of every call). */
const SUCCESS_RESULTS: readonly bigint[] = Array.from({ length: 64 }, (_, reps) => HvHypercallResultValueLayout.pack({ status: 0, repsCompleted: reps }));
export const encodeHypercallResult = (status: HvStatusValue | number, repsCompleted = 0): bigint =>
  (status === 0 ? SUCCESS_RESULTS[repsCompleted] : undefined) ?? HvHypercallResultValueLayout.pack({ status, repsCompleted });
export const decodeHypercallResult = (value: bigint): { status: number; repsCompleted: number } => HvHypercallResultValueLayout.unpack(value);

/** Static properties of an implemented call (OpenVMM hv1_hypercall style: one entry per call). */
export interface HypercallShape {
  code: number;
  rep: boolean;
  /** Fixed header / simple input size in bytes. */
  inputSize: number;
  /** Rep element size in bytes (rep calls). */
  repInputElementSize?: number;
  /** Simple output size or rep output element size in bytes. */
  outputElementSize?: number;
  /** Whether a variable header is accepted. */
  variableHeader?: boolean;
}

/**
 * The common checks of tlfs-hypercalls.md §1.5 that depend only on the input value and the call's
 * shape. Throws HvError with the TLFS status.
 */
export function validateHypercallInput(input: HvHypercallInput, shape: HypercallShape): void {
  if (input.rsvdZ1 !== 0 || input.rsvdZ2 !== 0 || input.rsvdZ3 !== 0) {
    hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, 'RsvdZ bits of HV_HYPERCALL_INPUT are set');
  }
  if (input.variableHeaderSize !== 0 && !shape.variableHeader) {
    hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, 'variable header size is non-zero on a call that takes none');
  }
  if (shape.rep) {
    if (input.repCount === 0) hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, 'rep count is 0 on a rep call');
    if (input.repStartIndex >= input.repCount) {
      hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, 'rep start index is not below rep count');
    }
  } else if (input.repCount !== 0 || input.repStartIndex !== 0) {
    hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, 'rep count / start index set on a simple call');
  }
}

/** Memory-parameter checks (§1.1, §1.5): 8-byte aligned, no page crossing, inside the GPA space. */
export function validateParameterBlock(gpa: bigint, size: number, gpaLimit: bigint, what: string): void {
  if (size === 0) return;
  // As a number where that is exact (below 2^53: every GPA a partition has): no bigint arithmetic on
  // the hot path. Above, the same checks in bigint.
  const exact = isExactNumber(gpa);
  const g = Number(gpa);
  const inPage = exact ? g % 0x1000 : Number(gpa & 0xfffn);
  if ((inPage & 7) !== 0) hvFail(HvStatus.HV_STATUS_INVALID_ALIGNMENT, `${what} GPA is not 8-byte aligned`);
  if (inPage + size > 0x1000) {
    hvFail(HvStatus.HV_STATUS_INVALID_ALIGNMENT, `${what} parameter block crosses a page boundary`);
  }
  if (exact ? g + size > Number(gpaLimit) : gpa > gpaLimit - BigInt(size)) hvFail(HvStatus.HV_STATUS_INVALID_ALIGNMENT, `${what} GPA is outside the GPA space`);
}
