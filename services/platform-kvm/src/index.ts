/** @vsm/kvm-agent: the KVM host agent (vsm.v1 over /dev/kvm). */
export * from './backend';
export * from './platform';
/** The thin native KVM layer (src/kvm): exported for the benchmarks in bench/ (raw exit loops, mini guests). */
export * as kvm from './kvm';
