// @vsm/vsm-v1 (layer: vsm.v1 implementation): the gRPC server (security, reflection, health, RPC
// plumbing), the core-backed backend (emulated engine, or the KVM engine of @vsm/platform-kvm), the
// remote backend (KVM agents behind the service), persistence, configuration and logging shared by
// the two processes (@vsm/service, @vsm/kvm-agent), which compose it.
export * from './server';
export * from './backend';
export * from './errors';
export * from './names';
export * from './config';
export { CoreBackend, MAX_GUEST_ACCESS, outcome as guestActionOutcome, accessOutcome, interceptNotice } from './backends/core-backend';
export * from './state-dir';
export { RemoteBackend, drawPartitionId, staticOwner } from './backends/remote';
export { KvmBackend, KvmBackendOptions } from './backends/kvm';
export { FdLogDestination } from './log-destination';
export { SHUTDOWN_WATCHDOG_MS, exitOnSignal, processLogger, serverOptionsFrom, shutdownSignal } from './process-support';
export * from './security';
export * from './fleet';
export * from './observability';
