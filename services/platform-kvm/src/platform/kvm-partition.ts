/**
 * The KVM platform of one partition: its memfds (RAM, overlay pages, agent region), one VM per
 * VTL it runs (created on first use), one vCPU per VP per VTL, and the guest actions, each run as
 * real instructions on the vCPU of the VP's active VTL.
 *
 * The core's register file is the source of truth between runs. A guest action runs a short stub
 * in the agent region with the agent's own paging, GDT and IDT (flat 64-bit CPL0) and the VP's
 * general registers where the action reads them; the VP's architectural state the core holds
 * (RIP, RSP, CR3, segments, ...) is not replaced, so afterwards it is exactly what the emulator
 * reports: only the action's architectural effects are stored back (see each action). The
 * privileged checks the TLFS makes (CPL, 32/64-bit convention) are the core's, on the VP's own
 * state. runVp() instead runs the guest's own code with its full state until HLT.
 */
import * as core from '@vsm/core';
import { HvError, HvStatus, PageBitmap, type Partition, type PlatformHooks, type VirtualProcessor, type Vtl, type X64ExceptionVector } from '@vsm/core';
import {
  type CpuidEntry,
  HV_MSR_BASE,
  HV_MSR_COUNT,
  type KvmExit,
  type KvmRegs,
  type KvmSregs,
  type KvmSystem,
  MiniGuest,
  type TimeoutExit,
  type VcpuWatchdog,
  zeroRegs,
} from '../kvm';
// From their modules, not the index's re-exports (getters): runVp's loop reads them per exit.
import { KVM_EXIT } from '../kvm/constants';
import { WATCHDOG_TIMEOUT } from '../kvm/watchdog';
import { AGENT, AgentRegion, EXCEPTION_PORT, type StubName } from './agent-region';
import { HYPERCALL_INSN_LENGTH, HYPERCALL_IO_SIZE, HYPERCALL_PORT, PROLOGUE_PORT, entryPrologue, kvmHypercallPageLayout } from './hypercall-page';
import { MemfdRam, OverlayPages } from './memory';
import {
  MSR_REGISTERS,
  coreRegs,
  fetchMsrs,
  getReg,
  isFastCall,
  isMsrRegister,
  loadAll,
  loadChanged,
  setReg,
  storeExit,
  storeMsrs,
  storeRegs,
  storeSregs,
  putCoreXmmInXsave,
  storeXmm,
  storeXmmFromXsave,
  withCoreXmm,
} from './registers';
import { type GuestExecutionOptions, type VpCpu, VtlVm } from './vtl-vm';
import { type FaultingInstruction, type PhysReader, instructionAtRip, instructionBeforeRip } from './x86';

const R = core.HvRegisterName;
/** KVM_CAP_XSAVE (linux/kvm.h). */
const KVM_CAP_XSAVE = 55;
const HYPERCALL_INSN_LENGTH_BIG = BigInt(HYPERCALL_INSN_LENGTH);
/** executeVmcall's options for a hypercall at the page's instruction (one object, not one per call). */
const AT_HYPERCALL_INSN = Object.freeze({ instructionLength: HYPERCALL_INSN_LENGTH });

/** A guest run that did not end the way the action expects: the watchdog fired, or KVM reported an exit the agent cannot handle. */
export class KvmRunError extends Error {
  constructor(
    readonly kind: 'timeout' | 'exit' | 'unenforced',
    message: string,
    readonly exit?: KvmExit | TimeoutExit,
  ) {
    super(message);
    this.name = 'KvmRunError';
  }
}

/** Shared by every partition of a backend. */
export interface KvmHost {
  system: KvmSystem;
  /** Guest CPUID (KVM_GET_SUPPORTED_CPUID without KVM's own paravirtual leaves 0x4000xxxx). */
  cpuid: readonly CpuidEntry[];
  watchdog(): VcpuWatchdog;
  /** Whether KVM reports a port OUT exit with RIP already past the instruction (probed once). */
  pioOutAdvancesRip: boolean;
  /**
   * Whether guest x87/SSE instructions execute (probeHost). When false (nested kvm_pvm here: `fld1`,
   * `xorps` end in KVM_EXIT_INTERNAL_ERROR), a vCPU's FP state changes only by the agent's own
   * KVM_SET_XSAVE/KVM_SET_FPU, so a VTL switch does not read it back. Unset: they execute, and every
   * VTL switch reads the leaving vCPU's state (one KVM_GET_XSAVE).
   */
  guestFpExecutes?: boolean;
  /** Deadline of one guest action, in ms. */
  actionTimeoutMs: number;
  /** Memslots a VTL VM's view may use before protections fall back to the core's model (default DEFAULT_MEMSLOT_BUDGET). */
  memslotBudget?: number;
  /** The guest TSC frequency KVM gives a vCPU, in kHz (probeHost; the reference TSC page of running guests). */
  tscKhz?: number;
  /** Told of exits, memslot changes and console output (the agent's metrics); unset = nothing is reported. */
  observer?: KvmObserver;
}

/**
 * What the platform reports as it works, for the agent's metrics (the vsm.v1 layer owns the registry;
 * nothing here depends on it). Every method is optional and called synchronously on the main thread.
 */
export interface KvmObserver {
  /** `count` KVM_RUN exits of `kind` (KvmExit kind; the VP threads' own: io_vp_thread, mmio_vp_thread). */
  exit?(kind: string, count: number): void;
  /** The main thread handled one exit of a running guest in `seconds` (hand-over to answer). */
  exitHandled?(seconds: number): void;
  /** `count` memslot changes made for a VTL's view (overlays, protections). */
  memslotChanges?(count: number): void;
  /** `bytes` of guest console output. */
  consoleBytes?(bytes: number): void;
}

export interface RunVpResult {
  /**
   * hlt: the guest executed HLT; timeout: the deadline passed; exception: the dispatcher raised one
   * (#UD), or an access raised #GP (write to a read-only overlay) — not injected; intercept: an access
   * intercepted and the VP waits (a monitor must answer, route MONITOR; or the protecting VTL's SINT0
   * queue is full and the VP is held back); crashed: a monitor answered CRASH; exit: an exit the
   * agent does not handle.
   */
  stop: 'hlt' | 'timeout' | 'exception' | 'intercept' | 'crashed' | 'exit';
  exits: number;
  vtlSwitches: number;
  /** Intercepts raised during the run (any route), in order. */
  intercepts: core.InterceptRecord[];
  exception?: X64ExceptionVector;
  exit?: KvmExit;
}

/**
 * An access of a whole-guest run that KVM refused (an MMIO exit on a protected page) and the core
 * turned into an intercept, kept for its (VP, VTL) until the VP runs there again: then the answer
 * (the VTL's VtlReturn, a monitor's reply) is applied to the instruction.
 */
interface HeldAccess {
  interceptId: bigint;
  route: 'vtl' | 'monitor' | 'held-back';
  kind: 'read' | 'write';
  gpa: bigint;
  length: number;
  data?: Buffer;
  /** The instruction: where it starts (the RIP the core holds) and where the next one starts. */
  start: bigint;
  end: bigint;
  /**
   * Writes only: whether the state before the store is known (the instruction was decoded: a plain
   * store, so only RIP differs). When it is not, the core holds RIP past the instruction (KVM had
   * completed it but for the store) and the held store is all that is left of it.
   */
  precise: boolean;
  /** How it was answered, once known (from a VtlReturn's resumedAccess). */
  resolution?: core.AccessOutcome | { status: 'skipped' };
}

export function isTrappedMsr(msr: number): boolean {
  return msr >= HV_MSR_BASE && msr < HV_MSR_BASE + HV_MSR_COUNT;
}

export function describeExit(e: KvmExit | TimeoutExit): string {
  return JSON.stringify(e, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : Buffer.isBuffer(v) ? [...v] : v));
}

/**
 * The vector a software-interrupt instruction raises, when KVM could not execute it: on kvm_pvm
 * INT3 / INT n / INT1 end in KVM_EXIT_INTERNAL_ERROR (emulation failure, RIP still at the
 * instruction) instead of being delivered through the IDT (faults such as #UD, #GP, #DE are
 * delivered normally). The exit carries the instruction bytes: data[0] bit 0 = bytes valid,
 * data[1] byte 0 = length, bytes from data[1] byte 1 on.
 */
export function softwareInterruptVector(e: KvmExit | TimeoutExit): number | undefined {
  if (e.kind !== 'internal_error' || e.suberror !== 1 || e.data.length < 3 || (e.data[0]! & 1n) === 0n) return undefined;
  const bytes = Buffer.alloc(16);
  bytes.writeBigUInt64LE(e.data[1]!, 0);
  bytes.writeBigUInt64LE(e.data[2]!, 8);
  if (bytes[0]! < 1) return undefined;
  const op = bytes[1];
  if (op === 0xcc) return 3; // int3
  if (op === 0xf1) return 1; // int1
  if (op === 0xcd && bytes[0]! >= 2) return bytes[2]; // int imm8
  return undefined;
}

/** Opens what a backend needs of /dev/kvm: the guest CPUID and the port-I/O RIP convention. */
export function probeHost(system: KvmSystem): { cpuid: CpuidEntry[]; pioOutAdvancesRip: boolean; tscKhz: number; guestFpExecutes: boolean } {
  const cpuid = system.getSupportedCpuid().filter((e) => e.function < 0x4000_0000 || e.function >= 0x5000_0000);
  // Older kernels advance RIP past OUT before exiting to userspace, newer ones when the exit is
  // completed. Run `out 0x4d, ax; hlt` once and look.
  const g = MiniGuest.create({ system, memorySize: 4 << 20 });
  try {
    g.load(Buffer.from([0x66, 0xe7, HYPERCALL_PORT, 0xf4]));
    const e = g.step();
    if (e.kind !== 'io') throw new Error(`RIP probe: expected an I/O exit, got ${describeExit(e)}`);
    const rip = g.vcpu.getRegs().rip;
    return { cpuid, pioOutAdvancesRip: rip === 0x100003n, tscKhz: g.vcpu.tscKhz(), guestFpExecutes: probeGuestFp(system, cpuid) };
  } finally {
    g.close();
  }
}

/** Whether `fld1; xorps xmm0, xmm0; hlt` runs to the HLT in a guest (CR4.OSFXSR set, the guest CPUID). */
function probeGuestFp(system: KvmSystem, cpuid: readonly CpuidEntry[]): boolean {
  const g = MiniGuest.create({ system, memorySize: 4 << 20 });
  try {
    g.vcpu.setCpuid(cpuid);
    g.load(Buffer.from([0xd9, 0xe8, 0x0f, 0x57, 0xc0, 0xf4]));
    return g.step().kind === 'hlt';
  } finally {
    g.close();
  }
}

export class KvmPartition {
  readonly ram: MemfdRam;
  readonly overlayPages: OverlayPages;
  private agentRegion: AgentRegion | undefined;
  private readonly vms: (VtlVm | undefined)[] = [undefined, undefined, undefined];
  private p: Partition | undefined;
  private closed = false;
  /** KVM_RUN exits handled for this partition. */
  exits = 0;
  /** Accesses KVM refused (MMIO exits on protected pages) that went to the core, guest actions and whole-guest runs. */
  refusedAccesses = 0;
  /**
   * Whole-guest intercepts delivered to the protecting VTL, and the agent's time for them: from the
   * MMIO exit to the protecting VTL's vCPU loaded and ready to run (registers synced, faulting
   * instruction found, message built and posted, VTL switched, vCPU state loaded).
   */
  interceptEntries = 0;
  /** The agent's time per intercept entry, in ns (the last 4096). */
  readonly interceptEntryNs: number[] = [];
  /** Intercepted accesses of whole-guest runs waiting for their answer, by `${vp}:${vtl}`. */
  private readonly held = new Map<string, HeldAccess>();
  /** Set once the partition runs guest code (guest/guest-runner.ts): how its VTL VMs are built. */
  private execution: GuestExecutionOptions | undefined;

  constructor(
    readonly host: KvmHost,
    spec: { id: string; memoryBytes: bigint; vpCount: number },
  ) {
    this.ram = new MemfdRam(spec.memoryBytes, `vsm-ram-${spec.id}`);
    this.ram.tracking.harvest = () => this.harvestGuestWrites();
    try {
      this.overlayPages = new OverlayPages(OverlayPages.capacityFor(spec.vpCount), `vsm-overlays-${spec.id}`);
    } catch (e) {
      this.ram.close();
      throw e;
    }
  }

  /** The core's platform hooks for this partition. */
  hooks(): PlatformHooks {
    const self = this;
    return {
      ram: this.ram,
      allocOverlayPage: () => this.overlayPages.alloc(),
      hypercallPage: kvmHypercallPageLayout,
      onViewChange: (vtl: Vtl) => {
        const v = this.vms[vtl];
        if (v) v.dirty = true;
      },
      onProtectionChange: (protectingVtl: Vtl) => {
        // The views of the VTLs below it change (their memslots are re-derived on their next run).
        for (const v of this.vms) if (v && v.vtl < protectingVtl) v.protectionsDirty = true;
      },
      // A running guest's session (guest/session.ts) supplies these; before it exists the core uses its
      // own clock and nothing is raised (guest actions never take interrupts).
      referenceClock: {
        now100ns: (vpIndex?: number) => this.executionHooks?.referenceClock?.now100ns(vpIndex) ?? this.referenceTimeFallback(),
        get tscPage() {
          return self.executionHooks?.referenceClock?.tscPage;
        },
      },
      onTimerChange: () => this.executionHooks?.onTimerChange?.(),
      raiseInterrupt: (vpIndex: number, vtl: Vtl, vector: number, opts: { autoEoi: boolean }) =>
        this.executionHooks?.raiseInterrupt?.(vpIndex, vtl, vector, opts),
      onVpStart: (vpIndex: number) => this.executionHooks?.onVpStart?.(vpIndex),
      // A running guest's in-kernel LAPICs deliver its interrupts (core rules/interrupts.ts).
      platformApic: () => this.executionHooks?.platformApic?.() === true,
      interruptPending: (vpIndex: number, vtl: Vtl) => this.executionHooks?.interruptPending?.(vpIndex, vtl) === true,
      onInterruptPending: (vpIndex: number) => this.executionHooks?.onInterruptPending?.(vpIndex),
    };
  }

  /**
   * Pages of RAM the guest wrote itself (through KVM, not MemfdRam.write), from the VMs' dirty logs:
   * logging starts with the first harvest (the RAM's first export epoch) and covers every VTL's VM.
   */
  private guestWritten: PageBitmap | undefined;
  private readonly logGuestWrite = (page: number) => this.guestWritten?.add(page);

  /** RamTracking.harvest: the pages the guest wrote since the last call (KVM_GET_DIRTY_LOG of every VM). */
  private harvestGuestWrites(): Iterable<number> {
    if (this.closed) return [];
    this.guestWritten ??= new PageBitmap();
    for (const v of this.vms) {
      if (!v) continue;
      v.vm.logDirty(this.ram.memory, this.logGuestWrite);
      v.vm.harvestDirty();
    }
    const pages = this.guestWritten;
    this.guestWritten = new PageBitmap();
    return pages.ascending();
  }

  attach(p: Partition): void {
    this.p = p;
  }

  get partition(): Partition {
    if (!this.p) throw new Error('KvmPartition is not attached to a core partition');
    return this.p;
  }

  /** The core partition, once attached (a platform disposed before its partition was built has none). */
  get attachedPartition(): Partition | undefined {
    return this.p;
  }

  /** The VM of a VTL, if it has run. */
  vmOf(vtl: Vtl): VtlVm | undefined {
    return this.vms[vtl];
  }

  get agent(): AgentRegion {
    if (this.closed) throw new Error('partition platform is closed');
    this.agentRegion ??= new AgentRegion(this.ram.sizeBytes, `vsm-agent-${this.partition.id}`);
    return this.agentRegion;
  }

  private vtlVm(vtl: Vtl): VtlVm {
    let v = this.vms[vtl];
    if (!v) {
      v = new VtlVm(this.host.system, vtl, this.ram, this.overlayPages, this.agent, this.host.cpuid, this.host.memslotBudget, this.execution);
      if (this.guestWritten) v.vm.logDirty(this.ram.memory, this.logGuestWrite);
      const obs = this.host.observer;
      if (obs?.memslotChanges) v.onSlotChanges = (n) => obs.memslotChanges?.(n);
      this.vms[vtl] = v;
    }
    return v;
  }

  /**
   * Whether the view of the VP's active VTL enforces the higher VTLs' protections with memslots
   * (false when its layout would exceed the memslot budget; VtlVm.unenforcedReason says why).
   */
  enforcesProtections(vp: VirtualProcessor): boolean {
    if (this.closed) throw new Error('partition platform is closed');
    const vm = this.vtlVm(vp.activeVtl);
    vm.syncView(this.partition, vp.index);
    return vm.enforced;
  }

  /** The vCPU of the VP's active VTL, with that VM's layout showing this VP's view. */
  private prepare(vp: VirtualProcessor): VpCpu {
    if (this.closed) throw new Error('partition platform is closed');
    const vm = this.vtlVm(vp.activeVtl);
    vm.syncView(this.partition, vp.index);
    const c = vm.cpu(vp.index);
    this.flush(c);
    return c;
  }

  /**
   * A vCPU stopped at an I/O, MMIO or MSR exit that was not resumed still has the instruction's
   * completion pending, which KVM would apply at the next KVM_RUN on top of the registers loaded
   * for the next action. Complete it now without entering the guest (immediate_exit).
   */
  private flush(c: VpCpu): void {
    if (!c.pending) return;
    c.vcpu.immediateExit = true;
    try {
      c.vcpu.run();
    } finally {
      c.vcpu.immediateExit = false;
      c.pending = false;
      c.pendingOutRip = undefined;
      c.pendingWriteDone = undefined;
      c.shadow?.forgetRegs(); // the completion may have moved RIP or written a register
    }
  }

  /** One KVM_RUN of `c` under the watchdog, ending at `deadlineMs` (Date.now() time; default: the action timeout from now). */
  private run(c: VpCpu, deadlineMs = Date.now() + this.host.actionTimeoutMs): KvmExit | TimeoutExit {
    return this.afterRun(c, this.host.watchdog().runUntil(c.vcpu, deadlineMs));
  }

  /**
   * run() for runVp's loop: the OUT to the hypercall port (its hot exit) is recognised from kvm_run
   * itself and returned as null, without an exit object; every other exit is decoded as run() does.
   */
  private runToExit(c: VpCpu, deadlineMs: number): KvmExit | TimeoutExit | null {
    const r = this.host.watchdog().runRawUntil(c.vcpu, deadlineMs);
    if (r === KVM_EXIT.IO && c.vcpu.isPortOut(HYPERCALL_PORT, HYPERCALL_IO_SIZE)) {
      // afterRun's bookkeeping for a port exit.
      c.pending = true;
      c.pendingOutRip = undefined;
      c.pendingWriteDone = undefined;
      this.exits++;
      this.host.observer?.exit?.('io', 1);
      return null;
    }
    return this.afterRun(c, r === WATCHDOG_TIMEOUT ? { kind: 'timeout', reason: -1 } : c.vcpu.decodeExit(r));
  }

  /** What every run records of its exit (pending completion, a vCPU left unusable, counts). */
  private afterRun(c: VpCpu, e: KvmExit | TimeoutExit): KvmExit | TimeoutExit {
    c.pending = e.kind === 'io' || e.kind === 'mmio' || e.kind === 'rdmsr' || e.kind === 'wrmsr';
    c.pendingOutRip = undefined;
    c.pendingWriteDone = undefined;
    if (e.kind === 'shutdown' || e.kind === 'internal_error' || e.kind === 'fail_entry') c.mode = 'fresh';
    this.exits++;
    this.host.observer?.exit?.(e.kind, 1);
    return e;
  }

  /**
   * Loads the agent environment for `stub` (CPL0, or CPL3 for the memory stubs) and the given
   * registers (RIP, RSP, RFLAGS are the agent's; RBX = the doorbell for CPL3 stubs).
   */
  private enterAgent(c: VpCpu, stub: StubName, regs: Partial<KvmRegs>): void {
    const s = this.agent.stub(stub);
    const mode = s.user ? 'agent-user' : 'agent';
    this.leaveGuestMode(c);
    if (c.mode !== mode) {
      c.vcpu.setSregs(this.agent.sregs(c.vcpu.getSregs(), s.user));
      c.mode = mode;
    }
    c.vcpu.setRegs({ ...zeroRegs(), ...regs, ...(s.user ? { rbx: this.agent.doorbell } : {}), rip: s.rip, rsp: this.agent.stackTop, rflags: 0x2n });
  }

  /** A CPL3 stub rang the doorbell: it is done. */
  private isDoorbell(e: KvmExit | TimeoutExit): boolean {
    return e.kind === 'mmio' && e.isWrite && e.gpa === this.agent.doorbell;
  }

  private fail(vp: VirtualProcessor, what: string, e: KvmExit | TimeoutExit): never {
    if (e.kind === 'timeout') {
      throw new KvmRunError(
        'timeout',
        `VP ${vp.index} (VTL ${vp.activeVtl}): ${what} did not finish within ${this.host.actionTimeoutMs} ms; the watchdog stopped the vCPU`,
        e,
      );
    }
    throw new KvmRunError('exit', `VP ${vp.index} (VTL ${vp.activeVtl}): ${what} stopped on an unexpected KVM exit ${describeExit(e)}`, e);
  }

  private isStubEnd(c: VpCpu, stub: StubName): boolean {
    return c.vcpu.getRegs().rip === this.agent.stub(stub).end;
  }

  private exceptionOf(c: VpCpu, e: KvmExit | TimeoutExit): number | undefined {
    if (e.kind !== 'io' || e.direction !== 'out' || e.port !== EXCEPTION_PORT) return undefined;
    return this.agent.exceptionVector(c.vcpu.getRegs().rip);
  }

  /**
   * Whether an exit is a hypercall of the agent's page: its `out 0x4d, ax` (anywhere), or the
   * `out 0x4e, ax` that opens a VtlCall/VtlReturn entry (hypercall-page.ts). For the latter the
   * vCPU's registers are first set as the entry's MOVs would have left them, and RIP as after the
   * entry's `out 0x4d, ax`: everything after sees that hypercall. An `out 0x4e, ax` anywhere else is
   * not a hypercall.
   */
  private hypercallExit(c: VpCpu, e: KvmExit | TimeoutExit): boolean {
    if (e.kind !== 'io' || e.direction !== 'out' || e.size !== HYPERCALL_IO_SIZE) return false;
    if (e.port === HYPERCALL_PORT) return true;
    if (e.port !== PROLOGUE_PORT) return false;
    const v = c.vcpu;
    const fresh = v.syncedRegsFresh;
    const r = fresh ? undefined : v.getRegs();
    const reg = (name: 'rax' | 'rcx' | 'rip') => (r ? r[name] : v.syncedReg(name));
    const entry = this.hypercallInsnAt(reg('rip'));
    const pro = entryPrologue(Number(entry & 0xfffn));
    if (!pro) return false;
    const rax = reg('rax');
    const rcx = reg('rcx');
    const set = {
      rax: pro.wide ? rcx : BigInt(pro.callCode),
      rcx: pro.wide ? BigInt(pro.callCode) : rax & 0xffff_ffffn,
      rip: entry + BigInt(pro.hypercallAt) + (this.host.pioOutAdvancesRip ? BigInt(HYPERCALL_INSN_LENGTH) : 0n),
    };
    if (fresh) for (const k of ['rax', 'rcx', 'rip'] as const) v.setSyncedReg(k, set[k]);
    else v.setRegs({ ...(r as KvmRegs), ...set });
    return true;
  }

  /** Address of the hypercall instruction that caused the current port exit. */
  private hypercallInsnAt(rip: bigint): bigint {
    return this.host.pioOutAdvancesRip ? rip - HYPERCALL_INSN_LENGTH_BIG : rip;
  }

  // ---- guest actions ---------------------------------------------------------------------------

  /**
   * WRMSR by the VP in its active VTL: `wrmsr; hlt` with ECX = msr, EDX:EAX = value. A Hyper-V MSR
   * exits to the agent, the core applies it, a refusal completes the exit with error → the vCPU
   * takes a real #GP (reported by the agent's IDT). Registers of the VP are not changed (as on the
   * emulator). MSRs outside 0x40000000-0x400000FF are not trapped: the core answers for them
   * without running the guest (the emulator models no other MSR: #GP).
   */
  writeMsr(vp: VirtualProcessor, msr: number, value: bigint): { exception?: X64ExceptionVector } {
    const p = this.partition;
    p.assertActive();
    if (!isTrappedMsr(msr)) return p.writeMsr(vp, msr, value);
    const c = this.prepare(vp);
    this.enterAgent(c, 'wrmsr', { rcx: BigInt(msr), rax: value & 0xffff_ffffn, rdx: (value >> 32n) & 0xffff_ffffn });
    let result: { exception?: X64ExceptionVector } = {};
    for (;;) {
      const e = this.run(c);
      if (e.kind === 'wrmsr') {
        result = p.writeMsr(vp, e.index, e.data);
        c.vcpu.completeMsr({ error: result.exception !== undefined });
        continue;
      }
      const vector = this.exceptionOf(c, e);
      if (vector !== undefined) return { exception: vector as X64ExceptionVector };
      if (e.kind === 'hlt' && this.isStubEnd(c, 'wrmsr')) return result;
      this.fail(vp, `WRMSR 0x${msr.toString(16)}`, e);
    }
  }

  /** RDMSR by the VP: `rdmsr; hlt` with ECX = msr; the value is what the guest finds in EDX:EAX. */
  readMsr(vp: VirtualProcessor, msr: number): { value: bigint; exception?: X64ExceptionVector } {
    const p = this.partition;
    p.assertActive();
    if (!isTrappedMsr(msr)) return p.readMsr(vp, msr);
    const c = this.prepare(vp);
    this.enterAgent(c, 'rdmsr', { rcx: BigInt(msr) });
    for (;;) {
      const e = this.run(c);
      if (e.kind === 'rdmsr') {
        const r = p.readMsr(vp, e.index);
        c.vcpu.completeMsr(r.exception !== undefined ? { error: true } : { data: r.value });
        continue;
      }
      const vector = this.exceptionOf(c, e);
      if (vector !== undefined) return { value: 0n, exception: vector as X64ExceptionVector };
      if (e.kind === 'hlt' && this.isStubEnd(c, 'rdmsr')) {
        const r = c.vcpu.getRegs();
        return { value: ((r.rdx & 0xffff_ffffn) << 32n) | (r.rax & 0xffff_ffffn) };
      }
      this.fail(vp, `RDMSR 0x${msr.toString(16)}`, e);
    }
  }

  /**
   * The ReadMemory / WriteMemory guest actions, with the higher VTLs' protections enforced by the
   * memslots of the view. When the range has no page the view refuses for this access, the access
   * runs as real loads/stores (guestRead / guestWrite). Otherwise the guest touches the first refused
   * byte for real (one load or store there); KVM stops it with an MMIO exit at that GPA, and the core
   * decides what the refusal means for the whole access, exactly as for the emulator's guestAccess:
   * #GP for a read-only overlay, or the intercept of the lowest protecting VTL that refuses it (the
   * message holds the VP's registers from the core: a guest action has no guest instruction, so
   * InstructionLength is 0, as on the emulator), routed to that VTL's SINT0 and entry or to monitors.
   * Nothing of the access is performed then (the emulator's access is atomic too): a monitor's ALLOW
   * performs it on guest memory (the memfd), as the hypervisor completes an instruction for a guest.
   * The caller checked the length; the view must enforce protections (enforcesProtections).
   */
  memoryAccess(vp: VirtualProcessor, kind: 'read' | 'write', gpa: bigint, length: number, data?: Buffer, gva?: bigint): core.AccessOutcome {
    const p = this.partition;
    // A suspended VP (route MONITOR) does not run: the core refuses, with its status and message.
    if (vp.suspendedOn !== null) return core.guestAccess(p, vp, kind, gpa, length, data, { gva });
    p.assertActive();
    p.checkRange(gpa, length);
    const c = this.prepare(vp);
    let refused: bigint | undefined;
    for (let page = gpa & ~0xfffn; page < gpa + BigInt(length); page += 0x1000n) {
      const a = c.vm.access(page);
      if (a === 'none' || (kind === 'write' && a === 'ro')) {
        refused = page > gpa ? page : gpa;
        break;
      }
    }
    if (refused === undefined) {
      if (kind === 'read') return { status: 'completed', data: this.guestRead(vp, gpa, length) };
      if (!this.guestWrite(vp, gpa, data!)) return { status: 'exception', exception: core.X64Exception.GP };
      return { status: 'completed' };
    }
    if (kind === 'read') this.enterAgent(c, 'load1', { rdi: refused });
    else this.enterAgent(c, 'store1', { rdi: refused, rax: BigInt(data![Number(refused - gpa)] ?? 0) });
    const e = this.run(c);
    if (!(e.kind === 'mmio' && e.gpa === refused && e.isWrite === (kind === 'write')))
      this.fail(vp, `guest ${kind} at the refused GPA 0x${refused.toString(16)}`, e);
    this.refusedAccesses++;
    return core.interceptAccess(p, vp, kind, gpa, length, data, undefined, gva);
  }

  /** A page of RAM that the view maps without data access or read-only because of the higher VTLs' protections (not an overlay). */
  private protectedPage(c: VpCpu, gpa: bigint): boolean {
    if (gpa >= this.ram.sizeBytes) return false;
    const m = c.vm.vm.lookup(gpa);
    return !m || (m.readonly && m.memory === this.ram.memory);
  }

  /**
   * A guest read of `length` bytes at `gpa` in the VP's active VTL: one load (1/2/4/8 bytes) or
   * `rep movsb` into the agent buffer. The caller checked the range (core checkRange). Protections
   * are not applied (the Hypercall action's output copy, which the emulator reads with readView):
   * a page without a memslot is completed with what the core sees there.
   */
  guestRead(vp: VirtualProcessor, gpa: bigint, length: number): Buffer {
    if (length < 1 || length > AGENT.bufferSize) throw new RangeError(`guest read of ${length} bytes`);
    const c = this.prepare(vp);
    for (let page = gpa & ~0xfffn; page < gpa + BigInt(length); page += 0x1000n) {
      // A page without a memslot would exit once per byte of a `rep movsb`: read what the core sees.
      if (this.protectedPage(c, page) && !c.vm.vm.lookup(page)) return this.partition.readView(vp.activeVtl, vp.index, gpa, length);
    }
    const single = length === 1 || length === 2 || length === 4 || length === 8;
    const stub: StubName = single ? `load${length as 1 | 2 | 4 | 8}` : 'copy';
    this.enterAgent(c, stub, single ? { rdi: gpa } : { rsi: gpa, rdi: this.agent.bufferGpa, rcx: BigInt(length) });
    for (;;) {
      const e = this.run(c);
      if (e.kind === 'mmio' && !e.isWrite) {
        // No memslot at that GPA (none of this milestone's views has holes): what the core sees there.
        c.vcpu.completeMmioRead(this.partition.readView(vp.activeVtl, vp.index, e.gpa, e.len));
        continue;
      }
      if (!single && this.isDoorbell(e)) return Buffer.from(this.agent.buffer(length));
      if (single && e.kind === 'hlt' && this.isStubEnd(c, stub)) {
        const out = Buffer.alloc(8);
        out.writeBigUInt64LE(c.vcpu.getRegs().rax);
        return out.subarray(0, length);
      }
      this.fail(vp, `guest read of ${length} bytes at 0x${gpa.toString(16)}`, e);
    }
  }

  /**
   * A guest write of `data` at `gpa` in the VP's active VTL (one store, or `rep movsb` from the
   * agent buffer). Returns false when the write faults (#GP): a write that touches a read-only
   * page of the view (hypercall or reference TSC overlay — a read-only memslot) changes nothing;
   * the guest's store to the first such byte exits as MMIO and is dropped. Protections are not
   * applied (memoryAccess applies them; this is also the Hypercall action's input copy).
   */
  guestWrite(vp: VirtualProcessor, gpa: bigint, data: Uint8Array): boolean {
    const length = data.length;
    if (length < 1 || length > AGENT.bufferSize) throw new RangeError(`guest write of ${length} bytes`);
    const c = this.prepare(vp);
    for (let page = gpa & ~0xfffn; page < gpa + BigInt(length); page += 0x1000n) {
      // The Hypercall action's input block: the emulator stores it with writeView, which does not
      // apply protections. A protected page in the range: the same host-side write here.
      if (this.protectedPage(c, page)) return this.partition.writeView(vp.activeVtl, vp.index, gpa, Buffer.from(data));
    }
    let firstRo: bigint | undefined;
    for (let page = gpa & ~0xfffn; page < gpa + BigInt(length); page += 0x1000n) {
      if (c.vm.isReadOnly(page)) {
        firstRo = page > gpa ? page : gpa;
        break;
      }
    }
    if (firstRo !== undefined) {
      this.enterAgent(c, 'store1', { rdi: firstRo, rax: BigInt(data[Number(firstRo - gpa)] ?? 0) });
      const e = this.run(c);
      if (e.kind === 'mmio' && e.isWrite && e.gpa === firstRo) return false; // dropped (the next flush completes the instruction)
      this.fail(vp, `guest write to the read-only page at 0x${firstRo.toString(16)}`, e);
    }
    const single = length === 1 || length === 2 || length === 4 || length === 8;
    const stub: StubName = single ? `store${length as 1 | 2 | 4 | 8}` : 'copy';
    if (single) {
      const v = Buffer.alloc(8);
      Buffer.from(data.buffer, data.byteOffset, length).copy(v);
      this.enterAgent(c, stub, { rdi: gpa, rax: v.readBigUInt64LE(0) });
    } else {
      this.agent.buffer(length).set(data);
      this.enterAgent(c, stub, { rsi: this.agent.bufferGpa, rdi: gpa, rcx: BigInt(length) });
    }
    const e = this.run(c);
    if (single ? e.kind === 'hlt' && this.isStubEnd(c, stub) : this.isDoorbell(e)) return true;
    this.fail(vp, `guest write of ${length} bytes at 0x${gpa.toString(16)}`, e);
  }

  /**
   * The hypercall instruction executed directly (the Hypercall action): `out 0x4d, ax; hlt` with
   * the VP's general registers (RCX/RDX/R8 or the 32-bit convention's). At the exit the core's
   * dispatcher runs on the core's register file; as on the emulator, the VP's RIP moves by the
   * instruction's 3 bytes. Unless it raised an exception or switched VTL, the guest then gets the
   * result (RAX, EDX:EAX) and runs on to the HLT.
   */
  vmcall(vp: VirtualProcessor): core.HypercallOutcome {
    const p = this.partition;
    p.assertActive();
    const vtl = vp.activeVtl;
    const c = this.prepare(vp);
    this.enterAgent(c, 'hypercall', coreRegs(vp, vtl));
    // A fast call's XMM input is in the vCPU's XMM registers when the call executes.
    if (isFastCall(vp, vtl)) this.writeXmm(c, vp);
    let outcome: core.HypercallOutcome | undefined;
    for (;;) {
      const e = this.run(c);
      if (this.hypercallExit(c, e) && outcome === undefined) {
        const regs = c.vcpu.getRegs();
        storeRegs(vp, vtl, regs, true);
        outcome = this.dispatch(vp, undefined, c);
        if (outcome.exception !== undefined || vp.activeVtl !== vtl) return outcome;
        c.vcpu.setRegs({ ...regs, ...gprsOf(vp, vtl), rip: this.agent.stub('hypercall').end - 1n });
        continue;
      }
      if (e.kind === 'hlt' && outcome && this.isStubEnd(c, 'hypercall')) return outcome;
      this.fail(vp, 'hypercall', e);
    }
  }

  /**
   * CALL into the active VTL's hypercall page at `offset` (the CallHypercallPage action): the core's
   * callHypercallPage with the page's real code run here (pageCode), so both engines report the same
   * registers: the core decides RIP, pendingStubReturn and the outcome from what the code did.
   */
  callHypercallPage(vp: VirtualProcessor, offset: number): core.StubOutcome {
    return core.callHypercallPage(this.partition, vp, offset, (_pageGpa, entry) => this.pageCode(vp, entry, offset));
  }

  /**
   * The page's code for one CALL: `call [target]; hlt` on the agent stack, so the page's real code
   * runs (its MOVs, the hypercall instruction, its RET, or an INT3 → #BP). At each event the general
   * registers the code changed are stored back into the core; after a hypercall that completed in
   * this VTL the code runs on with the registers the core's dispatcher left.
   */
  private pageCode(vp: VirtualProcessor, entry: bigint, offset: number): core.HypercallPageCode {
    const vtl = vp.activeVtl;
    const c = this.prepare(vp);
    this.agent.setCallTarget(entry);
    /** The vCPU's registers at the last hypercall exit, and the hypercall instruction's GPA. */
    let at: { regs: KvmRegs; insn: bigint } | undefined;
    return {
      dispatch: (callSite) => this.dispatch(vp, callSite, c),
      run: () => {
        if (!at) this.enterAgent(c, 'callPage', coreRegs(vp, vtl));
        else c.vcpu.setRegs({ ...at.regs, ...gprsOf(vp, vtl), rip: at.insn + BigInt(HYPERCALL_INSN_LENGTH) });
        for (;;) {
          const e = this.run(c);
          if (this.hypercallExit(c, e)) {
            const regs = c.vcpu.getRegs();
            at = { regs, insn: this.hypercallInsnAt(regs.rip) };
            storeRegs(vp, vtl, regs, true);
            return { kind: 'hypercall', rip: at.insn };
          }
          const vector = this.exceptionOf(c, e) ?? softwareInterruptVector(e);
          if (vector !== undefined) {
            // An exception (through the agent's IDT), or the INT3 fill of the page (#BP; see softwareInterruptVector).
            storeRegs(vp, vtl, c.vcpu.getRegs(), true);
            return { kind: 'exception', vector: vector as X64ExceptionVector };
          }
          if (e.kind === 'hlt' && this.isStubEnd(c, 'callPage')) {
            storeRegs(vp, vtl, c.vcpu.getRegs(), true);
            return { kind: 'return' };
          }
          this.fail(vp, `CALL into the hypercall page at offset 0x${offset.toString(16)}`, e);
        }
      },
    };
  }

  /**
   * The core's hypercall dispatcher for the instruction at the VP's RIP (3 bytes, like the emulator's
   * VMCALL). A VtlReturn can answer an intercepted access of a whole-guest run held for the VTL it
   * returns to (core resumePendingAccess): the answer is noted for when that VTL runs again.
   */
  private dispatch(vp: VirtualProcessor, callSite?: core.HypercallCallSite, c?: VpCpu): core.HypercallOutcome {
    // XMM fast hypercalls (tlfs-hypercalls.md §1.4): the vCPU's XMM registers are the input, and the
    // output the core wrote goes back into them (kvm_fpu; two ioctls, fast calls only).
    // Bit 16 of the hypercall input value (RCX) = Fast (tlfs-hypercalls.md §1.2).
    const fast = c !== undefined && core.hypercallInputIsFast(vp);
    if (fast) this.readXmm(c, vp);
    const o = core.executeVmcall(this.partition, vp, callSite ? { instructionLength: HYPERCALL_INSN_LENGTH, callSite } : AT_HYPERCALL_INSN);
    if (fast && o.fastOutput) this.writeXmm(c, vp);
    const ra = o.resumedAccess;
    if (ra && o.vtlSwitch) {
      const h = this.held.get(heldKey(vp.index, o.vtlSwitch.toVtl));
      if (h && h.interceptId === ra.interceptId) {
        const r = ra.outcome;
        if (r.status === 'intercepted' && !r.heldBack) {
          // Retried and refused again: a new intercept for the same instruction.
          h.interceptId = r.intercept.id;
          h.route = r.awaitingMonitor ? 'monitor' : 'vtl';
          h.resolution = undefined;
        } else h.resolution = r;
      }
    }
    return o;
  }

  // ---- whole guest -----------------------------------------------------------------------------

  /**
   * Loads the VP's full state of `vtl` from the core into the vCPU, after applying the answer to an
   * access of that VTL held on an intercept (applyHeld).
   */
  private enterGuest(c: VpCpu, vp: VirtualProcessor, vtl: Vtl): void {
    c.replay = undefined;
    this.applyHeld(c, vp, vtl);
    // Still in guest mode with a known shadow: only what the core changed since (registers.ts).
    if (c.mode === 'guest' && c.shadow && c.vcpu.syncedRegsFresh && c.vcpu.syncedSregsFresh) loadChanged(c.vcpu, vp, vtl, c.shadow);
    else {
      if (c.shadow?.msrsAhead) vp.vtls.get(vtl).syncRegs();
      c.shadow = loadAll(c.vcpu, vp, vtl);
      c.mode = 'guest';
    }
  }

  /**
   * runVp's store at an exit: kvm_regs (and kvm_sregs if their bytes changed) from kvm_run's sync
   * area into the core, no ioctl; the MSRs stay in the vCPU until the core asks for one (lazyRegs)
   * or the run ends (settle).
   */
  private storeAtExit(c: VpCpu, vp: VirtualProcessor, vtl: Vtl): void {
    const sh = c.shadow;
    if (!sh || c.mode !== 'guest' || !c.vcpu.syncedRegsFresh || !c.vcpu.syncedSregsFresh) {
      this.storeGuest(c, vp, vtl);
      return;
    }
    storeExit(c.vcpu, vp, vtl, sh);
    if (!sh.msrsAhead) {
      sh.msrsAhead = true;
      const st = vp.vtls.get(vtl);
      const vcpu = c.vcpu;
      st.lazyRegs = (name) => {
        if (name !== undefined && !isMsrRegister(name)) return false;
        if (c.shadow === sh && sh.msrsAhead) fetchMsrs(vcpu, vp, vtl, sh);
        return true;
      };
    }
  }

  /** The vCPU no longer holds the guest's state as runVp tracks it (a guest action loads the agent's). */
  private leaveGuestMode(c: VpCpu): void {
    c.shadow = undefined;
    c.fp = undefined;
  }

  /**
   * prepare() for runVp: a vCPU left at an exit whose completion changes nothing is not flushed:
   * - the hypercall port's OUT, when the RIP the core now gives it differs from the OUT's or the
   *   host advanced RIP before the exit (KVM's completion only skips the instruction while RIP is
   *   still at it; the registers loaded through kvm_run's sync area apply before it);
   * - an MMIO store that was its access's last fragment (KVM emulated the whole instruction before
   *   the exit; completing a write only ends the exit, x86.c complete_emulated_mmio).
   * That saves one KVM_RUN (≈7 µs here) per VTL switch back to such a vCPU.
   */
  private prepareRun(vp: VirtualProcessor): VpCpu {
    if (this.closed) throw new Error('partition platform is closed');
    const vm = this.vtlVm(vp.activeVtl);
    vm.syncView(this.partition, vp.index);
    const c = vm.cpu(vp.index);
    const outRip = c.pendingOutRip;
    const skip =
      c.pending &&
      c.mode === 'guest' &&
      (c.pendingWriteDone === true || (outRip !== undefined && (this.host.pioOutAdvancesRip || getReg(vp, vp.activeVtl, R.HvX64RegisterRip) !== outRip)));
    if (!skip) this.flush(c);
    return c;
  }

  /**
   * The leaving vCPU's x87/SSE/AVX state into c.fp (one KVM_GET_XSAVE, or KVM_GET_FPU without XSAVE).
   * Not read again where guest FP instructions cannot execute (KvmHost.guestFpExecutes false): the
   * bytes last read or loaded are still the vCPU's (the agent's own SETs forget them).
   */
  private saveFp(c: VpCpu): void {
    if (c.fp && this.host.guestFpExecutes === false) return;
    const xsave = this.xsave;
    c.fp ??= Buffer.alloc(xsave ? 4096 : 416);
    if (xsave) c.vcpu.getXsaveRaw(c.fp);
    else c.vcpu.getFpuRaw(c.fp);
  }

  /** Shared x87/SSE/AVX state `fp` into the entered vCPU, unless it already holds exactly these bytes. */
  private loadFp(c: VpCpu, fp: Buffer): void {
    if (c.fp?.equals(fp)) return;
    if (this.xsave) c.vcpu.setXsaveRaw(fp);
    else c.vcpu.setFpuRaw(fp);
    c.fp ??= Buffer.alloc(fp.length);
    fp.copy(c.fp);
  }

  /** The vCPU's XMM0..XMM15 into the core (fast hypercall input; registers.ts, XMM in the XSAVE image). */
  private readXmm(c: VpCpu, vp: VirtualProcessor): void {
    if (this.xsave) storeXmmFromXsave(vp, c.vcpu.getXsaveRaw(this.xmmScratch));
    else storeXmm(vp, c.vcpu.getFpu());
  }

  /** The core's XMM0..XMM15 into the vCPU (fast hypercall input and output); its saved FP bytes are stale then. */
  private writeXmm(c: VpCpu, vp: VirtualProcessor): void {
    if (this.xsave) {
      const b = c.vcpu.getXsaveRaw(this.xmmScratch);
      putCoreXmmInXsave(vp, b);
      c.vcpu.setXsaveRaw(b);
    } else c.vcpu.setFpu(withCoreXmm(vp, c.vcpu.getFpu()));
    c.fp = undefined;
  }
  private readonly xmmScratch = Buffer.alloc(4096);

  /** Whether KVM has KVM_GET/SET_XSAVE (KVM_CAP_XSAVE): the whole XSAVE area moves (AVX included). */
  private get xsave(): boolean {
    this.xsaveCap ??= this.host.system.checkExtension(KVM_CAP_XSAVE) > 0;
    return this.xsaveCap;
  }
  private xsaveCap: boolean | undefined;

  /** Stores the vCPU's full state into the core's register file of `vtl`. */
  private storeGuest(c: VpCpu, vp: VirtualProcessor, vtl: Vtl): void {
    storeRegs(vp, vtl, c.vcpu.getRegs(), false);
    storeSregs(vp, vtl, c.vcpu.getSregs());
    storeMsrs(vp, vtl, c.vcpu.getMsrs(MSR_REGISTERS.map(([i]) => i)));
  }

  /**
   * The instruction whose access KVM refused is resumed with its answer, in the core's terms:
   * - completed (ALLOW, a monitor's SKIP, or a retry the protections now pass; the core performed the
   *   access on guest memory): a read re-executes the instruction and its read exit gets the bytes
   *   the core read (KVM then completes it: destination register, RIP); a store is done, RIP moves
   *   past the instruction;
   * - skipped (the protecting VTL moved RIP): the core's RIP stands;
   * - not answered (the SINT0 queue was full; or nothing is known): the instruction runs again, and
   *   intercepts again if the protection is still there (RETRY). A store whose instruction could
   *   not be decoded has completed but for the store: the core retries the store itself.
   */
  private applyHeld(c: VpCpu, vp: VirtualProcessor, vtl: Vtl): void {
    const key = heldKey(vp.index, vtl);
    const h = this.held.get(key);
    if (!h) return;
    const p = this.partition;
    let r = h.resolution;
    if (!r && h.route === 'monitor' && vp.suspendedOn !== h.interceptId && p.intercepts.status(h.interceptId) !== 'pending') {
      r = p.intercepts.outcomeOf(h.interceptId);
      // A RETRY that intercepted again, answered meanwhile: follow the chain to its own answer.
      while (r?.status === 'intercepted' && r.awaitingMonitor && p.intercepts.status(r.intercept.id) !== 'pending') r = p.intercepts.outcomeOf(r.intercept.id);
    }
    if (r?.status === 'intercepted' && !r.heldBack) {
      h.interceptId = r.intercept.id;
      h.route = r.awaitingMonitor ? 'monitor' : 'vtl';
      h.resolution = undefined;
      return; // still waiting (runVp refuses a suspended VP; a VTL route entered the protecting VTL)
    }
    this.held.delete(key);
    const rip = getReg(vp, vtl, R.HvX64RegisterRip);
    if (r?.status === 'skipped' || r?.status === 'crashed') return;
    if (r?.status === 'completed') {
      if (rip !== h.start) return; // moved meanwhile: nothing to complete
      if (h.kind === 'read') c.replay = { gpa: h.gpa, data: Buffer.from(r.data ?? Buffer.alloc(h.length)) };
      else setReg(vp, vtl, R.HvX64RegisterRip, h.end);
      return;
    }
    if (h.kind === 'write' && !h.precise && rip === h.start) {
      const o = core.guestAccess(p, vp, 'write', h.gpa, h.length, h.data);
      if (o.status === 'intercepted') {
        this.held.set(key, {
          ...h,
          interceptId: o.intercept.id,
          route: o.heldBack ? 'held-back' : o.awaitingMonitor ? 'monitor' : 'vtl',
          resolution: undefined,
        });
      }
    }
  }

  /**
   * Runs the VP's own code (its RIP, paging, tables) in its active VTL until it executes HLT.
   * Hypercalls through the hypercall page reach the core's dispatcher (registers synced both ways
   * around it); Hyper-V MSRs go to the core; a VTL switch moves the VP to the other VTL's vCPU
   * (the core's register file carries the state) and the run continues there. Exceptions the
   * dispatcher raises (#UD) end the run and are reported, not injected (first milestone).
   *
   * VTL protections are enforced by the views' memslots: a data access KVM refuses (an MMIO exit on
   * a read-only or missing memslot of RAM) goes to the core with the registers synced and the
   * faulting instruction (RIP, length, bytes read through the guest's page tables) — guestAccess's
   * decisions: the intercept is posted to the protecting VTL's SINT0 and the run continues in that
   * VTL (route HIGHER_VTL / BOTH, and monitors observe with BOTH), or the run stops with the VP
   * suspended until a monitor answers (MONITOR; the next runVp resumes the instruction with the
   * answer); a read-only overlay gives #GP (ends the run, not injected).
   */
  runVp(vp: VirtualProcessor, opts: { timeoutMs?: number; maxExits?: number } = {}): RunVpResult {
    const p = this.partition;
    p.assertActive();
    if (vp.suspendedOn !== null)
      throw new HvError(HvStatus.HV_STATUS_INVALID_VP_STATE, `VP ${vp.index} is suspended on intercept ${vp.suspendedOn}: a monitor must answer it first`);
    // What another path may have loaded into this VP's vCPUs since the last run is not known here.
    for (const v of this.vms) {
      const c = v?.existingCpu(vp.index);
      if (c) c.fp = undefined;
    }
    try {
      return this.runGuest(vp, opts);
    } finally {
      this.settle(vp);
    }
  }

  /**
   * The end of a whole-guest run: the MSRs the VTLs' vCPUs held back (lazyRegs) into the core, so the
   * core's register file is the whole truth between runs again.
   */
  private settle(vp: VirtualProcessor): void {
    for (const v of this.vms) {
      if (!v) continue;
      const st = vp.vtls.get(v.vtl);
      if (!st.lazyRegs) continue;
      try {
        st.syncRegs();
      } catch (e) {
        // The vCPU is gone (a KVM error ended the run): its state is lost; the core keeps what it has.
        st.lazyRegs = null;
        const c = v.existingCpu(vp.index);
        if (c) c.shadow = undefined;
        if (!this.closed) throw e;
      }
    }
  }

  private runGuest(vp: VirtualProcessor, opts: { timeoutMs?: number; maxExits?: number }): RunVpResult {
    const p = this.partition;
    const deadline = Date.now() + (opts.timeoutMs ?? this.host.actionTimeoutMs);
    const maxExits = opts.maxExits ?? 1_000_000;
    let vtl = vp.activeVtl;
    let c = this.prepareRun(vp);
    let exits = 0;
    let vtlSwitches = 0;
    const intercepts: core.InterceptRecord[] = [];
    const notEnforced = () => {
      if (!c.vm.enforced) throw new KvmRunError('unenforced', `VP ${vp.index}: VTL ${vtl} cannot run as a whole guest: ${c.vm.unenforcedReason}`);
    };
    notEnforced();
    this.enterGuest(c, vp, vtl);
    if (vp.suspendedOn !== null) return { stop: 'intercept', exits, vtlSwitches, intercepts }; // an undecodable store retried by the core intercepted again
    const stop = (r: Pick<RunVpResult, 'stop' | 'exception' | 'exit'>): RunVpResult => {
      this.storeAtExit(c, vp, vtl);
      return { ...r, exits, vtlSwitches, intercepts };
    };
    /**
     * Follows the core to the VP's active VTL (after a VTL switch, a VtlReturn or an intercept). The
     * VTL left keeps its private state in its own vCPU (the core has what it stored at the exit, MSRs
     * lazily); the shared x87/SSE/AVX state moves when it differs (moveFp).
     */
    const follow = () => {
      const from = c;
      this.saveFp(from);
      vtl = vp.activeVtl;
      vtlSwitches++;
      c = this.prepareRun(vp);
      notEnforced();
      this.enterGuest(c, vp, vtl);
      this.loadFp(c, from.fp!);
    };
    for (;;) {
      const e = this.runToExit(c, deadline);
      exits++;
      // A replayed read is the first exit of the re-executed instruction, or nothing (it went native).
      const replay = c.replay;
      c.replay = undefined;
      if (e === null || this.hypercallExit(c, e)) {
        this.storeAtExit(c, vp, vtl);
        const rip = c.vcpu.syncedRegsFresh ? c.vcpu.syncedReg('rip') : c.vcpu.getRegs().rip;
        c.pendingOutRip = rip;
        setReg(vp, vtl, R.HvX64RegisterRip, this.hypercallInsnAt(rip));
        const o = this.dispatch(vp, undefined, c);
        if (o.resumedAccess?.outcome.status === 'intercepted') intercepts.push(o.resumedAccess.outcome.intercept);
        if (o.exception !== undefined) return { stop: 'exception', exception: o.exception, exits, vtlSwitches, intercepts };
        if (vp.suspendedOn !== null) return { stop: 'intercept', exits, vtlSwitches, intercepts }; // a retried access now waits for a monitor
        if (o.vtlSwitch) follow();
        else {
          // What the dispatcher changed (RAX, RIP, ...) into kvm_run's sync area; nothing else moves.
          loadChanged(c.vcpu, vp, vtl, c.shadow!);
          c.vm.syncView(p, vp.index);
          notEnforced(); // a higher VTL's protections may have outgrown the budget
        }
      } else if (e.kind === 'rdmsr') {
        const r = p.readMsr(vp, e.index);
        c.vcpu.completeMsr(r.exception !== undefined ? { error: true } : { data: r.value });
      } else if (e.kind === 'wrmsr') {
        const r = p.writeMsr(vp, e.index, e.data);
        c.vcpu.completeMsr({ error: r.exception !== undefined });
        c.vm.syncView(p, vp.index);
      } else if (e.kind === 'mmio' && e.gpa < this.ram.sizeBytes) {
        if (replay && !e.isWrite && e.gpa >= replay.gpa && e.gpa + BigInt(e.len) <= replay.gpa + BigInt(replay.data.length)) {
          // The re-executed instruction reads what the core completed its access with.
          c.vcpu.completeMmioRead(replay.data.subarray(Number(e.gpa - replay.gpa), Number(e.gpa - replay.gpa) + e.len));
          continue;
        }
        const tExit = process.hrtime.bigint();
        // A store that is the last (or only) fragment of its MMIO access: KVM's completion of it does nothing (prepareRun).
        if (e.isWrite && ((e.gpa & 0xfffn) === 0n || (e.gpa & 0xfffn) + BigInt(e.len) < 0x1000n)) c.pendingWriteDone = true;
        const r = this.refusedAccess(c, vp, vtl, e, true);
        if (r.status === 'intercepted') intercepts.push(r.intercept);
        switch (r.status) {
          case 'completed':
            break;
          case 'exception':
            return { stop: 'exception', exception: r.exception, exits, vtlSwitches, intercepts };
          case 'crashed':
            return { stop: 'crashed', exits, vtlSwitches, intercepts };
          case 'intercepted':
            if (r.awaitingMonitor || r.heldBack) return { stop: 'intercept', exits, vtlSwitches, intercepts };
            follow();
            if (this.interceptEntryNs.length >= 4096) this.interceptEntryNs.shift();
            this.interceptEntryNs.push(Number(process.hrtime.bigint() - tExit));
            this.interceptEntries++;
            break;
        }
      } else if (e.kind === 'hlt') {
        return stop({ stop: 'hlt' });
      } else if (e.kind === 'timeout') {
        return stop({ stop: 'timeout' });
      } else {
        const r: RunVpResult = { stop: 'exit', exit: e, exits, vtlSwitches, intercepts };
        if (e.kind !== 'shutdown' && e.kind !== 'internal_error' && e.kind !== 'fail_entry') this.storeAtExit(c, vp, vtl);
        else c.shadow = undefined;
        return r;
      }
      if (exits >= maxExits) return stop({ stop: 'timeout' });
    }
  }

  /**
   * A data access of the running guest that KVM refused: an MMIO exit at a RAM GPA whose page the
   * view maps read-only (a write) or not at all. Registers go to the core, with RIP at the faulting
   * instruction (a read exits before the instruction executes; KVM completes a write before it exits,
   * so its instruction is found by decoding backwards from RIP — x86.ts), and the core decides
   * (interceptAccess). When the core lets it through (nothing refuses it any more), it performed the
   * access: a read's data completes the exit. An intercept is held for the VP's VTL until answered.
   */
  /**
   * The vCPU's kvm_sregs for decoding a refused access: while kvm_run's sync area holds the same bytes
   * as at the last refused access (a guest faulting again and again keeps its paging and segments),
   * the object decoded then (decodeSregs makes 11 objects and 19 BigInts: ≈0.6 µs here). Only read
   * (x86.ts); whatever changes sregs goes through setSregs, which changes the bytes.
   */
  private accessSregs(c: VpCpu): KvmSregs {
    const v = c.vcpu;
    if (!v.syncedSregsFresh) return v.getSregs();
    const bytes = v.syncedSregsBytes;
    const seen = c.accessSregs;
    if (seen?.bytes.equals(bytes)) return seen.sregs;
    const sregs = v.getSregs();
    if (seen) {
      bytes.copy(seen.bytes);
      seen.sregs = sregs;
    } else c.accessSregs = { bytes: Buffer.from(bytes), sregs };
    return sregs;
  }

  private refusedAccess(c: VpCpu, vp: VirtualProcessor, vtl: Vtl, e: Extract<KvmExit, { kind: 'mmio' }>, fast = false): core.AccessOutcome {
    const p = this.partition;
    this.refusedAccesses++;
    const kind = e.isWrite ? 'write' : 'read';
    const data = e.isWrite ? Buffer.from(e.data.subarray(0, e.len)) : undefined;
    if (fast) this.storeAtExit(c, vp, vtl);
    else this.storeGuest(c, vp, vtl);
    const regs = c.vcpu.getRegs();
    const sregs = this.accessSregs(c);
    // Guest page tables and code: views of the mapping for pages known to hold data, else a pread of
    // just the bytes asked for (MemfdRam.peek; the decoder reads them right away).
    const read: PhysReader = (gpa: bigint, n: number): Buffer | undefined => {
      const end = gpa + BigInt(n);
      if (gpa < 0n || end > this.ram.sizeBytes) return undefined;
      const first = (gpa & ~0xfffn) + 0x1000n;
      if (end <= first) return this.ram.peek(gpa, n);
      const parts: Buffer[] = [];
      for (let at = gpa; at < end; ) {
        const take = Number((end < (at & ~0xfffn) + 0x1000n ? end : (at & ~0xfffn) + 0x1000n) - at);
        parts.push(this.ram.peek(at, take));
        at += BigInt(take);
      }
      return Buffer.concat(parts);
    };
    // Page-table entries (8 bytes, aligned: never across a page) without a Buffer each.
    read.u64 = (gpa: bigint): bigint | undefined => (gpa < 0n || gpa + 8n > this.ram.sizeBytes ? undefined : this.ram.peekU64(gpa));
    let insn: FaultingInstruction | undefined;
    let precise = true;
    if (e.isWrite) {
      insn = instructionBeforeRip(regs.rip, e.gpa, e.len, regs, sregs, read);
      if (!insn) {
        precise = false;
        insn = { start: regs.rip, end: regs.rip, length: 0, bytes: Buffer.alloc(0) };
      }
    } else insn = instructionAtRip(regs.rip, sregs, read);
    setReg(vp, vtl, R.HvX64RegisterRip, insn.start);
    const o = core.interceptAccess(p, vp, kind, e.gpa, e.len, data, { length: insn.length, bytes: insn.bytes });
    if (o.status === 'completed') {
      setReg(vp, vtl, R.HvX64RegisterRip, regs.rip);
      if (!e.isWrite) c.vcpu.completeMmioRead(o.data ?? Buffer.alloc(e.len));
    } else if (o.status === 'intercepted') {
      this.held.set(heldKey(vp.index, vtl), {
        interceptId: o.intercept.id,
        route: o.heldBack ? 'held-back' : o.awaitingMonitor ? 'monitor' : 'vtl',
        kind,
        gpa: e.gpa,
        length: e.len,
        data,
        start: insn.start,
        end: precise ? insn.end : insn.start,
        precise,
      });
    }
    return o;
  }

  // ---- guests that run (guest/guest-runner.ts drives these from its VP threads' exits) ----------

  /**
   * From now on the partition runs guest code: its VTL VMs are (re)built with an in-kernel irqchip
   * and the given CPUID leaves, and per-VP overlays become holes served per VP (every VP runs at
   * once). VMs built for guest actions are closed: the core holds every VP's state.
   */
  enableExecution(opts: GuestExecutionOptions): void {
    if (this.closed) throw new Error('partition platform is closed');
    if (this.execution) return;
    for (const v of this.vms) v?.close();
    this.vms.fill(undefined);
    this.held.clear();
    this.execution = opts;
  }

  /** Set by a running guest's session: the reference clock, timers and interrupts of the running guest. */
  executionHooks:
    | Pick<PlatformHooks, 'referenceClock' | 'onTimerChange' | 'raiseInterrupt' | 'onVpStart' | 'platformApic' | 'interruptPending' | 'onInterruptPending'>
    | undefined;

  private readonly createdAt100ns = process.hrtime.bigint() / 100n;

  /** Reference time before a session supplies one: 100 ns units since this platform was created (as the core's clock). */
  referenceTimeFallback(): bigint {
    return process.hrtime.bigint() / 100n - this.createdAt100ns;
  }

  /** Whether enableExecution() was called (guest actions cannot run on an irqchip VM: their stubs end in HLT). */
  get executing(): boolean {
    return this.execution !== undefined;
  }

  /** The vCPU of (vp, vtl) of a running guest, its VM's view in sync with the core. */
  executionCpu(vp: VirtualProcessor, vtl: Vtl): VpCpu {
    if (this.closed) throw new Error('partition platform is closed');
    const fresh = this.vms[vtl] === undefined;
    const vm = this.vtlVm(vtl);
    // A new VM gets its layout now (no VP runs in it yet); later changes wait for every VP to be parked.
    if (fresh) vm.syncView(this.partition, vp.index);
    return vm.cpu(vp.index);
  }

  /** Loads (vp, vtl)'s full state from the core into its vCPU. */
  executionLoad(c: VpCpu, vp: VirtualProcessor, vtl: Vtl): void {
    c.shadow = undefined; // a running guest's VP thread runs it: nothing here tracks what it holds
    this.enterGuest(c, vp, vtl);
    c.shadow = undefined;
  }

  /** Stores the vCPU's full state into the core. */
  executionStore(c: VpCpu, vp: VirtualProcessor, vtl: Vtl): void {
    this.storeGuest(c, vp, vtl);
  }

  /** Whether an exit is a hypercall through the agent's hypercall page (hypercallExit: a prologue exit is made the entry's hypercall). */
  isHypercall(c: VpCpu, e: KvmExit): boolean {
    return this.hypercallExit(c, e);
  }

  /**
   * A hypercall of a running guest: its registers to the core, the dispatcher, and the registers
   * back (or, after a VTL switch, nothing: the caller loads the new VTL's vCPU).
   */
  executionHypercall(c: VpCpu, vp: VirtualProcessor, vtl: Vtl): core.HypercallOutcome {
    this.storeGuest(c, vp, vtl);
    setReg(vp, vtl, R.HvX64RegisterRip, this.hypercallInsnAt(c.vcpu.getRegs().rip));
    const o = this.dispatch(vp, undefined, c);
    // A view change the call made is applied by the runner with every VP parked (guest-runner.ts).
    if (!o.vtlSwitch && o.exception === undefined && vp.suspendedOn === null) c.vcpu.setRegs(coreRegs(vp, vtl));
    return o;
  }

  /** A running guest's access KVM refused (a hole or a read-only slot in RAM): see refusedAccess. */
  executionRefusedAccess(c: VpCpu, vp: VirtualProcessor, vtl: Vtl, e: Extract<KvmExit, { kind: 'mmio' }>): core.AccessOutcome {
    return this.refusedAccess(c, vp, vtl, e);
  }

  dispose(): void {
    if (this.closed) return;
    this.closed = true;
    for (const v of this.vms) v?.close();
    this.vms.fill(undefined);
    this.agentRegion?.close();
    this.overlayPages.close();
    this.ram.close();
  }
}

function heldKey(vpIndex: number, vtl: Vtl): string {
  return `${vpIndex}:${vtl}`;
}

/** The general registers (all but RSP) of (vp, vtl) from the core. */
function gprsOf(vp: VirtualProcessor, vtl: Vtl): Partial<KvmRegs> {
  const r = coreRegs(vp, vtl);
  const { rsp: _rsp, rip: _rip, rflags: _rflags, ...g } = r;
  return g;
}
