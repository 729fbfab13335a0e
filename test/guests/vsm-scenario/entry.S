/*
 * vsm-scenario guest: the assembly parts.
 *
 *   _start          VP 0's entry in long mode (the agent's ELF64 boot plan: identity paging, a GDT)
 *   ap_tramp_*      VP 1's real-mode start (SIPI): copied to TRAMPOLINE_GPA by VP 0; real mode ->
 *                   32-bit protected mode -> long mode with VP 0's paging, then ap_entry64
 *   vtl1_entry      VTL1's first instruction on each VP (HV_INITIAL_VP_CONTEXT.Rip): vtl1_init(),
 *                   then the VTL1 loop: VtlReturn; entered again on an intercept, wait (sti; hlt)
 *                   until this VP's SINT0 handler ran, VtlReturn again
 *   isr_*           interrupt stubs (SINT0, the secure IPI, exceptions): every GPR the handler's C code may change is saved, because
 *                   the general registers are shared with VTL0 (tlfs-vsm.md §9.2)
 */
#define TRAMPOLINE_GPA 0x3000

	.section .text.boot, "ax"
	.code64
	.globl _start
_start:
	cli
	lea bsp_stack(%rip), %rsp
	add $16384, %rsp          /* STACK_BYTES */
	call bsp_main
1:	cli
	hlt
	jmp 1b

/* ---- VP 1: real mode -> long mode (copied to TRAMPOLINE_GPA; CS = TRAMPOLINE_GPA >> 4, IP = 0) ---- */
	.code16
	.globl ap_tramp_start
ap_tramp_start:
	cli
	mov %cs, %ax
	mov %ax, %ds
	lgdtl tramp_data - ap_tramp_start
	mov %cr0, %eax
	or $1, %eax
	mov %eax, %cr0
	ljmpl $0x18, $(TRAMPOLINE_GPA + tramp32 - ap_tramp_start)

	.code32
tramp32:
	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov (TRAMPOLINE_GPA + tramp_data + 12 - ap_tramp_start), %eax /* CR4 (PAE) */
	mov %eax, %cr4
	mov (TRAMPOLINE_GPA + tramp_data + 8 - ap_tramp_start), %eax  /* CR3 */
	mov %eax, %cr3
	mov $0xc0000080, %ecx /* IA32_EFER */
	mov (TRAMPOLINE_GPA + tramp_data + 20 - ap_tramp_start), %eax
	and $~0x400, %eax     /* LMA is set by the CPU */
	xor %edx, %edx
	wrmsr
	mov (TRAMPOLINE_GPA + tramp_data + 16 - ap_tramp_start), %eax /* CR0 (PG | PE ...) */
	mov %eax, %cr0
	ljmp $0x08, $(TRAMPOLINE_GPA + tramp64 - ap_tramp_start)

	.code64
tramp64:
	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov %ax, %fs
	mov %ax, %gs
	mov (TRAMPOLINE_GPA + tramp_data + 24 - ap_tramp_start), %rsp
	movabs $ap_entry64, %rax
	jmp *%rax

	.balign 8
	.globl tramp_data
tramp_data:
	.word 0      /* +0  GDTR limit */
	.long 0      /* +2  GDTR base */
	.word 0
	.long 0      /* +8  CR3 */
	.long 0      /* +12 CR4 */
	.long 0      /* +16 CR0 */
	.long 0      /* +20 EFER */
	.quad 0      /* +24 RSP */
	.globl ap_tramp_end
ap_tramp_end:

	.code64
ap_entry64:
	call ap_main
1:	cli
	hlt
	jmp 1b

/* ---- VTL1 ---- */
/* The caller-saved registers (the general registers are shared with VTL0, tlfs-vsm.md §9.2). */
.macro SAVE_CALLER_SAVED
	push %rax
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %r8
	push %r9
	push %r10
	push %r11
.endm
.macro RESTORE_CALLER_SAVED
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rdi
	pop %rsi
	pop %rdx
	pop %rcx
	pop %rax
.endm

	.globl vtl1_entry
vtl1_entry:
	/* RSP: this VP's VTL1 stack (16-byte aligned), RFLAGS.IF = 0 (the initial context). */
	call vtl1_init          /* returns &vtl1_handled[vp] */
	sub $16, %rsp
	mov %rax, 8(%rsp)       /* 8(%rsp): this VP's handled counter */
	movq $0, (%rsp)         /* (%rsp): intercepts this VP was entered for */
vtl1_loop:
	/* Between VtlReturn and the next entry only RAX and RCX change: VTL0 sees its other registers as it left them. */
	cli
	xor %ecx, %ecx          /* VtlReturn control input: 0 (a normal return) */
	movabs $vtl1_hypercall_page + 0x26, %rax /* VTL_RETURN_OFFSET */
	call *%rax
	/* Entered again. A VtlCall of this VP's VTL0 asking for a service (vtl1_service, SECURE_IPIS):
	   served here, nothing to wait for. Otherwise an intercept was posted to SINT0, or a secure
	   interrupt entered VTL1: its vector is pending on this VP's LAPIC. VTL0's registers are kept. */
	sub $8, %rsp            /* vtl1_service's answer; RSP 8 mod 16 */
	SAVE_CALLER_SAVED       /* RSP 16-aligned at the call */
	cld
	call vtl1_service
	mov %rax, 72(%rsp)
	RESTORE_CALLER_SAVED
	cmpq $0, (%rsp)
	lea 8(%rsp), %rsp       /* (keeps the flags) */
	jne vtl1_loop
	incq (%rsp)
1:	mov 8(%rsp), %rax
	mov (%rax), %rax
	cmp (%rsp), %rax
	jae vtl1_loop           /* the handler ran for it */
	sti                     /* the interrupt is taken at the HLT (STI's shadow) */
	hlt
	cli
	jmp 1b

/* ---- interrupt and exception stubs (long mode, shared IDT; RSP was 16-aligned by the CPU) ---- */

	.globl isr_sint0
isr_sint0:
	SAVE_CALLER_SAVED           /* 5 frame words + 9 = 112 bytes: RSP 16-aligned at the call */
	cld
	call vtl1_sint0
	RESTORE_CALLER_SAVED
	iretq

	.globl isr_ipi
isr_ipi:
	SAVE_CALLER_SAVED
	cld
	call vtl1_ipi
	RESTORE_CALLER_SAVED
	iretq

/* Exceptions: vector and error code (0 when the CPU pushes none), then the C reporter (never returns). */
.macro EXC vec, has_error
	.globl isr_exc\vec
isr_exc\vec:
	.if \has_error == 0
	pushq $0
	.endif
	pushq $\vec
	jmp exc_common
.endm
EXC 0, 0
EXC 1, 0
EXC 2, 0
EXC 3, 0
EXC 4, 0
EXC 5, 0
EXC 6, 0
EXC 7, 0
EXC 8, 1
EXC 9, 0
EXC 10, 1
EXC 11, 1
EXC 12, 1
EXC 13, 1
EXC 14, 1
EXC 15, 0
EXC 16, 0
EXC 17, 1
EXC 18, 0
EXC 19, 0
EXC 20, 0
EXC 21, 1

exc_common:
	SAVE_CALLER_SAVED
	mov %rsp, %rdi              /* struct exc_frame * */
	call exception_report
1:	cli
	hlt
	jmp 1b

	.section .rodata
	.balign 8
	.globl isr_exc_table
isr_exc_table:
	.quad isr_exc0, isr_exc1, isr_exc2, isr_exc3, isr_exc4, isr_exc5, isr_exc6, isr_exc7
	.quad isr_exc8, isr_exc9, isr_exc10, isr_exc11, isr_exc12, isr_exc13, isr_exc14, isr_exc15
	.quad isr_exc16, isr_exc17, isr_exc18, isr_exc19, isr_exc20, isr_exc21

/* GDT: 0x08 64-bit code, 0x10 data, 0x18 32-bit code (VP 1's trampoline), 0x20 the TSS (16 bytes, filled in by load_gdt). */
	.section .data
	.balign 16
	.globl gdt, gdt_end
gdt:
	.quad 0
	.quad 0x00af9b000000ffff
	.quad 0x00cf93000000ffff
	.quad 0x00cf9b000000ffff
	.quad 0, 0
gdt_end:

	.section .note.GNU-stack, "", @progbits
