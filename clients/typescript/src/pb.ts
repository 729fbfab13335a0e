// The generated vsm.v1 messages and services (ts-proto output under ./gen), re-exported flat.
export * from './gen/vsm/v1/tlfs';
export * from './gen/vsm/v1/partition';
export * from './gen/vsm/v1/vp';
export * from './gen/vsm/v1/guest';
export * from './gen/vsm/v1/memory';
export * from './gen/vsm/v1/vtl';
export * from './gen/vsm/v1/intercept';
export * from './gen/vsm/v1/synic';
export * from './gen/vsm/v1/snapshot';
export { Status as RpcStatus } from './gen/google/rpc/status';
export { ErrorInfo } from './gen/google/rpc/error_details';
