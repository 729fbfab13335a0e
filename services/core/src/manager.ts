// core: the set of partitions a backend hosts: create (idempotent by request id), get, list with
// page tokens, delete; and the limits that keep bad input from exhausting memory.
import { Architecture, Partition, PartitionSpec } from './partition';
import { PlatformHooks } from './platform';
import { HvError, HvStatus, hvFail } from './tlfs/status';
import { HV_MAX_SUPPORTED_VTL } from './tlfs/vsm';

export interface Limits {
  maxPartitions: number;
  maxVpCount: number;
  maxMemoryBytes: bigint;
}
export const DEFAULT_LIMITS: Limits = { maxPartitions: 4096, maxVpCount: 64, maxMemoryBytes: 1n << 40n };

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
}

export class PartitionManager {
  private readonly partitions = new Map<string, Partition>();
  private readonly byRequestId = new Map<string, { id: string; fingerprint: string }>();
  private readonly platforms = new Map<string, PartitionPlatform>();
  private counter = 0;

  constructor(readonly limits: Limits = DEFAULT_LIMITS, private readonly options: ManagerOptions = {}) {}

  create(req: CreateRequest): Partition {
    const fingerprint = JSON.stringify({ ...req, memoryBytes: req.memoryBytes.toString(), requestId: undefined });
    if (req.requestId) {
      if (req.requestId.length > 128) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'request_id is longer than 128 characters');
      const prior = this.byRequestId.get(req.requestId);
      if (prior) {
        const p = this.partitions.get(prior.id);
        if (prior.fingerprint !== fingerprint) hvFail(HvStatus.HV_STATUS_OBJECT_IN_USE, `request_id ${req.requestId} was already used for a different CreatePartition`);
        if (p) return p;
      }
    }
    if (req.architecture !== 'x64' && req.architecture !== 'arm64') hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'unsupported architecture');
    if (!Number.isInteger(req.vpCount) || req.vpCount < 1 || req.vpCount > this.limits.maxVpCount) {
      hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `vp_count must be 1..${this.limits.maxVpCount}, got ${req.vpCount}`);
    }
    if (req.memoryBytes <= 0n || req.memoryBytes % 4096n !== 0n) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'memory_bytes must be a positive multiple of 4096');
    if (req.memoryBytes > this.limits.maxMemoryBytes) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `memory_bytes exceeds the limit of ${this.limits.maxMemoryBytes} bytes`);
    if (!Number.isInteger(req.maximumVtl) || req.maximumVtl < 0 || req.maximumVtl > HV_MAX_SUPPORTED_VTL) {
      hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `maximum_vtl must be 0..${HV_MAX_SUPPORTED_VTL}`);
    }
    for (const [k, v] of Object.entries(req.labels)) {
      if (k.length === 0 || k.length > 63 || v.length > 63) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `label ${JSON.stringify(k)} must have a 1..63 character key and a value of at most 63`);
    }
    if (Object.keys(req.labels).length > 64) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'at most 64 labels');
    const id = this.allocateId(req.partitionId);
    const spec: PartitionSpec = { id, architecture: req.architecture, vpCount: req.vpCount, memoryBytes: req.memoryBytes, maximumVtl: req.maximumVtl, labels: { ...req.labels } };
    const p = this.withPlatform(spec, (hooks) => new Partition({ ...spec, platform: hooks }));
    this.partitions.set(id, p);
    if (req.requestId) this.byRequestId.set(req.requestId, { id, fingerprint });
    return p;
  }

  /**
   * Adds a partition built elsewhere (a restored snapshot) under a new or chosen id. `build` gets
   * the id; the manager's limits apply as for create.
   */
  adopt(req: { partitionId?: string; memoryBytes: bigint; vpCount: number }, build: (id: string, platform?: PlatformHooks) => Partition, spec?: Omit<PartitionSpec, 'id' | 'platform'>): Partition {
    if (req.vpCount < 1 || req.vpCount > this.limits.maxVpCount) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `vp_count must be 1..${this.limits.maxVpCount}`);
    if (req.memoryBytes <= 0n || req.memoryBytes % 4096n !== 0n || req.memoryBytes > this.limits.maxMemoryBytes) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'memory_bytes is out of range');
    const id = this.allocateId(req.partitionId);
    const p = spec ? this.withPlatform({ ...spec, id }, (hooks) => build(id, hooks)) : build(id);
    this.partitions.set(id, p);
    return p;
  }

  /** Builds a partition with the platform the options' factory makes for it (all-or-nothing). */
  private withPlatform(spec: PartitionSpec, build: (hooks?: PlatformHooks) => Partition): Partition {
    const platform = this.options.platform?.(spec);
    try {
      const p = build(platform?.hooks);
      platform?.attach?.(p);
      if (platform) this.platforms.set(spec.id, platform);
      return p;
    } catch (e) {
      platform?.dispose?.();
      throw e;
    }
  }

  /** The platform of a partition, when the manager has a platform factory. */
  platformOf(id: string): PartitionPlatform | undefined {
    return this.platforms.get(id);
  }

  /** Validates a chosen id (or generates one) and checks the partition limit. */
  private allocateId(chosen: string | undefined): string {
    let id = chosen;
    if (id) {
      if (!ID_RE.test(id)) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `partition_id ${JSON.stringify(id)} must match ${ID_RE}`);
      if (this.partitions.has(id)) hvFail(HvStatus.HV_STATUS_OBJECT_IN_USE, `partition ${id} already exists`);
    } else {
      do id = `p${(++this.counter).toString(36).padStart(6, '0')}`; while (this.partitions.has(id));
    }
    if (this.partitions.size >= this.limits.maxPartitions) hvFail(HvStatus.HV_STATUS_INSUFFICIENT_MEMORY, `partition limit ${this.limits.maxPartitions} reached`);
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
  }

  get size(): number {
    return this.partitions.size;
  }
}
