/*
 * vsm-scenario guest: the Hyper-V TLFS definitions this guest uses, under their TLFS names.
 * Sections refer to ../shared/reference/ (tlfs-hypercalls.md, tlfs-intercepts.md,
 * tlfs-overlays-synic.md, tlfs-vsm.md). Layouts are checked with _Static_assert.
 */
#ifndef VSM_SCENARIO_HV_H
#define VSM_SCENARIO_HV_H

typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

/* Synthetic MSRs (tlfs-intercepts.md §7.1, tlfs-overlays-synic.md §5.1). */
#define HV_X64_MSR_GUEST_OS_ID 0x40000000u
#define HV_X64_MSR_HYPERCALL 0x40000001u
#define HV_X64_MSR_VP_INDEX 0x40000002u
#define HV_X64_MSR_SCONTROL 0x40000080u
#define HV_X64_MSR_SIEFP 0x40000082u
#define HV_X64_MSR_SIMP 0x40000083u
#define HV_X64_MSR_EOM 0x40000084u
#define HV_X64_MSR_SINT0 0x40000090u

/* Overlay-enable register format: bit 0 Enable, GPA page number from bit 12 (tlfs-overlays-synic.md §4.3). */
#define HV_OVERLAY_ENABLE 1ul
/* HV_X64_MSR_SCONTROL.Enable (tlfs-overlays-synic.md §5.1). */
#define HV_SCONTROL_ENABLE 1ul
/* HV_SYNIC_SINT: Vector 7:0, Masked 16, AutoEoi 17, Polling 18 (tlfs-overlays-synic.md §5.1). */
#define HV_SINT_MASKED (1ul << 16)
#define HV_SINT_AUTO_EOI (1ul << 17)

/* Hypercall input value ("control"): call code 15:0, Fast 16, rep count 43:32 (tlfs-hypercalls.md §1.2). */
#define HV_HYPERCALL_FAST (1ul << 16)
#define HV_HYPERCALL_REP(n) ((u64)(n) << 32)
/* Hypercall result value: HV_STATUS 15:0, reps completed 43:32 (tlfs-hypercalls.md §1.3). */
#define HV_RESULT_STATUS(r) ((r) & 0xffff)
#define HV_RESULT_REPS(r) (((r) >> 32) & 0xfff)

/* Call codes (tlfs-hypercalls.md §2.1). */
#define HvCallSendSyntheticClusterIpi 0x000b /* tlfs: HvCallSendSyntheticClusterIpi.md, fast: RDX = Vector | TargetVtl << 32, R8 = ProcessorMask */
#define HvCallModifyVtlProtectionMask 0x000c
#define HvCallEnablePartitionVtl 0x000d
#define HvCallEnableVpVtl 0x000f
#define HvCallSetVpRegisters 0x0051

/* Entry points of the hypercall page for VSM (HvRegisterVsmCodePageOffsets, tlfs-vsm.md §3.6):
 * the agent reports VtlCall at 0x0F and VtlReturn at 0x26 (services/kvm-agent/README.md). */
#define VTL_CALL_OFFSET 0x0f
#define VTL_RETURN_OFFSET 0x26

#define HV_PARTITION_ID_SELF 0xfffffffffffffffful
#define HV_VP_INDEX_SELF 0xfffffffeu

/* HV_INPUT_VTL: TargetVtl 3:0, UseTargetVtl 4 (tlfs-hypercalls.md §2.2). */
#define HV_INPUT_VTL(vtl) ((u8)(0x10 | (vtl)))

/* HV_MAP_GPA_FLAGS (tlfs-vsm.md §7.1). */
#define HV_MAP_GPA_READABLE 0x1u
#define HV_MAP_GPA_WRITABLE 0x2u
#define HV_MAP_GPA_KERNEL_EXECUTABLE 0x4u
#define HV_MAP_GPA_USER_EXECUTABLE 0x8u

/* Register names (tlfs-vsm.md §3.4; tlfs-hypercalls.md §2.7). */
#define HvRegisterVsmPartitionConfig 0x000d0007u
#define HvX64RegisterRip 0x00020010u
/* HvX64RegisterCrInterceptControl (tlfs-vsm.md §3.8): bit 6 MsrLstarWrite. */
#define HvX64RegisterCrInterceptControl 0x000e0000u
#define HV_CR_INTERCEPT_MSR_LSTAR_WRITE (1ul << 6)
#define HV_CR_INTERCEPT_MSR_STAR_READ (1ul << 7)
#define IA32_STAR 0xc0000081u
#define IA32_LSTAR 0xc0000082u
#define HV_INTERCEPT_ACCESS_READ 0
/* HvRegisterVsmPartitionConfig: EnableVtlProtection 0, DefaultVtlProtectionMask 4:1 (tlfs-vsm.md §3.4). */
#define HV_VSM_PARTITION_CONFIG(default_mask) (1ul | ((u64)(default_mask) << 1))

/* HV_X64_SEGMENT_REGISTER, 16 bytes (tlfs-hypercalls.md §2.5, tlfs-intercepts.md §6.4). */
struct hv_x64_segment_register {
  u64 base;
  u32 limit;
  u16 selector;
  u16 attributes; /* type 3:0, S 4, DPL 6:5, P 7, AVL 12, L 13, D/B 14, G 15 */
} __attribute__((packed));

/* HV_X64_TABLE_REGISTER, 16 bytes. */
struct hv_x64_table_register {
  u16 pad[3];
  u16 limit;
  u64 base;
} __attribute__((packed));

/* HV_INITIAL_VP_CONTEXT (x64), 224 bytes (tlfs-hypercalls.md §2.5). */
struct hv_initial_vp_context {
  u64 rip, rsp, rflags;
  struct hv_x64_segment_register cs, ds, es, fs, gs, ss, tr, ldtr;
  struct hv_x64_table_register idtr, gdtr;
  u64 efer, cr0, cr3, cr4, msr_cr_pat;
} __attribute__((packed));

/* HvCallEnableVpVtl input (x64), 240 bytes (tlfs-hypercalls.md §2.5). */
struct hv_enable_vp_vtl {
  u64 target_partition_id;
  u32 vp_index;
  u8 target_vtl;
  u8 rsvdz[3];
  struct hv_initial_vp_context vp_vtl_context;
} __attribute__((packed));

/* HvCallModifyVtlProtectionMask input header, 16 bytes, then HV_GPA_PAGE_NUMBERs (tlfs-hypercalls.md §2.3). */
struct hv_modify_vtl_protection_mask {
  u64 target_partition_id;
  u32 map_flags;
  u8 target_vtl;
  u8 rsvdz[3];
  u64 gpa_page_list[];
} __attribute__((packed));

/* HvCallSetVpRegisters input: header 16 bytes, then HV_REGISTER_ASSOC (32 bytes) reps (tlfs-hypercalls.md §2.7). */
struct hv_register_assoc {
  u32 name;
  u32 rsvdz[3];
  u64 value_low, value_high; /* HV_REGISTER_VALUE */
} __attribute__((packed));

struct hv_set_vp_registers {
  u64 partition_id;
  u32 vp_index;
  u8 target_vtl;
  u8 rsvdz[3];
  struct hv_register_assoc elements[];
} __attribute__((packed));

/* HV_MESSAGE, 256 bytes: header then 240 bytes of payload (tlfs-overlays-synic.md §5.3). */
#define HV_MESSAGE_SIZE 256
#define HvMessageTypeNone 0x00000000u
#define HvMessageTypeGpaIntercept 0x80000001u /* tlfs-overlays-synic.md §5.5 */
/* The interception SINT (tlfs-overlays-synic.md §5.2): intercepts arrive in SIM slot 0. */
#define HV_SYNIC_INTERCEPTION_SINT_INDEX 0

struct hv_message_header {
  u32 message_type;
  u8 payload_size;
  u8 message_flags; /* MessagePending 0 */
  u16 reserved;
  u64 origination_id;
} __attribute__((packed));

/* HV_X64_INTERCEPT_MESSAGE_HEADER, 40 bytes (tlfs-intercepts.md §6.1). */
struct hv_x64_intercept_message_header {
  u32 vp_index;
  u8 instruction_length; /* 3:0 InstructionLength, 7:4 Cr8 */
  u8 intercept_access_type; /* HV_INTERCEPT_ACCESS_TYPE: 0 read, 1 write, 2 execute (§6.3) */
  u16 execution_state; /* HV_X64_VP_EXECUTION_STATE: Cpl 1:0, Cr0Pe 2, Cr0Am 3, EferLma 4, ..., Vtl 10:7 (§6.2) */
  struct hv_x64_segment_register cs_segment;
  u64 rip;
  u64 rflags;
} __attribute__((packed));

/* HV_X64_MEMORY_INTERCEPT_MESSAGE, 240 bytes (tlfs-intercepts.md §6.7). */
struct hv_x64_memory_intercept_message {
  struct hv_x64_intercept_message_header header;
  u32 cache_type;
  u8 instruction_byte_count;
  u8 memory_access_info;
  u8 tpr_priority;
  u8 reserved;
  u64 guest_virtual_address;
  u64 guest_physical_address;
  u8 instruction_bytes[16];
  struct hv_x64_segment_register ds_segment;
  struct hv_x64_segment_register ss_segment;
  u64 rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15;
} __attribute__((packed));

/* HV_X64_MSR_INTERCEPT_MESSAGE, 64 bytes (tlfs-intercepts.md §6.8; OpenVMM `HvX64MsrInterceptMessage`). */
#define HvMessageTypeMsrIntercept 0x80010001u
struct hv_x64_msr_intercept_message {
  struct hv_x64_intercept_message_header header;
  u32 msr_number;
  u32 reserved;
  u64 rdx, rax;
} __attribute__((packed));
_Static_assert(sizeof(struct hv_x64_msr_intercept_message) == 64, "HV_X64_MSR_INTERCEPT_MESSAGE");

#define HV_INTERCEPT_ACCESS_WRITE 1
#define HV_EXECUTION_STATE_VTL(s) (((s) >> 7) & 0xf)

_Static_assert(sizeof(struct hv_initial_vp_context) == 224, "HV_INITIAL_VP_CONTEXT");
_Static_assert(sizeof(struct hv_enable_vp_vtl) == 240, "HvCallEnableVpVtl input");
_Static_assert(sizeof(struct hv_modify_vtl_protection_mask) == 16, "HvCallModifyVtlProtectionMask header");
_Static_assert(sizeof(struct hv_register_assoc) == 32, "HV_REGISTER_ASSOC");
_Static_assert(sizeof(struct hv_set_vp_registers) == 16, "HvCallSetVpRegisters header");
_Static_assert(sizeof(struct hv_message_header) == 16, "HV_MESSAGE_HEADER");
_Static_assert(sizeof(struct hv_x64_intercept_message_header) == 40, "HV_X64_INTERCEPT_MESSAGE_HEADER");
_Static_assert(sizeof(struct hv_x64_memory_intercept_message) == 240, "HV_X64_MEMORY_INTERCEPT_MESSAGE");
_Static_assert(__builtin_offsetof(struct hv_x64_memory_intercept_message, guest_physical_address) == 56, "GuestPhysicalAddress");
_Static_assert(__builtin_offsetof(struct hv_x64_memory_intercept_message, rax) == 112, "Rax");

#endif
