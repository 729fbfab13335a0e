// vsm.v1 implementation, KVM backend.
/**
 * KvmBackend: the vsm.v1 backend of the KVM host agent: the core-backed backend (the same one the
 * emulator process serves) built with the KVM engine for every partition (platform/kvm-engine.ts:
 * guest actions run as real instructions on /dev/kvm, protections are enforced by memslots). It
 * overrides no vsm.v1 method: it supplies the platform factory and what the engine reports in
 * capabilities, and adds what only a real engine can do (running a VP's own code, runVp), and the
 * ExecutionService: a partition's guest (@vsm/platform-kvm GuestSession, one per partition, created by
 * LoadGuestImage, stopped by StopPartition and before DeletePartition frees the partition).
 *
 * Errors of the guest RPCs: the loader's GuestImageError (malformed, truncated or unsupported image,
 * or one that does not fit the partition's memory) is INVALID_ARGUMENT / HV_STATUS_INVALID_PARAMETER
 * with the loader's message as is (an image too large for the partition is a bad argument for that
 * partition, not a range being iterated: not OUT_OF_RANGE); a request the guest's state does not
 * allow (start of a running guest, load into a loaded one, ...) is FAILED_PRECONDITION /
 * HV_STATUS_INVALID_PARTITION_STATE; an RPC that needs a guest on a partition without one is
 * FAILED_PRECONDITION / HV_STATUS_INVALID_PARTITION_STATE too. Guest actions (WriteMsr, Hypercall,
 * ...) on a partition with a guest loaded are FAILED_PRECONDITION: its VMs have the in-kernel LAPIC
 * and the action stubs end in HLT.
 */
import type { Partition, VirtualProcessor } from '@vsm/core';
import * as core from '@vsm/core';
import { EngineError, HvError, HvStatus } from '@vsm/core';
import { pb } from '@vsm/api';
import {
  GuestImageError,
  GuestSession,
  GuestSessionError,
  HYPERCALL_PAGE_DESCRIPTION,
  type KvmHost,
  type KvmObserver,
  KvmPartition,
  KvmSystem,
  type RunVpResult,
  VcpuWatchdog,
  engineErrorOf,
  kvmEngine,
  probeHost,
} from '@vsm/platform-kvm';
import type { StreamSink } from '../backend';
import { invalidArgument } from '../errors';
import { partitionName } from '../names';
import { exportPartition as exportPartitionStream } from '../snapshot-stream';
import { CoreBackend, MAX_GUEST_ACCESS } from './core-backend';
import { ENTRY_MODE_TO_PB, FORMAT_TO_PB, type RunFields, VP_RUN_STATE_TO_PB, checkConsoleWrite, checkLoadRequest, followConsole, runFields } from './execution';

export { MAX_GUEST_ACCESS };

/** What the KVM engine reports beyond the core's features. */
const KVM_FEATURES: pb.Feature[] = [
  { name: 'real-guest-execution', supported: true, reason: '' },
  {
    name: 'guest-execution',
    supported: true,
    reason: 'LoadGuestImage (flat, ELF64, multiboot v1), every VP on its own thread, COM1 console, debug-exit port 0xf4, optional hyperv-testdev',
  },
  { name: 'hypercall-page-port-io', supported: true, reason: HYPERCALL_PAGE_DESCRIPTION },
  { name: 'arm64', supported: false, reason: 'the KVM agent runs x64 partitions only (x86-64 host)' },
  {
    name: 'execute-protection',
    supported: false,
    reason:
      'not enforceable with memslots on this KVM (kvm_pvm): an instruction fetch from a GPA without a memslot gives KVM_EXIT_INTERNAL_ERROR (emulation failure) instead of an exit the agent could turn into an intercept, and read-only memslots do not stop fetches',
  },
  {
    name: 'mbec',
    supported: false,
    reason:
      'partly: ExecuteMemory is answered by the core model, which enforces user-mode vs kernel-mode execute (UMX/KMX by the VP CPL) and names the permission in the intercept; a running guest gets no execute protection at all on this host (see execute-protection), so MBEC is not enforced for guest code',
  },
  {
    name: 'running-guest-register-intercepts',
    supported: false,
    reason:
      "partly: in a running guest, RDMSR and WRMSR of an architectural MSR a higher VTL intercepts (HvX64RegisterCrInterceptControl: EFER, STAR, LSTAR, CSTAR, APIC_BASE read bits; those and SFMASK, SYSENTER_CS/EIP/ESP, TSC_AUX write bits) are trapped by the lower VTL VM's KVM MSR filter and refused as HV_X64_MSR_INTERCEPT_MESSAGE to that VTL (RIP stays on the instruction); IA32_MISC_ENABLE and SGX launch control (not modelled by the core), and CR0/CR4/XCR0/GDTR/IDTR/LDTR/TR writes are enforced only for guest actions (the core), not for running guest code: KVM has no user-space exit for them",
  },
  {
    name: 'kvm-enforced-protections',
    supported: true,
    reason:
      "no-write → read-only memslot, no-access → no memslot, in each lower VTL's VM (runs of equal access coalesced, 1 GiB slots); the MMIO exit of a refused read or write (ReadMemory/WriteMemory and whole-guest runs) becomes the core's intercept. Answered by the core model instead: ExecuteMemory (execute protection, above), and a view that would need more memslots than the budget",
  },
];

export interface KvmBackendOptions {
  limits?: Partial<core.Limits>;
  /** KVM device (default /dev/kvm). */
  devicePath?: string;
  /** Deadline of one guest action on the vCPU, in ms (default 2000). */
  actionTimeoutMs?: number;
  /**
   * Memslots one VTL VM's view may use (default 4096; KVM allows 32764 here). A view whose
   * protections would need more is mapped without them, and its memory actions are answered by the
   * core's model (whole-guest runs of that VTL are refused).
   */
  memslotBudget?: number;
  /** Told of exits, memslot changes and console output (the agent's metrics: VsmMetrics.kvmObserver()). */
  observer?: KvmObserver;
}

export class KvmBackend extends CoreBackend {
  private host: (KvmHost & { close(): Promise<void> }) | undefined;
  private closed = false;
  /** The KVM platform of each partition, by id. */
  private readonly kvm = new Map<string, KvmPartition>();
  /** The guest of each partition that has one loaded. */
  private readonly sessions = new Map<Partition, GuestSession>();

  constructor(private readonly opts: KvmBackendOptions = {}) {
    // Every partition the core's manager creates or restores gets a KVM platform (its VMs, vCPUs
    // and memfds) and the KVM engine, built from the spec, attached once the Partition exists,
    // disposed on delete.
    super(opts.limits, {
      kind: 'kvm',
      architectures: [pb.Architecture.ARCHITECTURE_X64],
      features: KVM_FEATURES,
      platform: (spec) => {
        if (spec.architecture !== 'x64')
          core.hvFail(core.HvStatus.HV_STATUS_FEATURE_UNAVAILABLE, 'the KVM agent runs x64 partitions only (this host is x86-64)');
        let kp: KvmPartition;
        try {
          kp = new KvmPartition(this.kvmHost(), spec);
        } catch (e) {
          throw engineErrorOf(e);
        }
        return {
          hooks: kp.hooks(),
          attach: (p) => {
            kp.attach(p);
            p.engine = kvmEngine(kp);
            this.kvm.set(spec.id, kp);
          },
          dispose: () => {
            if (this.kvm.get(spec.id) === kp) this.kvm.delete(spec.id);
            const attached = kp.attachedPartition; // none when the build failed (or an import was aborted)
            if (attached) this.sessions.delete(attached);
            kp.dispose();
          },
        };
      },
    });
  }

  /** Why this backend cannot run here (undefined when /dev/kvm is usable). */
  static unavailableReason(devicePath = '/dev/kvm'): string | undefined {
    return KvmSystem.unavailableReason(devicePath);
  }

  /** /dev/kvm, the guest CPUID and the watchdog, opened on first use and shared by all partitions. */
  kvmHost(): KvmHost {
    if (this.closed) throw new EngineError('unavailable', 'KVM_UNAVAILABLE', 'the KVM backend is shut down');
    if (this.host) return this.host;
    const path = this.opts.devicePath ?? '/dev/kvm';
    const why = KvmSystem.unavailableReason(path);
    if (why) throw new EngineError('unavailable', 'KVM_UNAVAILABLE', `KVM is not usable on this host: ${why}`);
    const system = KvmSystem.open(path);
    try {
      const { cpuid, pioOutAdvancesRip, tscKhz, guestFpExecutes } = probeHost(system);
      let watchdog: VcpuWatchdog | undefined;
      this.host = {
        system,
        cpuid,
        pioOutAdvancesRip,
        guestFpExecutes,
        tscKhz,
        actionTimeoutMs: this.opts.actionTimeoutMs ?? 2000,
        memslotBudget: this.opts.memslotBudget,
        observer: this.opts.observer,
        watchdog: () => (watchdog ??= VcpuWatchdog.start()),
        close: async () => {
          system.close();
          await watchdog?.close();
        },
      };
      return this.host;
    } catch (e) {
      system.close();
      throw e;
    }
  }

  // ---- beyond vsm.v1 --------------------------------------------------------------------------------

  /** Runs VP `name` (partitions/{p}/vps/{vp}) from its own state until HLT (see KvmPartition.runVp). */
  runVp(name: string, opts: { timeoutMs?: number; maxExits?: number } = {}): RunVpResult {
    const { p, vp } = this.vp(name);
    try {
      return this.platform(p).runVp(vp, opts);
    } catch (e) {
      throw engineErrorOf(e);
    }
  }

  /** The KVM platform of a partition (tests, diagnostics). */
  platformOf(name: string): KvmPartition {
    return this.platform(this.partition(name));
  }

  // ---- ExecutionService -----------------------------------------------------------------------

  override async loadGuestImage(r: pb.LoadGuestImageRequest): Promise<pb.LoadGuestImageResponse> {
    const p = this.partition(r.name);
    const load = checkLoadRequest(r);
    p.assertActive();
    const had = this.sessions.get(p);
    if (had)
      throw new HvError(
        HvStatus.HV_STATUS_INVALID_PARTITION_STATE,
        `partition ${p.id} already has a guest loaded (${had.state}); delete it and create a new one to load another`,
      );
    const s = sessionCall(() =>
      GuestSession.load(this.platform(p), load.image, { ...load, devices: { hypervTestdev: this.devicesOf(p).includes('hyperv-testdev') } }),
    );
    this.sessions.set(p, s);
    const l = s.loadResult;
    return {
      format: FORMAT_TO_PB[l.format],
      entryPoint: l.entry,
      entryMode: ENTRY_MODE_TO_PB[l.entryMode],
      segments: l.segments.map((g) => ({ gpa: g.gpa, size: g.size })),
      bootInfoGpa: l.bootInfoGpa,
    };
  }
  override async startPartition(r: pb.StartPartitionRequest): Promise<pb.Partition> {
    const { p, s } = this.session(r.name);
    p.assertActive();
    sessionCall(() => s.start());
    return this.toPartition(p);
  }
  override async pausePartition(r: pb.PausePartitionRequest): Promise<pb.Partition> {
    const { p, s } = this.session(r.name);
    sessionCall(() => s.pause());
    return this.toPartition(p);
  }
  override async resumePartition(r: pb.ResumePartitionRequest): Promise<pb.Partition> {
    const { p, s } = this.session(r.name);
    sessionCall(() => s.resume());
    return this.toPartition(p);
  }
  override async stopPartition(r: pb.StopPartitionRequest): Promise<pb.Partition> {
    const { p, s } = this.session(r.name);
    await sessionCall(() => s.stop('stopped by StopPartition'));
    return this.toPartition(p);
  }
  override async streamConsole(r: pb.StreamConsoleRequest, sink: StreamSink<pb.StreamConsoleResponse>, signal: AbortSignal): Promise<void> {
    const { s } = this.session(r.name);
    await followConsole(s.console, r.fromOffset, () => s.end, sink, signal);
  }
  /**
   * A running guest's VP: halted and waiting-for-SIPI are KVM's to tell (the vCPU waits inside
   * KVM_RUN), so GetVirtualProcessor asks it (a short kick of that VP's thread).
   */
  override async getVirtualProcessor(r: pb.GetVirtualProcessorRequest): Promise<pb.VirtualProcessor> {
    const out = await super.getVirtualProcessor(r);
    const { p, vp } = this.vp(r.name);
    const s = this.sessions.get(p);
    if (s?.state === 'running') out.runState = VP_RUN_STATE_TO_PB[await s.queryVpState(vp.index)];
    return out;
  }

  override async writeConsole(r: pb.WriteConsoleRequest): Promise<pb.WriteConsoleResponse> {
    const { s } = this.session(r.name);
    const data = checkConsoleWrite(r);
    if (s.state === 'stopped' || s.state === 'crashed')
      throw new HvError(
        HvStatus.HV_STATUS_INVALID_PARTITION_STATE,
        `the guest has ${s.state === 'stopped' ? 'stopped' : 'crashed'}: nothing reads its console`,
      );
    sessionCall(() => s.writeConsole(data));
    return {};
  }

  /**
   * ExportPartition of a partition with a guest: EXPORT_MODE_PAUSE_GUEST pauses a running guest (live
   * migration's switch-over); a paused or loaded guest is exported as it is. Either way every VP's
   * state is read back from KVM first, and the header's `guest` says how it ran, so that an import on
   * a KVM agent continues it (importPartition). A running guest with EXPORT_MODE_LIVE: the pre-copy.
   */
  override async exportPartition(r: pb.ExportPartitionRequest, sink: StreamSink<pb.SnapshotChunk>, signal: AbortSignal): Promise<void> {
    const p = this.partition(r.name);
    const s = this.sessions.get(p);
    const state = s?.state;
    if (s && (state === 'paused' || state === 'loaded' || (state === 'running' && r.mode === pb.ExportMode.EXPORT_MODE_PAUSE_GUEST))) {
      const run = await sessionCall(() => s.pauseForExport());
      const guest: pb.GuestRunSnapshot = {
        runState: runFields(run.runState, undefined).runState,
        vpMpStates: run.mpStates,
        consoleOffset: run.consoleOffset,
        devices: [...this.devicesOf(p)],
      };
      return exportPartitionStream(p, partitionName(p.id), r, sink, signal, guest);
    }
    return super.exportPartition(r, sink, signal);
  }

  /** ImportPartition: a stream whose last header has a `guest` gets that guest back, loaded (StartPartition continues it). */
  override async importPartition(requests: AsyncIterable<pb.ImportPartitionRequest>, signal: AbortSignal): Promise<pb.Partition> {
    let guest: pb.GuestRunSnapshot | undefined;
    async function* watched(): AsyncIterable<pb.ImportPartitionRequest> {
      for await (const m of requests) {
        const c = m.chunk?.chunk;
        if (c?.$case === 'header') guest = c.value.guest;
        yield m;
      }
    }
    const out = await super.importPartition(watched(), signal);
    if (!guest) return out;
    const p = this.partition(out.name);
    const g = guest;
    try {
      const s = sessionCall(() =>
        GuestSession.adopt(this.platform(p), {
          mpStates: g.vpMpStates,
          consoleOffset: g.consoleOffset,
          devices: { hypervTestdev: g.devices.includes('hyperv-testdev') },
        }),
      );
      this.sessions.set(p, s);
      this.devices.set(p, [...g.devices]);
    } catch (e) {
      // The guest could not be taken over: nothing is left half-made.
      await super.deletePartition({ name: out.name });
      throw e;
    }
    return this.toPartition(p);
  }

  /** Deleting a partition whose guest runs stops it first (its VP threads end before its memory goes). */
  override async deletePartition(r: pb.DeletePartitionRequest): Promise<pb.DeletePartitionResponse> {
    const p = this.partition(r.name);
    const s = this.sessions.get(p);
    if (s) {
      await s.close();
      this.sessions.delete(p);
    }
    return super.deletePartition(r);
  }

  /** Guest actions are refused once a guest is loaded: its VMs have the in-kernel LAPIC, and the action stubs end in HLT. */
  override guestVp(name: string): { p: Partition; vp: VirtualProcessor } {
    const t = super.guestVp(name);
    const s = this.sessions.get(t.p);
    if (s)
      throw new HvError(
        HvStatus.HV_STATUS_INVALID_PARTITION_STATE,
        `partition ${t.p.id} runs a loaded guest (${s.state}): guest actions (WriteMsr, Hypercall, memory actions) are not available on it; its VMs have the in-kernel LAPIC and the action stubs end in HLT`,
      );
    return t;
  }

  protected override runFieldsOf(p: Partition): RunFields {
    const s = this.sessions.get(p);
    return s ? runFields(s.state, s.end) : super.runFieldsOf(p);
  }
  protected override vpRunStateOf(p: Partition, vp: VirtualProcessor): pb.VpRunState {
    const s = this.sessions.get(p);
    return s ? VP_RUN_STATE_TO_PB[s.vpState(vp.index)] : super.vpRunStateOf(p, vp);
  }

  /** The guest of partition `name`: FAILED_PRECONDITION when none is loaded. */
  private session(name: string): { p: Partition; s: GuestSession } {
    const p = this.partition(name);
    const s = this.sessions.get(p);
    if (!s) throw new HvError(HvStatus.HV_STATUS_INVALID_PARTITION_STATE, `partition ${p.id} has no guest loaded (LoadGuestImage first)`);
    return { p, s };
  }

  override async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Every guest's VP threads end before the partitions are freed.
    await Promise.all([...this.sessions.values()].map((s) => s.close().catch(() => undefined)));
    this.sessions.clear();
    // Frees every partition's fds and mappings.
    for (let page = this.manager.list(1000, ''); page.partitions.length; page = this.manager.list(1000, ''))
      for (const p of page.partitions) this.manager.delete(p.id);
    await super.close();
    const host = this.host;
    this.host = undefined;
    await host?.close();
  }

  private platform(p: Partition): KvmPartition {
    const kp = this.kvm.get(p.id);
    if (!kp || kp.partition !== p) throw new Error(`partition ${p.id} has no KVM platform`);
    return kp;
  }
}

/**
 * Runs a guest-session call with its errors mapped: GuestImageError -> INVALID_ARGUMENT (message as
 * is), GuestSessionError by its kind, anything else as an engine error.
 */
function sessionCall<T>(fn: () => T): T {
  const mapped = (e: unknown): never => {
    if (e instanceof GuestImageError) throw invalidArgument(e.message);
    if (e instanceof GuestSessionError) {
      if (e.kind === 'invalid-argument') throw invalidArgument(e.message);
      throw new HvError(HvStatus.HV_STATUS_INVALID_PARTITION_STATE, e.message);
    }
    if (e instanceof HvError || e instanceof EngineError) throw e;
    throw engineErrorOf(e);
  };
  try {
    const v = fn();
    return (v instanceof Promise ? v.catch(mapped) : v) as T;
  } catch (e) {
    return mapped(e);
  }
}
