// Test support (live migration, issue #17): a flat long64 guest for 2 VPs, built with the agent's Asm,
// that keeps writing RAM and prints a counter on COM1 while it moves between agents.
//
// VP 0 sets its guest OS id and hypercall page, starts VP 1 with HvCallStartVirtualProcessor (TLFS
// HvCallStartVirtualProcessor.md: PartitionId, VpIndex, TargetVtl, RsvdZ, HV_INITIAL_VP_CONTEXT; VP 1
// starts on the boot plan's paging, GDT and TSS), then loops: counter R12 += 1, stores R12 into the
// first 8 bytes of each of its DATA0 pages, prints R12's low 32 bits as 8 hex digits and '\n' on
// COM1, spins a little. VP 1 loops likewise over its DATA1 pages and keeps its counter at COUNTER1
// (no console). Before overwriting a page each VP checks it still holds the previous counter: a page
// lost or stale after a migration ends the run (VP 0: debug exit BAD_MEMORY_EXIT) or halts VP 1 with
// BAD_MEMORY_EXIT at MG.vp1Bad. So at any pause, each region's pages hold n for a prefix and n - 1
// after it, n being that VP's R12, and the console's counters are consecutive across a move.
import { HV_PARTITION_ID_SELF, encodeEnableVpVtlInput } from '@vsm/core';
import { parseGuestImage, planBoot } from '@vsm/platform-kvm';
import { Asm } from '@vsm/platform-kvm/kvm';

export const MG = {
  flat: 0x20_0000n,
  vp1Code: 0x20_0800n,
  hypercallPage: 0x20_1000n,
  input: 0x20_2000n,
  vp1StackTop: 0x20_4000n,
  size: 0x4000,
  data0: 0x40_0000n,
  data0Pages: 64,
  data1: 0x50_0000n,
  data1Pages: 128,
  counter1: 0x60_0000n,
  /** VP 1 writes BAD_MEMORY_EXIT here when a page did not hold what it wrote (then halts). */
  vp1Bad: 0x60_0008n,
  memoryBytes: 64n << 20n,
} as const;

const HV_X64_MSR_GUEST_OS_ID = 0x4000_0000;
const HV_X64_MSR_HYPERCALL = 0x4000_0001;
/** HvCallStartVirtualProcessor (TLFS appendix A). */
const HvCallStartVirtualProcessor = 0x99;
const COM1 = 0x3f8;
const DEBUG_EXIT_PORT = 0xf4;
/** VP 0's debug-exit code when a page of its region did not hold what it wrote last. */
export const BAD_MEMORY_EXIT = 0xbad;

/**
 * One VP's loop: R12 += 1, stored into `pages` pages from `base` (and at `counter` if given), then
 * `tail`, then a spin. Each page must still hold the previous R12 before it is overwritten (the
 * guest checks its own RAM: a page lost or stale after a migration jumps to label `bad`).
 */
function writerLoop(a: Asm, base: bigint, pages: number, spin: number, tail: (a: Asm) => void, counter?: bigint): Asm {
  a.zero('r12').movR64Imm64('r8', 4096n).label('loop').movRR('r9', 'r12').incR64('r12');
  if (counter !== undefined) a.movR64Imm64('rdi', counter).store('rdi', 'r12', 8);
  a.movR64Imm64('rdi', base)
    .movR32Imm32('rcx', pages)
    .label('w')
    .load('rax', 'rdi', 8)
    .raw([0x4c, 0x39, 0xc8]) // cmp rax, r9
    .jnz('bad')
    .store('rdi', 'r12', 8)
    .addRR('rdi', 'r8')
    .decR32('rcx')
    .jnz('w');
  tail(a);
  return a.movR32Imm32('rbx', spin).label('spin').decR32('rbx').jnz('spin').jmp('loop');
}

/** R12's low 32 bits as 8 hex digits and '\n' on COM1 (clobbers RAX, RCX, RDX, RSI). */
function printCounter(a: Asm): void {
  a.raw([0x44, 0x89, 0xe6]) // mov esi, r12d
    .movR32Imm32('rcx', 8)
    .movR32Imm32('rdx', COM1)
    .label('hex')
    .raw([0xc1, 0xc6, 0x04]) // rol esi, 4
    .raw([0x89, 0xf0]) // mov eax, esi
    .raw([0x83, 0xe0, 0x0f]) // and eax, 0xf
    .raw([0x3c, 0x0a]) // cmp al, 10
    .raw([0x72, 0x02]) // jb +2 (a digit)
    .raw([0x04, 0x27]) // add al, 'a' - '0' - 10
    .raw([0x04, 0x30]) // add al, '0'
    .outDxAl()
    .decR32('rcx')
    .jnz('hex')
    .raw([0xb0, 0x0a]) // mov al, '\n'
    .outDxAl();
}

/** The image (load it flat at MG.flat, entry MG.flat, entry mode long64, on a 2-VP partition of MG.memoryBytes). */
export function migrationGuestImage(spin = 3000): Buffer {
  const parsed = parseGuestImage(new Uint8Array(MG.size), { format: 'flat', loadGpa: MG.flat, entryMode: 'long64' });
  const { bsp } = planBoot(parsed, { memoryBytes: MG.memoryBytes, vpCount: 2 });
  const tr = bsp.segments.tr;
  if (!bsp.gdt || !tr) throw new Error('the long64 boot plan has no GDT or TR');
  const img = Buffer.alloc(MG.size);
  const vp0 = new Asm()
    .movR32Imm32('rcx', HV_X64_MSR_GUEST_OS_ID)
    .movR32Imm32('rax', 1)
    .movR32Imm32('rdx', 0x8100_0000)
    .wrmsr()
    .movR32Imm32('rcx', HV_X64_MSR_HYPERCALL)
    .movR32Imm32('rax', Number(MG.hypercallPage | 1n))
    .zero('rdx')
    .wrmsr()
    .movR32Imm32('rcx', HvCallStartVirtualProcessor)
    .movR32Imm32('rdx', Number(MG.input))
    .zero('r8')
    .movR64Imm64('rax', MG.hypercallPage)
    .callReg('rax')
    .orRR('rax', 'rax')
    .jnz('fail');
  writerLoop(vp0, MG.data0, MG.data0Pages, spin, printCounter);
  vp0.label('fail').movR32Imm32('rax', 2).outImm8Eax(DEBUG_EXIT_PORT).jmp('h');
  vp0.label('bad').movR32Imm32('rax', BAD_MEMORY_EXIT).outImm8Eax(DEBUG_EXIT_PORT).label('h').hlt().jmp('h');
  const vp1 = writerLoop(new Asm(), MG.data1, MG.data1Pages, spin, () => {}, MG.counter1);
  vp1.label('bad').movR64Imm64('rdi', MG.vp1Bad).movR32Imm32('rax', BAD_MEMORY_EXIT).store('rdi', 'rax', 8).label('h').hlt().jmp('h');
  vp0.bytes().copy(img, 0);
  vp1.bytes().copy(img, Number(MG.vp1Code - MG.flat));
  const code = { base: 0n, limit: 0xffff_ffff, selector: 0x08, attributes: 0xa09b };
  const data = { base: 0n, limit: 0xffff_ffff, selector: 0x10, attributes: 0xc093 };
  // HvCallStartVirtualProcessor's input has HvCallEnableVpVtl's layout (PartitionId, VpIndex,
  // TargetVtl, RsvdZ[3], HV_INITIAL_VP_CONTEXT: TLFS for both; core tlfs/startup.ts and tlfs/vsm.ts).
  encodeEnableVpVtlInput({
    targetPartitionId: HV_PARTITION_ID_SELF,
    vpIndex: 1,
    targetVtl: 0,
    rsvdZ: 0,
    vpVtlContext: {
      rip: MG.vp1Code,
      rsp: MG.vp1StackTop,
      rflags: 0x2n,
      cs: code,
      ds: data,
      es: data,
      fs: data,
      gs: data,
      ss: data,
      tr: { base: tr.base, limit: tr.limit, selector: tr.selector, attributes: 0x8b },
      ldtr: { base: 0n, limit: 0, selector: 0, attributes: 0x82 },
      idtr: { base: 0n, limit: 0 },
      gdtr: bsp.gdt,
      efer: bsp.efer,
      cr0: bsp.cr0,
      cr3: bsp.cr3,
      cr4: bsp.cr4,
      msrCrPat: 0x0007_0406_0007_0406n,
    },
  }).copy(img, Number(MG.input - MG.flat));
  return img;
}
