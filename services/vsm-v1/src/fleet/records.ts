// fleet: what the fleet keeps in etcd, under one prefix (--etcd-prefix, default /vsm/):
//
//   {prefix}agents/{name}        an agent's membership, under its lease (AgentMember, JSON)
//   {prefix}partitions/{id}      a partition's record (PartitionRecord, JSON)
//   {prefix}requests/{request}   a CreatePartition request_id -> the partition it created (RequestRecord)
//   {prefix}replicas/{id}        a vsm-service replica's presence, under its lease (ReplicaPresence, JSON)
//
// Every value carries `format`. A reader understands formats <= FLEET_FORMAT; a newer format is kept
// as "incompatible" (never rewritten, never crashes the reader): its partition answers
// FAILED_PRECONDITION and its agent takes no placement. Fields a reader does not know are ignored, so
// additions that older readers may skip do not bump the format, and a record is rewritten with the
// fields this reader does not know kept as they were. Pure (no I/O).
import { pb } from '@vsm/api';

/** The record format this code writes and the newest it reads. */
export const FLEET_FORMAT = 1;

export const AGENTS = 'agents/';
export const PARTITIONS = 'partitions/';
export const REQUESTS = 'requests/';
export const REPLICAS = 'replicas/';

/** What an agent offers (its flags: --max-partitions, --capacity-vps, --max-resident-bytes, --memslot-budget). */
export interface AgentCapacity {
  partitions: number;
  vps: number;
  memoryBytes: bigint;
  memslots: number;
}

export interface AgentMember {
  format: number;
  /** Unique in the fleet (the agent's --agent-name; default its advertised address). */
  name: string;
  /** HOST:PORT the service dials (--advertise). */
  address: string;
  /** Random per agent process: a restarted agent (new incarnation) no longer holds the old one's partitions. */
  incarnation: string;
  backend: string;
  version: string;
  registerTimeUnixMs: number;
  labels: Record<string, string>;
  capacity: AgentCapacity;
}

export type PartitionRecordState = 'CREATING' | 'ACTIVE' | 'UNAVAILABLE';

export interface PartitionRecord {
  format: number;
  id: string;
  /** The agent (member name) and its incarnation the partition was placed on. */
  agent: string;
  incarnation: string;
  state: PartitionRecordState;
  stateReason: string;
  stateTimeUnixMs: number;
  /** Why it became UNAVAILABLE: 'agent-lost' may be undone when the same incarnation registers again. */
  lostBy?: 'agent-lost' | 'agent-restarted';
  /** Bumped on every change of the record. */
  generation: number;
  createTimeUnixMs: number;
  requestId: string;
  /** What placement counts: VPs and guest address space. */
  vpCount: number;
  memoryBytes: bigint;
  /** The Partition as the agent answered CreatePartition (proto JSON); empty while CREATING. */
  partition?: unknown;
  /** The replica that wrote the CREATING record (its presence id): a CREATING record whose creator is gone is repaired. */
  creator?: string;
  /** The spec's recovery_policy: 'RESTART' = restarted on another agent from the checkpoint when its agent is lost. */
  recoveryPolicy?: 'RESTART';
  /** The last durable checkpoint: a snapshot file in vsm-service's --checkpoint-dir. */
  checkpoint?: CheckpointRef;
  /** While CREATING for a recovery: where it was before (restored when the recovery fails). */
  recovering?: { agent: string; incarnation: string; stateReason: string; stateTimeUnixMs: number; lostBy?: 'agent-lost' | 'agent-restarted' };
  /** Fields written by a newer version (same format) that this reader keeps as they are. */
  extra?: Record<string, unknown>;
}

export interface CheckpointRef {
  /** File name inside --checkpoint-dir. */
  file: string;
  timeUnixMs: number;
  bytes: number;
  /** SHA-256 of the file (hex). */
  sha256: string;
}

/** A replica's presence: recorded so the others know which CREATING records have a live creator. */
export interface ReplicaPresence {
  format: number;
  id: string;
  host: string;
  startTimeUnixMs: number;
}

export interface RequestRecord {
  format: number;
  partitionId: string;
  /** The CreatePartition content the request_id was first used with. */
  fingerprint: string;
}

/** A value of a newer format than this code reads (or not JSON at all). */
export interface Incompatible {
  incompatible: true;
  format: number | undefined;
  reason: string;
}

export const isIncompatible = (v: unknown): v is Incompatible => typeof v === 'object' && v !== null && (v as Incompatible).incompatible === true;

function parse(raw: Buffer | string, what: string): Record<string, unknown> | Incompatible {
  let v: unknown;
  try {
    v = JSON.parse(raw.toString());
  } catch {
    return { incompatible: true, format: undefined, reason: `${what} is not JSON` };
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return { incompatible: true, format: undefined, reason: `${what} is not a JSON object` };
  const o = v as Record<string, unknown>;
  const format = o.format;
  if (typeof format !== 'number' || !Number.isInteger(format) || format < 1) return { incompatible: true, format: undefined, reason: `${what} has no format` };
  if (format > FLEET_FORMAT)
    return {
      incompatible: true,
      format,
      reason: `${what} was written in format ${format} by a newer version; this replica reads format ${FLEET_FORMAT}: upgrade it`,
    };
  return o;
}

const str = (o: Record<string, unknown>, k: string): string => (typeof o[k] === 'string' ? (o[k] as string) : '');
const num = (o: Record<string, unknown>, k: string): number => (typeof o[k] === 'number' && Number.isFinite(o[k]) ? (o[k] as number) : 0);
const big = (o: Record<string, unknown>, k: string): bigint => {
  const v = o[k];
  try {
    return typeof v === 'string' && /^\d+$/.test(v) ? BigInt(v) : 0n;
  } catch {
    return 0n;
  }
};
const labels = (v: unknown): Record<string, string> =>
  typeof v === 'object' && v !== null ? Object.fromEntries(Object.entries(v).filter(([, x]) => typeof x === 'string')) : {};

export function encodeMember(m: AgentMember): string {
  return JSON.stringify({ ...m, capacity: { ...m.capacity, memoryBytes: m.capacity.memoryBytes.toString() } });
}

export function decodeMember(raw: Buffer | string): AgentMember | Incompatible {
  const o = parse(raw, 'agent membership');
  if (isIncompatible(o)) return o;
  const cap = (typeof o.capacity === 'object' && o.capacity) || {};
  const c = cap as Record<string, unknown>;
  const m: AgentMember = {
    format: o.format as number,
    name: str(o, 'name'),
    address: str(o, 'address'),
    incarnation: str(o, 'incarnation'),
    backend: str(o, 'backend'),
    version: str(o, 'version'),
    registerTimeUnixMs: num(o, 'registerTimeUnixMs'),
    labels: labels(o.labels),
    capacity: { partitions: num(c, 'partitions'), vps: num(c, 'vps'), memoryBytes: big(c, 'memoryBytes'), memslots: num(c, 'memslots') },
  };
  if (!m.name || !m.address || !m.incarnation) return { incompatible: true, format: m.format, reason: 'agent membership lacks name, address or incarnation' };
  return m;
}

export function encodeRecord(r: PartitionRecord): string {
  const { extra, ...known } = r;
  return JSON.stringify({ ...extra, ...known, memoryBytes: r.memoryBytes.toString() });
}

const RECORD_FIELDS = new Set([
  'format',
  'id',
  'agent',
  'incarnation',
  'state',
  'stateReason',
  'stateTimeUnixMs',
  'lostBy',
  'generation',
  'createTimeUnixMs',
  'requestId',
  'vpCount',
  'memoryBytes',
  'partition',
  'creator',
  'recoveryPolicy',
  'checkpoint',
  'recovering',
]);

function checkpointRef(v: unknown): CheckpointRef | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const o = v as Record<string, unknown>;
  const file = str(o, 'file');
  // A bare file name: never a path out of the checkpoint directory.
  if (!/^[A-Za-z0-9._-]{1,200}$/.test(file) || file.startsWith('.')) return undefined;
  return { file, timeUnixMs: num(o, 'timeUnixMs'), bytes: num(o, 'bytes'), sha256: str(o, 'sha256') };
}

function recovering(v: unknown): PartitionRecord['recovering'] {
  if (typeof v !== 'object' || v === null) return undefined;
  const o = v as Record<string, unknown>;
  if (!str(o, 'agent')) return undefined;
  return {
    agent: str(o, 'agent'),
    incarnation: str(o, 'incarnation'),
    stateReason: str(o, 'stateReason'),
    stateTimeUnixMs: num(o, 'stateTimeUnixMs'),
    lostBy: o.lostBy === 'agent-lost' || o.lostBy === 'agent-restarted' ? o.lostBy : undefined,
  };
}

export function decodeRecord(raw: Buffer | string): PartitionRecord | Incompatible {
  const o = parse(raw, 'partition record');
  if (isIncompatible(o)) return o;
  const state = o.state;
  if (state !== 'CREATING' && state !== 'ACTIVE' && state !== 'UNAVAILABLE')
    return { incompatible: true, format: o.format as number, reason: `partition record has an unknown state ${JSON.stringify(state)}` };
  const r: PartitionRecord = {
    format: o.format as number,
    id: str(o, 'id'),
    agent: str(o, 'agent'),
    incarnation: str(o, 'incarnation'),
    state,
    stateReason: str(o, 'stateReason'),
    stateTimeUnixMs: num(o, 'stateTimeUnixMs'),
    lostBy: o.lostBy === 'agent-lost' || o.lostBy === 'agent-restarted' ? o.lostBy : undefined,
    generation: num(o, 'generation'),
    createTimeUnixMs: num(o, 'createTimeUnixMs'),
    requestId: str(o, 'requestId'),
    vpCount: num(o, 'vpCount'),
    memoryBytes: big(o, 'memoryBytes'),
    partition: o.partition,
  };
  if (typeof o.creator === 'string' && o.creator) r.creator = o.creator;
  if (o.recoveryPolicy === 'RESTART') r.recoveryPolicy = 'RESTART';
  const cp = checkpointRef(o.checkpoint);
  if (cp) r.checkpoint = cp;
  const rv = recovering(o.recovering);
  if (rv) r.recovering = rv;
  const extra = Object.fromEntries(Object.entries(o).filter(([k]) => !RECORD_FIELDS.has(k)));
  if (Object.keys(extra).length) r.extra = extra;
  if (!r.id || !r.agent) return { incompatible: true, format: r.format, reason: 'partition record lacks id or agent' };
  return r;
}

export function encodeReplica(r: ReplicaPresence): string {
  return JSON.stringify(r);
}

/** A replica's presence; only its id matters to the others (any format is a live replica). */
export function decodeReplicaId(key: string): string {
  return decodeURIComponent(key.slice(REPLICAS.length));
}

export function encodeRequest(r: RequestRecord): string {
  return JSON.stringify(r);
}

export function decodeRequest(raw: Buffer | string): RequestRecord | Incompatible {
  const o = parse(raw, 'request record');
  if (isIncompatible(o)) return o;
  return { format: o.format as number, partitionId: str(o, 'partitionId'), fingerprint: str(o, 'fingerprint') };
}

/** The request_id's key (any characters: percent-encoded). */
export const requestKey = (requestId: string) => REQUESTS + encodeURIComponent(requestId);
export const partitionKey = (id: string) => PARTITIONS + id;
export const agentKey = (name: string) => AGENTS + encodeURIComponent(name);
export const replicaKey = (id: string) => REPLICAS + encodeURIComponent(id);

/**
 * The vsm.v1 Partition a record stands for: the agent's answer at creation with the record's fleet
 * fields (agent, state, why and since when). A CREATING record (no answer yet) shows its spec only.
 */
export function recordToPartition(r: PartitionRecord): pb.Partition {
  let base: pb.Partition;
  try {
    base = r.partition ? pb.Partition.fromJSON(r.partition) : pb.Partition.fromPartial({});
  } catch {
    base = pb.Partition.fromPartial({});
  }
  return {
    ...base,
    name: `partitions/${r.id}`,
    vpCount: base.vpCount || r.vpCount,
    memoryBytes: base.memoryBytes || r.memoryBytes,
    createTimeUnixMs: BigInt(r.createTimeUnixMs),
    requestId: r.requestId,
    agent: r.agent,
    // CREATING: calls on it fail UNAVAILABLE ("being created; retry") until its agent answered.
    state: r.state === 'ACTIVE' ? base.state || pb.PartitionState.PARTITION_STATE_ACTIVE : pb.PartitionState.PARTITION_STATE_UNAVAILABLE,
    stateReason:
      r.state === 'UNAVAILABLE'
        ? r.stateReason
        : r.state === 'CREATING'
          ? r.recovering
            ? `being restarted from its checkpoint on agent ${r.agent}`
            : `being created on agent ${r.agent}`
          : base.stateReason,
    stateTimeUnixMs: r.state === 'ACTIVE' ? base.stateTimeUnixMs : BigInt(r.stateTimeUnixMs),
    recoveryPolicy: r.recoveryPolicy === 'RESTART' ? pb.RecoveryPolicy.RECOVERY_POLICY_RESTART : pb.RecoveryPolicy.RECOVERY_POLICY_UNSPECIFIED,
    checkpointTimeUnixMs: r.checkpoint ? BigInt(r.checkpoint.timeUnixMs) : undefined,
  };
}

/** What ListPartitions shows for a record this replica cannot read: its name, UNAVAILABLE, and why. */
export function incompatiblePartition(id: string, why: Incompatible): pb.Partition {
  return {
    ...pb.Partition.fromPartial({}),
    name: `partitions/${id}`,
    state: pb.PartitionState.PARTITION_STATE_UNAVAILABLE,
    stateReason: why.reason,
  };
}
