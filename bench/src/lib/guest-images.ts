// Tiny flat long64 guests for the guest-run suite, built with the agent's Asm (no toolchain). They run
// on the boot plan's long64 state (identity paging, GDT, stack: services/platform-kvm/src/guest/image/
// boot-plan.ts); the VTL guest hands that same state to VTL1 as its initial context, read from
// planBoot itself so the two cannot drift apart.
import { encodeEnableVpVtlInput, HV_PARTITION_ID_SELF, HypercallPageOffsets } from '@vsm/core';
import { loadKvmLayer } from './kvm-raw';

/** Where the flat images load and start (above the boot plan's data below 1 MiB). */
export const FLAT_GPA = 0x20_0000n;
/** isa-debug-exit (services/platform-kvm/src/guest/devices/debug-exit.ts): a write ends the run with that exit code. */
export const DEBUG_EXIT_PORT = 0xf4;
/** HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL (TLFS 3.13, 3.14); an open-source guest id (bit 63). */
const HV_X64_MSR_GUEST_OS_ID = 0x4000_0000;
const HV_X64_MSR_HYPERCALL = 0x4000_0001;
const GUEST_OS_ID_LO = 0x0000_0001;
const GUEST_OS_ID_HI = 0x8100_0000;
/** Hypercall codes (TLFS appendix A) and the fast flag (TLFS 3.7, hypercall input value bit 16). */
const HvCallEnablePartitionVtl = 0x0d;
const HvCallEnableVpVtl = 0x0f;
const HV_HYPERCALL_FAST = 1 << 16;

/** `wrmsr` of HV_X64_MSR_GUEST_OS_ID n times, then debug-exit with code 0. */
export function wrmsrImage(n: number): Buffer {
  const k = loadKvmLayer();
  const a = new k.Asm()
    .movR32Imm32('rcx', HV_X64_MSR_GUEST_OS_ID)
    .movR32Imm32('rax', GUEST_OS_ID_LO)
    .movR32Imm32('rdx', GUEST_OS_ID_HI)
    .movR32Imm32('rbx', n)
    .label('l')
    .wrmsr()
    .decR32('rbx')
    .jnz('l')
    .zero('rax')
    .outImm8Eax(DEBUG_EXIT_PORT)
    .label('h')
    .hlt()
    .jmp('h');
  return Buffer.from(a.bytes());
}

/**
 * The VTL guest's layout (GPAs, in the flat image at FLAT_GPA): VTL0 code at +0, VTL1 code at
 * +0x800, the VTL0 and VTL1 hypercall pages at +0x1000 and +0x2000 (overlays the guest enables),
 * the HvCallEnableVpVtl input at +0x3000, VTL1's stack below +0x5000. VTL0 runs on the boot
 * plan's stack, page tables and GDT; VTL1 starts on the same page tables and GDT (bootState).
 */
export const VG = {
  vtl1Code: FLAT_GPA + 0x800n,
  page0: FLAT_GPA + 0x1000n,
  page1: FLAT_GPA + 0x2000n,
  input: FLAT_GPA + 0x3000n,
  vtl1StackTop: FLAT_GPA + 0x5000n,
  size: 0x5000,
} as const;
/** The boot plan's long64 state for a 1-VP partition of `memoryBytes` (what VTL0 starts with). */
export function bootState(memoryBytes: bigint) {
  const { parseGuestImage, planBoot } = require('@vsm/platform-kvm') as typeof import('@vsm/platform-kvm');
  const image = parseGuestImage(new Uint8Array(VG.size), { format: 'flat', loadGpa: FLAT_GPA, entryMode: 'long64' });
  const { bsp } = planBoot(image, { memoryBytes, vpCount: 1 });
  const tr = bsp.segments.tr;
  if (!bsp.gdt || !tr) throw new Error('the long64 boot plan has no GDT or TR');
  return { cr0: bsp.cr0, cr3: bsp.cr3, cr4: bsp.cr4, efer: bsp.efer, gdt: bsp.gdt, tr: { base: tr.base, limit: tr.limit, selector: tr.selector } };
}

/**
 * A guest that enables VTL1 itself (guest OS id, hypercall page, HvCallEnablePartitionVtl fast,
 * HvCallEnableVpVtl with VTL1's initial context), then does n × (VtlCall from VTL0 code → VTL1 code →
 * fast VtlReturn) and writes 0 to the debug-exit port (2: EnablePartitionVtl failed, 3: EnableVpVtl
 * failed). VTL1 on its first entry sets its own guest OS id and hypercall page. General registers are
 * shared between the VTLs (TLFS 15.6.1): the loop counter (RBX) survives, VTL1 touches RAX, RCX, RDX only.
 */
export function vtlImage(n: number, memoryBytes: bigint): Buffer {
  const k = loadKvmLayer();
  const boot = bootState(memoryBytes);
  const img = Buffer.alloc(VG.size);
  const hypercall = (a: InstanceType<typeof k.Asm>, page: bigint) => a.movR64Imm64('rax', page).callReg('rax').orRR('rax', 'rax');
  const v0 = new k.Asm()
    .movR32Imm32('rcx', HV_X64_MSR_GUEST_OS_ID)
    .movR32Imm32('rax', GUEST_OS_ID_LO)
    .movR32Imm32('rdx', GUEST_OS_ID_HI)
    .wrmsr()
    .movR32Imm32('rcx', HV_X64_MSR_HYPERCALL)
    .movR32Imm32('rax', Number(VG.page0 | 1n))
    .zero('rdx')
    .wrmsr()
    // HvCallEnablePartitionVtl, fast: RDX = TargetPartitionId, R8 = TargetVtl 1, flags 0.
    .movR32Imm32('rcx', HvCallEnablePartitionVtl | HV_HYPERCALL_FAST)
    .movR64Imm64('rdx', HV_PARTITION_ID_SELF)
    .movR32Imm32('r8', 1);
  hypercall(v0, VG.page0).jnz('fail2');
  v0.movR32Imm32('rcx', HvCallEnableVpVtl).movR32Imm32('rdx', Number(VG.input)).zero('r8');
  hypercall(v0, VG.page0).jnz('fail3');
  v0.movR64Imm64('r13', VG.page0 + BigInt(HypercallPageOffsets.vtlCall64))
    .movR32Imm32('rbx', n)
    .label('l')
    .zero('rcx')
    .callReg('r13')
    .decR32('rbx')
    .jnz('l')
    .zero('rax')
    .outImm8Eax(DEBUG_EXIT_PORT)
    .jmp('h')
    .label('fail2')
    .movR32Imm32('rax', 2)
    .outImm8Eax(DEBUG_EXIT_PORT)
    .jmp('h')
    .label('fail3')
    .movR32Imm32('rax', 3)
    .outImm8Eax(DEBUG_EXIT_PORT)
    .label('h')
    .hlt()
    .jmp('h');
  const v1 = new k.Asm()
    .movR32Imm32('rcx', HV_X64_MSR_GUEST_OS_ID)
    .movR32Imm32('rax', GUEST_OS_ID_LO)
    .movR32Imm32('rdx', GUEST_OS_ID_HI)
    .wrmsr()
    .movR32Imm32('rcx', HV_X64_MSR_HYPERCALL)
    .movR32Imm32('rax', Number(VG.page1 | 1n))
    .zero('rdx')
    .wrmsr()
    .movR64Imm64('r14', VG.page1 + BigInt(HypercallPageOffsets.vtlReturn64))
    .label('l')
    .movR32Imm32('rcx', 1)
    .callReg('r14')
    .jmp('l');
  Buffer.from(v0.bytes()).copy(img, 0);
  Buffer.from(v1.bytes()).copy(img, Number(VG.vtl1Code - FLAT_GPA));
  const code = { base: 0n, limit: 0xffff_ffff, selector: 0x08, attributes: 0xa09b };
  const data = { base: 0n, limit: 0xffff_ffff, selector: 0x10, attributes: 0xc093 };
  encodeEnableVpVtlInput({
    targetPartitionId: HV_PARTITION_ID_SELF,
    vpIndex: 0,
    targetVtl: 1,
    rsvdZ: 0,
    vpVtlContext: {
      rip: VG.vtl1Code,
      rsp: VG.vtl1StackTop,
      rflags: 0x2n,
      cs: code,
      ds: data,
      es: data,
      fs: data,
      gs: data,
      ss: data,
      tr: { ...boot.tr, attributes: 0x8b }, // busy 64-bit TSS
      ldtr: { base: 0n, limit: 0, selector: 0, attributes: 0x82 },
      idtr: { base: 0n, limit: 0 },
      gdtr: boot.gdt,
      efer: boot.efer,
      cr0: boot.cr0,
      cr3: boot.cr3,
      cr4: boot.cr4,
      msrCrPat: 0x0007_0406_0007_0406n,
    },
  }).copy(img, Number(VG.input - FLAT_GPA));
  return img;
}
