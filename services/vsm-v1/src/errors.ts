// service layer: the single mapping from HV_STATUS to gRPC status codes, and the encoding of
// failures as google.rpc.Status with a google.rpc.ErrorInfo whose reason is the HV_STATUS name.
import { Metadata, status as Code, type ServiceError } from '@grpc/grpc-js';
import { EngineError, HvError, HvStatus, type HvStatusName } from '@vsm/core';
import { pb } from '@vsm/api';
const { RpcStatus: Status, ErrorInfo } = pb;

export const ERROR_DOMAIN = 'vsm.v1';

/** HV_STATUS -> gRPC code. One table; every HvError crossing the API goes through it. */
export const HV_STATUS_TO_GRPC: Readonly<Record<HvStatusName, Code>> = {
  HV_STATUS_SUCCESS: Code.OK,
  HV_STATUS_INVALID_HYPERCALL_CODE: Code.INVALID_ARGUMENT,
  HV_STATUS_INVALID_HYPERCALL_INPUT: Code.INVALID_ARGUMENT,
  HV_STATUS_INVALID_ALIGNMENT: Code.INVALID_ARGUMENT,
  HV_STATUS_INVALID_PARAMETER: Code.INVALID_ARGUMENT,
  HV_STATUS_ACCESS_DENIED: Code.PERMISSION_DENIED,
  HV_STATUS_INVALID_PARTITION_STATE: Code.FAILED_PRECONDITION,
  HV_STATUS_OPERATION_DENIED: Code.FAILED_PRECONDITION,
  HV_STATUS_UNKNOWN_PROPERTY: Code.INVALID_ARGUMENT,
  HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE: Code.OUT_OF_RANGE,
  HV_STATUS_INSUFFICIENT_MEMORY: Code.RESOURCE_EXHAUSTED,
  HV_STATUS_INVALID_PARTITION_ID: Code.NOT_FOUND,
  HV_STATUS_INVALID_VP_INDEX: Code.NOT_FOUND,
  HV_STATUS_NOT_FOUND: Code.NOT_FOUND,
  HV_STATUS_INVALID_PORT_ID: Code.NOT_FOUND,
  HV_STATUS_INVALID_CONNECTION_ID: Code.NOT_FOUND,
  HV_STATUS_INSUFFICIENT_BUFFERS: Code.RESOURCE_EXHAUSTED,
  HV_STATUS_INVALID_VP_STATE: Code.FAILED_PRECONDITION,
  HV_STATUS_INVALID_SYNIC_STATE: Code.FAILED_PRECONDITION,
  HV_STATUS_OBJECT_IN_USE: Code.ALREADY_EXISTS,
  HV_STATUS_NO_DATA: Code.NOT_FOUND,
  HV_STATUS_NO_RESOURCES: Code.RESOURCE_EXHAUSTED,
  HV_STATUS_FEATURE_UNAVAILABLE: Code.UNIMPLEMENTED,
  HV_STATUS_INVALID_REGISTER_VALUE: Code.INVALID_ARGUMENT,
  HV_STATUS_INVALID_VTL_STATE: Code.FAILED_PRECONDITION,
  HV_STATUS_OPERATION_FAILED: Code.ABORTED,
  HV_STATUS_TIME_OUT: Code.DEADLINE_EXCEEDED,
  HV_STATUS_VTL_ALREADY_ENABLED: Code.ALREADY_EXISTS,
  HV_STATUS_UNKNOWN_REGISTER_NAME: Code.INVALID_ARGUMENT,
};

export function grpcCodeFor(statusName: string): Code {
  return (HV_STATUS_TO_GRPC as Record<string, Code>)[statusName] ?? Code.UNKNOWN;
}

/** Builds a ServiceError carrying google.rpc.Status { code, message, details: [ErrorInfo] }. */
export function serviceError(code: Code, reason: string, message: string, metadata: Record<string, string> = {}): ServiceError {
  const info = Buffer.from(ErrorInfo.encode({ reason, domain: ERROR_DOMAIN, metadata }).finish());
  const st = Status.encode({ code, message, details: [{ typeUrl: 'type.googleapis.com/google.rpc.ErrorInfo', value: info }] }).finish();
  const md = new Metadata();
  md.set('grpc-status-details-bin', Buffer.from(st));
  const err = new Error(message) as ServiceError;
  err.code = code;
  err.details = message;
  err.metadata = md;
  return err;
}

/** Maps anything thrown by a handler to a ServiceError; unexpected errors become INTERNAL. */
export function toServiceError(e: unknown): ServiceError {
  if (e instanceof HvError)
    return serviceError(grpcCodeFor(e.statusName), e.statusName, e.message, { hv_status: `0x${e.status.toString(16).padStart(4, '0')}` });
  if (e instanceof ApiError) return serviceError(e.code, e.reason, e.message);
  if (e instanceof EngineError) return serviceError(ENGINE_ERROR_CODE[e.code], e.reason, e.message);
  const msg = e instanceof Error ? e.message : String(e);
  return serviceError(Code.INTERNAL, 'INTERNAL', `internal error: ${msg}`);
}

/** The gRPC code of each kind of engine failure (core/engine.ts EngineError). */
const ENGINE_ERROR_CODE: Record<EngineError['code'], Code> = {
  unavailable: Code.UNAVAILABLE,
  aborted: Code.ABORTED,
  'failed-precondition': Code.FAILED_PRECONDITION,
};

/** A service-level failure that is not a hypercall status (e.g. a missing field). */
export class ApiError extends Error {
  constructor(
    readonly code: Code,
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

export const invalidArgument = (message: string): HvError => new HvError(HvStatus.HV_STATUS_INVALID_PARAMETER, message);
