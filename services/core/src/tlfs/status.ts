// tlfs layer: HV_STATUS values (TLFS Appendix B; ../shared/reference/tlfs-hypercalls.md §1.6).
// Values marked † in the reference come from OpenVMM/Linux headers, not Appendix B.

export const HvStatus = {
  HV_STATUS_SUCCESS: 0x0000,
  HV_STATUS_INVALID_HYPERCALL_CODE: 0x0002,
  HV_STATUS_INVALID_HYPERCALL_INPUT: 0x0003,
  HV_STATUS_INVALID_ALIGNMENT: 0x0004,
  HV_STATUS_INVALID_PARAMETER: 0x0005,
  HV_STATUS_ACCESS_DENIED: 0x0006,
  HV_STATUS_INVALID_PARTITION_STATE: 0x0007,
  HV_STATUS_OPERATION_DENIED: 0x0008,
  HV_STATUS_UNKNOWN_PROPERTY: 0x0009,
  HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE: 0x000a,
  HV_STATUS_INSUFFICIENT_MEMORY: 0x000b,
  HV_STATUS_INVALID_PARTITION_ID: 0x000d,
  HV_STATUS_INVALID_VP_INDEX: 0x000e,
  /** † OpenVMM/Linux; reserved in Appendix B. */
  HV_STATUS_NOT_FOUND: 0x0010,
  HV_STATUS_INVALID_PORT_ID: 0x0011,
  HV_STATUS_INVALID_CONNECTION_ID: 0x0012,
  HV_STATUS_INSUFFICIENT_BUFFERS: 0x0013,
  HV_STATUS_INVALID_VP_STATE: 0x0015,
  HV_STATUS_INVALID_SYNIC_STATE: 0x0018,
  HV_STATUS_OBJECT_IN_USE: 0x0019,
  HV_STATUS_NO_DATA: 0x001b,
  HV_STATUS_NO_RESOURCES: 0x001d,
  HV_STATUS_FEATURE_UNAVAILABLE: 0x001e,
  HV_STATUS_INVALID_REGISTER_VALUE: 0x0050,
  /** † OpenVMM/Linux. */
  HV_STATUS_INVALID_VTL_STATE: 0x0051,
  HV_STATUS_OPERATION_FAILED: 0x0071,
  /** † OpenVMM/Linux. */
  HV_STATUS_TIME_OUT: 0x0078,
  /** † Linux/OpenVMM usage for re-enabling a VP VTL. */
  HV_STATUS_VTL_ALREADY_ENABLED: 0x0086,
  /** † OpenVMM only. */
  HV_STATUS_UNKNOWN_REGISTER_NAME: 0x0087,
} as const;

export type HvStatusName = keyof typeof HvStatus;
export type HvStatusValue = (typeof HvStatus)[HvStatusName];

const byValue = new Map<number, HvStatusName>((Object.keys(HvStatus) as HvStatusName[]).map((k) => [HvStatus[k], k]));

/** The TLFS name of a status value, or `HV_STATUS_0x....` for one this module does not name. */
export function hvStatusName(value: number): string {
  return byValue.get(value) ?? `HV_STATUS_0x${value.toString(16).padStart(4, '0')}`;
}

/**
 * A hypercall-level failure: carries the HV_STATUS the TLFS prescribes. Thrown inside the core and
 * turned into a hypercall result value (guest path) or a gRPC status (management path).
 */
export class HvError extends Error {
  constructor(
    readonly status: HvStatusValue,
    message: string,
  ) {
    super(message);
    this.name = 'HvError';
  }
  get statusName(): string {
    return hvStatusName(this.status);
  }
}

export function hvFail(status: HvStatusValue, message: string): never {
  throw new HvError(status, message);
}
