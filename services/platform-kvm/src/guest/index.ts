/**
 * The guest side of the VMM that runs real guests (issue "Guests that run"): pure building blocks
 * with no KVM and no I/O — image loaders and the boot plan (./image), and port-I/O device models
 * (./devices). The KVM runner applies a BootPlan and routes KVM_EXIT_IO to a PortBus.
 */
export * from './image';
export * from './devices';
