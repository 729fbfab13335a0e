// core: the set of partitions a backend hosts: create (idempotent by request id), restore from a
// snapshot, get, list with page tokens, delete; and the limits that keep bad input from exhausting
// memory, including the process-wide account of resident guest RAM every partition's memory uses.
import { type Architecture, Partition, type PartitionSpec } from './partition';
import type { PlatformHooks } from './platform';
import type { Clock } from './clock';
import { HvError, HvStatus, hvFail } from './tlfs/status';
import { HV_MAX_SUPPORTED_VTL } from './tlfs/vsm';
import { DEFAULT_LIMITS, type Limits, labelsProblem } from './limits';
import { ResidentMemory } from './resident';
import { PAGE_SIZE, SparseMemory } from './memory';
import { type CoreSnapshot, restorePartition, validateSnapshot } from './snapshot';
import { PartitionImport } from './snapshot-stream';

export { DEFAULT_LIMITS, LABEL_LIMITS, labelsProblem } from './limits';
export type { Limits } from './limits';
export { ResidentMemory } from './resident';

export interface CreateRequest {
  partitionId?: string;
  requestId?: string;
  architecture: Architecture;
  vpCount: number;
  memoryBytes: bigint;
  maximumVtl: number;
  labels: Record<string, string>;
}

const ID_RE = /^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$/;

/** An execution engine's per-partition resources (the KVM agent: VMs, vCPUs, memfds). */
export interface PartitionPlatform {
  hooks: PlatformHooks;
  /** Called once the Partition exists (the platform runs it). */
  attach?(p: Partition): void;
  /** Frees the platform's resources (partition deleted, or its creation failed). */
  dispose?(): void;
}

export interface ManagerOptions {
  /** Builds the platform of a partition being created or restored (default: none, the emulator's defaults). */
  platform?: (spec: PartitionSpec) => PartitionPlatform;
  /** The time source of every partition (default: systemClock). */
  clock?: Clock;
}

export class PartitionManager {
  private readonly partitions = new Map<string, Partition>();
  private readonly byRequestId = new Map<string, { id: string; fingerprint: string }>();
  private readonly platforms = new Map<string, PartitionPlatform>();
  /** What each partition holds of the resident-RAM account, given back when it is deleted. */
  private readonly releases = new Map<string, () => void>();
  /** Ids taken by imports in progress (not listed, not reusable until they commit or abort). */
  private readonly importing = new Set<string>();
  private counter = 0;
  /** Guest RAM resident across every partition of this manager (limits.maxResidentBytes). */
  readonly resident: ResidentMemory;

  constructor(
    readonly limits: Limits = DEFAULT_LIMITS,
    private readonly options: ManagerOptions = {},
  ) {
    this.resident = new ResidentMemory(limits.maxResidentBytes);
  }

  create(req: CreateRequest): Partition {
    const fingerprint = JSON.stringify({ ...req, memoryBytes: req.memoryBytes.toString(), requestId: undefined });
    if (req.requestId) {
      if (req.requestId.length > 128) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'request_id is longer than 128 characters');
      const prior = this.byRequestId.get(req.requestId);
      if (prior) {
        const p = this.partitions.get(prior.id);
        if (prior.fingerprint !== fingerprint)
          hvFail(HvStatus.HV_STATUS_OBJECT_IN_USE, `request_id ${req.requestId} was already used for a different CreatePartition`);
        if (p) return p;
      }
    }
    if (req.architecture !== 'x64' && req.architecture !== 'arm64') hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'unsupported architecture');
    if (!Number.isInteger(req.vpCount) || req.vpCount < 1 || req.vpCount > this.limits.maxVpCount) {
      hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `vp_count must be 1..${this.limits.maxVpCount}, got ${req.vpCount}`);
    }
    if (req.memoryBytes <= 0n || req.memoryBytes % 4096n !== 0n)
      hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'memory_bytes must be a positive multiple of 4096');
    if (req.memoryBytes > this.limits.maxMemoryBytes)
      hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `memory_bytes exceeds the limit of ${this.limits.maxMemoryBytes} bytes`);
    if (!Number.isInteger(req.maximumVtl) || req.maximumVtl < 0 || req.maximumVtl > HV_MAX_SUPPORTED_VTL) {
      hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `maximum_vtl must be 0..${HV_MAX_SUPPORTED_VTL}`);
    }
    const labels = labelsProblem(req.labels);
    if (labels) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, labels);
    this.checkResident(req.memoryBytes, 0, `creating a partition of ${req.memoryBytes} bytes`);
    const id = this.allocateId(req.partitionId);
    const spec: PartitionSpec = {
      id,
      architecture: req.architecture,
      vpCount: req.vpCount,
      memoryBytes: req.memoryBytes,
      maximumVtl: req.maximumVtl,
      labels: { ...req.labels },
      ...this.clockSpec(),
    };
    const p = this.withPlatform(spec, (hooks) => new Partition({ ...spec, platform: hooks }));
    this.partitions.set(id, p);
    if (req.requestId) this.byRequestId.set(req.requestId, { id, fingerprint });
    return p;
  }

  /**
   * RestorePartition: rebuilds a partition from a snapshot under a new or chosen id. The snapshot
   * is validated completely first, against the same rules and limits as the live API
   * (validateSnapshot), and its RAM against the resident-RAM limit: a refused restore creates
   * nothing and consumes no id.
   */
  restore(snapshot: CoreSnapshot, partitionId?: string): Partition {
    if (partitionId) this.checkChosenId(partitionId);
    validateSnapshot(snapshot, this.limits);
    const preload = snapshot.memory.reduce((n, pg) => (pg.data.some((b) => b !== 0) ? n + PAGE_SIZE : n), 0);
    this.checkResident(snapshot.spec.memoryBytes, preload, 'restoring the snapshot');
    const id = this.allocateId(partitionId);
    const spec: PartitionSpec = { ...snapshot.spec, labels: { ...snapshot.spec.labels }, id, ...this.clockSpec() };
    const p = this.withPlatform(spec, (hooks) => restorePartition(snapshot, id, hooks, this.limits, this.options.clock));
    this.partitions.set(id, p);
    return p;
  }

  /**
   * Resident guest RAM a new partition takes at once: for the emulator the pages it starts with
   * (`preload`), for an engine whose RAM maps the whole GPA space (a platform that supplies its own
   * RAM, the KVM agent's memfd) all of memory_bytes, since the guest itself can touch every page.
   */
  private residentAtStart(memoryBytes: bigint, preload: number): number {
    return this.options.platform ? Number(memoryBytes) : preload;
  }
  private checkResident(memoryBytes: bigint, preload: number, what: string): void {
    this.resident.check(this.residentAtStart(memoryBytes, preload), what);
  }

  /**
   * Builds a partition with the platform the options' factory makes for it, or (the emulator)
   * sparse RAM counted in the resident account; all-or-nothing. A platform that supplies its own
   * RAM has memory_bytes counted for as long as the partition exists.
   */
  private withPlatform(spec: PartitionSpec, build: (hooks?: PlatformHooks) => Partition): Partition {
    const prepared = this.preparePlatform(spec);
    try {
      const p = build(prepared.hooks);
      prepared.adopt(p);
      return p;
    } catch (e) {
      prepared.dispose();
      throw e;
    }
  }

  /**
   * The platform and RAM of a partition about to be built (withPlatform; a streamed import fills the
   * RAM before the partition exists): adopt() once it is built, dispose() if it never will be.
   */
  private preparePlatform(spec: PartitionSpec): { hooks: PlatformHooks; adopt(p: Partition): void; dispose(): void } {
    const platform = this.options.platform?.(spec);
    let ram: SparseMemory | undefined;
    let reserved = 0;
    const dispose = () => {
      platform?.dispose?.();
      ram?.free();
      this.resident.release(reserved);
    };
    try {
      let hooks = platform?.hooks;
      if (hooks?.ram) {
        const bytes = Number(spec.memoryBytes);
        this.resident.reserve(bytes, `partition ${spec.id} (its engine maps all ${spec.memoryBytes} bytes of guest RAM)`);
        reserved = bytes;
      } else {
        ram = new SparseMemory(spec.memoryBytes, this.resident);
        hooks = { ...hooks, ram };
      }
      return {
        hooks,
        adopt: (p) => {
          platform?.attach?.(p);
          if (platform) this.platforms.set(spec.id, platform);
          const held = reserved;
          const heldRam = ram;
          this.releases.set(spec.id, () => {
            heldRam?.free();
            this.resident.release(held);
          });
        },
        dispose,
      };
    } catch (e) {
      dispose();
      throw e;
    }
  }

  /**
   * ImportPartition: a partition built from streamed snapshot segments (snapshot-stream.ts). The
   * first header is checked like a restore's; its id is taken (no other create, restore or import
   * gets it) but nothing is listed under it until commit(); abort() gives everything back.
   */
  beginImport(header: CoreSnapshot, partitionId?: string): PartitionImport {
    if (partitionId) this.checkChosenId(partitionId);
    validateSnapshot(header, this.limits);
    this.checkResident(header.spec.memoryBytes, 0, 'importing the snapshot');
    const id = this.allocateId(partitionId);
    const spec: PartitionSpec = { ...header.spec, labels: { ...header.spec.labels }, id, ...this.clockSpec() };
    this.importing.add(id);
    let prepared: ReturnType<PartitionManager['preparePlatform']>;
    try {
      prepared = this.preparePlatform(spec);
    } catch (e) {
      this.importing.delete(id);
      throw e;
    }
    let open = true;
    const close = () => {
      open = false;
      this.importing.delete(id);
    };
    return new PartitionImport(header, id, prepared.hooks, this.limits, {
      commit: (build) => {
        if (!open) hvFail(HvStatus.HV_STATUS_INVALID_PARTITION_STATE, `the import of ${id} has ended`);
        try {
          const p = build(this.options.clock);
          prepared.adopt(p);
          close();
          this.partitions.set(id, p);
          return p;
        } catch (e) {
          close();
          prepared.dispose();
          throw e;
        }
      },
      abort: () => {
        if (!open) return;
        close();
        prepared.dispose();
      },
    });
  }

  /** The injected clock as a PartitionSpec field (absent: partitions use systemClock). */
  private clockSpec(): Pick<PartitionSpec, 'clock'> {
    return this.options.clock ? { clock: this.options.clock } : {};
  }

  /** The platform of a partition, when the manager has a platform factory. */
  platformOf(id: string): PartitionPlatform | undefined {
    return this.platforms.get(id);
  }

  private checkChosenId(id: string): void {
    if (!ID_RE.test(id)) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `partition_id ${JSON.stringify(id)} must match ${ID_RE}`);
    if (this.partitions.has(id)) hvFail(HvStatus.HV_STATUS_OBJECT_IN_USE, `partition ${id} already exists`);
    if (this.importing.has(id)) hvFail(HvStatus.HV_STATUS_OBJECT_IN_USE, `partition ${id} is being imported`);
  }

  /** Validates a chosen id (or generates one) and checks the partition limit. */
  private allocateId(chosen: string | undefined): string {
    let id = chosen;
    if (id) {
      this.checkChosenId(id);
    } else {
      do id = `p${(++this.counter).toString(36).padStart(6, '0')}`;
      while (this.partitions.has(id) || this.importing.has(id));
    }
    if (this.partitions.size + this.importing.size >= this.limits.maxPartitions)
      hvFail(HvStatus.HV_STATUS_INSUFFICIENT_MEMORY, `partition limit ${this.limits.maxPartitions} reached`);
    return id;
  }

  get(id: string): Partition {
    const p = this.partitions.get(id);
    if (!p) throw new HvError(HvStatus.HV_STATUS_INVALID_PARTITION_ID, `partition ${id} not found`);
    return p;
  }

  /** Creation order; the page token is the id of the last partition returned. */
  list(pageSize: number, pageToken: string): { partitions: Partition[]; nextPageToken: string } {
    const all = [...this.partitions.values()];
    let start = 0;
    if (pageToken) {
      const i = all.findIndex((p) => p.id === pageToken);
      if (i < 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'page_token is not valid (the partition it names no longer exists)');
      start = i + 1;
    }
    const size = pageSize === 0 ? 50 : Math.min(pageSize, 1000);
    const page = all.slice(start, start + size);
    const more = start + size < all.length;
    return { partitions: page, nextPageToken: more && page.length ? page[page.length - 1]!.id : '' };
  }

  delete(id: string): void {
    const p = this.get(id);
    this.partitions.delete(id);
    // Waiters wake and streams end with a status; nothing reaches the partition afterwards.
    p.markDeleted();
    for (const [k, v] of this.byRequestId) if (v.id === id) this.byRequestId.delete(k);
    this.platforms.get(id)?.dispose?.();
    this.platforms.delete(id);
    // Its guest RAM leaves the resident account.
    this.releases.get(id)?.();
    this.releases.delete(id);
  }

  get size(): number {
    return this.partitions.size;
  }
}
