// Raw exit loops on /dev/kvm through the KVM agent's own koffi binding (services/platform-kvm/src/kvm,
// the layer its platform uses): a one-vCPU MiniGuest runs an endless loop whose every iteration
// exits once; the host side only re-enters (KVM_RUN, check the exit reason, nothing else). These
// are the floors under the agent's figures, measured in the same run. Same guest loops as
// bench/src/agent/rawbench.ts (which returns summaries only; here every batch is a sample for
// the harness).
//
// The agent module is loaded lazily (loadKvmLayer), so listing or running other suites never
// loads koffi. The layer is the agent's public `kvm` export.
import type { kvm as KvmLayer } from '@vsm/platform-kvm';

export type KvmLayerModule = typeof KvmLayer;

export function loadKvmLayer(): KvmLayerModule {
  return (require('@vsm/platform-kvm') as { kvm: KvmLayerModule }).kvm;
}

/** true, or why the KVM suites are skipped here (no usable /dev/kvm, or the binding does not load). */
export function kvmAvailability(): true | string {
  try {
    const why = loadKvmLayer().KvmSystem.unavailableReason();
    return why === undefined ? true : `no usable /dev/kvm (${why})`;
  } catch (e) {
    return `the KVM agent's binding does not load here (${(e as Error).message.split('\n')[0]})`;
  }
}

export type RawLoopKind = 'pio' | 'wrmsr' | 'mmio' | 'mmio_ro' | 'pio_call_ret';

/** The port and opcode of the agent's hypercall instruction (`out 0x4d, ax`), for the page-shaped loop. */
const HYPERCALL_PAGE_ENTRY = [0x66, 0xe7, 0x4d, 0xc3]; // out 0x4d, ax; ret

export interface RawLoop {
  readonly kind: RawLoopKind;
  /** Runs `n` guest exits (each one KVM_RUN returning the expected reason). */
  exits(n: number): void;
  close(): void;
}

/**
 * One raw loop on its own MiniGuest:
 * - pio: `out 0x10, al; jmp` → KVM_EXIT_IO;
 * - wrmsr: `wrmsr` of HV_X64_MSR_GUEST_OS_ID (trapped by the MSR filter); `jmp` → KVM_EXIT_X86_WRMSR
 *   (completed by KVM's default on re-entry, no error);
 * - mmio: `mov [rdi], eax` to a GPA without a memslot; `jmp` → KVM_EXIT_MMIO;
 * - mmio_ro: the same store to a read-only memslot (the path enforced protections would take);
 * - pio_call_ret: `call rbx; jmp` into a page holding the agent's hypercall entry
 *   (`out 0x4d, ax; ret`): the guest instructions of the agent's hypercall loop, exits ignored.
 */
export function openRawLoop(k: KvmLayerModule, system: KvmLayer.KvmSystem, kind: RawLoopKind): RawLoop {
  const { Asm, MiniGuest, MINI, KVM_EXIT, HV_MSR_BASE } = k;
  const g = MiniGuest.create({ system });
  try {
    let want: number;
    const a = new Asm();
    switch (kind) {
      case 'pio':
        a.label('loop').outImm8Al(0x10).jmp('loop');
        want = KVM_EXIT.IO;
        break;
      case 'wrmsr':
        g.vm.trapMsrs();
        a.movR32Imm32('rcx', HV_MSR_BASE).zero('rax').zero('rdx').label('loop').wrmsr().jmp('loop');
        want = KVM_EXIT.X86_WRMSR;
        break;
      case 'mmio':
        // 3 GiB: identity-mapped by the MiniGuest's page tables, no memslot there.
        a.movR64Imm64('rdi', 0xc000_0000n).label('loop').store('rdi', 'rax', 4).jmp('loop');
        want = KVM_EXIT.MMIO;
        break;
      case 'mmio_ro':
        g.vm.map({ gpa: MINI.data, size: 4096, memory: g.memory, offset: Number(MINI.data), readonly: true });
        a.movR64Imm64('rdi', MINI.data).label('loop').store('rdi', 'rax', 4).jmp('loop');
        want = KVM_EXIT.MMIO;
        break;
      case 'pio_call_ret': {
        const page = MINI.code + 0x1000n;
        g.vm.writeGpa(page, Buffer.from(HYPERCALL_PAGE_ENTRY));
        a.movR64Imm64('rbx', page).label('loop').callReg('rbx').jmp('loop');
        want = KVM_EXIT.IO;
        break;
      }
    }
    g.load(a.bytes());
    const vcpu = g.vcpu;
    return {
      kind,
      exits(n: number): void {
        for (let i = 0; i < n; i++) {
          let got = vcpu.runRaw();
          while (got === KVM_EXIT.INTR) got = vcpu.runRaw(); // a stray signal's EINTR
          if (got !== want) throw new Error(`raw ${kind} loop: exit reason ${got}, expected ${want}`);
        }
      },
      close: () => g.close(),
    };
  } catch (e) {
    g.close();
    throw e;
  }
}
