/**
 * Raw exit baselines on this host: how many guest exits per second a synchronous KVM_RUN loop
 * driven from Node (through koffi) sustains, per exit kind. These are the floors under any
 * hypercall / intercept figure the agent can reach.
 *
 *   node bench/dist/agent/rawbench.js [--iterations N]
 *
 * prints the result of measureRawExits() as JSON.
 */
import * as os from 'node:os';
import { kvm } from '@vsm/platform-kvm';

const { KVM_EXIT, KVM_SYNC_X86_REGS, KvmSystem, Asm, MINI, MiniGuest } = kvm;
type MiniGuest = kvm.MiniGuest;

export interface ExitLoopResult {
  /** exits measured */
  exits: number;
  /** exits per second over the whole measured loop (wall clock) */
  exitsPerSec: number;
  /** per-exit round trip (KVM_RUN return to return), median, µs */
  medianUs: number;
  /** 99th percentile, µs */
  p99Us: number;
  /** mean, µs */
  meanUs: number;
}

export interface RawExitBaselines {
  host: { kernel: string; apiVersion: number; node: string };
  iterations: number;
  /** `out imm8, al` in a tight loop: KVM_EXIT_IO */
  pio: ExitLoopResult;
  /** `wrmsr` of 0x40000000 (MSR filter + KVM_CAP_X86_USER_SPACE_MSR): KVM_EXIT_X86_WRMSR */
  wrmsr: ExitLoopResult;
  /** `rdmsr` of 0x40000000, completed from userspace each time: KVM_EXIT_X86_RDMSR */
  rdmsr: ExitLoopResult;
  /** `mov [rdi], eax` to a GPA without a memslot: KVM_EXIT_MMIO (instruction emulated by KVM) */
  mmio: ExitLoopResult;
  /** `mov [rdi], eax` to a read-only memslot: KVM_EXIT_MMIO (the protection path) */
  mmioReadOnly: ExitLoopResult;
  /** the pio loop plus reading RCX through KVM_GET_REGS after every exit */
  pioGetRegs: ExitLoopResult;
  /** the pio loop with KVM_SYNC_X86_REGS: KVM stores the GPRs into kvm_run on every exit; RCX read from there */
  pioSyncRegs: ExitLoopResult;
  /** one KVM_GET_REGS ioctl (no guest entry), for comparison */
  getRegsIoctl: ExitLoopResult;
  /**
   * one KvmVm.map() of a 4 KiB page alternating read-only/read-write over an 8 MiB RW mapping
   * (one memslot deleted + one created per call); `exits` here counts map() calls
   */
  memslotToggle: ExitLoopResult;
}

export interface MeasureOptions {
  /** exits per loop (default 20000) */
  iterations?: number;
  /** unmeasured exits before each loop (default 1000) */
  warmup?: number;
}

function summarize(samplesNs: Float64Array, totalNs: number): ExitLoopResult {
  const sorted = Float64Array.from(samplesNs).sort();
  const n = sorted.length;
  const at = (q: number): number => sorted[Math.min(n - 1, Math.floor(q * n))] ?? 0;
  let sum = 0;
  for (const v of sorted) sum += v;
  const r3 = (x: number): number => Math.round(x * 1000) / 1000;
  return {
    exits: n,
    exitsPerSec: Math.round(n / (totalNs / 1e9)),
    medianUs: r3(at(0.5) / 1000),
    p99Us: r3(at(0.99) / 1000),
    meanUs: r3(sum / n / 1000),
  };
}

/** Runs `step` (which must perform exactly one exit/ioctl) `iterations` times, timing each. */
function timeLoop(iterations: number, warmup: number, step: () => void): ExitLoopResult {
  for (let i = 0; i < warmup; i++) step();
  const samples = new Float64Array(iterations);
  const t0 = process.hrtime.bigint();
  let prev = t0;
  for (let i = 0; i < iterations; i++) {
    step();
    const now = process.hrtime.bigint();
    samples[i] = Number(now - prev);
    prev = now;
  }
  return summarize(samples, Number(prev - t0));
}

/** One KVM_RUN that must end with `want` (a stray signal's EINTR is retried). */
function runExpecting(g: MiniGuest, want: number, what: string): void {
  let got = g.vcpu.runRaw();
  while (got === KVM_EXIT.INTR) got = g.vcpu.runRaw();
  if (got !== want) throw new Error(`${what}: unexpected exit reason ${got} (expected ${want})`);
}

/** Measures the raw exit loops on /dev/kvm (each on a fresh one-vCPU MiniGuest). */
export function measureRawExits(opts: MeasureOptions = {}): RawExitBaselines {
  const iterations = opts.iterations ?? 20_000;
  const warmup = opts.warmup ?? Math.min(1000, iterations);
  const system = KvmSystem.open();
  try {
    const withGuest = <T>(fn: (g: MiniGuest) => T): T => {
      const g = MiniGuest.create({ system });
      try {
        return fn(g);
      } finally {
        g.close();
      }
    };

    const pio = withGuest((g) => {
      // loop: out 0x10, al (E6 10); jmp loop (EB FC)
      g.load(new Asm().label('loop').outImm8Al(0x10).jmp('loop').bytes());
      return timeLoop(iterations, warmup, () => runExpecting(g, KVM_EXIT.IO, 'pio'));
    });

    const wrmsr = withGuest((g) => {
      g.vm.trapMsrs();
      // mov ecx, 0x40000000; xor eax, eax; xor edx, edx; loop: wrmsr; jmp loop
      g.load(new Asm().movR32Imm32('rcx', 0x4000_0000).zero('rax').zero('rdx').label('loop').wrmsr().jmp('loop').bytes());
      return timeLoop(iterations, warmup, () => runExpecting(g, KVM_EXIT.X86_WRMSR, 'wrmsr'));
    });

    const rdmsr = withGuest((g) => {
      g.vm.trapMsrs();
      // mov ecx, 0x40000000; loop: rdmsr; jmp loop — each exit completed with data
      g.load(new Asm().movR32Imm32('rcx', 0x4000_0000).label('loop').rdmsr().jmp('loop').bytes());
      return timeLoop(iterations, warmup, () => {
        runExpecting(g, KVM_EXIT.X86_RDMSR, 'rdmsr');
        g.vcpu.completeMsr({ data: 0x1234n });
      });
    });

    const mmioLoop = (g: MiniGuest, gpa: bigint): ExitLoopResult => {
      // mov rdi, gpa; loop: mov [rdi], eax; jmp loop
      g.load(new Asm().movR64Imm64('rdi', gpa).label('loop').store('rdi', 'rax', 4).jmp('loop').bytes());
      return timeLoop(iterations, warmup, () => runExpecting(g, KVM_EXIT.MMIO, 'mmio'));
    };
    // 3 GiB: identity-mapped by the guest page tables, no memslot
    const mmio = withGuest((g) => mmioLoop(g, 0xc000_0000n));
    const mmioReadOnly = withGuest((g) => {
      g.vm.map({ gpa: MINI.data, size: 4096, memory: g.memory, offset: Number(MINI.data), readonly: true });
      return mmioLoop(g, MINI.data);
    });

    const pioGetRegs = withGuest((g) => {
      g.load(new Asm().label('loop').outImm8Al(0x10).jmp('loop').bytes());
      return timeLoop(iterations, warmup, () => {
        runExpecting(g, KVM_EXIT.IO, 'pio');
        if (g.vcpu.getRegs().rcx < 0n) throw new Error('unreachable');
      });
    });

    const pioSyncRegs = withGuest((g) => {
      g.load(new Asm().label('loop').outImm8Al(0x10).jmp('loop').bytes());
      g.vcpu.setSyncRegs(KVM_SYNC_X86_REGS);
      return timeLoop(iterations, warmup, () => {
        runExpecting(g, KVM_EXIT.IO, 'pio');
        if (g.vcpu.syncedReg('rcx') < 0n) throw new Error('unreachable');
      });
    });

    const memslotToggle = withGuest((g) => {
      let ro = false;
      const n = Math.min(iterations, 1000);
      return timeLoop(n, Math.min(warmup, 10), () => {
        ro = !ro;
        g.vm.map({ gpa: MINI.data, size: 4096, memory: g.memory, offset: Number(MINI.data), readonly: ro });
      });
    });

    const getRegsIoctl = withGuest((g) => timeLoop(iterations, warmup, () => void g.vcpu.getRegs()));

    return {
      host: { kernel: os.release(), apiVersion: system.apiVersion(), node: process.version },
      iterations,
      pio,
      wrmsr,
      rdmsr,
      mmio,
      mmioReadOnly,
      pioGetRegs,
      pioSyncRegs,
      getRegsIoctl,
      memslotToggle,
    };
  } finally {
    system.close();
  }
}

function main(argv: string[]): void {
  let iterations: number | undefined;
  const i = argv.indexOf('--iterations');
  if (i >= 0) {
    const n = Number(argv[i + 1]);
    if (!Number.isInteger(n) || n <= 0) throw new Error('--iterations needs a positive integer');
    iterations = n;
  }
  const reason = KvmSystem.unavailableReason();
  if (reason !== undefined) {
    process.stdout.write(JSON.stringify({ skipped: true, reason }) + '\n');
    return;
  }
  const opts: MeasureOptions = iterations === undefined ? {} : { iterations };
  process.stdout.write(JSON.stringify(measureRawExits(opts), null, 2) + '\n');
}

if (require.main === module) main(process.argv.slice(2));
