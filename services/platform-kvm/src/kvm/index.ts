/** Thin native KVM layer of the KVM host agent (see README.md in this folder). */
export * from './constants';
export * from './layout';
export * from './kvm';
export * from './longmode';
export * from './miniguest';
export * from './watchdog';
export {
  SysError,
  ERRNO,
  KVMIO,
  _IO,
  _IOR,
  _IOW,
  _IOWR,
  _IOC,
  KVM_GET_API_VERSION,
  KVM_CREATE_VM,
  KVM_CHECK_EXTENSION,
  KVM_GET_VCPU_MMAP_SIZE,
  KVM_GET_SUPPORTED_CPUID,
  KVM_CREATE_VCPU,
  KVM_SET_USER_MEMORY_REGION,
  KVM_ENABLE_CAP,
  KVM_X86_SET_MSR_FILTER,
  KVM_RUN,
  KVM_GET_REGS,
  KVM_SET_REGS,
  KVM_GET_SREGS,
  KVM_SET_SREGS,
  KVM_GET_MSRS,
  KVM_SET_MSRS,
  KVM_GET_FPU,
  KVM_SET_FPU,
  KVM_SET_CPUID2,
  KVM_GET_VCPU_EVENTS,
  KVM_SET_VCPU_EVENTS,
} from './ioctl';
