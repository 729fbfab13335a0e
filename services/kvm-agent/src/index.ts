/** @vsm/kvm-agent: the KVM host agent (vsm.v1 over /dev/kvm). */
export * from './backend';
export * from './platform';
