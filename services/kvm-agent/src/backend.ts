/**
 * KvmBackend: the vsm.v1 backend of the KVM host agent. It embeds the same core as the emulator
 * and IS an EmulatorBackend for everything that does not execute guest code (conversions,
 * validation, partitions, registers, host memory view, overlays, VTL enablement, transition
 * watch, protections, intercept routing, SynIC), so both answer those identically. The guest
 * actions (WriteMsr, ReadMsr, Hypercall, CallHypercallPage, ReadMemory, WriteMemory) run as real
 * instructions on /dev/kvm (platform/kvm-partition.ts) and give the same answers as the emulator.
 *
 * VTL protections are enforced by the memslots of each lower VTL's VM (no-write → read-only slot,
 * no-access → no slot); a refused ReadMemory/WriteMemory exits as MMIO and becomes the core's
 * intercept (KvmPartition.memoryAccess), with the same outcome, routing and monitor answers as on the
 * emulator. Answered by the core's model instead: ExecuteMemory (a real fetch would execute the
 * bytes, and execute protection cannot be enforced with memslots here), and the memory actions of a
 * VTL whose view would need more memslots than the budget (VtlVm.enforced; a whole-guest run of that
 * VTL is refused with FAILED_PRECONDITION / KVM_PROTECTIONS_NOT_ENFORCED).
 */
import { status as Code } from '@grpc/grpc-js';
import * as core from '@vsm/core';
import { HvError, Partition, VirtualProcessor } from '@vsm/core';
import { pb } from '@vsm/client';
import { ApiError, EmulatorBackend, accessOutcome, invalidArgument, guestActionOutcome as outcome, MAX_GUEST_ACCESS } from '@vsm/service';
import { KvmSystem, SysError, VcpuWatchdog } from './kvm';
import { HYPERCALL_PAGE_DESCRIPTION } from './platform/hypercall-page';
import { KvmHost, KvmPartition, KvmRunError, RunVpResult, probeHost } from './platform/kvm-partition';

export { MAX_GUEST_ACCESS };

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
}

export class KvmBackend extends EmulatorBackend {
  override readonly kind: string = 'kvm';
  private host: (KvmHost & { close(): Promise<void> }) | undefined;
  private closed = false;
  /** The KVM platform of each partition, by id. */
  private readonly kvm = new Map<string, KvmPartition>();

  constructor(private readonly opts: KvmBackendOptions = {}) {
    // Every partition the core's manager creates or restores gets a KVM platform (its VMs, vCPUs
    // and memfds), built from the spec, attached once the Partition exists, disposed on delete.
    super(opts.limits, {
      platform: (spec) => {
        if (spec.architecture !== 'x64') core.hvFail(core.HvStatus.HV_STATUS_FEATURE_UNAVAILABLE, 'the KVM agent runs x64 partitions only (this host is x86-64)');
        const kp = new KvmPartition(this.kvmHost(), spec);
        return {
          hooks: kp.hooks(),
          attach: (p) => {
            kp.attach(p);
            this.kvm.set(spec.id, kp);
          },
          dispose: () => {
            if (this.kvm.get(spec.id) === kp) this.kvm.delete(spec.id);
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
    if (this.closed) throw new ApiError(Code.UNAVAILABLE, 'KVM_UNAVAILABLE', 'the KVM backend is shut down');
    if (this.host) return this.host;
    const path = this.opts.devicePath ?? '/dev/kvm';
    const why = KvmSystem.unavailableReason(path);
    if (why) throw new ApiError(Code.UNAVAILABLE, 'KVM_UNAVAILABLE', `KVM is not usable on this host: ${why}`);
    const system = KvmSystem.open(path);
    try {
      const { cpuid, pioOutAdvancesRip } = probeHost(system);
      let watchdog: VcpuWatchdog | undefined;
      this.host = {
        system, cpuid, pioOutAdvancesRip,
        actionTimeoutMs: this.opts.actionTimeoutMs ?? 2000,
        memslotBudget: this.opts.memslotBudget,
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

  // ---- partitions ---------------------------------------------------------------------------------

  override createPartition(r: pb.CreatePartitionRequest): Promise<pb.Partition> {
    return this.guarded(() => super.createPartition(r));
  }

  override async getCapabilities(): Promise<pb.Capabilities> {
    const base = await super.getCapabilities();
    return {
      ...base,
      backend: 'kvm',
      architectures: [pb.Architecture.ARCHITECTURE_X64],
      features: [
        ...base.features,
        { name: 'real-guest-execution', supported: true, reason: '' },
        { name: 'hypercall-page-port-io', supported: true, reason: HYPERCALL_PAGE_DESCRIPTION },
        { name: 'arm64', supported: false, reason: 'the KVM agent runs x64 partitions only (x86-64 host)' },
        {
          name: 'execute-protection', supported: false,
          reason: 'not enforceable with memslots on this KVM (kvm_pvm): an instruction fetch from a GPA without a memslot gives KVM_EXIT_INTERNAL_ERROR (emulation failure) instead of an exit the agent could turn into an intercept, and read-only memslots do not stop fetches',
        },
        {
          name: 'kvm-enforced-protections', supported: true,
          reason: 'no-write → read-only memslot, no-access → no memslot, in each lower VTL\'s VM (runs of equal access coalesced, 1 GiB slots); the MMIO exit of a refused read or write (ReadMemory/WriteMemory and whole-guest runs) becomes the core\'s intercept. Answered by the core model instead: ExecuteMemory (execute protection, above), and a view that would need more memslots than the budget',
        },
      ],
    };
  }

  // ---- guest actions: real instructions on the vCPU ------------------------------------------------

  override writeMsr(r: pb.WriteMsrRequest): Promise<pb.WriteMsrResponse> {
    return this.guarded(() => {
      const { p, vp } = this.guestVp(r.name);
      const o = this.platform(p).writeMsr(vp, r.msr, r.value);
      return { outcome: outcome({ ...o, activeVtl: vp.activeVtl }) };
    });
  }

  override readMsr(r: pb.ReadMsrRequest): Promise<pb.ReadMsrResponse> {
    return this.guarded(() => {
      const { p, vp } = this.guestVp(r.name);
      const o = this.platform(p).readMsr(vp, r.msr);
      return { outcome: outcome({ exception: o.exception, activeVtl: vp.activeVtl }), value: o.exception ? 0n : o.value };
    });
  }

  override hypercall(r: pb.HypercallRequest): Promise<pb.HypercallResponse> {
    return this.guarded(() => super.hypercall(r));
  }

  /** A real store on the vCPU; with enforced protections a refused store is the core's intercept. */
  protected override guestStore(p: Partition, vp: VirtualProcessor, gpa: bigint, data: Buffer): core.AccessOutcome {
    const kp = this.platform(p);
    if (kp.enforcesProtections(vp)) return kp.memoryAccess(vp, 'write', gpa, data.length, data);
    return kp.guestWrite(vp, gpa, data) ? { status: 'completed' } : { status: 'exception', exception: core.X64Exception.GP };
  }
  /** The hypercall instruction runs on the vCPU (through the page's port-I/O exit). */
  protected override guestVmcall(p: Partition, vp: VirtualProcessor): core.HypercallOutcome {
    return this.platform(p).vmcall(vp);
  }
  /** A real load on the vCPU. */
  protected override guestLoad(p: Partition, vp: VirtualProcessor, gpa: bigint, length: number): Buffer {
    return this.platform(p).guestRead(vp, gpa, length);
  }

  override callHypercallPage(r: pb.CallHypercallPageRequest): Promise<pb.CallHypercallPageResponse> {
    return this.guarded(() => {
      const { p, vp } = this.guestVp(r.name);
      const R = core.HvRegisterName;
      if (r.rcx !== undefined) p.setReg(vp, R.HvX64RegisterRcx, r.rcx);
      if (r.rdx !== undefined) p.setReg(vp, R.HvX64RegisterRdx, r.rdx);
      if (r.r8 !== undefined) p.setReg(vp, R.HvX64RegisterR8, r.r8);
      const o = this.platform(p).callHypercallPage(vp, r.offset);
      return { outcome: outcome(o), rax: o.rax };
    });
  }

  override async readMemory(r: pb.ReadMemoryRequest): Promise<pb.ReadMemoryResponse> {
    const { p, vp } = this.guestVp(r.name);
    if (r.length < 1 || r.length > MAX_GUEST_ACCESS) throw invalidArgument(`length must be 1..${MAX_GUEST_ACCESS}`);
    const kp = this.platform(p);
    if (!(await this.guarded(() => kp.enforcesProtections(vp)))) return await super.readMemory(r);
    const { outcome: o, data } = await this.kvmAccess(p, vp, () => kp.memoryAccess(vp, 'read', r.gpa, r.length));
    return { outcome: o, data: data ?? Buffer.alloc(0) };
  }

  override async writeMemory(r: pb.WriteMemoryRequest): Promise<pb.WriteMemoryResponse> {
    const { p, vp } = this.guestVp(r.name);
    if (r.data.length < 1 || r.data.length > MAX_GUEST_ACCESS) throw invalidArgument(`data must be 1..${MAX_GUEST_ACCESS} bytes`);
    const kp = this.platform(p);
    if (!(await this.guarded(() => kp.enforcesProtections(vp)))) return await super.writeMemory(r);
    // A guest write to the hypercall page (read/execute for the guest) raises #GP.
    return { outcome: (await this.kvmAccess(p, vp, () => kp.memoryAccess(vp, 'write', r.gpa, r.data.length, Buffer.from(r.data)))).outcome };
  }

  /**
   * A memory guest action on KVM (memoryAccess: protections enforced by memslots, refusals turned
   * into the core's intercepts); on the monitor route it waits (until the client's deadline, or the
   * partition's deadline policy) for a monitor's answer, following RETRY answers that intercept
   * again — the emulator's loop, so both backends answer alike.
   */
  private async kvmAccess(p: Partition, vp: VirtualProcessor, run: () => core.AccessOutcome): Promise<{ outcome: pb.GuestActionOutcome; data?: Buffer }> {
    return accessOutcome(vp, await this.awaitMonitor(p, await this.guarded(run)));
  }

  // ---- beyond vsm.v1 --------------------------------------------------------------------------------

  /** Runs VP `name` (partitions/{p}/vps/{vp}) from its own state until HLT (see KvmPartition.runVp). */
  runVp(name: string, opts: { timeoutMs?: number; maxExits?: number } = {}): RunVpResult {
    const { p, vp } = this.vp(name);
    try {
      return this.platform(p).runVp(vp, opts);
    } catch (e) {
      throw apiErrorOf(e);
    }
  }

  /** The KVM platform of a partition (tests, diagnostics). */
  platformOf(name: string): KvmPartition {
    return this.platform(this.partition(name));
  }

  override async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Frees every partition's fds and mappings.
    for (let page = this.manager.list(1000, ''); page.partitions.length; page = this.manager.list(1000, '')) for (const p of page.partitions) this.manager.delete(p.id);
    await super.close();
    const host = this.host;
    this.host = undefined;
    await host?.close();
  }

  // ---- helpers ------------------------------------------------------------------------------------

  private platform(p: Partition): KvmPartition {
    const kp = this.kvm.get(p.id);
    if (!kp || kp.partition !== p) throw new Error(`partition ${p.id} has no KVM platform`);
    return kp;
  }

  /** Runs `fn`, turning KVM failures into API errors (the core's HvErrors pass unchanged). */
  private async guarded<T>(fn: () => T | Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      throw apiErrorOf(e);
    }
  }
}

/** KVM failures as API errors; the core's HvErrors and ApiErrors pass unchanged. */
function apiErrorOf(e: unknown): unknown {
  if (e instanceof HvError || e instanceof ApiError) return e;
  if (e instanceof KvmRunError && e.kind === 'unenforced') return new ApiError(Code.FAILED_PRECONDITION, 'KVM_PROTECTIONS_NOT_ENFORCED', e.message);
  if (e instanceof KvmRunError) {
    return new ApiError(e.kind === 'timeout' ? Code.ABORTED : Code.UNAVAILABLE, e.kind === 'timeout' ? 'KVM_GUEST_TIMEOUT' : 'KVM_UNEXPECTED_EXIT', e.message);
  }
  if (e instanceof SysError) return new ApiError(Code.UNAVAILABLE, 'KVM_ERROR', `KVM: ${e.message}`);
  return e;
}
