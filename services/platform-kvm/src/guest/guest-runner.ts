/**
 * platform (kvm), guests that run: a partition's guest code running on every VP at once.
 *
 * Each VP has its own thread (vcpu-thread.ts) that calls KVM_RUN on the vCPU of the VP's active VTL.
 * The VTL VMs have the in-kernel irqchip (LAPIC, INIT/SIPI, IPIs, LAPIC timer and HLT stay in the
 * kernel). Exits the VP's thread cannot finish (port I/O of the devices, Hyper-V MSRs, hypercalls,
 * MMIO on per-VP overlays and protected pages, kicks) are handed to this, the main thread, which owns
 * the core: it handles the exit with the vCPU's kvm_run page and ioctls while the VP's thread waits,
 * then lets it run again (vcpu-channel.ts). The main thread never blocks on a guest.
 */
import { Worker } from 'node:worker_threads';
import * as path from 'node:path';
import * as fs from 'node:fs';
import * as core from '@vsm/core';
import type { Partition, VirtualProcessor, Vtl } from '@vsm/core';
import type { KvmExit, KvmVcpu } from '../kvm';
import { type KickSignal, SIGNO, ensureSignalHandler, strerror, sysTgkill } from '../kvm/ioctl';
import { type KvmPartition, describeExit } from '../platform/kvm-partition';
import type { VpCpu } from '../platform/vtl-vm';
import { CELL, CHANNEL_BYTES, CMD, OVERLAY_TABLE_BIG, OVERLAY_TABLE_MAX, RUN_ADDRESS_BIG, RUN_SIZE_BIG, consoleDrain, consoleRingBuffer } from './vcpu-channel';

/** A port-I/O device of a running guest (COM1, fw_cfg, debug exit, hyperv-testdev, ...). */
export interface PortDevice {
  ioIn(port: number, size: 1 | 2 | 4): number;
  ioOut(port: number, size: 1 | 2 | 4, value: number): void;
}

/** The partition's state as a running guest. */
export type GuestState = 'loaded' | 'running' | 'paused' | 'stopped' | 'crashed';

/** A VP's run state (what GetVirtualProcessor reports). */
export type VpRunState = 'running' | 'halted' | 'waiting-for-sipi' | 'suspended' | 'stopped';

/** How a run ended. */
export interface GuestEnd {
  state: 'stopped' | 'crashed';
  /** The guest's debug-exit code (outl(code, 0xf4)), when it stopped that way. */
  exitCode?: number;
  reason: string;
  /** The VP whose exit ended it, if one did. */
  vpIndex?: number;
  at: Date;
}

export interface GuestRunnerOptions {
  /** Port devices by port range; the runner adds nothing by itself. */
  ports: { from: number; to: number; device: PortDevice }[];
  /** COM1 base port the VP threads finish transmits at (default 0x3F8), and the UART's line status. */
  uart?: { base: number; fastPath(): { enabled: boolean; lsr: number } };
  /** Called with console output as it is drained (batched; the bytes are the guest's). */
  onConsole(bytes: Uint8Array): void;
  /** Called once when the run ends. */
  onEnd(end: GuestEnd): void;
  /** Signal that kicks a VP thread out of KVM_RUN (default SIGUSR2). */
  kickSignal?: KickSignal;
  /** Console drain period while running, ms (default 20). */
  drainMs?: number;
}

interface VpThread {
  vp: VirtualProcessor;
  vtl: Vtl;
  cpu: VpCpu;
  worker: Worker;
  cells: Int32Array;
  bigs: BigInt64Array;
  /** Hand-overs seen so far. */
  seen: number;
  /**
   * Why a handled exit is not answered yet: the guest is paused, the VP waits for a monitor's answer
   * (suspended on an intercept), or every VP is being stopped for a memslot change (quiesce).
   */
  hold: 'pause' | 'intercept' | 'quiesce' | undefined;
  /** Why the main thread kicked it (acted on at its INTR exit). */
  kickReasons: Set<'pause' | 'stop' | 'service'>;
  /** Work to do on this VP's vCPU while its thread waits (LAPIC fix-ups, ...). */
  service: ((t: VpThread) => void)[];
  done: Promise<void>;
  exits: number;
  ended: boolean;
}

/** KVM_GET_MP_STATE values (include/uapi/linux/kvm.h). */
export const KVM_MP_STATE = { RUNNABLE: 0, UNINITIALIZED: 1, INIT_RECEIVED: 2, HALTED: 3, SIPI_RECEIVED: 4 } as const;

/** handle(): keep the VP's thread waiting (paused, or suspended until a monitor answers). */
const HOLD = -1;

/** Exit counts by kind, for the closing figures. */
export type ExitCounts = Record<string, number>;

const WORKER_FILE = resolveWorkerFile();

/** Atomics.waitAsync (V8 has it since Node 16; TypeScript's lib declares it from es2024 on). */
const waitAsync = (
  Atomics as unknown as {
    waitAsync(a: Int32Array, index: number, value: number): { async: false; value: string } | { async: true; value: Promise<string> };
  }
).waitAsync;

/** The compiled VP thread script (dist/guest/vcpu-thread.js), also when this file runs from src under jest. */
function resolveWorkerFile(): string {
  const here = path.join(__dirname, 'vcpu-thread.js');
  if (fs.existsSync(here)) return here;
  const dist = path.join(__dirname, '..', '..', 'dist', 'guest', 'vcpu-thread.js');
  return dist;
}

export class GuestRunner {
  private threads: VpThread[] = [];
  private stateValue: GuestState = 'loaded';
  private endValue: GuestEnd | undefined;
  private readonly consoleSab = consoleRingBuffer();
  private drainTimer: NodeJS.Timeout | undefined;
  private readonly signal: KickSignal;
  /** Hand-overs that came from another VP than the one before (both VPs' exits interleaving in time). */
  vpSwitches = 0;
  private lastVp: number | undefined;
  /** Exits by kind (the exits the main thread handled; the VP threads' own are in localExits). */
  readonly exitCounts: ExitCounts = {};
  /** The VP threads' own exits already reported to KvmHost.observer. */
  private reportedThreadExits = { io: 0, mmio: 0 };
  startedAt: bigint | undefined;
  endedAt: bigint | undefined;

  constructor(
    private readonly kp: KvmPartition,
    private readonly p: Partition,
    private readonly opts: GuestRunnerOptions,
  ) {
    this.signal = opts.kickSignal ?? 'SIGUSR2';
  }

  get state(): GuestState {
    return this.stateValue;
  }

  get end(): GuestEnd | undefined {
    return this.endValue;
  }

  /** Exits the VP threads finished themselves (console), summed. */
  get localExits(): number {
    return this.threads.reduce((a, t) => a + Atomics.load(t.cells, CELL.localExits), 0);
  }

  /** KVM_RUN returns of every VP, summed. */
  get runs(): number {
    return this.threads.reduce((a, t) => a + Atomics.load(t.cells, CELL.runs), 0);
  }

  /** Per VP: exits handed over and KVM_RUN returns. */
  vpStats(): { vpIndex: number; exits: number; runs: number }[] {
    return this.threads.map((t) => ({ vpIndex: t.vp.index, exits: t.exits, runs: Atomics.load(t.cells, CELL.runs) }));
  }

  /** The run state of VP `index`. */
  vpState(index: number): VpRunState {
    const t = this.threads[index];
    if (!t || t.ended || this.stateValue === 'stopped' || this.stateValue === 'crashed' || this.stateValue === 'loaded') return 'stopped';
    if (t.vp.suspendedOn !== null) return 'suspended';
    // Halted or waiting for SIPI is KVM's to tell (the thread waits inside KVM_RUN): queryVpState asks it.
    return 'running';
  }

  /**
   * Starts every VP on its own thread. `bsp` is loaded into VP 0's vCPU; the others wait for INIT/SIPI
   * (the in-kernel LAPIC's reset state for vCPU ids other than 0).
   */
  start(resume?: { mpStates: readonly number[] }): void {
    if (this.stateValue !== 'loaded') throw new Error(`the guest is ${this.stateValue}`);
    ensureSignalHandler(this.signal);
    this.stateValue = 'running';
    this.startedAt = process.hrtime.bigint();
    for (const vp of this.p.vps) {
      const vtl = vp.activeVtl;
      const cpu = this.kp.executionCpu(vp, vtl);
      // A migrated guest (resume): every VP that had started continues from the core's state, in the
      // multiprocessing state it had (KVM_MP_STATE); the others keep waiting for INIT/SIPI.
      const mp = resume?.mpStates[vp.index];
      if (resume && (mp === KVM_MP_STATE.RUNNABLE || mp === KVM_MP_STATE.HALTED)) {
        this.kp.executionLoad(cpu, vp, vtl);
        cpu.vcpu.setMpState(mp);
      } else if (!resume && vp.index === 0) this.kp.executionLoad(cpu, vp, vtl);
      this.threads.push(this.spawn(vp, vtl, cpu));
    }
    this.drainTimer = setInterval(() => this.drain(), this.opts.drainMs ?? 20);
    this.drainTimer.unref?.();
  }

  private spawn(vp: VirtualProcessor, vtl: Vtl, cpu: VpCpu): VpThread {
    const channel = new SharedArrayBuffer(CHANNEL_BYTES);
    const cells = new Int32Array(channel);
    const bigs = new BigInt64Array(channel);
    this.point(cells, bigs, cpu.vcpu);
    this.publishOverlays({ vp, vtl, cells, bigs });
    this.setUart(cells);
    const worker = new Worker(WORKER_FILE, { workerData: { channel, console: this.consoleSab, signal: SIGNO[this.signal] } });
    // A guest's threads never keep the process alive by themselves (the agent's server does; a test
    // that forgot a session must not hang the run). stop() still ends them.
    worker.unref();
    const t: VpThread = {
      vp,
      vtl,
      cpu,
      worker,
      cells,
      bigs,
      seen: 0,
      hold: undefined,
      kickReasons: new Set(),
      service: [],
      exits: 0,
      ended: false,
      done: Promise.resolve(),
    };
    t.done = new Promise<void>((resolve) => {
      worker.once('message', (m: { error?: string }) => {
        if (m.error) this.crash(`VP ${vp.index}'s thread failed: ${m.error}`, vp.index);
      });
      worker.once('error', (e) => {
        this.crash(`VP ${vp.index}'s thread failed: ${e.message}`, vp.index);
        resolve();
      });
      worker.once('exit', () => {
        t.ended = true;
        Atomics.notify(cells, CELL.request); // wakes serve() so it returns
        resolve();
      });
    });
    void this.serve(t);
    return t;
  }

  /**
   * The VP's own writable overlay pages in its active VTL, for its thread's MMIO fast path (only the
   * per-VP ones are holes; partition-wide ones are memslots). Called while the VP's thread waits.
   */
  private publishOverlays(t: { vp: VirtualProcessor; vtl: Vtl; cells: Int32Array; bigs: BigInt64Array }): void {
    let n = 0;
    const seen = new Set<bigint>();
    for (const o of this.p.overlays.list()) {
      if (o.vtl !== t.vtl || o.vpIndex !== t.vp.index || seen.has(o.gpfn)) continue;
      const top = this.p.overlays.visible(t.vtl, t.vp.index, o.gpfn);
      if (!top || top.readOnly || n >= OVERLAY_TABLE_MAX) continue;
      seen.add(o.gpfn);
      t.bigs[OVERLAY_TABLE_BIG + 2 * n] = BigInt.asIntN(64, o.gpfn);
      t.bigs[OVERLAY_TABLE_BIG + 2 * n + 1] = BigInt.asIntN(64, this.kp.overlayPages.memory.hostAddress + BigInt(this.kp.overlayPages.offsetOf(top.page)));
      n++;
    }
    Atomics.store(t.cells, CELL.overlayCount, n);
  }

  /** MMIO exits on per-VP overlay pages the VP threads served themselves. */
  get overlayExits(): number {
    return this.threads.reduce((a, t) => a + Atomics.load(t.cells, CELL.overlayExits), 0);
  }

  /** Names the vCPU the VP's thread runs next. */
  private point(cells: Int32Array, bigs: BigInt64Array, vcpu: KvmVcpu): void {
    const m = vcpu.runMapping;
    bigs[RUN_ADDRESS_BIG] = BigInt.asIntN(64, m.address);
    bigs[RUN_SIZE_BIG] = BigInt(m.size);
    Atomics.store(cells, CELL.vcpuFd, vcpu.fd);
  }

  private setUart(cells: Int32Array): void {
    const u = this.opts.uart;
    const f = u?.fastPath();
    Atomics.store(cells, CELL.uartLsr, f?.lsr ?? 0x60);
    Atomics.store(cells, CELL.uartBase, u && f?.enabled ? u.base : 0);
  }

  /** Re-reads the UART's fast-path state into every VP's cells (after a UART register changed). */
  uartChanged(): void {
    for (const t of this.threads) this.setUart(t.cells);
  }

  /** The main thread's side of one VP: wait for a hand-over, handle it, answer. */
  private async serve(t: VpThread): Promise<void> {
    for (;;) {
      const w = waitAsync(t.cells, CELL.request, t.seen);
      if (w.async) await w.value;
      if (t.ended) return;
      const req = Atomics.load(t.cells, CELL.request);
      if (req === t.seen) continue;
      t.seen = req;
      t.exits++;
      if (this.lastVp !== undefined && this.lastVp !== t.vp.index) this.vpSwitches++;
      this.lastVp = t.vp.index;
      let cmd: number = CMD.run;
      const handled = this.kp.host.observer?.exitHandled;
      const t0 = handled ? process.hrtime.bigint() : 0n;
      try {
        cmd = this.handle(t);
      } catch (e) {
        this.crash(`VP ${t.vp.index}: the agent failed handling an exit: ${(e as Error).message}`, t.vp.index);
        cmd = CMD.exit;
      }
      if (handled) handled(Number(process.hrtime.bigint() - t0) / 1e9);
      if (this.stateValue === 'stopped' || this.stateValue === 'crashed') cmd = CMD.exit;
      if (cmd === HOLD) t.hold = 'intercept';
      else if (cmd === CMD.run && (this.quiescing || this.viewsNeedSync())) {
        t.hold = 'quiesce';
        this.quiesce();
      } else if (cmd === CMD.run && this.stateValue === 'paused') t.hold = 'pause';
      if (t.hold) {
        this.quiesceProgress();
        continue;
      }
      this.answer(t, cmd);
      if (cmd === CMD.exit) return;
    }
  }

  // ---- memslot changes while every VP runs ---------------------------------------------------------
  //
  // Changing a view's memslots (an overlay placed or moved, protections changed) deletes and re-creates
  // the RAM slot it cuts: a VP running meanwhile would find no memory there (a triple fault, seen with
  // hyperv_synic's concurrent SIMP writes). So the change waits until every VP's thread is parked: the
  // VP whose exit needs it is held, the others are kicked and held at their next exit, the views are
  // synced, and all of them run again.

  private quiescing = false;
  /** Memslot syncs done with every VP stopped, and their total time (µs). */
  quiesces = 0;
  quiesceMicros = 0;
  private quiesceStart = 0n;

  /** Whether a VTL VM's layout lags behind the core's overlays or protections. */
  private viewsNeedSync(): boolean {
    for (const vtl of [0, 1, 2] as const) if (this.kp.vmOf(vtl)?.needsSync(this.p)) return true;
    return false;
  }

  private quiesce(): void {
    if (this.quiescing) return;
    this.quiescing = true;
    this.quiesceStart = process.hrtime.bigint();
    for (const t of this.threads) if (!t.ended && !this.isParked(t.vp.index)) this.kick(t, 'service');
  }

  /** Once every VP is parked: sync the views, then let the VPs held for it run again. */
  private quiesceProgress(): void {
    if (!this.quiescing) return;
    if (this.threads.some((t) => !t.ended && !t.hold && !this.isParked(t.vp.index))) return;
    if (this.threads.some((t) => !t.ended && Atomics.load(t.cells, CELL.request) !== t.seen)) return; // a hand-over not seen yet
    for (const vtl of [0, 1, 2] as const) {
      const vm = this.kp.vmOf(vtl);
      if (vm?.needsSync(this.p)) vm.syncView(this.p, 0);
    }
    for (const t of this.threads) if (!t.ended) this.publishOverlays(t);
    this.quiescing = false;
    this.quiesces++;
    this.quiesceMicros += Number(process.hrtime.bigint() - this.quiesceStart) / 1000;
    for (const t of this.threads) {
      if (t.hold !== 'quiesce') continue;
      if (this.stateValue === 'paused') t.hold = 'pause';
      else this.answer(t, CMD.run);
    }
  }

  private answer(t: VpThread, cmd: number): void {
    t.hold = undefined;
    Atomics.store(t.cells, CELL.command, cmd);
    Atomics.store(t.cells, CELL.answer, t.seen);
    Atomics.notify(t.cells, CELL.answer);
  }

  /** Handles the exit in t's kvm_run page; returns what the VP's thread does next. */
  private handle(t: VpThread): number {
    const vcpu = t.cpu.vcpu;
    const errno = Atomics.load(t.cells, CELL.runErrno);
    vcpu.noteRunElsewhere(errno !== 0);
    if (errno !== 0) {
      this.count('error');
      this.crash(`VP ${t.vp.index}: KVM_RUN failed: ${strerror(errno)}`, t.vp.index);
      return CMD.exit;
    }
    const reason = vcpu.runPage.readUInt32LE(8);
    const e = vcpu.decodeExit(reason);
    t.cpu.pending = e.kind === 'io' || e.kind === 'mmio' || e.kind === 'rdmsr' || e.kind === 'wrmsr';
    this.count(e.kind);
    if (this.stateValue === 'stopped' || this.stateValue === 'crashed') return CMD.exit;
    switch (e.kind) {
      case 'intr':
        return this.kicked(t);
      case 'io':
        return this.io(t, e);
      case 'rdmsr': {
        if (t.cpu.vm.trapsMsrRead(e.index)) return this.architecturalRdmsr(t, e.index);
        const r = this.p.readMsr(t.vp, e.index);
        vcpu.completeMsr(r.exception !== undefined ? { error: true } : { data: r.value });
        return CMD.run;
      }
      case 'wrmsr': {
        if (t.cpu.vm.trapsMsrWrite(e.index)) return this.architecturalWrmsr(t, e.index, e.data);
        const r = this.p.writeMsr(t.vp, e.index, e.data);
        vcpu.completeMsr({ error: r.exception !== undefined });
        return CMD.run; // a view change (overlay MSR) is applied with every VP parked (serve → quiesce)
      }
      case 'mmio':
        return this.mmio(t, e);
      case 'shutdown':
        this.crash(`VP ${t.vp.index}: triple fault (KVM_EXIT_SHUTDOWN)`, t.vp.index);
        return CMD.exit;
      case 'system_event':
        this.stop(`VP ${t.vp.index}: system event ${e.type}`);
        return CMD.exit;
      case 'hlt':
        // Only without an in-kernel LAPIC; with it, HLT waits in the kernel.
        return CMD.run;
      default:
        this.crash(`VP ${t.vp.index}: unhandled exit ${describeExit(e)}`, t.vp.index);
        return CMD.exit;
    }
  }

  /** WRMSRs of an MSR a higher VTL intercepts (trapped by the VM's MSR filter), and how many it refused. */
  msrWriteExits = 0;
  msrWriteIntercepts = 0;

  /**
   * WRMSR of an architectural MSR the VM's filter traps because a higher VTL selected it in
   * HvX64RegisterCrInterceptControl (VtlVm.syncMsrFilter). The core decides with the VP's state
   * stored (RIP on the WRMSR):
   * - not intercepted for this VP (another VP's VTL selected it): the value goes into the vCPU
   *   (KVM_SET_MSRS; a filtered write exit writes nothing itself) and the exit completes (RIP past);
   * - refused by the MSR's rules: #GP, as KVM would inject;
   * - intercepted: nothing is written. Completing the exit always finishes the instruction (KVM
   *   skips it at the next KVM_RUN, on top of whatever registers are loaded then), so the exit is
   *   completed now without entering the guest (immediate_exit) and the core keeps RIP on the WRMSR:
   *   the VP follows into the intercepting VTL (SINT0 message), and when VTL0 runs again its state
   *   (RIP included, as the higher VTL left it) comes from the core. SINT0's queue full: the VP
   *   waits and the WRMSR runs again (it intercepts again or passes).
   */
  private architecturalWrmsr(t: VpThread, msr: number, value: bigint): number {
    const c = t.cpu;
    const vcpu = c.vcpu;
    this.msrWriteExits++;
    this.kp.executionStore(c, t.vp, t.vtl);
    const r = this.p.writeMsr(t.vp, msr, value);
    if (r.exception !== undefined) {
      vcpu.completeMsr({ error: true });
      return CMD.run;
    }
    if (!r.intercepted) {
      vcpu.setMsrs([{ index: msr, data: value }]);
      vcpu.completeMsr({ error: false });
      return CMD.run;
    }
    this.msrWriteIntercepts++;
    return this.refusedMsrAccess(t, r.intercepted.heldBack);
  }

  /**
   * RDMSR of an architectural MSR a higher VTL reads-intercepts (filter as for writes): not
   * intercepted on this VP -> the vCPU's value; intercepted
   * -> the read does not happen (RAX/RDX as the core holds them when VTL0 runs again), as for a WRMSR.
   */
  private architecturalRdmsr(t: VpThread, msr: number): number {
    const c = t.cpu;
    this.msrReadExits++;
    this.kp.executionStore(c, t.vp, t.vtl);
    const r = this.p.readMsr(t.vp, msr);
    if (r.exception !== undefined || !r.intercepted) {
      // Not intercepted here: the vCPU's own value (KVM_GET_MSRS is not filtered; the core does not
      // track every one of these MSRs in a running guest, e.g. APIC_BASE).
      c.vcpu.completeMsr(r.exception !== undefined ? { error: true } : { data: c.vcpu.getMsrs([msr])[0]?.data ?? r.value });
      return CMD.run;
    }
    this.msrReadIntercepts++;
    return this.refusedMsrAccess(t, r.intercepted.heldBack);
  }

  /** RDMSR/WRMSR exits that found an intercepted read, and those intercepted. */
  msrReadExits = 0;
  msrReadIntercepts = 0;

  /**
   * An intercepted RDMSR/WRMSR: its exit is completed now without entering the guest (completing
   * always finishes the instruction, at the next KVM_RUN, on top of whatever registers are loaded
   * then); the core kept RIP on the instruction. The VP follows into the intercepting VTL, or (SINT0's
   * queue full) waits and runs the instruction again 2 ms later.
   */
  private refusedMsrAccess(t: VpThread, heldBack: boolean): number {
    const vcpu = t.cpu.vcpu;
    vcpu.completeMsr({ error: false });
    vcpu.immediateExit = true;
    try {
      vcpu.run();
    } finally {
      vcpu.immediateExit = false;
      t.cpu.pending = false;
    }
    if (heldBack) {
      const i = t.vp.index;
      setTimeout(() => this.resumeSuspended(i), 2).unref();
      return HOLD;
    }
    this.follow(t);
    return CMD.run;
  }

  private count(kind: string): void {
    this.exitCounts[kind] = (this.exitCounts[kind] ?? 0) + 1;
    this.kp.host.observer?.exit?.(kind, 1);
  }

  private io(t: VpThread, e: Extract<KvmExit, { kind: 'io' }>): number {
    if (e.direction === 'out' && this.kp.isHypercall(t.cpu, e)) return this.hypercall(t);
    const size = e.size as 1 | 2 | 4;
    const dev = this.opts.ports.find((d) => e.port >= d.from && e.port <= d.to)?.device;
    const base = this.opts.uart?.base;
    const uart = base !== undefined && e.port >= base && e.port <= base + 7;
    if (uart) this.drain(); // console order: the bytes the VP threads took first
    if (e.direction === 'out') {
      for (let i = 0; i < e.count; i++) {
        const at = i * size;
        const v = size === 1 ? e.data[at]! : size === 2 ? e.data.readUInt16LE(at) : e.data.readUInt32LE(at);
        dev?.ioOut(e.port, size, v);
        if (this.stateValue !== 'running' && this.stateValue !== 'paused') return CMD.exit;
      }
    } else {
      for (let i = 0; i < e.count; i++) {
        const v = dev ? dev.ioIn(e.port, size) : 0xffff_ffff;
        const at = i * size;
        if (size === 1) e.data[at] = v & 0xff;
        else if (size === 2) e.data.writeUInt16LE(v & 0xffff, at);
        else e.data.writeUInt32LE(v >>> 0, at);
      }
    }
    if (uart) this.uartChanged();
    return CMD.run;
  }

  private hypercall(t: VpThread): number {
    const vtl = t.vtl;
    const o = this.kp.executionHypercall(t.cpu, t.vp, vtl);
    if (o.exception !== undefined) {
      this.crash(`VP ${t.vp.index}: the hypercall raised exception ${o.exception} (not injected into running guests yet)`, t.vp.index);
      return CMD.exit;
    }
    if (o.vtlSwitch) this.follow(t);
    return CMD.run;
  }

  /** The VP's active VTL changed: its thread runs the other VTL's vCPU, loaded from the core. */
  private follow(t: VpThread): void {
    const fpu = t.cpu.vcpu.getFpu();
    t.vtl = t.vp.activeVtl;
    t.cpu = this.kp.executionCpu(t.vp, t.vtl);
    this.kp.executionLoad(t.cpu, t.vp, t.vtl);
    // A VTL's vCPU other than id 0 starts in wait-for-SIPI with the in-kernel LAPIC; entered through a
    // VTL switch it runs the state the core gives it.
    if (t.cpu.vcpu.getMpState() !== KVM_MP_STATE.RUNNABLE) t.cpu.vcpu.setMpState(KVM_MP_STATE.RUNNABLE);
    t.cpu.vcpu.setFpu(fpu);
    this.point(t.cells, t.bigs, t.cpu.vcpu);
    this.publishOverlays(t);
  }

  private mmio(t: VpThread, e: Extract<KvmExit, { kind: 'mmio' }>): number {
    if (e.gpa >= this.kp.ram.sizeBytes) {
      // Nothing there (QEMU's unassigned memory): reads give all ones, writes are dropped.
      if (!e.isWrite) t.cpu.vcpu.completeMmioRead(0xffff_ffff_ffff_ffffn);
      return CMD.run;
    }
    // A per-VP overlay page (SIM, SIEF, VP assist) is a hole while every VP runs: the access is this VP's
    // own page. Overlays are not subject to protections (tlfs-overlays-synic.md §4.1), so nothing can
    // intercept it: the core reads or writes the VP's view directly (no register sync, no decoding).
    if (this.onOwnOverlays(t, e.gpa, e.len)) {
      const o = core.guestAccess(this.p, t.vp, e.isWrite ? 'write' : 'read', e.gpa, e.len, e.isWrite ? Buffer.from(e.data.subarray(0, e.len)) : undefined);
      if (o.status === 'completed') {
        if (!e.isWrite) t.cpu.vcpu.completeMmioRead(o.data ?? Buffer.alloc(e.len));
        this.overlayAccesses++;
        return CMD.run;
      }
    }
    const r = this.kp.executionRefusedAccess(t.cpu, t.vp, t.vtl, e);
    switch (r.status) {
      case 'completed':
        return CMD.run;
      case 'exception':
        this.crash(`VP ${t.vp.index}: access at 0x${e.gpa.toString(16)} raised exception ${r.exception} (not injected into running guests yet)`, t.vp.index);
        return CMD.exit;
      case 'crashed':
        this.crash(`VP ${t.vp.index}: a monitor answered CRASH`, t.vp.index);
        return CMD.exit;
      case 'intercepted':
        // Route MONITOR: the VP waits for the answer (resumeAnswered() when the core resolves it).
        if (r.awaitingMonitor) return HOLD;
        // The protecting VTL's SINT0 queue is full: the instruction runs again shortly (it intercepts
        // again, or passes once that VTL drained its queue); nothing is dropped.
        if (r.heldBack) {
          const i = t.vp.index;
          setTimeout(() => this.resumeSuspended(i), 2).unref();
          return HOLD;
        }
        this.follow(t);
        return CMD.run;
    }
  }

  /** Accesses to per-VP overlay pages served directly (the MMIO fast path). */
  overlayAccesses = 0;

  private onOwnOverlays(t: VpThread, gpa: bigint, len: number): boolean {
    for (let g = gpa >> 12n; g <= (gpa + BigInt(len) - 1n) >> 12n; g++) if (!this.p.overlays.visible(t.vtl, t.vp.index, g)) return false;
    return true;
  }

  private kicked(t: VpThread): number {
    t.cpu.vcpu.immediateExit = false;
    const reasons = [...t.kickReasons];
    t.kickReasons.clear();
    const work = t.service.splice(0);
    for (const w of work) w(t);
    if (reasons.includes('stop')) return CMD.exit;
    return CMD.run;
  }

  /** Interrupts VP t's KVM_RUN (immediate_exit first, so a thread about to enter returns at once). */
  private kick(t: VpThread, reason: 'pause' | 'stop' | 'service'): void {
    if (t.ended) return;
    t.kickReasons.add(reason);
    t.cpu.vcpu.immediateExit = true;
    const tid = Atomics.load(t.cells, CELL.tid);
    if (tid !== 0) sysTgkill(tid, SIGNO[this.signal]);
    else {
      // Not started yet: immediate_exit alone makes its first KVM_RUN return.
    }
  }

  /** Whether VP `index`'s thread waits for the main thread (its vCPU is not in KVM_RUN). */
  isParked(index: number): boolean {
    const t = this.threads[index];
    if (!t || t.ended) return false;
    return t.hold !== undefined || Atomics.load(t.cells, CELL.request) !== Atomics.load(t.cells, CELL.answer);
  }

  /**
   * HvCallStartVirtualProcessor started (or, like INIT, restarted) VP `index` (PlatformHooks.onVpStart,
   * called from another VP's hypercall): the core holds the started context in the VTL it made
   * active; the VP's thread moves to that VTL's vCPU, loaded from the core and made runnable (a vCPU
   * waiting for SIPI included), exactly as for a VTL switch (follow). Its thread is kicked out of
   * KVM_RUN first when it is not already waiting for the main thread.
   */
  startVp(index: number): void {
    const t = this.threads[index];
    if (!t || t.ended) return;
    if (this.isParked(index)) {
      this.follow(t);
      return;
    }
    t.service.push((x) => this.follow(x));
    this.kick(t, 'service');
  }

  /**
   * A secure interrupt for VP `index` (PlatformHooks.onInterruptPending: a VTL above the one it runs
   * has an interrupt its LAPIC would deliver). Its thread is kicked out of KVM_RUN; at that boundary
   * the running VTL's vCPU state goes to the core, the core makes the switch (entry reason Interrupt)
   * and the thread moves to the entered VTL's vCPU, whose LAPIC then delivers the interrupt.
   */
  deliverInterrupts(index: number): void {
    const t = this.threads[index];
    if (!t || t.ended) return;
    if (t.service.includes(this.interruptService)) return; // one kick covers every interrupt raised meanwhile
    t.service.push(this.interruptService);
    this.kick(t, 'service');
  }

  /** The service deliverInterrupts queues (one function, so that a VP has it at most once). */
  private readonly interruptService = (t: VpThread): void => {
    if (t.vp.activeVtl !== t.vtl) return; // the VP moved meanwhile (its own VtlCall/VtlReturn): nothing stale
    const from = t.cpu;
    const vtl = t.vtl;
    this.kp.executionStore(from, t.vp, vtl);
    if (core.deliverInterrupts(this.p, t.vp)) {
      this.secureInterrupts++;
      this.follow(t);
    }
  };

  /** VTL switches made for secure interrupts of a running guest (deliverInterrupts). */
  secureInterrupts = 0;

  /** Runs `work` on VP `index`'s vCPU while its thread waits (the vCPU is not in KVM_RUN then). */
  onVp(index: number, work: (cpu: VpCpu, vp: VirtualProcessor) => void): void {
    const t = this.threads[index];
    if (!t || t.ended) return;
    if (this.isParked(index)) {
      work(t.cpu, t.vp); // its thread is waiting for us
      return;
    }
    t.service.push((x) => work(x.cpu, x.vp));
    this.kick(t, 'service');
  }

  /**
   * VP `index`'s run state as KVM knows it: its thread is kicked out of KVM_RUN (a halted or
   * wait-for-SIPI vCPU waits inside the kernel) and KVM_GET_MP_STATE read while it waits.
   */
  queryVpState(index: number): Promise<VpRunState> {
    const quick = this.vpState(index);
    if (quick !== 'running' || this.stateValue !== 'running') return Promise.resolve(quick);
    return new Promise((resolve) => {
      this.onVp(index, (cpu) => {
        const mp = cpu.vcpu.getMpState();
        resolve(
          mp === KVM_MP_STATE.HALTED ? 'halted' : mp === KVM_MP_STATE.UNINITIALIZED || mp === KVM_MP_STATE.INIT_RECEIVED ? 'waiting-for-sipi' : 'running',
        );
      });
      // A thread that ended meanwhile never runs the work.
      if (this.threads[index]?.ended) resolve('stopped');
    });
  }

  /** The VTL VM's vCPU a VP runs now. */
  cpuOf(index: number): VpCpu | undefined {
    return this.threads[index]?.cpu;
  }

  pause(): void {
    if (this.stateValue !== 'running') throw new Error(`the guest is ${this.stateValue}`);
    this.stateValue = 'paused';
    for (const t of this.threads) this.kick(t, 'pause');
  }

  /**
   * Live migration's switch-over (the guest is paused): waits until every VP's thread is parked, then
   * stores each vCPU's state into the core (a running guest's registers live in KVM between exits)
   * and returns each VP's KVM_MP_STATE, in VP order.
   */
  async parkAndStore(timeoutMs = 5000): Promise<number[]> {
    if (this.stateValue !== 'paused') throw new Error(`the guest is ${this.stateValue}: pause it first`);
    const until = Date.now() + timeoutMs;
    while (this.threads.some((t) => !t.ended && !this.isParked(t.vp.index))) {
      if (Date.now() > until) throw new Error(`the guest's VPs did not stop within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 1));
    }
    return this.threads.map((t) => {
      const mp = t.cpu.vcpu.getMpState();
      if (mp === KVM_MP_STATE.RUNNABLE || mp === KVM_MP_STATE.HALTED) this.kp.executionStore(t.cpu, t.vp, t.vtl);
      return mp;
    });
  }

  resume(): void {
    if (this.stateValue !== 'paused') throw new Error(`the guest is ${this.stateValue}`);
    this.stateValue = 'running';
    for (const t of this.threads) if (t.hold === 'pause') this.answer(t, CMD.run);
    this.resumeAnswered(); // answered while paused
  }

  /**
   * Every VP held on an intercept that is no longer suspended (its monitor answered, or it was held back)
   * runs again: the answer is applied to its instruction when its state is loaded (KvmPartition.applyHeld).
   */
  resumeAnswered(): void {
    for (const t of this.threads) if (t.hold === 'intercept' && !t.ended) this.resumeSuspended(t.vp.index);
  }

  /** A VP suspended on an intercept whose monitor answered: let it run again. */
  resumeSuspended(index: number): void {
    const t = this.threads[index];
    if (t?.hold !== 'intercept' || this.stateValue !== 'running' || t.vp.suspendedOn !== null) return;
    this.follow(t);
    this.answer(t, CMD.run);
  }

  /** Stops the guest (StopPartition, a timeout, the debug-exit port): every VP's thread ends. */
  stop(reason: string, exitCode?: number, vpIndex?: number): void {
    this.finish({ state: 'stopped', reason, exitCode, vpIndex, at: new Date() });
  }

  /** Ends the run as crashed (triple fault, an exit the agent cannot handle, a monitor's CRASH). */
  crash(reason: string, vpIndex?: number): void {
    this.finish({ state: 'crashed', reason, vpIndex, at: new Date() });
  }

  private finish(end: GuestEnd): void {
    if (this.stateValue === 'stopped' || this.stateValue === 'crashed') return;
    this.stateValue = end.state;
    this.endValue = end;
    this.endedAt = process.hrtime.bigint();
    if (this.drainTimer) clearInterval(this.drainTimer);
    for (const t of this.threads) {
      if (this.isParked(t.vp.index)) this.answer(t, CMD.exit);
      else this.kick(t, 'stop');
    }
    this.drain();
    // The threads end on their own (each sees CMD.exit); onEnd after they are gone.
    void Promise.all(this.threads.map((t) => t.done)).then(() => {
      this.drain();
      this.opts.onEnd(end);
    });
  }

  /** Resolves when every VP thread has ended (after stop/crash). */
  // (serve() of an ended thread returns at its next wake-up.)
  async whenEnded(): Promise<void> {
    await Promise.all(this.threads.map((t) => t.done));
  }

  /** Moves console output from the ring to the listener. */
  drain(): void {
    const bytes = consoleDrain(this.consoleSab);
    if (bytes.length > 0) this.opts.onConsole(bytes);
    this.reportThreadExits();
  }

  /** The VP threads' own exits since the last report, to KvmHost.observer (drained with the console). */
  private reportThreadExits(): void {
    const exit = this.kp.host.observer?.exit;
    if (!exit) return;
    const io = this.localExits;
    const mmio = this.overlayExits;
    if (io > this.reportedThreadExits.io) exit('io_vp_thread', io - this.reportedThreadExits.io);
    if (mmio > this.reportedThreadExits.mmio) exit('mmio_vp_thread', mmio - this.reportedThreadExits.mmio);
    this.reportedThreadExits = { io, mmio };
  }
}
