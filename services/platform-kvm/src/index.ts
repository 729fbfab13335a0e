/**
 * @vsm/platform-kvm (layer: platform): the KVM engine of the core. A KVM VM per enabled VTL over one
 * memfd-backed guest memory, memslot views for overlays and protections, guest actions as real
 * instructions (platform/kvm-engine.ts implements the core's GuestEngine), and the thin native KVM
 * layer (src/kvm). Depends on @vsm/core only; the vsm.v1 implementation (@vsm/vsm-v1) builds its
 * KvmBackend from it.
 */
export * from './platform';
/** Guests that run (src/guest): GuestSession, the image loaders, the device models. */
export * from './guest';
export { kvmEngine, engineErrorOf } from './platform/kvm-engine';
/** The thin native KVM layer (src/kvm): KVM_* ioctls, the watchdog, raw exit loops for the benchmarks. */
export * as kvm from './kvm';
export { KvmSystem, SysError, VcpuWatchdog } from './kvm';
