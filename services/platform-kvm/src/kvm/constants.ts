/** KVM UAPI constants used by this layer (include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h). */

export const KVM_API_VERSION = 12;

/** KVM_CAP_* numbers (KVM_CHECK_EXTENSION arguments). */
export const KVM_CAP = {
  USER_MEMORY: 3,
  NR_VCPUS: 9,
  NR_MEMSLOTS: 10,
  HYPERV: 44,
  MAX_VCPUS: 66,
  SYNC_REGS: 74,
  READONLY_MEM: 81,
  IMMEDIATE_EXIT: 136,
  X86_USER_SPACE_MSR: 188,
  X86_MSR_FILTER: 189,
  USER_MEMORY2: 231,
  MEMORY_FAULT_INFO: 232,
  MEMORY_ATTRIBUTES: 233,
  GUEST_MEMFD: 234,
  VM_TYPES: 235,
} as const;

/** KVM_EXIT_* (kvm_run.exit_reason). */
export const KVM_EXIT = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  SET_TPR: 11,
  TPR_ACCESS: 12,
  NMI: 16,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
  IOAPIC_EOI: 26,
  HYPERV: 27,
  X86_RDMSR: 29,
  X86_WRMSR: 30,
  DIRTY_RING_FULL: 31,
  X86_BUS_LOCK: 33,
  NOTIFY: 37,
  MEMORY_FAULT: 39,
} as const;

export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

/** kvm_userspace_memory_region.flags */
export const KVM_MEM_LOG_DIRTY_PAGES = 1 << 0;
export const KVM_MEM_READONLY = 1 << 1;

/** KVM_CAP_X86_USER_SPACE_MSR args[0] / kvm_run.msr.reason */
export const KVM_MSR_EXIT_REASON_INVAL = 1 << 0;
export const KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1;
export const KVM_MSR_EXIT_REASON_FILTER = 1 << 2;

/** kvm_msr_filter.flags / kvm_msr_filter_range.flags */
export const KVM_MSR_FILTER_DEFAULT_ALLOW = 0;
export const KVM_MSR_FILTER_DEFAULT_DENY = 1 << 0;
export const KVM_MSR_FILTER_READ = 1 << 0;
export const KVM_MSR_FILTER_WRITE = 1 << 1;

/** kvm_run.kvm_valid_regs / kvm_dirty_regs bits (x86). */
export const KVM_SYNC_X86_REGS = 1 << 0;
export const KVM_SYNC_X86_SREGS = 1 << 1;
export const KVM_SYNC_X86_EVENTS = 1 << 2;

/** KVM_EXIT_INTERNAL_ERROR suberrors */
export const KVM_INTERNAL_ERROR = {
  EMULATION: 1,
  SIMUL_EX: 2,
  DELIVERY_EV: 3,
  UNEXPECTED_EXIT_REASON: 4,
} as const;

/** The Hyper-V synthetic MSR range the agent traps (TLFS): 0x40000000–0x400000FF. */
export const HV_MSR_BASE = 0x4000_0000;
export const HV_MSR_COUNT = 0x100;
