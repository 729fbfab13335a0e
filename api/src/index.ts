// @vsm/api (layer: api): the generated vsm.v1 code, in one package used by @vsm/client and
// @vsm/vsm-v1. `pb`: the ts-proto messages and grpc-js service definitions (src/gen, from
// scripts/generate.js); `vsmRpcs()`: every vsm.v1 RPC as the descriptors declare it (kind, required
// role, idempotency level), the one table the server binds, authorizes and persists by.
export * as pb from './pb';
export { type RpcKind, type RpcMethod, type RpcRole, type RpcService, RPC_ROLES, vsmFileDescriptors, vsmRpc, vsmRpcs, vsmServices } from './rpc';
export type { VsmServers } from './gen/services';
export { type MessageCodec, encoderCopiesDirectly, reusingEncoder } from './wire';
