/*
 * vsm-scenario guest: a whole-guest VSM scenario on 2 VPs (issue #20).
 *
 * VTL0, VP 0 (bsp_main): HV_X64_MSR_GUEST_OS_ID, the hypercall page, HvCallEnablePartitionVtl(1),
 *   HvCallEnableVpVtl(self, VTL1, context), VP 1 started with INIT/SIPI (before VTL1 exists on it:
 *   INIT/SIPI aimed at VTL0 are dropped once a higher VTL is enabled on the VP, tlfs-vsm.md §10),
 *   then VtlCall.
 * VTL1, VP 0 (vtl1_init): its own GUEST_OS_ID and hypercall page, the IDT, EnableVtlProtection
 *   (HvRegisterVsmPartitionConfig), HvCallModifyVtlProtectionMask(PROT_PAGES pages: read + execute,
 *   no write), HvCallEnableVpVtl(VP 1, VTL1) (VTL1 enables the other VPs itself, tlfs-vsm.md §4),
 *   and this VP's SynIC; VtlReturn.
 * VTL0, VP 1 (ap_main): VtlCall once; VTL1 on VP 1 sets up its own SynIC; VtlReturn.
 * Both VPs in VTL0 at once: WRITES_PER_VP stores each (`mov [rdi], rax`, 48 89 07) to the
 *   protected pages, a distinct address and value per VP and iteration. A VP may run at most SKEW
 *   stores ahead of the other, so their intercepts interleave. Every store intercepts: the message
 *   arrives in VTL1's SIM slot 0 of that VP and its SINT0 vector on VTL1's LAPIC; the handler
 *   (vtl1_sint0) checks the message, performs the store for VTL0, moves VTL0's RIP past it
 *   (HvCallSetVpRegisters), logs (seq, vp, gpa, value), clears the slot, EOM, EOI (SINT0 without
 *   AutoEOI); the VTL1 loop then does VtlReturn.
 * VP 0 checks every value, prints a summary on COM1 and writes its status to the debug-exit port
 *   (0 = pass).
 *
 * With SECURE_IPIS = N > 0, then N rounds of secure interrupts (tlfs-vsm.md §10): VP 0 spins in VTL0;
 *   VP 1's VTL0 asks its VTL1 (vtl1_request, VtlCall) to send HvCallSendSyntheticClusterIpi with
 *   target VTL1 to VP 0; the interrupt for VTL1 preempts VP 0's VTL0 (entry reason Interrupt),
 *   VTL1's LAPIC on VP 0 delivers IPI_VECTOR to vtl1_ipi, which counts it and EOIs, and VTL1 returns.
 *   VP 0's VTL0 never calls VTL1 meanwhile: only the secure interrupt brings VTL1 to run there.
 *
 * With MSR_WRITES = N > 0, then secure MSR write intercepts (tlfs-vsm.md §3.8): VTL1 on VP 0 set
 *   MsrLstarWrite in its HvX64RegisterCrInterceptControl (VP 1's VTL1 did not). VP 0's VTL0 writes
 *   IA32_LSTAR N times: each write has no effect (RDMSR reads the old value) and arrives in VTL1's
 *   SIM slot 0 as HV_X64_MSR_INTERCEPT_MESSAGE, whose handler checks it and moves VTL0's RIP past the
 *   WRMSR. VP 1's VTL0 writes IA32_LSTAR once: not intercepted on VP 1, it takes effect. VTL1 on VP 0
 *   also locks STAR reads: VP 0's VTL0 RDMSR of STAR does not happen (RDX keeps its sentinel) and
 *   arrives as a read MSR intercept, which VTL1 skips.
 *
 * The test (services/kvm-agent/test/agent-vsm-guest.test.ts) reads vtl1_log, vtl1_log_count and
 * scenario_result by their symbols (nm); agent-secure-interrupt-guest.test.ts builds it with SECURE_IPIS.
 */
#include "hv.h"

#ifndef WRITES_PER_VP
#define WRITES_PER_VP 16
#endif
#ifndef PROT_PAGES
#define PROT_PAGES 4
#endif
/* The protected pages: outside the image, below the partition's memory end (the test gives 64 MiB). */
#ifndef PROT_GPA
#define PROT_GPA 0x1000000ul
#endif
#ifndef SKEW
#define SKEW 2
#endif
/* SINT0 with AutoEOI (1): the handler does not EOI the LAPIC; without (0): it does. */
#ifndef SINT0_AUTO_EOI
#define SINT0_AUTO_EOI 0
#endif
/* Rounds of secure interrupts after the stores (0: none, the scenario as without them). */
#ifndef SECURE_IPIS
#define SECURE_IPIS 0
#endif
/* WRMSRs of IA32_LSTAR by VP 0's VTL0 that its VTL1 intercepts (0: none, no lock set). */
#ifndef MSR_WRITES
#define MSR_WRITES 0
#endif
#define VP_COUNT 2
#define SINT0_VECTOR 0x50
#define IPI_VECTOR 0x51
#define TRAMPOLINE_GPA 0x3000ul
#define LAPIC_BASE 0xfee00000ul
#define COM1 0x3f8
#define DEBUG_EXIT_PORT 0xf4
#define STACK_BYTES 16384
/* Spin limits (iterations of `pause`, ~1 µs each when emulated): a hang becomes a failure with a message. */
#define SPIN_LIMIT 200000000ul

_Static_assert(2 * WRITES_PER_VP <= PROT_PAGES * 512, "every store needs its own quadword");

/* ---- memory ------------------------------------------------------------------------------------ */

#define PAGE __attribute__((aligned(4096)))
u8 bsp_stack[STACK_BYTES] __attribute__((aligned(16)));
u8 ap_stack[STACK_BYTES] __attribute__((aligned(16)));
u8 vtl1_stack[VP_COUNT][STACK_BYTES] __attribute__((aligned(16)));
u8 vtl0_hypercall_page[4096] PAGE;
u8 vtl1_hypercall_page[4096] PAGE;
u8 vtl1_simp[VP_COUNT][4096] PAGE;
u8 vtl1_siefp[VP_COUNT][4096] PAGE;
u8 vtl0_input[VP_COUNT][4096] PAGE;
u8 vtl1_input[VP_COUNT][4096] PAGE;

struct idt_entry {
  u16 offset_low, selector;
  u8 ist, type_attr;
  u16 offset_mid;
  u32 offset_high, zero;
} __attribute__((packed));
struct idt_entry idt[256] __attribute__((aligned(16)));

struct tss64 {
  u32 reserved0;
  u64 rsp[3];
  u64 reserved1;
  u64 ist[7];
  u64 reserved2;
  u16 reserved3, iopb;
} __attribute__((packed));
struct tss64 tss __attribute__((aligned(16)));

extern u64 gdt[], gdt_end[];
extern u8 ap_tramp_start[], ap_tramp_end[], tramp_data[];
extern void vtl1_entry(void), isr_sint0(void), isr_ipi(void);
extern const u64 isr_exc_table[22];

/* One VTL1 log entry per intercept handled: what the test reads back (4 quadwords). */
struct log_entry {
  u64 seq; /* order in which VTL1 handled the intercepts, both VPs (lock xadd) */
  u64 vp;
  u64 gpa;
  u64 value;
};
struct log_entry vtl1_log[VP_COUNT][WRITES_PER_VP];
volatile u64 vtl1_log_count[VP_COUNT];
volatile u64 vtl1_handled[VP_COUNT];
volatile u64 vtl1_seq;
volatile u64 vtl1_errors;
volatile u64 vtl1_in_flight, vtl1_max_in_flight;
volatile u64 vtl1_ready[VP_COUNT];
/* HV_STATUS results of VTL1's set-up on VP 0: VsmPartitionConfig, ModifyVtlProtectionMask, EnableVpVtl(VP 1). */
volatile u64 vtl1_setup_status[3];

/* VTL0's shared state. */
volatile u64 ap_alive, ap_may_call, ap_ready, go, ap_done;
volatile u64 done_count[VP_COUNT];
volatile u64 mismatches[VP_COUNT];
volatile u64 spin_failures;

/* Secure interrupts (SECURE_IPIS): VTL0's request to VTL1 on that VP, the IPIs VTL1 took per VP, the
   round VP 0 waits for, and the first failed HvCallSendSyntheticClusterIpi result. */
volatile u64 vtl1_request[VP_COUNT];
volatile u64 vtl1_ipis[VP_COUNT];
volatile u64 ipi_round;
volatile u64 vtl1_ipi_error;

/* The outcome, for the test: [0] status (0 = pass), [1] intercepts logged, [2] values in place, [3] max in VTL1 at once,
   [4] secure IPIs VTL1 took on VP 0. */
volatile u64 scenario_result[5];

/* MSR_WRITES: the intercepts VTL1 handled per VP, VP 0's writes that took effect anyway, VP 1's write
   result (1 = it took effect), the old LSTAR VP 0 kept, and the set-up status of the lock. */
volatile u64 vtl1_msr_intercepts[VP_COUNT];
volatile u64 msr_leaks;
volatile u64 ap_msr_done;
volatile u64 lstar_kept;
volatile u64 vtl1_msr_lock_status;
/* VTL1 also locks STAR reads on VP 0: VP 0's VTL0 reads it once with RDX = RDMSR_SENTINEL. */
#define RDMSR_SENTINEL 0x5a5a5a5aul
volatile u64 vtl1_msr_read_intercepts;
volatile u64 star_read_rdx;
static inline u64 lstar_value(u64 i) { return 0xffffffff81000000ul + (i + 1) * 0x1000; }

/* ---- CPU helpers ------------------------------------------------------------------------------- */

static inline void outb(u16 port, u8 v) { asm volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { asm volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) {
  u8 v;
  asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline u64 rdmsr(u32 msr) {
  u32 lo, hi;
  asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
  return ((u64)hi << 32) | lo;
}
static inline void wrmsr(u32 msr, u64 v) { asm volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory"); }
/* An RDMSR that may enter VTL1: returns RDX (given `rdx` before; an intercepted read leaves it). */
static inline u64 rdmsr_intercepted(u32 msr, u64 rdx) {
  u64 c = msr, a = 0, d = rdx;
  asm volatile("rdmsr" : "+c"(c), "+a"(a), "+d"(d) : : "memory");
  return d;
}
/* A WRMSR that may enter VTL1 (an intercept): VTL1's VtlReturn leaves RAX and RCX changed (entry.S). */
static inline void wrmsr_intercepted(u32 msr, u64 v) {
  u64 c = msr, a = (u32)v;
  asm volatile("wrmsr" : "+c"(c), "+a"(a) : "d"((u32)(v >> 32)) : "memory");
}
static inline void pause(void) { asm volatile("pause" ::: "memory"); }
static inline u64 read_cr0(void) { u64 v; asm volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline u64 read_cr3(void) { u64 v; asm volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline u64 read_cr4(void) { u64 v; asm volatile("mov %%cr4, %0" : "=r"(v)); return v; }
static inline u64 atomic_add(volatile u64 *p, u64 v) {
  asm volatile("lock xaddq %0, %1" : "+r"(v), "+m"(*p) : : "memory");
  return v;
}
/* The LAPIC through a register (an absolute [disp32] operand would be sign-extended in 64-bit code). */
static inline void lapic_write(u32 reg, u32 v) { asm volatile("movl %1, (%0)" : : "r"(LAPIC_BASE + reg), "r"(v) : "memory"); }
static inline u32 lapic_read(u32 reg) {
  u32 v;
  asm volatile("movl (%1), %0" : "=r"(v) : "r"(LAPIC_BASE + reg) : "memory");
  return v;
}

/* A hypercall through a hypercall page (tlfs-hypercalls.md §1.4): RCX control, RDX input, R8 output; RAX result. */
static inline u64 hypercall(u8 *page, u64 control, u64 input, u64 output) {
  register u64 r8 asm("r8") = output;
  u64 rax = (u64)page;
  asm volatile("call *%%rax" : "+a"(rax), "+c"(control), "+d"(input), "+r"(r8) : : "memory", "cc");
  return rax;
}

/*
 * VtlCall from VTL0. VTL1 runs C code before its VtlReturn and the general registers are shared
 * (tlfs-vsm.md §9.2): every register the ABI lets a callee change is clobbered.
 */
static void vtl_call(void) {
  u64 target = (u64)vtl0_hypercall_page + VTL_CALL_OFFSET;
  asm volatile("xor %%ecx, %%ecx\n\tcall *%%rax" : "+a"(target) : : "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
}

/* ---- console ----------------------------------------------------------------------------------- */

static volatile u32 print_lock;

static void putc_raw(char c) {
  for (u32 i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++) pause();
  outb(COM1, (u8)c);
}
static void puts_raw(const char *s) {
  while (*s) putc_raw(*s++);
}
static void put_dec(u64 v) {
  char b[21];
  int i = 20;
  b[i] = 0;
  do b[--i] = (char)('0' + v % 10); while ((v /= 10) != 0);
  puts_raw(b + i);
}
static void put_hex(u64 v) {
  char b[19];
  b[0] = '0';
  b[1] = 'x';
  int n = 0;
  for (int s = 60; s >= 0; s -= 4) {
    u32 d = (v >> s) & 0xf;
    if (d == 0 && n == 0 && s != 0) continue;
    b[2 + n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
  }
  b[2 + n] = 0;
  puts_raw(b);
}
static void lock_print(void) {
  while (__atomic_exchange_n(&print_lock, 1, __ATOMIC_ACQUIRE)) pause();
}
static void unlock_print(void) { __atomic_store_n(&print_lock, 0, __ATOMIC_RELEASE); }

static void say(const char *s) {
  lock_print();
  puts_raw(s);
  unlock_print();
}

static __attribute__((noreturn)) void finish(u32 code) {
  scenario_result[0] = code;
  outl(DEBUG_EXIT_PORT, code);
  for (;;) asm volatile("cli; hlt");
}

static __attribute__((noreturn)) void fail(const char *what, u64 v) {
  lock_print();
  puts_raw("vsm-scenario: FAIL: ");
  puts_raw(what);
  puts_raw(" ");
  put_hex(v);
  puts_raw("\n");
  unlock_print();
  finish(1);
}

/* Spins until *p >= want; a hang past SPIN_LIMIT fails the run. */
static void wait_at_least(volatile u64 *p, u64 want, const char *what) {
  for (u64 i = 0; *p < want; i++) {
    if (i == SPIN_LIMIT) fail(what, *p);
    pause();
  }
}

struct exc_frame {
  u64 r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
  u64 vector, error;
  u64 rip, cs, rflags, rsp, ss;
};

void exception_report(struct exc_frame *f) {
  lock_print();
  puts_raw("vsm-scenario: EXCEPTION vector ");
  put_dec(f->vector);
  puts_raw(" error ");
  put_hex(f->error);
  puts_raw(" rip ");
  put_hex(f->rip);
  puts_raw(" on VP ");
  put_dec(rdmsr(HV_X64_MSR_VP_INDEX));
  puts_raw("\n");
  unlock_print();
  finish(0x80 | (u32)f->vector);
}

/* ---- descriptor tables ------------------------------------------------------------------------- */

static void set_gate(int vec, u64 handler) {
  struct idt_entry *e = &idt[vec];
  e->offset_low = (u16)handler;
  e->selector = 0x08;
  e->ist = 0;
  e->type_attr = 0x8e; /* present, DPL 0, 64-bit interrupt gate */
  e->offset_mid = (u16)(handler >> 16);
  e->offset_high = (u32)(handler >> 32);
  e->zero = 0;
}

static void fill_idt(void) {
  for (int v = 0; v < 22; v++) set_gate(v, isr_exc_table[v]);
  set_gate(SINT0_VECTOR, (u64)isr_sint0);
  set_gate(IPI_VECTOR, (u64)isr_ipi);
}

struct __attribute__((packed)) table_pointer {
  u16 limit;
  u64 base;
};

static void load_idt(void) {
  struct table_pointer p = { sizeof(idt) - 1, (u64)idt };
  asm volatile("lidt %0" : : "m"(p));
}

#define GDT_TSS_SELECTOR 0x20
#define GDT_LIMIT (5 * 8 + 16 - 1)

/* Our GDT (entry.S) with the TSS descriptor at 0x20; CS 0x08, the data selectors 0x10. */
static void load_gdt(void) {
  u64 base = (u64)&tss, limit = sizeof(tss) - 1;
  gdt[4] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ul << 40) | (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
  gdt[5] = base >> 32;
  struct table_pointer p = { GDT_LIMIT, (u64)gdt };
  asm volatile(
      "lgdt %0\n\t"
      "pushq $0x08\n\t"
      "leaq 1f(%%rip), %%rax\n\t"
      "pushq %%rax\n\t"
      "lretq\n"
      "1:\n\t"
      "mov $0x10, %%eax\n\t"
      "mov %%eax, %%ds\n\t"
      "mov %%eax, %%es\n\t"
      "mov %%eax, %%ss\n\t"
      "mov %%eax, %%fs\n\t"
      "mov %%eax, %%gs\n\t"
      : : "m"(p) : "rax", "memory");
}

/* VTL1's initial context on VP `vp` (HV_INITIAL_VP_CONTEXT, tlfs-hypercalls.md §2.5): vtl1_entry on its own stack. */
static void vtl1_context(struct hv_initial_vp_context *c, u32 vp) {
  struct hv_x64_segment_register code = { 0, 0xffffffff, 0x08, 0xa09b }; /* G, L, P, S, execute/read accessed */
  struct hv_x64_segment_register data = { 0, 0xffffffff, 0x10, 0xc093 }; /* G, D/B, P, S, read/write accessed */
  c->rip = (u64)vtl1_entry;
  c->rsp = (u64)(vtl1_stack[vp] + STACK_BYTES);
  c->rflags = 0x2; /* IF = 0: VTL1 takes its interrupts only where it waits for them */
  c->cs = code;
  c->ds = c->es = c->fs = c->gs = c->ss = data;
  c->tr = (struct hv_x64_segment_register){ (u64)&tss, sizeof(tss) - 1, GDT_TSS_SELECTOR, 0x8b }; /* busy 64-bit TSS */
  c->ldtr = (struct hv_x64_segment_register){ 0, 0, 0, 0x82 };
  c->idtr = (struct hv_x64_table_register){ { 0, 0, 0 }, sizeof(idt) - 1, (u64)idt };
  c->gdtr = (struct hv_x64_table_register){ { 0, 0, 0 }, GDT_LIMIT, (u64)gdt };
  c->efer = rdmsr(0xc0000080);
  c->cr0 = read_cr0();
  c->cr3 = read_cr3(); /* the boot plan's identity map */
  c->cr4 = read_cr4();
  c->msr_cr_pat = rdmsr(0x277);
}

static u64 enable_vp_vtl(u8 *page, u8 *input, u32 vp) {
  struct hv_enable_vp_vtl *in = (struct hv_enable_vp_vtl *)input;
  in->target_partition_id = HV_PARTITION_ID_SELF;
  in->vp_index = vp;
  in->target_vtl = 1;
  in->rsvdz[0] = in->rsvdz[1] = in->rsvdz[2] = 0;
  vtl1_context(&in->vp_vtl_context, vp);
  return hypercall(page, HvCallEnableVpVtl, (u64)input, 0);
}

/* HvCallSetVpRegisters of one register of this VP (tlfs-hypercalls.md §2.7); `target_vtl` 0xff = the caller's. */
static u64 set_vp_register(u8 *page, u8 *input, u32 name, u64 value, u8 target_vtl) {
  struct hv_set_vp_registers *in = (struct hv_set_vp_registers *)input;
  in->partition_id = HV_PARTITION_ID_SELF;
  in->vp_index = HV_VP_INDEX_SELF;
  in->target_vtl = target_vtl == 0xff ? 0 : HV_INPUT_VTL(target_vtl);
  in->rsvdz[0] = in->rsvdz[1] = in->rsvdz[2] = 0;
  in->elements[0] = (struct hv_register_assoc){ name, { 0, 0, 0 }, value, 0 };
  return hypercall(page, HvCallSetVpRegisters | HV_HYPERCALL_REP(1), (u64)input, 0);
}

/* ---- the stores -------------------------------------------------------------------------------- */

static inline u64 target_gpa(u32 vp, u32 j) {
  u64 slot = (u64)vp * WRITES_PER_VP + j;
  return PROT_GPA + (slot % PROT_PAGES) * 4096 + (slot / PROT_PAGES) * 8;
}
static inline u64 value_of(u32 vp, u32 j) { return 0x5ec0000000000000ul | ((u64)(vp + 1) << 40) | ((u64)(j + 1) << 8) | 0x5a; }

/* VTL0 on VP `vp`: WRITES_PER_VP stores to the protected pages, at most SKEW ahead of the other VP. */
static void store_all(u32 vp) {
  for (u32 j = 0; j < WRITES_PER_VP; j++) {
    if (j > SKEW) wait_at_least(&done_count[1 - vp], j - SKEW, "the other VP's stores did not progress:");
    u64 value = value_of(vp, j);
    u64 *at = (u64 *)target_gpa(vp, j);
    /* The store VTL1 sees in the intercept (48 89 07). VTL1 changes RAX and RCX (its VtlReturn sequence). */
    asm volatile("mov %%rax, (%%rdi)" : "+a"(value), "+D"(at) : : "rcx", "memory");
    if (*(volatile u64 *)target_gpa(vp, j) != value_of(vp, j)) mismatches[vp]++;
    done_count[vp] = j + 1;
  }
}

/* ---- VTL0 -------------------------------------------------------------------------------------- */

static void start_ap(void) {
  /* The trampoline (entry.S) to 0x3000 with the GDT, VP 0's paging and control registers, and VP 1's stack. */
  u8 *dst = (u8 *)TRAMPOLINE_GPA;
  for (u8 *s = ap_tramp_start; s < ap_tramp_end; s++) *dst++ = *s;
  u8 *d = (u8 *)TRAMPOLINE_GPA + (tramp_data - ap_tramp_start);
  *(u16 *)(d + 0) = GDT_LIMIT;
  *(u32 *)(d + 2) = (u32)(u64)gdt;
  *(u32 *)(d + 8) = (u32)read_cr3();
  *(u32 *)(d + 12) = (u32)read_cr4();
  *(u32 *)(d + 16) = (u32)read_cr0();
  *(u32 *)(d + 20) = (u32)rdmsr(0xc0000080);
  *(u64 *)(d + 24) = (u64)(ap_stack + STACK_BYTES);
  /* INIT, then SIPI twice (Intel SDM 8.4.4.1): ICR high = destination APIC id 1. */
  lapic_write(0x310, 1u << 24);
  lapic_write(0x300, 0x00004500); /* INIT, level assert */
  for (u32 i = 0; i < 100000 && (lapic_read(0x300) & (1u << 12)); i++) pause();
  for (int k = 0; k < 2; k++) {
    lapic_write(0x310, 1u << 24);
    lapic_write(0x300, 0x00004600 | (u32)(TRAMPOLINE_GPA >> 12)); /* Start-up, vector 0x03 */
    for (u32 i = 0; i < 100000 && (lapic_read(0x300) & (1u << 12)); i++) pause();
    if (ap_alive) break;
  }
}

void bsp_main(void) {
  load_gdt();
  fill_idt();
  load_idt();
  lapic_write(0xf0, 0x1ff); /* SVR: APIC software enable, spurious vector 0xff */
  say("vsm-scenario: VP 0 in VTL0, long mode\n");

  /* Guest OS id (open source, bit 63) and the hypercall page (tlfs-hypercalls.md §1.7). */
  wrmsr(HV_X64_MSR_GUEST_OS_ID, 0x8100000000000001ul);
  wrmsr(HV_X64_MSR_HYPERCALL, (u64)vtl0_hypercall_page | HV_OVERLAY_ENABLE);
  if (!(rdmsr(HV_X64_MSR_HYPERCALL) & 1)) fail("HV_X64_MSR_HYPERCALL not enabled:", rdmsr(HV_X64_MSR_HYPERCALL));

  /* HvCallEnablePartitionVtl (fast): RDX = TargetPartitionId, R8 = TargetVtl 1, flags 0 (tlfs-hypercalls.md §2.4). */
  u64 r = hypercall(vtl0_hypercall_page, HvCallEnablePartitionVtl | HV_HYPERCALL_FAST, HV_PARTITION_ID_SELF, 1);
  if (HV_RESULT_STATUS(r)) fail("HvCallEnablePartitionVtl:", r);
  r = enable_vp_vtl(vtl0_hypercall_page, vtl0_input[0], 0);
  if (HV_RESULT_STATUS(r)) fail("HvCallEnableVpVtl(VP 0):", r);

  start_ap();
  wait_at_least(&ap_alive, 1, "VP 1 did not start after INIT/SIPI:");
  say("vsm-scenario: VP 1 started (INIT/SIPI)\n");

  vtl_call(); /* VTL1 on VP 0: protections, VTL1 on VP 1, SynIC */
  for (int i = 0; i < 3; i++)
    if (HV_RESULT_STATUS(vtl1_setup_status[i])) fail("VTL1 set-up hypercall failed:", (u64)i << 32 | vtl1_setup_status[i]);
  if (!vtl1_ready[0]) fail("VTL1 on VP 0 did not finish its set-up:", 0);
  say("vsm-scenario: VTL1 protects the pages; VP 1 enters VTL1 next\n");

  ap_may_call = 1;
  wait_at_least(&ap_ready, 1, "VP 1 did not come back from VTL1:");
  if (!vtl1_ready[1]) fail("VTL1 on VP 1 did not finish its set-up:", 0);

  go = 1;
  store_all(0);
  wait_at_least(&ap_done, 1, "VP 1 did not finish its stores:");

#if SECURE_IPIS
  /* Secure interrupts: VP 0 stays in VTL0 (no VtlCall); VTL1 runs here only when VP 1's IPI enters it. */
  for (u64 i = 0; i < SECURE_IPIS; i++) {
    ipi_round = i + 1;
    for (u64 k = 0; vtl1_ipis[0] <= i; k++) {
      if (k == SPIN_LIMIT) fail("VTL1 on VP 0 did not take the secure IPI of round", i);
      pause();
    }
  }
  if (vtl1_ipi_error) fail("HvCallSendSyntheticClusterIpi:", vtl1_ipi_error);
  scenario_result[4] = vtl1_ipis[0];
  lock_print();
  puts_raw("vsm-scenario: ");
  put_dec(vtl1_ipis[0]);
  puts_raw(" secure IPIs preempted VTL0 on VP 0\n");
  unlock_print();
#endif

#if MSR_WRITES
  /* VP 0's VTL0 writes IA32_LSTAR, which its VTL1 locked: no write takes effect, each one reaches VTL1. */
  if (HV_RESULT_STATUS(vtl1_msr_lock_status)) fail("HvCallSetVpRegisters(CrInterceptControl):", vtl1_msr_lock_status);
  lstar_kept = rdmsr(IA32_LSTAR);
  for (u64 i = 0; i < MSR_WRITES; i++) {
    wrmsr_intercepted(IA32_LSTAR, lstar_value(i));
    if (rdmsr(IA32_LSTAR) != lstar_kept) msr_leaks++;
    if (vtl1_msr_intercepts[0] != i + 1) fail("VTL1 did not see the LSTAR write", i);
  }
  /* STAR's read is locked too: the RDMSR does not happen (RDX keeps the sentinel), VTL1 skips it. */
  star_read_rdx = rdmsr_intercepted(IA32_STAR, RDMSR_SENTINEL);
  if (star_read_rdx != RDMSR_SENTINEL || vtl1_msr_read_intercepts != 1) fail("STAR read: RDX / VTL1's read intercepts", star_read_rdx << 8 | vtl1_msr_read_intercepts);
  say("vsm-scenario: the STAR read was intercepted by VTL1 on VP 0 and did not happen\n");
  wait_at_least(&ap_msr_done, 1, "VP 1 did not write IA32_LSTAR:");
  lock_print();
  puts_raw("vsm-scenario: ");
  put_dec(vtl1_msr_intercepts[0]);
  puts_raw(" LSTAR writes intercepted by VTL1 on VP 0, ");
  put_dec(msr_leaks);
  puts_raw(" took effect; VP 1's write ");
  puts_raw(ap_msr_done == 1 ? "took effect\n" : "was lost\n");
  unlock_print();
  if (msr_leaks || ap_msr_done != 1 || vtl1_msr_intercepts[1]) fail("MSR intercepts: leaks / VP 1 result / VP 1 intercepts", msr_leaks << 32 | ap_msr_done << 16 | vtl1_msr_intercepts[1]);
#endif

  /* Every value in place, nothing else written to the protected pages, one log entry per store. */
  u64 in_place = 0, stray = 0;
  for (u32 vp = 0; vp < VP_COUNT; vp++)
    for (u32 j = 0; j < WRITES_PER_VP; j++)
      if (*(volatile u64 *)target_gpa(vp, j) == value_of(vp, j)) in_place++;
  u64 nonzero = 0;
  for (u64 a = PROT_GPA; a < PROT_GPA + PROT_PAGES * 4096; a += 8)
    if (*(volatile u64 *)a) nonzero++;
  stray = nonzero - in_place;
  u64 logged = vtl1_log_count[0] + vtl1_log_count[1];
  u32 status = 0;
  if (in_place != VP_COUNT * WRITES_PER_VP || stray || logged != VP_COUNT * WRITES_PER_VP || vtl1_errors || mismatches[0] || mismatches[1] || spin_failures) status = 2;
  scenario_result[1] = logged;
  scenario_result[2] = in_place;
  scenario_result[3] = vtl1_max_in_flight;

  lock_print();
  puts_raw("vsm-scenario: ");
  put_dec(VP_COUNT);
  puts_raw(" VPs x ");
  put_dec(WRITES_PER_VP);
  puts_raw(" stores to ");
  put_dec(PROT_PAGES);
  puts_raw(" protected pages: ");
  put_dec(logged);
  puts_raw(" intercepts handled in VTL1, ");
  put_dec(in_place);
  puts_raw(" values in place, ");
  put_dec(stray);
  puts_raw(" stray, ");
  put_dec(vtl1_errors);
  puts_raw(" bad messages, ");
  put_dec(mismatches[0] + mismatches[1]);
  puts_raw(" mismatches; at most ");
  put_dec(vtl1_max_in_flight);
  puts_raw(" VPs in VTL1's handler at once\n");
  puts_raw(status == 0 ? "vsm-scenario: PASS\n" : "vsm-scenario: FAIL\n");
  unlock_print();
  finish(status);
}

void ap_main(void) {
  ap_alive = 1;
  wait_at_least(&ap_may_call, 1, "VP 1 was not told to enter VTL1:");
  load_idt();
  vtl_call(); /* VTL1 on VP 1: its SynIC */
  ap_ready = 1;
  wait_at_least(&go, 1, "VP 1 waited for the start:");
  store_all(1);
  ap_done = 1;
#if SECURE_IPIS
  for (u64 i = 0; i < SECURE_IPIS; i++) {
    wait_at_least(&ipi_round, i + 1, "VP 0 did not ask for the next secure IPI:");
    vtl1_request[1] = 1;
    vtl_call(); /* VTL1 on VP 1 sends it (vtl1_service) */
    wait_at_least(&vtl1_ipis[0], i + 1, "VP 0's VTL1 did not take the secure IPI:");
  }
#endif
#if MSR_WRITES
  /* VP 1's VTL1 locked nothing: this write takes effect (the agent traps it for VP 0's sake). */
  wrmsr(IA32_LSTAR, 0xffffffff82000000ul);
  ap_msr_done = rdmsr(IA32_LSTAR) == 0xffffffff82000000ul ? 1 : 2;
#endif
}

/* ---- VTL1 -------------------------------------------------------------------------------------- */

/* VTL1's first entry on a VP (from vtl1_entry); returns this VP's handled counter for the VTL1 loop. */
u64 *vtl1_init(void) {
  u32 vp = (u32)rdmsr(HV_X64_MSR_VP_INDEX);
  if (vp == 0) {
    wrmsr(HV_X64_MSR_GUEST_OS_ID, 0x8100000000000002ul);
    wrmsr(HV_X64_MSR_HYPERCALL, (u64)vtl1_hypercall_page | HV_OVERLAY_ENABLE);
    fill_idt();
    /* EnableVtlProtection, DefaultVtlProtectionMask = RWX (tlfs-vsm.md §3.4). */
    vtl1_setup_status[0] = set_vp_register(vtl1_hypercall_page, vtl1_input[0], HvRegisterVsmPartitionConfig,
                                           HV_VSM_PARTITION_CONFIG(HV_MAP_GPA_READABLE | HV_MAP_GPA_WRITABLE | HV_MAP_GPA_KERNEL_EXECUTABLE | HV_MAP_GPA_USER_EXECUTABLE), 0xff);
    /* The pages: readable and executable, not writable, for VTL0 (tlfs-hypercalls.md §2.3). */
    struct hv_modify_vtl_protection_mask *m = (struct hv_modify_vtl_protection_mask *)vtl1_input[0];
    m->target_partition_id = HV_PARTITION_ID_SELF;
    m->map_flags = HV_MAP_GPA_READABLE | HV_MAP_GPA_KERNEL_EXECUTABLE | HV_MAP_GPA_USER_EXECUTABLE;
    m->target_vtl = HV_INPUT_VTL(1);
    m->rsvdz[0] = m->rsvdz[1] = m->rsvdz[2] = 0;
    for (u64 i = 0; i < PROT_PAGES; i++) m->gpa_page_list[i] = (PROT_GPA >> 12) + i;
    u64 r = hypercall(vtl1_hypercall_page, HvCallModifyVtlProtectionMask | HV_HYPERCALL_REP(PROT_PAGES), (u64)m, 0);
    vtl1_setup_status[1] = HV_RESULT_REPS(r) == PROT_PAGES ? r : (r | 0x10000);
    /* VTL1 enables itself on VP 1 (tlfs-vsm.md §4). */
    vtl1_setup_status[2] = enable_vp_vtl(vtl1_hypercall_page, vtl1_input[0], 1);
#if MSR_WRITES
    /* Lock IA32_LSTAR against VTL0 on this VP (VTL1's own register, tlfs-vsm.md §3.8). */
    vtl1_msr_lock_status = set_vp_register(vtl1_hypercall_page, vtl1_input[0], HvX64RegisterCrInterceptControl, HV_CR_INTERCEPT_MSR_LSTAR_WRITE | HV_CR_INTERCEPT_MSR_STAR_READ, 0xff);
#endif
  }
  /* This VP's LAPIC in VTL1 (each VTL has its own, tlfs-vsm.md §9.1) and SynIC (tlfs-overlays-synic.md §5.1). */
  lapic_write(0x80, 0);     /* TPR */
  lapic_write(0xf0, 0x1ff); /* SVR: enabled, spurious vector 0xff */
  wrmsr(HV_X64_MSR_SIMP, (u64)vtl1_simp[vp] | HV_OVERLAY_ENABLE);
  wrmsr(HV_X64_MSR_SIEFP, (u64)vtl1_siefp[vp] | HV_OVERLAY_ENABLE);
  wrmsr(HV_X64_MSR_SINT0, SINT0_VECTOR | (SINT0_AUTO_EOI ? HV_SINT_AUTO_EOI : 0)); /* unmasked */
  wrmsr(HV_X64_MSR_SCONTROL, HV_SCONTROL_ENABLE);
  vtl1_ready[vp] = 1;
  return (u64 *)&vtl1_handled[vp];
}

static void bad_message(u32 vp, const char *what, u64 v) {
  vtl1_errors++;
  lock_print();
  puts_raw("vsm-scenario: VTL1 on VP ");
  put_dec(vp);
  puts_raw(": ");
  puts_raw(what);
  puts_raw(" ");
  put_hex(v);
  puts_raw("\n");
  unlock_print();
}

/*
 * SINT0's handler in VTL1 (isr_sint0): the HV_X64_MEMORY_INTERCEPT_MESSAGE in this VP's SIM slot 0
 * (tlfs-vsm.md §8, tlfs-intercepts.md §6.7). Every field is read once from the slot (an overlay page).
 */
void vtl1_sint0(void) {
  u32 vp = (u32)rdmsr(HV_X64_MSR_VP_INDEX);
  u64 now = atomic_add(&vtl1_in_flight, 1) + 1;
  for (u64 m = vtl1_max_in_flight; now > m; m = vtl1_max_in_flight)
    if (__atomic_compare_exchange_n(&vtl1_max_in_flight, &m, now, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) break;

  volatile struct hv_message_header *h = (volatile struct hv_message_header *)(vtl1_simp[vp] + HV_SYNIC_INTERCEPTION_SINT_INDEX * HV_MESSAGE_SIZE);
  volatile struct hv_x64_memory_intercept_message *msg = (volatile struct hv_x64_memory_intercept_message *)(h + 1);
  u32 type = h->message_type;
  if (type == HvMessageTypeMsrIntercept) {
    volatile struct hv_x64_msr_intercept_message *mm = (volatile struct hv_x64_msr_intercept_message *)(h + 1);
    u64 n = vtl1_msr_intercepts[vp];
    u64 rip = mm->header.rip;
    if (mm->header.intercept_access_type == HV_INTERCEPT_ACCESS_READ) {
      /* The locked STAR read: refused (VTL0's RDX/RAX stay), RIP past the RDMSR (0F 32). */
      if (mm->msr_number != IA32_STAR || vp != 0) bad_message(vp, "MSR read intercept MsrNumber", mm->msr_number);
      if (*(volatile u16 *)rip != 0x320f) bad_message(vp, "MSR read intercept RIP is not on an RDMSR:", rip);
      vtl1_msr_read_intercepts++;
      u64 r = set_vp_register(vtl1_hypercall_page, vtl1_input[vp], HvX64RegisterRip, rip + 2, 0);
      if (HV_RESULT_STATUS(r) || HV_RESULT_REPS(r) != 1) bad_message(vp, "HvCallSetVpRegisters(VTL0 RIP)", r);
      goto done;
    }
    u64 value = (mm->rdx << 32) | (mm->rax & 0xffffffffu);
    if (mm->header.vp_index != vp) bad_message(vp, "MSR intercept VpIndex", mm->header.vp_index);
    if (mm->header.intercept_access_type != HV_INTERCEPT_ACCESS_WRITE) bad_message(vp, "MSR intercept InterceptAccessType", mm->header.intercept_access_type);
    if (HV_EXECUTION_STATE_VTL(mm->header.execution_state) != 0) bad_message(vp, "MSR intercept ExecutionState.Vtl", mm->header.execution_state);
    if (mm->msr_number != IA32_LSTAR) bad_message(vp, "MSR intercept MsrNumber", mm->msr_number);
    if (value != lstar_value(n)) bad_message(vp, "MSR intercept EDX:EAX", value);
    if (*(volatile u16 *)rip != 0x300f) bad_message(vp, "MSR intercept RIP is not on a WRMSR:", rip);
    vtl1_msr_intercepts[vp] = n + 1;
    /* Refused for good: VTL0 goes on after the WRMSR (2 bytes, 0F 30). */
    u64 r = set_vp_register(vtl1_hypercall_page, vtl1_input[vp], HvX64RegisterRip, rip + 2, 0);
    if (HV_RESULT_STATUS(r) || HV_RESULT_REPS(r) != 1) bad_message(vp, "HvCallSetVpRegisters(VTL0 RIP)", r);
  } else if (type != HvMessageTypeGpaIntercept) {
    bad_message(vp, "SIM slot 0 holds message type", type);
  } else {
    u32 msg_vp = msg->header.vp_index;
    u32 length = msg->header.instruction_length & 0xf;
    u32 access = msg->header.intercept_access_type;
    u32 vtl = HV_EXECUTION_STATE_VTL(msg->header.execution_state);
    u64 rip = msg->header.rip;
    u64 gpa = msg->guest_physical_address;
    u32 insn = *(volatile u32 *)msg->instruction_bytes & 0xffffff;
    u64 value = msg->rax;
    u64 rdi = msg->rdi;
    int ok = 1;
    if (msg_vp != vp) ok = 0, bad_message(vp, "VpIndex", msg_vp);
    if (access != HV_INTERCEPT_ACCESS_WRITE) ok = 0, bad_message(vp, "InterceptAccessType", access);
    if (vtl != 0) ok = 0, bad_message(vp, "ExecutionState.Vtl", vtl);
    if (length != 3 || insn != 0x078948) ok = 0, bad_message(vp, "instruction (length << 24 | bytes)", (u64)length << 24 | insn);
    if (gpa < PROT_GPA || gpa >= PROT_GPA + PROT_PAGES * 4096 || (gpa & 7) || gpa != rdi) ok = 0, bad_message(vp, "GuestPhysicalAddress", gpa);
    if (ok) {
      /* The store on VTL0's behalf: VTL1's own view has no protection on the page. */
      *(volatile u64 *)gpa = value;
      u64 n = vtl1_log_count[vp];
      if (n < WRITES_PER_VP) {
        struct log_entry *e = &vtl1_log[vp][n];
        e->seq = atomic_add(&vtl1_seq, 1);
        e->vp = vp;
        e->gpa = gpa;
        e->value = value;
      }
      vtl1_log_count[vp] = n + 1;
    }
    /* VTL0 goes on after the instruction (it was performed, or is refused for good). */
    u64 r = set_vp_register(vtl1_hypercall_page, vtl1_input[vp], HvX64RegisterRip, rip + (length ? length : 3), 0);
    if (HV_RESULT_STATUS(r) || HV_RESULT_REPS(r) != 1) bad_message(vp, "HvCallSetVpRegisters(VTL0 RIP)", r);
  }
done:
  /* Free the slot, then EOM (tlfs-overlays-synic.md §5.4), then EOI the LAPIC unless SINT0 has AutoEOI. */
  h->message_type = HvMessageTypeNone;
  asm volatile("mfence" ::: "memory");
  wrmsr(HV_X64_MSR_EOM, 0);
  if (!SINT0_AUTO_EOI) lapic_write(0xb0, 0);
  atomic_add(&vtl1_in_flight, (u64)-1);
  vtl1_handled[vp]++;
}

/*
 * VTL1 entered again (vtl1_loop): a request of this VP's VTL0 (vtl1_request, set before its VtlCall) is
 * served here and 1 returned (VtlReturn at once); 0 otherwise (an intercept or a secure interrupt: its
 * vector is pending on the LAPIC). The request: HvCallSendSyntheticClusterIpi (fast) of IPI_VECTOR to
 * VTL1 (HV_INPUT_VTL, the caller's own VTL) of VP 0.
 */
u64 vtl1_service(void) {
  if (!vtl1_request[0] && !vtl1_request[1]) return 0; /* no VP index read (an exit) on the intercept path */
  u32 vp = (u32)rdmsr(HV_X64_MSR_VP_INDEX);
  if (!vtl1_request[vp]) return 0;
  vtl1_request[vp] = 0;
  u64 r = hypercall(vtl1_hypercall_page, HvCallSendSyntheticClusterIpi | HV_HYPERCALL_FAST, IPI_VECTOR | ((u64)HV_INPUT_VTL(1) << 32), 1ul << 0);
  if (HV_RESULT_STATUS(r) && !vtl1_ipi_error) vtl1_ipi_error = r | (1ul << 63);
  return 1;
}

/* IPI_VECTOR's handler in VTL1 (isr_ipi): counts it, EOIs the LAPIC; the VTL1 loop then returns. */
void vtl1_ipi(void) {
  u32 vp = (u32)rdmsr(HV_X64_MSR_VP_INDEX);
  vtl1_ipis[vp]++;
  lapic_write(0xb0, 0);
  vtl1_handled[vp]++;
}
