/**
 * A minimal 64-bit guest harness (one VM, one vCPU, flat identity-mapped memory) used by the
 * raw exit benchmark and the tests, and handy for experiments.
 *
 * Guest-physical layout (all inside the first `memorySize` bytes, which are mapped RW):
 *   0x0000_1000  GDT + TSS              (GDT_REGION_SIZE bytes)
 *   0x0001_0000  identity page tables   ((2 + identityMapGiB) × 4 KiB, 2 MiB pages)
 *   0x0008_0000  initial stack top (grows down)
 *   0x0010_0000  code
 *   0x0020_0000  data
 */
import { GuestMemory, type KvmExit, KvmSystem, type KvmVcpu, type KvmVm } from './kvm';
import { setupLongMode } from './longmode';

export const MINI = {
  gdt: 0x1000n,
  pageTables: 0x10000n,
  stackTop: 0x80000n,
  code: 0x100000n,
  data: 0x200000n,
  identityMapGiB: 4,
} as const;

export interface MiniGuestOptions {
  /** Use this /dev/kvm handle (not closed by MiniGuest.close()). */
  system?: KvmSystem;
  /** Share this backing (not closed by MiniGuest.close()); default: a fresh one of `memorySize` bytes. */
  memory?: GuestMemory;
  /** Bytes of `memory` mapped RW at GPA 0 (default: 8 MiB, or all of `memory`). */
  memorySize?: number;
  /** The page tables/GDT are already in the shared memory (written by another MiniGuest). */
  tablesAlreadyWritten?: boolean;
}

export class MiniGuest {
  readonly system: KvmSystem;
  readonly memory: GuestMemory;
  readonly vm: KvmVm;
  readonly vcpu: KvmVcpu;
  private readonly ownSystem: boolean;
  private readonly ownMemory: boolean;

  private constructor(system: KvmSystem, ownSystem: boolean, memory: GuestMemory, ownMemory: boolean, vm: KvmVm, vcpu: KvmVcpu) {
    this.system = system;
    this.ownSystem = ownSystem;
    this.memory = memory;
    this.ownMemory = ownMemory;
    this.vm = vm;
    this.vcpu = vcpu;
  }

  static create(o: MiniGuestOptions = {}): MiniGuest {
    const system = o.system ?? KvmSystem.open();
    const size = o.memorySize ?? o.memory?.size ?? 8 << 20;
    const memory = o.memory ?? GuestMemory.create(size);
    const vm = system.createVm();
    try {
      vm.map({ gpa: 0n, size, memory, offset: 0 });
      const vcpu = vm.createVcpu(0);
      setupLongMode(vcpu, vm, {
        pageTableGpa: MINI.pageTables,
        gdtGpa: MINI.gdt,
        identityMapGiB: MINI.identityMapGiB,
        rip: MINI.code,
        rsp: MINI.stackTop,
        tablesAlreadyWritten: o.tablesAlreadyWritten ?? false,
      });
      return new MiniGuest(system, o.system === undefined, memory, o.memory === undefined, vm, vcpu);
    } catch (e) {
      vm.close();
      if (o.memory === undefined) memory.close();
      if (o.system === undefined) system.close();
      throw e;
    }
  }

  /** Writes `code` at `gpa` (through this VM's view) and points RIP at it. */
  load(code: Uint8Array, gpa: bigint = MINI.code): void {
    this.vm.writeGpa(gpa, code);
    this.vcpu.updateRegs({ rip: gpa });
  }

  /**
   * KVM_RUN until a real exit: an EINTR caused by a stray signal is retried, unless
   * immediate_exit is set (then { kind: 'intr' } is returned).
   */
  step(): KvmExit {
    for (;;) {
      const e = this.vcpu.run();
      if (e.kind !== 'intr' || this.vcpu.immediateExit) return e;
    }
  }

  /**
   * Runs until an exit for which `handle` returns false, or HLT/SHUTDOWN/an error exit when no
   * handler is given; returns all exits seen (IO/MMIO data Buffers are copied). Stops after
   * `maxExits` exits as a guard against runaway guests.
   */
  runUntil(handle?: (e: KvmExit) => boolean, maxExits = 10_000): KvmExit[] {
    const seen: KvmExit[] = [];
    for (let i = 0; i < maxExits; i++) {
      const e = this.step();
      seen.push(e.kind === 'io' || e.kind === 'mmio' ? { ...e, data: Buffer.from(e.data) } : e);
      const go = handle ? handle(e) : e.kind === 'io' || e.kind === 'mmio' || e.kind === 'rdmsr' || e.kind === 'wrmsr';
      if (!go) return seen;
    }
    throw new Error(`guest did not stop within ${maxExits} exits`);
  }

  close(): void {
    this.vm.close();
    if (this.ownMemory) this.memory.close();
    if (this.ownSystem) this.system.close();
  }
}
