/**
 * The core's PartitionManager, with a KVM platform attached to every partition it creates.
 *
 * TEMPORARY WORKAROUND. The core's PartitionManager.create() builds the PartitionSpec itself and
 * has no way to pass PlatformHooks, and EmulatorBackend builds its own manager. Until the core
 * takes a platform factory (proposed diff in services/kvm-agent/README.md, "Core changes
 * wanted"), this subclass lets the base class validate and register the partition, then
 * replaces the registered Partition with one built from the same spec plus the KVM platform's
 * hooks (two accesses to private fields, marked below). Creation stays all-or-nothing: if the
 * platform cannot be built, the partition is unregistered again and the error propagates.
 */
import { CreateRequest, HvStatus, Limits, OverlayManager, Partition, PartitionManager, VTLS, hvFail, restorePartition, snapshotPartition } from '@vsm/core';
import { kvmHypercallPageLayout } from './platform/hypercall-page';
import { KvmPartition } from './platform/kvm-partition';

export class KvmPartitionManager extends PartitionManager {
  private readonly platforms = new Map<string, KvmPartition>();

  constructor(limits: Limits, private readonly makePlatform: (spec: Partition['spec']) => KvmPartition) {
    super(limits);
  }

  override create(req: CreateRequest): Partition {
    if (req.architecture === 'arm64') hvFail(HvStatus.HV_STATUS_FEATURE_UNAVAILABLE, 'the KVM agent runs x64 partitions only (this host is x86-64)');
    const p = super.create(req);
    if (this.platforms.get(p.id)?.partition === p) return p; // idempotent repeat of a CreatePartition
    let kp: KvmPartition | undefined;
    try {
      kp = this.makePlatform(p.spec);
      const withPlatform = new Partition({ ...p.spec, labels: { ...p.spec.labels }, platform: kp.hooks() });
      kp.attach(withPlatform);
      this.registry().set(p.id, withPlatform);
      this.platforms.set(p.id, kp);
      return withPlatform;
    } catch (e) {
      kp?.dispose();
      super.delete(p.id);
      throw e;
    }
  }

  /**
   * A partition restored from a snapshot: the base class checks limits and the id and registers
   * it; the partition `build` makes (without platform) is rebuilt with the KVM platform through
   * the core's own snapshot round trip, so every piece of state lands in the memfds.
   */
  override adopt(req: { partitionId?: string; memoryBytes: bigint; vpCount: number }, build: (id: string) => Partition): Partition {
    let kp: KvmPartition | undefined;
    const p = super.adopt(req, (id) => {
      const plain = build(id);
      if (plain.spec.architecture === 'arm64') hvFail(HvStatus.HV_STATUS_FEATURE_UNAVAILABLE, 'the KVM agent runs x64 partitions only (this host is x86-64)');
      const platform = this.makePlatform(plain.spec);
      try {
        const withPlatform = restorePartition(snapshotPartition(plain), id, platform.hooks());
        // The hypercall page's code is the hypervisor's (read-only to the guest): this platform's,
        // not what the saving backend had there (the emulator's VMMCALL would not exit here).
        const slots = new Set(withPlatform.overlays.exportState().pages.map((x) => x.slot));
        for (const vtl of VTLS) {
          if (slots.has(OverlayManager.slot('hypercall', vtl, null))) kvmHypercallPageLayout.build().copy(withPlatform.overlays.pageFor('hypercall', vtl, null));
        }
        platform.attach(withPlatform);
        kp = platform;
        return withPlatform;
      } catch (e) {
        platform.dispose();
        throw e;
      }
    });
    this.platforms.set(p.id, kp!);
    return p;
  }

  override delete(id: string): void {
    super.delete(id);
    const kp = this.platforms.get(id);
    this.platforms.delete(id);
    kp?.dispose();
  }

  /** The KVM platform of a partition created by this manager. */
  platformOf(p: Partition): KvmPartition {
    const kp = this.platforms.get(p.id);
    if (!kp || kp.partition !== p) throw new Error(`partition ${p.id} has no KVM platform`);
    return kp;
  }

  /** Frees every partition's fds and mappings (backend shutdown). */
  disposeAll(): void {
    for (const id of [...this.platforms.keys()]) this.delete(id);
  }

  // WORKAROUND: PartitionManager.partitions is private in the core.
  private registry(): Map<string, Partition> {
    return (this as unknown as { partitions: Map<string, Partition> }).partitions;
  }
}
