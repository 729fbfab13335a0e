/** The KVM platform of the core (see ../../README.md). */
export * from './agent-region';
export * from './hypercall-page';
export * from './kvm-partition';
export * from './memory';
export * from './registers';
export * from './vtl-vm';
