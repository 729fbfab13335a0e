// tlfs layer: the hypercall ABI. HV_HYPERCALL_INPUT (tlfs-hypercalls.md §1.2), the result value
// (§1.3) and the call codes (§2.1).
import { HvStatus, HvStatusValue, hvFail } from './status';

/** Hypercall call codes (TLFS Appendix A; tlfs-hypercalls.md §2.1). */
export const HvCallCode = {
  HvCallModifyVtlProtectionMask: 0x000c,
  HvCallEnablePartitionVtl: 0x000d,
  HvCallEnableVpVtl: 0x000f,
  HvCallVtlCall: 0x0011,
  HvCallVtlReturn: 0x0012,
  HvCallGetVpRegisters: 0x0050,
  HvCallSetVpRegisters: 0x0051,
  HvCallPostMessage: 0x005c,
  HvCallSignalEvent: 0x005d,
} as const;
export type HvCallCodeName = keyof typeof HvCallCode;

/** Decoded HV_HYPERCALL_INPUT (tlfs-hypercalls.md §1.2; current markdown/Linux/OpenVMM layout). */
export interface HvHypercallInput {
  /** Bits 15:0. */
  callCode: number;
  /** Bit 16. */
  fast: boolean;
  /** Bits 26:17, in QWORDs. */
  variableHeaderSize: number;
  /** Bits 30:27 RsvdZ. */
  rsvdZ1: number;
  /** Bit 31. */
  isNested: boolean;
  /** Bits 43:32. */
  repCount: number;
  /** Bits 47:44 RsvdZ. */
  rsvdZ2: number;
  /** Bits 59:48. */
  repStartIndex: number;
  /** Bits 63:60 RsvdZ. */
  rsvdZ3: number;
}

const bits = (v: bigint, lo: number, width: number): number =>
  Number((v >> BigInt(lo)) & ((1n << BigInt(width)) - 1n));

export function decodeHypercallInput(value: bigint): HvHypercallInput {
  return {
    callCode: bits(value, 0, 16),
    fast: bits(value, 16, 1) === 1,
    variableHeaderSize: bits(value, 17, 10),
    rsvdZ1: bits(value, 27, 4),
    isNested: bits(value, 31, 1) === 1,
    repCount: bits(value, 32, 12),
    rsvdZ2: bits(value, 44, 4),
    repStartIndex: bits(value, 48, 12),
    rsvdZ3: bits(value, 60, 4),
  };
}

export function encodeHypercallInput(i: Partial<HvHypercallInput> & { callCode: number }): bigint {
  return (
    BigInt(i.callCode & 0xffff) |
    (i.fast ? 1n << 16n : 0n) |
    (BigInt((i.variableHeaderSize ?? 0) & 0x3ff) << 17n) |
    (BigInt((i.rsvdZ1 ?? 0) & 0xf) << 27n) |
    (i.isNested ? 1n << 31n : 0n) |
    (BigInt((i.repCount ?? 0) & 0xfff) << 32n) |
    (BigInt((i.rsvdZ2 ?? 0) & 0xf) << 44n) |
    (BigInt((i.repStartIndex ?? 0) & 0xfff) << 48n) |
    (BigInt((i.rsvdZ3 ?? 0) & 0xf) << 60n)
  );
}

/** HV_HYPERCALL_RESULT_VALUE (tlfs-hypercalls.md §1.3): 15:0 status, 43:32 reps completed. */
export function encodeHypercallResult(status: HvStatusValue | number, repsCompleted = 0): bigint {
  return BigInt(status & 0xffff) | (BigInt(repsCompleted & 0xfff) << 32n);
}

export function decodeHypercallResult(value: bigint): { status: number; repsCompleted: number } {
  return { status: bits(value, 0, 16), repsCompleted: bits(value, 32, 12) };
}

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
  if ((gpa & 7n) !== 0n) hvFail(HvStatus.HV_STATUS_INVALID_ALIGNMENT, `${what} GPA is not 8-byte aligned`);
  if ((gpa & 0xfffn) + BigInt(size) > 0x1000n) {
    hvFail(HvStatus.HV_STATUS_INVALID_ALIGNMENT, `${what} parameter block crosses a page boundary`);
  }
  if (gpa + BigInt(size) > gpaLimit) hvFail(HvStatus.HV_STATUS_INVALID_ALIGNMENT, `${what} GPA is outside the GPA space`);
}
