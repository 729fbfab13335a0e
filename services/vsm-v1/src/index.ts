// @vsm/service: the gRPC front and its backends.
export * from './server';
export * from './backend';
export * from './errors';
export * from './names';
export * from './config';
export { EmulatorBackend, MAX_GUEST_ACCESS, outcome as guestActionOutcome, accessOutcome, interceptNotice } from './backends/emulator';
export * from './state-dir';
export { RemoteBackend } from './backends/remote';
export * from './security';
