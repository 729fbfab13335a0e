/**
 * platform (kvm), guests that run: one partition's guest, from its image to the end of its run.
 *
 * load() parses the image (image/), plans the boot (multiboot info, page tables, boot processor
 * state), switches the partition's VTL VMs to execution (in-kernel irqchip, Hyper-V CPUID leaves),
 * writes the image into RAM and the boot processor's state into the core. start() runs every VP on
 * its own thread (guest-runner.ts) with the devices a kvm-unit-tests guest expects (COM1, fw_cfg, the
 * debug-exit port, optionally QEMU's hyperv-testdev), and connects the core's SynIC to the in-kernel
 * LAPICs (raiseInterrupt → KVM_SIGNAL_MSI, AutoEOI performed by the agent), its synthetic timers to one
 * host timer, and its reference time to the guest's TSC.
 */
import * as core from '@vsm/core';
import type { Partition, Vtl } from '@vsm/core';
import { type CpuidEntry, zeroRegs } from '../kvm';
import type { KvmPartition } from '../platform/kvm-partition';
import { ConsoleHub } from './console';
import { type GuestEnd, GuestRunner, type PortDevice, type VpRunState } from './guest-runner';
import { DEBUG_EXIT_PORT, HYPERV_TESTDEV_PORT, DebugExit, FwCfg, HypervTestDevControl, PortBus, Uart16550 } from './devices';
import { type BootRegisters, type EntryMode, type SegmentRegister, parseGuestImage, planBoot } from './image';

export type { GuestEnd, VpRunState } from './guest-runner';

export type GuestSessionState = 'loaded' | 'running' | 'paused' | 'stopped' | 'crashed';

/** A request that does not fit the session's state (start of a running guest, ...). */
export class GuestSessionError extends Error {
  constructor(
    readonly kind: 'failed-precondition' | 'invalid-argument',
    message: string,
  ) {
    super(message);
    this.name = 'GuestSessionError';
  }
}

export interface GuestLoadOptions {
  format?: 'auto' | 'flat' | 'elf64' | 'multiboot';
  loadGpa?: bigint;
  entry?: bigint;
  entryMode?: EntryMode;
  commandLine?: string;
  /** multiboot: the command line's first word (argv[0]), like the file name QEMU's -kernel puts there (default "guest"). */
  kernelName?: string;
}

export interface GuestDevices {
  /** QEMU's hyperv-testdev control port 0x3000 (SINT routes, connections), as kvm-unit-tests uses it. */
  hypervTestdev: boolean;
}

export interface GuestLoadResult {
  format: 'flat' | 'elf64' | 'multiboot';
  entry: bigint;
  entryMode: EntryMode;
  segments: { gpa: bigint; size: bigint }[];
  bootInfoGpa?: bigint;
}

/** COM1 (lib/x86/io.c), fw_cfg (lib/x86/fwcfg.c), isa-debug-exit, hyperv-testdev (x86/hyperv.c). */
const COM1 = 0x3f8;
const FW_CFG_PORTS = { from: 0x510, to: 0x511 };

/** The LAPIC register page (kvm_lapic_state): ISR at 0x100, IRR at 0x200, 8 × 32 bits, 16 bytes apart. */
const LAPIC_ISR = 0x100;
const LAPIC_IRR = 0x200;
/** Task priority and spurious-interrupt vector (bit 8: APIC software enable) registers (SDM Vol. 3A §11.4.1). */
const LAPIC_TPR = 0x80;
const LAPIC_SVR = 0xf0;
/** MSI address of the LAPICs (Intel SDM 11.11.1): 0xFEE, destination APIC id in bits 12-19, physical mode. */
const MSI_ADDRESS_BASE = 0xfee0_0000;
/** IA32_TIME_STAMP_COUNTER. */
const MSR_IA32_TSC = 0x10;

/** Figures of a run (closing notes, benchmarks, `vsmctl run --stats`). */
export interface GuestRunStats {
  /** Exits handed to the main thread, by kind. */
  exits: Record<string, number>;
  /** Exits the VP threads finished themselves: console, and MMIO on their own overlay pages. */
  localExits: number;
  overlayExits: number;
  /** KVM_RUN returns, every VP. */
  runs: number;
  perVp: { vpIndex: number; exits: number; runs: number }[];
  /** Hand-overs that came from a different VP than the previous one: the VPs ran at once. */
  vpSwitches: number;
  /** Memslot changes made with every VP parked, and their total time. */
  quiesces: number;
  quiesceMicros: number;
  elapsedMs?: number;
  autoEois: number;
  interrupts: number;
  /** VTL switches made for secure interrupts (an interrupt for a VTL above the one a VP ran). */
  secureInterrupts: number;
  /** WRMSRs the VM's MSR filter trapped for a higher VTL's write intercept, and those it refused (issue #16). */
  msrWriteExits: number;
  msrWriteIntercepts: number;
  /** RDMSRs trapped for a higher VTL's read intercept, and those it refused. */
  msrReadExits: number;
  msrReadIntercepts: number;
}

export class GuestSession {
  readonly console = new ConsoleHub();
  private readonly runner!: GuestRunner;
  private readonly uart: Uart16550;
  private readonly endWaiters: ((e: GuestEnd) => void)[] = [];
  private timer: NodeJS.Timeout | undefined;
  private tscScale = 0n;
  /** Host hrtime (ns) and guest TSC of VP 0 at start: the reference time when no VP asks. */
  private calibration: { hrNs: bigint; tsc: bigint; khz: bigint } | undefined;
  private readonly autoEoiRetries = new Map<string, number>();
  /** The last test-device ops the core refused (QEMU's device ignores them too). */
  readonly testdevErrors: string[] = [];
  /** AutoEOI fix-ups done by the agent (KVM's LAPIC has no AutoEOI without its Hyper-V SynIC). */
  autoEois = 0;
  /** Interrupts raised by the SynIC and the synthetic timers (KVM_SIGNAL_MSI). */
  interrupts = 0;

  /** Guest console output: to the watchers, counted for KvmHost.observer. */
  private output(bytes: Uint8Array): void {
    this.console.push(bytes);
    this.kp.host.observer?.consoleBytes?.(bytes.length);
  }

  private constructor(
    private readonly kp: KvmPartition,
    private readonly p: Partition,
    readonly loadResult: GuestLoadResult,
    devices: GuestDevices,
  ) {
    this.uart = new Uart16550({ onOutput: (bytes) => this.output(bytes), onChange: () => this.runner?.uartChanged() });
    const fw = new FwCfg({ ramBytes: p.spec.memoryBytes, cpus: p.vps.length });
    const debugExit = new DebugExit({
      onExit: (code) => this.runner.stop(`the guest wrote ${code} to the debug-exit port 0x${DEBUG_EXIT_PORT.toString(16)}`, code),
    });
    /** A testdev op the core refuses (bad VP, SINT or connection): QEMU's device ignores it; counted. */
    const op = (f: () => void) => {
      try {
        f();
      } catch (e) {
        this.testdevErrors.push((e as Error).message);
        if (this.testdevErrors.length > 16) this.testdevErrors.shift();
      }
    };
    const ports: { from: number; to: number; device: PortDevice }[] = [
      { from: COM1, to: COM1 + 7, device: this.uart },
      { ...FW_CFG_PORTS, device: fw },
      { from: DEBUG_EXIT_PORT, to: DEBUG_EXIT_PORT + 3, device: debugExit },
    ];
    if (devices.hypervTestdev) {
      const testdev = new HypervTestDevControl({
        sintRouteCreate: (vp, sint) => op(() => core.sintRouteCreate(p, vp, sint)),
        sintRouteDestroy: (vp, sint) => op(() => core.sintRouteDestroy(p, vp, sint)),
        sintRouteSet: (vp, sint) => op(() => core.sintRouteSet(p, vp, sint)),
        messageConnectionCreate: (conn, vp, sint) => op(() => core.createConnection(p, { connectionId: conn, kind: 'message', vpIndex: vp, sint })),
        messageConnectionDestroy: (conn) => op(() => core.deleteConnection(p, conn)),
        eventConnectionCreate: (conn, vp, sint) =>
          op(() => core.createConnection(p, { connectionId: conn, kind: 'event', vpIndex: vp, sint, flagNumber: conn })), // QEMU's testdev: the flag is the connection id
        eventConnectionDestroy: (conn) => op(() => core.deleteConnection(p, conn)),
      });
      ports.push({ from: HYPERV_TESTDEV_PORT, to: HYPERV_TESTDEV_PORT + 3, device: testdev });
    }
    const bus = new PortBus(ports);
    this.runner = new GuestRunner(kp, p, {
      ports: [{ from: 0, to: 0xffff, device: bus }],
      uart: { base: COM1, fastPath: () => this.uart.fastPath() },
      onConsole: (bytes) => this.output(bytes),
      onEnd: (end) => this.ended(end),
    });
  }

  /**
   * Loads `image` into partition `kp` (not yet running): parses and places it, and sets the boot
   * processor's state. Throws GuestImageError (malformed, does not fit) or GuestSessionError.
   */
  static load(kp: KvmPartition, image: Uint8Array, opts: GuestLoadOptions & { devices: GuestDevices }): GuestSession {
    const p = kp.partition;
    if (p.spec.architecture !== 'x64') throw new GuestSessionError('failed-precondition', 'guests run on x64 partitions only');
    if (kp.executing)
      throw new GuestSessionError('failed-precondition', `partition ${p.id} already has a guest loaded; delete it and create a new one to load another`);
    const parsed = parseGuestImage(image, { format: opts.format ?? 'auto', loadGpa: opts.loadGpa, entry: opts.entry, entryMode: opts.entryMode });
    // As QEMU builds it from -kernel and -append: the kernel's name is argv[0] (kvm-unit-tests reads its arguments after it).
    const plan = planBoot(parsed, {
      memoryBytes: p.spec.memoryBytes,
      cmdline: opts.commandLine,
      kernelName: opts.kernelName ?? 'guest',
      vpCount: p.vps.length,
    });
    kp.enableExecution({ irqchip: true, cpuid: hypervCpuid(p) });
    for (const w of plan.writes) kp.ram.write(w.gpa, w.data);
    for (const z of plan.zeroFill) zeroTouched(kp, z.gpa, z.size);
    const vp0 = p.vps[0]!;
    const cpu = kp.executionCpu(vp0, 0);
    applyBootRegisters(cpu.vcpu, plan.bsp);
    kp.executionStore(cpu, vp0, 0);
    const result: GuestLoadResult = {
      format: parsed.format,
      entry: parsed.entry,
      entryMode: parsed.entryMode,
      segments: parsed.segments.map((s) => ({ gpa: s.gpa, size: s.memSize })),
      bootInfoGpa: parsed.format === 'multiboot' ? plan.bsp.rbx : undefined,
    };
    return new GuestSession(kp, p, result, opts.devices);
  }

  /** A migrated guest (adopt): start() continues every VP from the core's state in these KVM_MP_STATEs. */
  private resumeFrom: { mpStates: readonly number[] } | undefined;

  /**
   * Live migration's target: the guest of a partition imported from a migrated (or paused) one. No
   * image is loaded: RAM and every VP's state came with the import. The session is 'loaded'; start()
   * runs the VPs that had started (`mpStates`, KVM_MP_STATE by VP; empty: a guest that never started,
   * which start() boots as after LoadGuestImage), and its console's offsets continue at `consoleOffset`.
   * What does not move: the in-kernel LAPICs' state (timers, pending interrupts), the UART's registers,
   * the guest TSC (it starts near 0 on the new vCPUs).
   */
  static adopt(kp: KvmPartition, guest: { mpStates: readonly number[]; consoleOffset: bigint; devices: GuestDevices }): GuestSession {
    const p = kp.partition;
    if (p.spec.architecture !== 'x64') throw new GuestSessionError('failed-precondition', 'guests run on x64 partitions only');
    if (kp.executing) throw new GuestSessionError('failed-precondition', `partition ${p.id} already has a guest loaded`);
    kp.enableExecution({ irqchip: true, cpuid: hypervCpuid(p) });
    const s = new GuestSession(kp, p, { format: 'flat', entry: 0n, entryMode: 'long64', segments: [] }, guest.devices);
    s.console.continueAt(guest.consoleOffset);
    if (guest.mpStates.length) s.resumeFrom = { mpStates: guest.mpStates };
    return s;
  }

  /**
   * Live migration's switch-over on the source: pauses a running guest (it stays paused), reads every
   * VP's state back from KVM into the core and flushes the console; returns how it ran. A guest that
   * never started gives no VP states (the target boots it as loaded).
   */
  async pauseForExport(): Promise<{ runState: GuestSessionState; mpStates: number[]; consoleOffset: bigint }> {
    const runState = this.state;
    if (runState === 'loaded') return { runState, mpStates: [], consoleOffset: this.console.written };
    if (runState !== 'running' && runState !== 'paused')
      throw new GuestSessionError('failed-precondition', `the guest is ${runState}: only a running or paused guest moves`);
    if (runState === 'running') this.runner.pause();
    const mpStates = await this.runner.parkAndStore();
    this.runner.drain();
    return { runState, mpStates, consoleOffset: this.console.written };
  }

  get state(): GuestSessionState {
    return this.runner.state;
  }

  get end(): GuestEnd | undefined {
    return this.runner.end;
  }

  vpState(index: number): VpRunState {
    return this.runner.vpState(index);
  }

  /** VP `index`'s run state including halted and waiting-for-SIPI (asks KVM: a short kick of that VP). */
  queryVpState(index: number): Promise<VpRunState> {
    return this.runner.queryVpState(index);
  }

  /** Runs every VP. */
  start(): void {
    if (this.state !== 'loaded') throw new GuestSessionError('failed-precondition', `the guest is ${this.state}: only a loaded guest can start`);
    this.kp.executionHooks = {
      referenceClock: { now100ns: (vpIndex) => this.now100ns(vpIndex), tscPage: this.tscPageParameters() },
      onTimerChange: () => this.rearmTimer(),
      raiseInterrupt: (vpIndex, vtl, vector, o) => this.raise(vpIndex, vtl, vector, o.autoEoi),
      // HvCallStartVirtualProcessor (core rules/startup.ts): the started VP's thread runs its core state.
      onVpStart: (vpIndex) => this.runner.startVp(vpIndex),
      // Secure interrupts (core rules/interrupts.ts): each (VP, VTL) vCPU's LAPIC holds IRR/ISR/TPR;
      // an interrupt for a VTL above the one a VP runs stops it at its next exit and switches it.
      platformApic: () => true,
      interruptPending: (vpIndex, vtl) => this.lapicPending(vpIndex, vtl),
      onInterruptPending: (vpIndex) => this.runner.deliverInterrupts(vpIndex),
    };
    // A monitor's answer (route MONITOR) lets the VP waiting on it run again; a CRASH answer, or anything
    // else that ends the core's partition, ends the run as crashed with the partition's reason.
    this.unsubscribe.push(
      this.p.intercepts.onResolved(() => setImmediate(() => this.runner.resumeAnswered())),
      this.p.onEnd((why) =>
        why === 'crashed'
          ? this.runner.crash(`the partition crashed: ${this.p.crashReason || 'no reason given'}`)
          : this.runner.stop('the partition was deleted'),
      ),
    );
    this.runner.start(this.resumeFrom);
    this.calibrate();
    this.rearmTimer();
  }

  pause(): void {
    if (this.state !== 'running') throw new GuestSessionError('failed-precondition', `the guest is ${this.state}: only a running guest can pause`);
    this.runner.pause();
  }

  resume(): void {
    if (this.state !== 'paused') throw new GuestSessionError('failed-precondition', `the guest is ${this.state}: only a paused guest can resume`);
    this.runner.resume();
  }

  /** Stops the guest; resolves when every VP thread has ended. A guest that never started is stopped at once. */
  async stop(reason = 'stopped by StopPartition'): Promise<GuestEnd> {
    if (this.state === 'stopped' || this.state === 'crashed') return this.end!;
    this.runner.stop(reason);
    return this.whenEnded();
  }

  whenEnded(): Promise<GuestEnd> {
    const e = this.end;
    if (e && this.console.isEnded) return Promise.resolve(e);
    return new Promise((resolve) => this.endWaiters.push(resolve));
  }

  /** Input for the guest's COM1. */
  writeConsole(bytes: Uint8Array): void {
    this.uart.pushInput(bytes);
    this.runner.uartChanged();
  }

  /** Stops the guest and drops the session's timers (DeletePartition). */
  async close(): Promise<void> {
    await this.stop('the partition was deleted');
  }

  /** Exit counts and per-VP figures of the run. */
  stats(): GuestRunStats {
    const r = this.runner;
    const elapsed = r.startedAt !== undefined ? Number(((r.endedAt ?? process.hrtime.bigint()) - r.startedAt) / 1000n) / 1000 : undefined;
    return {
      exits: { ...r.exitCounts },
      localExits: r.localExits,
      overlayExits: r.overlayExits,
      runs: r.runs,
      perVp: r.vpStats().map((v) => ({ vpIndex: v.vpIndex, exits: v.exits, runs: v.runs })),
      vpSwitches: r.vpSwitches,
      quiesces: r.quiesces,
      quiesceMicros: Math.round(r.quiesceMicros),
      elapsedMs: elapsed,
      autoEois: this.autoEois,
      interrupts: this.interrupts,
      secureInterrupts: r.secureInterrupts,
      msrWriteExits: r.msrWriteExits,
      msrWriteIntercepts: r.msrWriteIntercepts,
      msrReadExits: r.msrReadExits,
      msrReadIntercepts: r.msrReadIntercepts,
    };
  }

  private readonly unsubscribe: (() => void)[] = [];

  private ended(end: GuestEnd): void {
    for (const u of this.unsubscribe.splice(0)) u();
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.kp.executionHooks = undefined;
    this.console.end();
    for (const w of this.endWaiters.splice(0)) w(end);
  }

  // ---- time --------------------------------------------------------------------------------------

  /**
   * TscScale for the reference TSC page (TLFS: ReferenceTime = ((VirtualTsc * TscScale) >> 64) + TscOffset,
   * 100 ns units): 2^64 × 10^7 / TSC Hz. TscOffset is 0: the guest TSC starts near 0 at vCPU creation.
   */
  private tscPageParameters(): { tscScale: bigint; tscOffset: bigint } | undefined {
    const khz = BigInt(this.kp.host.tscKhz ?? 0);
    if (khz === 0n) return undefined;
    this.tscScale = ((1n << 64n) * 10_000_000n) / (khz * 1000n);
    return { tscScale: this.tscScale, tscOffset: 0n };
  }

  private calibrate(): void {
    const khz = BigInt(this.kp.host.tscKhz ?? 0);
    const cpu = this.runner.cpuOf(0);
    if (khz === 0n || !cpu) return;
    const tsc = cpu.vcpu.getMsrs([MSR_IA32_TSC])[0]?.data ?? 0n;
    this.calibration = { hrNs: process.hrtime.bigint(), tsc, khz };
  }

  /**
   * The partition reference time. Asked by a VP at one of its exits (its thread waits): that vCPU's own
   * TSC, scaled as the reference TSC page says, so RDMSR(TIME_REF_COUNT) lies between two reads of
   * the page around it. Otherwise (a host timer): the TSC extrapolated from the calibration.
   */
  private now100ns(vpIndex?: number): bigint {
    if (this.tscScale === 0n) return this.kp.referenceTimeFallback();
    let tsc: bigint | undefined;
    const cpu = vpIndex !== undefined ? this.runner.cpuOf(vpIndex) : undefined;
    if (cpu && this.runner.isParked(vpIndex!)) tsc = cpu.vcpu.getMsrs([MSR_IA32_TSC])[0]?.data;
    if (tsc === undefined) {
      const c = this.calibration;
      if (!c) return 0n;
      tsc = c.tsc + ((process.hrtime.bigint() - c.hrNs) * c.khz) / 1_000_000n;
    }
    return (tsc * this.tscScale) >> 64n;
  }

  /** One host timer at the core's earliest synthetic-timer deadline. */
  private rearmTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.state !== 'running' && this.state !== 'paused') return;
    const deadline = core.stimerNextDeadline(this.p);
    if (deadline === undefined) return;
    const waitMs = Number(deadline - this.now100ns()) / 10_000;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        if (this.state !== 'running' && this.state !== 'paused') return;
        core.stimerExpire(this.p, this.now100ns());
        this.rearmTimer();
      },
      Math.max(0, Math.ceil(waitMs)),
    );
  }

  // ---- interrupts --------------------------------------------------------------------------------

  /**
   * Whether the LAPIC of VP `vpIndex`'s vCPU in VTL `vtl` (not the one its thread runs) would deliver
   * an interrupt now: software-enabled (SVR bit 8) and its highest IRR vector's class above the
   * processor priority (max of TPR[7:4] and the highest ISR vector's class; SDM Vol. 3A §11.8.3.1).
   */
  private lapicPending(vpIndex: number, vtl: Vtl): boolean {
    const cpu = this.kp.vmOf(vtl)?.existingCpu(vpIndex);
    if (!cpu) return false;
    const lapic = cpu.vcpu.getLapic();
    if ((lapic.readUInt32LE(LAPIC_SVR) & 0x100) === 0) return false;
    const highest = (base: number): number => {
      for (let w = 7; w >= 0; w--) {
        const bits = lapic.readUInt32LE(base + 16 * w);
        if (bits !== 0) return w * 32 + 31 - Math.clz32(bits);
      }
      return -1;
    };
    const irr = highest(LAPIC_IRR);
    if (irr < 0) return false;
    const ppr = Math.max(lapic.readUInt32LE(LAPIC_TPR) >> 4, Math.max(highest(LAPIC_ISR), 0) >> 4);
    return irr >> 4 > ppr;
  }

  /** The SynIC raises `vector` on VP `vpIndex` in VTL `vtl`: an MSI to its LAPIC; AutoEOI done by the agent. */
  private raise(vpIndex: number, vtl: Vtl, vector: number, autoEoi: boolean): void {
    const vm = this.kp.vmOf(vtl);
    if (!vm || this.state === 'stopped' || this.state === 'crashed') return;
    this.interrupts++;
    vm.vm.signalMsi(MSI_ADDRESS_BASE | ((vpIndex & 0xff) << 12), vector & 0xff);
    if (autoEoi) this.autoEoi(vpIndex, vtl, vector);
  }

  /**
   * AutoEOI (TLFS SINTx.AutoEoi): the interrupt needs no EOI and must not block lower-priority ones.
   * KVM's LAPIC does it only inside its own Hyper-V SynIC, absent on this host, so the agent does it:
   * once the LAPIC accepted the vector (its ISR bit set), the agent clears that ISR bit while the VP's
   * thread waits (KVM_GET_LAPIC/KVM_SET_LAPIC); while it is still only requested (IRR), it looks again
   * shortly after.
   */
  private autoEoi(vpIndex: number, vtl: Vtl, vector: number): void {
    // The LAPIC of VTL `vtl`'s vCPU of the VP, which the VP's thread may not be running: a SINT of a
    // higher VTL is raised while the VP still runs (or is parked in) the lower VTL, e.g. an intercept
    // posted to VTL1's SINT0 from VTL0's exit. Each VTL has its own LAPIC (tlfs-vsm.md §9.1); a vCPU
    // the thread does not run is not in KVM_RUN and is read and written directly.
    const vm = this.kp.vmOf(vtl);
    if (!vm || vpIndex >= this.p.vps.length) return;
    const target = vm.cpu(vpIndex);
    const onTarget = (work: (cpu: typeof target) => void) => {
      if (this.runner.cpuOf(vpIndex) === target) this.runner.onVp(vpIndex, (cpu) => (cpu === target ? work(cpu) : onTarget(work)));
      else work(target);
    };
    onTarget((cpu) => {
      const lapic = cpu.vcpu.getLapic();
      const word = (vector >> 5) * 0x10;
      const bit = 1 << (vector & 31);
      const isr = lapic.readUInt32LE(LAPIC_ISR + word);
      const key = `${vpIndex}:${vector}`;
      if ((isr & bit) !== 0) {
        lapic.writeUInt32LE((isr & ~bit) >>> 0, LAPIC_ISR + word);
        cpu.vcpu.setLapic(lapic);
        this.autoEois++;
        this.autoEoiRetries.delete(key);
        return;
      }
      if ((lapic.readUInt32LE(LAPIC_IRR + word) & bit) === 0) return; // already taken and cleared, or never delivered
      const n = (this.autoEoiRetries.get(key) ?? 0) + 1;
      this.autoEoiRetries.set(key, n);
      const t = setTimeout(() => this.autoEoi(vpIndex, vtl, vector), Math.min(10, n));
      t.unref?.();
    });
  }
}

/** The Hyper-V CPUID leaves the core implements (core.hypervCpuidLeaves), as KVM CPUID entries. */
function hypervCpuid(p: Partition): CpuidEntry[] {
  return core
    .hypervCpuidLeaves({ vpCount: p.vps.length, referenceTsc: true })
    .map((l) => ({ function: l.leaf, index: 0, flags: 0, eax: l.eax >>> 0, ebx: l.ebx >>> 0, ecx: l.ecx >>> 0, edx: l.edx >>> 0 }));
}

/** Zeroes [gpa, gpa+size) where the RAM holds data (fresh memory reads as zero without allocating). */
function zeroTouched(kp: KvmPartition, gpa: bigint, size: bigint): void {
  const first = Number(gpa >> 12n);
  const last = Number((gpa + size - 1n) >> 12n);
  const page = Buffer.alloc(4096);
  for (const n of kp.ram.touchedPages()) {
    if (n < first || n > last) continue;
    const base = BigInt(n) << 12n;
    const from = base < gpa ? gpa : base;
    const to = base + 4096n > gpa + size ? gpa + size : base + 4096n;
    kp.ram.write(from, page.subarray(0, Number(to - from)));
  }
}

function kvmSegment(s: SegmentRegister) {
  return {
    base: s.base,
    limit: s.limit,
    selector: s.selector,
    type: s.type,
    present: s.present,
    dpl: s.dpl,
    db: s.db,
    s: s.s,
    l: s.l,
    g: s.g,
    avl: 0,
    unusable: 0,
  };
}

/** The boot processor's state from the boot plan, into its vCPU (the core takes it from there). */
function applyBootRegisters(vcpu: import('../kvm').KvmVcpu, b: BootRegisters): void {
  const s = vcpu.getSregs();
  const seg = (x: SegmentRegister) => ({ ...s.cs, ...kvmSegment(x) });
  const next = {
    ...s,
    cs: seg(b.segments.cs),
    ds: seg(b.segments.ds),
    es: seg(b.segments.es),
    fs: seg(b.segments.fs),
    gs: seg(b.segments.gs),
    ss: seg(b.segments.ss),
    cr0: b.cr0,
    cr3: b.cr3,
    cr4: b.cr4,
    efer: b.efer,
    idt: { ...s.idt, base: b.idt.base, limit: b.idt.limit },
    gdt: b.gdt ? { ...s.gdt, base: b.gdt.base, limit: b.gdt.limit } : s.gdt,
  };
  if (b.segments.tr) next.tr = { ...s.tr, ...kvmSegment(b.segments.tr) };
  vcpu.setSregs(next);
  vcpu.setRegs(zeroRegs({ rax: b.rax, rbx: b.rbx, rsp: b.rsp, rip: b.rip, rflags: b.rflags }));
}
