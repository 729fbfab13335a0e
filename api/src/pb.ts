// The generated vsm.v1 messages and services (ts-proto output under ./gen, every vsm.v1 file through
// gen/vsm.ts), re-exported flat, with google.rpc.Status / ErrorInfo for error details.
export * from './gen/vsm';
export { Status as RpcStatus } from './gen/google/rpc/status';
export { ErrorInfo } from './gen/google/rpc/error_details';
