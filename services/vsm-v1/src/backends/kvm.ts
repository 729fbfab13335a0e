// vsm.v1 implementation, KVM backend.
/**
 * KvmBackend: the vsm.v1 backend of the KVM host agent: the core-backed backend (the same one the
 * emulator process serves) built with the KVM engine for every partition (platform/kvm-engine.ts:
 * guest actions run as real instructions on /dev/kvm, protections are enforced by memslots). It
 * overrides no vsm.v1 method: it supplies the platform factory and what the engine reports in
 * capabilities, and adds what only a real engine can do (running a VP's own code, runVp).
 */
import * as core from '@vsm/core';
import { EngineError } from '@vsm/core';
import { pb } from '@vsm/api';
import { HYPERCALL_PAGE_DESCRIPTION, type KvmHost, KvmPartition, KvmSystem, type RunVpResult, VcpuWatchdog, engineErrorOf, kvmEngine, probeHost } from '@vsm/platform-kvm';
import { CoreBackend, MAX_GUEST_ACCESS } from './core-backend';

export { MAX_GUEST_ACCESS };

/** What the KVM engine reports beyond the core's features. */
const KVM_FEATURES: pb.Feature[] = [
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
}

export class KvmBackend extends CoreBackend {
  private host: (KvmHost & { close(): Promise<void> }) | undefined;
  private closed = false;
  /** The KVM platform of each partition, by id. */
  private readonly kvm = new Map<string, KvmPartition>();

  constructor(private readonly opts: KvmBackendOptions = {}) {
    // Every partition the core's manager creates or restores gets a KVM platform (its VMs, vCPUs
    // and memfds) and the KVM engine, built from the spec, attached once the Partition exists,
    // disposed on delete.
    super(opts.limits, {
      kind: 'kvm',
      architectures: [pb.Architecture.ARCHITECTURE_X64],
      features: KVM_FEATURES,
      platform: (spec) => {
        if (spec.architecture !== 'x64') core.hvFail(core.HvStatus.HV_STATUS_FEATURE_UNAVAILABLE, 'the KVM agent runs x64 partitions only (this host is x86-64)');
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
      const { cpuid, pioOutAdvancesRip, tscKhz } = probeHost(system);
      let watchdog: VcpuWatchdog | undefined;
      this.host = {
        system, cpuid, pioOutAdvancesRip, tscKhz,
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

  private platform(p: core.Partition): KvmPartition {
    const kp = this.kvm.get(p.id);
    if (!kp || kp.partition !== p) throw new Error(`partition ${p.id} has no KVM platform`);
    return kp;
  }
}
