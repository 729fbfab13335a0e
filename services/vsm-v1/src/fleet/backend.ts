// fleet: the agent backend when etcd is configured (vsm-service --backend agent --etcd-endpoints).
// Every forwarded call goes to the agent named by the partition's record (this replica's watched
// cache; a miss reads etcd), never to all agents. CreatePartition places by free capacity (or the
// request's agent / agent_selector) and writes the record in a transaction that fails if the id
// exists, so an id is unique across replicas; a request_id is recorded in the same transaction, so
// a retry through any replica returns the same partition. Get/List read the records (List pages from
// etcd; Get adds the live fields from the one agent). With etcd unreachable, routing and reads use
// the cached records and Create/Delete fail UNAVAILABLE.
//
// Durability across agents (--checkpoint-dir, a directory every replica shares): each partition's
// state is streamed from its agent (ExportPartition) into a checkpoint file every
// --checkpoint-interval and on CheckpointPartition; the record names the file. A partition whose
// agent was lost is restarted from that file on another agent (ImportPartition under the same id)
// by RecoverPartition, or automatically when its spec asks (recovery_policy RESTART). The
// background work (checkpoints, automatic recovery, repairing CREATING records whose replica died)
// is shared among the live replicas by the partition id (rendezvous hashing over their presences).
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { status as Code } from '@grpc/grpc-js';
import { SNAPSHOT_FILE_MAGIC, VsmError, frameSnapshotChunk, pb, readSnapshotFiles, writeSnapshotFile } from '@vsm/client';
import type { Logger } from 'pino';
import { RemoteBackend, type RemoteAgent, importStream, relay, staticOwner } from '../backends/remote';
import type { StreamSink } from '../backend';
import { migratePartition } from '../backends/migration';
import { ApiError, invalidArgument } from '../errors';
import { parsePartitionName } from '../names';
import { FleetDirectory, type MemberView, type RecordEntry, prefixEnd } from './directory';
import {
  FLEET_FORMAT,
  PARTITIONS,
  type PartitionRecord,
  decodeRequest,
  encodeRecord,
  encodeRequest,
  incompatiblePartition,
  isIncompatible,
  partitionKey,
  recordToPartition,
  requestKey,
} from './records';
import { ReplicaPresence } from './membership';
import { type FleetStore, storeUnavailable } from './store';

const ID_RE = /^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$/;
/** How long a CreatePartition waits for another replica's create of the same request_id to finish. */
const CREATE_WAIT_MS = 60_000;
const PLACEMENT_ATTEMPTS = 3;

export interface FleetBackendOptions {
  store: FleetStore;
  log: Logger;
  probeDeadlineMs?: number;
  probeIntervalMs?: number;
  /** Lease TTL of this replica's presence (default 10 s): how soon the others repair its half-done creates. */
  replicaTtlSeconds?: number;
  /** How often the background work runs (default 1000 ms). */
  maintenanceIntervalMs?: number;
  /** A CREATING record without a creator (an older version's) is repaired after this long (default 60 s). */
  orphanCreatingMs?: number;
}

/** Checkpoints written at once by one replica's background work. */
const CHECKPOINTS_IN_FLIGHT = 2;

const unavailable = (message: string) => new ApiError(Code.UNAVAILABLE, 'HV_STATUS_OPERATION_FAILED', message);
const notFound = (id: string) => new ApiError(Code.NOT_FOUND, 'HV_STATUS_INVALID_PARTITION_ID', `partition ${id} not found`);
const precondition = (message: string) => new ApiError(Code.FAILED_PRECONDITION, 'HV_STATUS_INVALID_PARTITION_STATE', message);
const errText = (e: unknown) => (e instanceof Error ? e.message : String(e));

export class FleetBackend extends RemoteBackend {
  readonly directory: FleetDirectory;
  private readonly store: FleetStore;
  private readonly log: Logger;
  /** Placements decided here whose CREATING record is not written yet (concurrent creates see them). */
  private readonly pending = new Map<string, { partitions: number; vps: number; memoryBytes: bigint }>();
  /** This replica's presence in etcd (its id marks the CREATING records it writes). */
  readonly presence: ReplicaPresence;
  private readonly opts: FleetBackendOptions;
  private maintenanceTimer: NodeJS.Timeout | undefined;
  private maintaining = false;
  /** Partitions this replica's background work is busy with (one task per partition). */
  private readonly busy = new Set<string>();
  private checkpointsInFlight = 0;
  /** When an automatic recovery of a partition may be tried again (after a failure). */
  private readonly retryAt = new Map<string, number>();
  /** When this replica first saw a CREATING record's creator gone. */
  private readonly orphanSince = new Map<string, number>();
  private closed = false;

  constructor(o: FleetBackendOptions) {
    super([]);
    this.opts = o;
    this.store = o.store;
    this.log = o.log;
    this.directory = new FleetDirectory({ store: o.store, log: o.log, probeDeadlineMs: o.probeDeadlineMs, probeIntervalMs: o.probeIntervalMs });
    this.presence = new ReplicaPresence(o.store, o.replicaTtlSeconds ?? 10, o.log);
    // A record that turned UNAVAILABLE (or CREATING) is looked at without waiting for the next tick.
    this.directory.onRecordChange = (e) => {
      if (e.rec && e.rec.state !== 'ACTIVE') setImmediate(() => void this.maintain());
    };
  }

  /** Starts loading from etcd (retrying until it answers); `directory.firstSync` resolves when loaded. */
  start(): void {
    this.directory.start();
    this.presence.start();
    this.maintenanceTimer = setInterval(() => void this.maintain(), this.opts.maintenanceIntervalMs ?? 1000);
    this.maintenanceTimer.unref();
  }

  private requireSynced(): void {
    if (!this.directory.synced)
      throw unavailable(`fleet store (etcd at ${this.store.config.endpoints.join(', ')}) not connected yet: this replica cannot route partitions`);
  }

  /** The record of a partition: cached, or read from etcd on a miss (or when `fresh`). */
  private async record(id: string, fresh = false): Promise<RecordEntry> {
    this.requireSynced();
    let e = fresh ? undefined : this.directory.records.get(id);
    if (!e) {
      try {
        e = await this.directory.fetch(id);
      } catch (err) {
        // etcd away: the cached record (if any) still routes.
        e = this.directory.records.get(id);
        if (!e) throw err;
      }
    }
    if (!e) throw notFound(id);
    return e;
  }

  private agentOf(e: RecordEntry): { view: MemberView; rec: PartitionRecord } {
    if (e.incompatible) throw new ApiError(Code.FAILED_PRECONDITION, 'HV_STATUS_INVALID_PARTITION_STATE', `partition ${e.id}: ${e.incompatible.reason}`);
    const rec = e.rec!;
    if (rec.state === 'CREATING') throw unavailable(`partition ${rec.id} is being created on agent ${rec.agent}; retry`);
    if (rec.state === 'UNAVAILABLE') throw unavailable(`partition ${rec.id} is UNAVAILABLE: ${rec.stateReason}`);
    const m = this.directory.memberOf(rec);
    if ('why' in m) throw unavailable(`partition ${rec.id} is unavailable: ${m.why}`);
    if (m.view.readiness === 'UNREACHABLE')
      throw unavailable(`partition ${rec.id}: agent ${rec.agent} at ${m.view.member!.address} does not answer (${m.view.reason})`);
    return { view: m.view, rec };
  }

  protected override async locate(name: string, refresh = false): Promise<RemoteAgent> {
    const id = parsePartitionName(name.split('/vps/')[0]!);
    const { view } = this.agentOf(await this.record(id, refresh));
    return { address: view.member!.address, client: view.client! };
  }

  // ---- partitions -----------------------------------------------------------------------------

  override async createPartition(r: pb.CreatePartitionRequest): Promise<pb.Partition> {
    const want = r.partition;
    if (!want) throw invalidArgument('partition is required');
    if (want.name) throw invalidArgument('partition.name is output only; choose the id with partition_id');
    if (r.partitionId && !ID_RE.test(r.partitionId))
      throw invalidArgument('partition_id must be 1..64 characters of [a-z0-9-], starting and ending alphanumeric');
    if (r.requestId.length > 128) throw invalidArgument('request_id is longer than 128 characters');
    if (want.checkpointTimeUnixMs !== undefined) throw invalidArgument('checkpoint_time_unix_ms is output only');
    const policy = want.recoveryPolicy ?? pb.RecoveryPolicy.RECOVERY_POLICY_UNSPECIFIED;
    if (policy !== pb.RecoveryPolicy.RECOVERY_POLICY_UNSPECIFIED && policy !== pb.RecoveryPolicy.RECOVERY_POLICY_RESTART)
      throw invalidArgument(`recovery_policy ${policy} is not a RecoveryPolicy`);
    if (policy === pb.RecoveryPolicy.RECOVERY_POLICY_RESTART && !this.store.config.checkpointDir)
      throw new ApiError(
        Code.FAILED_PRECONDITION,
        'HV_STATUS_FEATURE_UNAVAILABLE',
        'recovery_policy RESTART restarts a partition from its checkpoint: vsm-service needs --checkpoint-dir',
      );
    this.requireSynced();
    const selector = r.agentSelector ?? {};
    const fingerprint = JSON.stringify({
      partitionId: r.partitionId,
      partition: pb.Partition.toJSON(pb.Partition.fromPartial(want)),
      agent: r.agent,
      agentSelector: Object.entries(selector).sort(([a], [b]) => a.localeCompare(b)),
    });
    // The agent runs the partition; the recovery policy is the fleet's (the record's).
    const forward: pb.CreatePartitionRequest = {
      ...r,
      agent: '',
      agentSelector: {},
      partition: { ...want, recoveryPolicy: pb.RecoveryPolicy.RECOVERY_POLICY_UNSPECIFIED },
    };
    return this.placeAndCreate({
      what: 'CreatePartition',
      recoveryPolicy: policy === pb.RecoveryPolicy.RECOVERY_POLICY_RESTART ? 'RESTART' : undefined,
      partitionId: r.partitionId,
      requestId: r.requestId,
      fingerprint,
      vpCount: want.vpCount,
      memoryBytes: want.memoryBytes,
      agent: r.agent,
      selector,
      create: (client, id) => client.partitions.createPartition({ ...forward, partitionId: id }),
    });
  }

  override async restorePartition(r: pb.RestorePartitionRequest): Promise<pb.Partition> {
    if (!r.snapshot) throw invalidArgument('snapshot is required');
    if (r.partitionId && !ID_RE.test(r.partitionId))
      throw invalidArgument('partition_id must be 1..64 characters of [a-z0-9-], starting and ending alphanumeric');
    this.requireSynced();
    return this.placeAndCreate({
      what: 'RestorePartition',
      partitionId: r.partitionId,
      requestId: '',
      fingerprint: '',
      vpCount: r.snapshot.vpCount,
      memoryBytes: r.snapshot.memoryBytes,
      agent: '',
      selector: {},
      create: (client, id) => client.snapshots.restorePartition({ ...r, partitionId: id }),
    });
  }

  /**
   * ImportPartition in fleet mode: placed by the header's VPs and memory and recorded like a create
   * (CREATING record, then the agent's import, then ACTIVE). The stream goes to one agent as it
   * arrives, so a failed agent is not retried elsewhere (the chunks are gone): the import fails.
   */
  override async importPartition(requests: AsyncIterable<pb.ImportPartitionRequest>, signal: AbortSignal): Promise<pb.Partition> {
    this.requireSynced();
    const { partitionId, first, chunks } = await importStream(requests);
    if (partitionId && !ID_RE.test(partitionId)) throw invalidArgument('partition_id must be 1..64 characters of [a-z0-9-], starting and ending alphanumeric');
    const header = first.chunk?.$case === 'header' ? first.chunk.value : undefined;
    if (!header?.snapshot) throw invalidArgument('the first chunk of a snapshot stream must be its header (with the snapshot)');
    return this.placeAndCreate({
      what: 'ImportPartition',
      partitionId,
      requestId: '',
      fingerprint: '',
      vpCount: header.snapshot.vpCount,
      memoryBytes: header.snapshot.memoryBytes,
      agent: '',
      selector: {},
      once: true,
      create: (client, id) => client.snapshots.importPartition(chunks, { partitionId: id, signal }),
    });
  }

  private async placeAndCreate(o: {
    what: string;
    /** The create cannot be repeated on another agent (a stream already consumed). */
    once?: boolean;
    recoveryPolicy?: 'RESTART';
    partitionId: string;
    requestId: string;
    fingerprint: string;
    vpCount: number;
    memoryBytes: bigint;
    agent: string;
    selector: Record<string, string>;
    create: (client: RemoteAgent['client'], id: string) => Promise<pb.Partition>;
  }): Promise<pb.Partition> {
    const ns = this.store.ns;
    const tried = new Set<string>();
    // Others must see this replica's presence before its CREATING record (watch order = revision order).
    await Promise.race([this.presence.registered, new Promise((r) => setTimeout(r, 5000).unref())]);
    for (let attempt = 0; ; attempt++) {
      // request_id seen before (through any replica): same content -> that partition; else ALREADY_EXISTS.
      let reqRevision = 0;
      if (o.requestId) {
        const prior = await ns
          .get(requestKey(o.requestId))
          .exec()
          .catch((e) => Promise.reject(storeUnavailable(e, 'reading the request_id')));
        const kv = prior.kvs[0];
        if (kv) {
          const rq = decodeRequest(kv.value);
          if (isIncompatible(rq)) throw new ApiError(Code.FAILED_PRECONDITION, 'HV_STATUS_INVALID_PARTITION_STATE', `request_id ${o.requestId}: ${rq.reason}`);
          if (rq.fingerprint !== o.fingerprint)
            throw new ApiError(Code.ALREADY_EXISTS, 'HV_STATUS_OBJECT_IN_USE', `request_id ${o.requestId} was already used for a different CreatePartition`);
          const done = await this.finished(rq.partitionId);
          if (done) return done;
          reqRevision = Number(kv.mod_revision); // its partition was deleted since: create again
        }
      }
      const id = o.partitionId || `p-${crypto.randomBytes(8).toString('hex').slice(0, 12)}`;
      const view = this.place(o, tried);
      const release = this.reserve(view.name, o.vpCount, o.memoryBytes);
      const now = Date.now();
      const rec: PartitionRecord = {
        format: FLEET_FORMAT,
        id,
        agent: view.name,
        incarnation: view.member!.incarnation,
        state: 'CREATING',
        stateReason: '',
        stateTimeUnixMs: now,
        generation: 1,
        createTimeUnixMs: now,
        requestId: o.requestId,
        vpCount: o.vpCount,
        memoryBytes: o.memoryBytes,
        creator: this.presence.id,
        recoveryPolicy: o.recoveryPolicy,
      };
      const key = partitionKey(id);
      let txn = ns.if(key, 'Create', '==', 0);
      const puts = [ns.put(key).value(encodeRecord(rec))];
      if (o.requestId) {
        txn = txn.and(requestKey(o.requestId), 'Mod', '==', reqRevision);
        puts.push(ns.put(requestKey(o.requestId)).value(encodeRequest({ format: FLEET_FORMAT, partitionId: id, fingerprint: o.fingerprint })));
      }
      const res = await txn
        .then(...puts)
        .commit()
        .catch((e) => {
          release();
          return Promise.reject(storeUnavailable(e, `recording partition ${id}`));
        });
      if (!res.succeeded) {
        release();
        if (o.requestId) {
          // Lost a race: either to the same request_id (answered on the next round) or to the id.
          const rq = await ns
            .get(requestKey(o.requestId))
            .exec()
            .catch((e) => Promise.reject(storeUnavailable(e, 'reading the request_id')));
          if (Number(rq.kvs[0]?.mod_revision ?? 0) !== reqRevision && attempt < 5) continue;
        }
        if (!o.partitionId && attempt < 5) continue; // a generated id collided: draw another
        throw new ApiError(Code.ALREADY_EXISTS, 'HV_STATUS_OBJECT_IN_USE', `partition ${id} already exists`);
      }
      let revision = Number(res.header.revision);
      this.directory.applyLocal(id, rec, revision);
      release(); // the CREATING record counts from now on
      // The record holds the id: now create it on the chosen agent.
      let answer: pb.Partition;
      try {
        answer = await o.create(view.client!, id);
      } catch (e) {
        await this.forget(id, o.requestId, revision);
        if (e instanceof VsmError && (e.code === Code.UNAVAILABLE || e.code === Code.DEADLINE_EXCEEDED)) {
          this.directory.reportUnreachable(view.name, e.message);
          tried.add(view.name);
          if (e.code === Code.DEADLINE_EXCEEDED)
            // It may have been created after all: best effort, it must not linger unrecorded.
            void view.client!.partitions.deletePartition({ name: `partitions/${id}` }).catch(() => undefined);
          if (!o.agent && !o.once && attempt + 1 < PLACEMENT_ATTEMPTS) {
            this.log.warn({ agent: view.name, partition: id, err: e.message }, `fleet: ${o.what} failed on the chosen agent; placing elsewhere`);
            continue;
          }
        }
        return relay(e);
      }
      const active: PartitionRecord = {
        ...rec,
        creator: undefined,
        state: 'ACTIVE',
        generation: 2,
        stateTimeUnixMs: Date.now(),
        vpCount: answer.vpCount,
        memoryBytes: answer.memoryBytes,
        partition: pb.Partition.toJSON(answer),
      };
      const done = await ns
        .if(key, 'Mod', '==', revision)
        .then(ns.put(key).value(encodeRecord(active)))
        .commit()
        .catch((e) => Promise.reject(storeUnavailable(e, `recording partition ${id} as created`)));
      if (!done.succeeded) {
        // The record changed meanwhile: its agent was lost (UNAVAILABLE) or it was deleted.
        const now2 = await this.directory.fetch(id);
        if (!now2?.rec) throw new ApiError(Code.ABORTED, 'HV_STATUS_OPERATION_FAILED', `partition ${id} was deleted while it was being created`);
        return recordToPartition(now2.rec);
      }
      revision = Number(done.header.revision);
      this.directory.applyLocal(id, active, revision);
      return { ...answer, agent: view.name, requestId: o.requestId, stateReason: '', recoveryPolicy: recordToPartition(active).recoveryPolicy };
    }
  }

  /** The partition a request_id created, once its create finished; undefined if it is gone. */
  private async finished(id: string): Promise<pb.Partition | undefined> {
    let e = this.directory.records.get(id) ?? (await this.directory.fetch(id));
    if (e?.rec?.state === 'CREATING') {
      e = await this.directory
        .waitFor(id, (x) => x?.rec?.state !== 'CREATING', CREATE_WAIT_MS)
        .catch(() => Promise.reject(unavailable(`partition ${id} is still being created by another request; retry`)));
    }
    if (!e) return undefined;
    if (e.incompatible) throw new ApiError(Code.FAILED_PRECONDITION, 'HV_STATUS_INVALID_PARTITION_STATE', `partition ${id}: ${e.incompatible.reason}`);
    return this.view(e.rec!);
  }

  /** Drops a CREATING record whose create failed (compare on its revision). */
  private async forget(id: string, requestId: string, revision: number): Promise<void> {
    const ns = this.store.ns;
    const key = partitionKey(id);
    const ops = [ns.delete().key(key)];
    if (requestId) ops.push(ns.delete().key(requestKey(requestId)));
    try {
      const res = await ns
        .if(key, 'Mod', '==', revision)
        .then(...ops)
        .commit();
      if (res.succeeded) this.directory.applyLocal(id, undefined, Number(res.header.revision));
    } catch (e) {
      this.log.warn({ partition: id, err: e instanceof Error ? e.message : String(e) }, 'fleet: could not remove the record of a failed create');
    }
  }

  private reserve(agent: string, vps: number, memoryBytes: bigint): () => void {
    const p = this.pending.get(agent) ?? { partitions: 0, vps: 0, memoryBytes: 0n };
    p.partitions++;
    p.vps += vps;
    p.memoryBytes += memoryBytes;
    this.pending.set(agent, p);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      p.partitions--;
      p.vps -= vps;
      p.memoryBytes -= memoryBytes;
      if (p.partitions === 0) this.pending.delete(agent);
    };
  }

  /** Placement: the agent with the most free capacity that fits (and matches the hint and selector). */
  private place(o: { vpCount: number; memoryBytes: bigint; agent: string; selector: Record<string, string> }, tried: Set<string>): MemberView {
    const views = [...this.directory.members.values()];
    if (o.agent) {
      const v = this.directory.members.get(o.agent);
      if (!v?.member) throw new ApiError(Code.FAILED_PRECONDITION, 'HV_STATUS_INVALID_PARAMETER', `agent ${o.agent} is not in the fleet`);
      if (v.readiness !== 'READY') throw unavailable(`agent ${o.agent} cannot take partitions: ${v.readiness} (${v.reason})`);
      return v;
    }
    let best: { v: MemberView; score: number; partitions: number } | undefined;
    let ready = 0;
    for (const v of views) {
      if (!v.member || v.readiness !== 'READY' || tried.has(v.name)) continue;
      if (!Object.entries(o.selector).every(([k, val]) => v.member!.labels[k] === val)) continue;
      ready++;
      const cap = v.member.capacity;
      const load = this.directory.loadOf(v);
      const pend = this.pending.get(v.name);
      if (pend) {
        load.partitions += pend.partitions;
        load.vps += pend.vps;
        load.memoryBytes += pend.memoryBytes;
      }
      if (cap.partitions > 0 && load.partitions + 1 > cap.partitions) continue;
      if (cap.vps > 0 && load.vps + o.vpCount > cap.vps) continue;
      const fr = [
        cap.partitions > 0 ? (cap.partitions - load.partitions - 1) / cap.partitions : 1,
        cap.vps > 0 ? (cap.vps - load.vps - o.vpCount) / cap.vps : 1,
      ];
      // Memory is sparse (declared address space, not RAM held): it ranks, it does not refuse.
      if (cap.memoryBytes > 0n) fr.push(Math.max(-1, Number(cap.memoryBytes - load.memoryBytes - o.memoryBytes) / Number(cap.memoryBytes)));
      const score = Math.min(...fr);
      if (
        !best ||
        score > best.score ||
        (score === best.score && (load.partitions < best.partitions || (load.partitions === best.partitions && v.name < best.v.name)))
      )
        best = { v, score, partitions: load.partitions };
    }
    if (best) return best.v;
    const sel = Object.keys(o.selector).length ? ` matching ${JSON.stringify(o.selector)}` : '';
    if (ready === 0) {
      const all = views.map((v) => `${v.name} ${v.readiness}`).join(', ') || 'none registered';
      throw unavailable(`no agent${sel} can take partitions (${all})`);
    }
    throw new ApiError(Code.RESOURCE_EXHAUSTED, 'HV_STATUS_INSUFFICIENT_MEMORY', `no agent${sel} has room for a partition of ${o.vpCount} VPs`);
  }

  /** A record as the API shows it (an agent gone but not yet marked shows UNAVAILABLE already). */
  private view(rec: PartitionRecord): pb.Partition {
    const p = recordToPartition(rec);
    if (rec.state === 'ACTIVE') {
      const m = this.directory.memberOf(rec);
      if ('why' in m) return { ...p, state: pb.PartitionState.PARTITION_STATE_UNAVAILABLE, stateReason: m.why };
    }
    return p;
  }

  override async getPartition(r: pb.GetPartitionRequest): Promise<pb.Partition> {
    const id = parsePartitionName(r.name);
    const e = await this.record(id);
    if (e.incompatible) throw new ApiError(Code.FAILED_PRECONDITION, 'HV_STATUS_INVALID_PARTITION_STATE', `partition ${id}: ${e.incompatible.reason}`);
    const p = this.view(e.rec!);
    if (p.state === pb.PartitionState.PARTITION_STATE_UNAVAILABLE || e.rec!.state === 'CREATING') return p;
    const { view } = this.agentOf(e);
    // The live fields (VTLs, run state, crash) from the one agent that hosts it.
    const live = await view.client!.partitions.getPartition({ name: r.name }).catch((err) => {
      if (err instanceof VsmError && err.code === Code.UNAVAILABLE) this.directory.reportUnreachable(view.name, err.message);
      return relay(err);
    });
    return {
      ...live,
      agent: e.rec!.agent,
      requestId: e.rec!.requestId,
      stateReason: live.stateReason,
      recoveryPolicy: p.recoveryPolicy,
      checkpointTimeUnixMs: p.checkpointTimeUnixMs,
    };
  }

  override async listPartitions(r: pb.ListPartitionsRequest): Promise<pb.ListPartitionsResponse> {
    this.requireSynced();
    const size = r.pageSize === 0 ? 50 : Math.min(r.pageSize, 1000);
    let after = '';
    if (r.pageToken) {
      after = Buffer.from(r.pageToken, 'base64url').toString();
      if (!ID_RE.test(after) || Buffer.from(after).toString('base64url') !== r.pageToken) throw invalidArgument('page_token is not valid');
    }
    const toPb = (e: RecordEntry) => (e.rec ? this.view(e.rec) : incompatiblePartition(e.id, e.incompatible!));
    let entries: RecordEntry[];
    let more: boolean;
    try {
      const start = PARTITIONS + (after ? after + '\0' : '');
      const res = await this.store.ns
        .getAll()
        .inRange({ start, end: prefixEnd(PARTITIONS) })
        .limit(size)
        .exec();
      entries = res.kvs.map((kv) => {
        const id = kv.key.toString().slice(PARTITIONS.length);
        const cached = this.directory.records.get(id);
        if (cached && cached.modRevision >= Number(kv.mod_revision)) return cached;
        return this.directory.absorb(id, kv.value, Number(kv.mod_revision));
      });
      more = res.more;
    } catch {
      // etcd away: the same page from the cached records.
      const ids = [...this.directory.records.keys()].filter((id) => id > after).sort();
      entries = ids.slice(0, size).map((id) => this.directory.records.get(id)!);
      more = ids.length > size;
    }
    const partitions = entries.map(toPb);
    const last = entries[entries.length - 1];
    return { partitions, nextPageToken: more && last ? Buffer.from(last.id).toString('base64url') : '' };
  }

  override async deletePartition(r: pb.DeletePartitionRequest): Promise<pb.DeletePartitionResponse> {
    const id = parsePartitionName(r.name);
    this.requireSynced();
    for (let attempt = 0; ; attempt++) {
      const e = await this.directory.fetch(id); // a mutation: etcd must answer
      if (!e) throw notFound(id);
      if (e.incompatible) throw new ApiError(Code.FAILED_PRECONDITION, 'HV_STATUS_INVALID_PARTITION_STATE', `partition ${id}: ${e.incompatible.reason}`);
      const rec = e.rec!;
      if (rec.state === 'CREATING') throw unavailable(`partition ${id} is being created; retry`);
      const m = this.directory.memberOf(rec);
      if (!('why' in m)) {
        // Its agent is a member: the partition exists there (ACTIVE, or UNAVAILABLE while unreachable).
        await m.view
          .client!.partitions.deletePartition({ name: r.name })
          .catch((err) => (err instanceof VsmError && err.code === Code.NOT_FOUND ? undefined : relay(err)));
      }
      const ns = this.store.ns;
      const key = partitionKey(id);
      const ops = [ns.delete().key(key)];
      if (rec.requestId) ops.push(ns.delete().key(requestKey(rec.requestId)));
      const res = await ns
        .if(key, 'Mod', '==', e.modRevision)
        .then(...ops)
        .commit()
        .catch((err) => Promise.reject(storeUnavailable(err, `deleting the record of partition ${id}`)));
      if (res.succeeded) {
        this.directory.applyLocal(id, undefined, Number(res.header.revision));
        if (rec.checkpoint) this.dropCheckpointFile(rec.checkpoint.file);
        return {};
      }
      if (attempt >= 3) throw new ApiError(Code.ABORTED, 'HV_STATUS_OPERATION_FAILED', `partition ${id} kept changing while it was deleted; retry`);
    }
  }

  override async getCapabilities(_r: pb.GetCapabilitiesRequest): Promise<pb.Capabilities> {
    this.requireSynced();
    const ready = [...this.directory.members.values()].filter((v) => v.readiness === 'READY' && v.capabilities).sort((a, b) => a.name.localeCompare(b.name));
    if (!ready[0]) throw unavailable('no agent in the fleet answers yet');
    return ready[0].capabilities!;
  }

  override async listAgents(r: pb.ListAgentsRequest): Promise<pb.ListAgentsResponse> {
    this.requireSynced();
    const size = r.pageSize === 0 ? 50 : Math.min(r.pageSize, 1000);
    let after = '';
    if (r.pageToken) {
      after = Buffer.from(r.pageToken, 'base64url').toString();
      if (!after || Buffer.from(after).toString('base64url') !== r.pageToken) throw invalidArgument('page_token is not valid');
    }
    const views = [...this.directory.members.values()].filter((v) => v.name > after).sort((a, b) => (a.name < b.name ? -1 : 1));
    const page = views.slice(0, size);
    const agents = page.map((v): pb.Agent => {
      const m = v.member;
      const load = this.directory.loadOf(v);
      return {
        name: `agents/${v.name}`,
        address: m?.address ?? '',
        state: pb.AgentState[`AGENT_STATE_${v.readiness}`],
        stateReason: v.reason,
        capacity: m
          ? { partitions: m.capacity.partitions, vps: m.capacity.vps, memoryBytes: m.capacity.memoryBytes, memslots: m.capacity.memslots }
          : undefined,
        load: { partitions: load.partitions, vps: load.vps, memoryBytes: load.memoryBytes, memslots: 0 },
        labels: { ...(m?.labels ?? {}) },
        backend: m?.backend ?? '',
        version: m?.version ?? '',
        registerTimeUnixMs: BigInt(m?.registerTimeUnixMs ?? 0),
      };
    });
    return { agents, nextPageToken: views.length > size ? Buffer.from(page[page.length - 1]!.name).toString('base64url') : '' };
  }

  // ---- live migration (#17; the data path is backends/migration.ts) ---------------------------

  /**
   * MigratePartition in fleet mode: the target is a fleet member (its name, or agents/{name} as
   * ListAgents names it), placed like RecoverPartition's target. The switch-over moves the partition
   * record atomically (switchRecordAgent); while it migrates, this replica's checkpoints leave the
   * partition alone (busy).
   */
  override async migratePartition(r: pb.MigratePartitionRequest, sink: StreamSink<pb.MigrationProgress>, signal: AbortSignal): Promise<void> {
    const id = parsePartitionName(r.name);
    const wanted = r.targetAgent.startsWith('agents/') ? r.targetAgent.slice('agents/'.length) : r.targetAgent;
    if (!wanted) throw invalidArgument('target_agent is required (a fleet agent name, or agents/{name} as ListAgents names it)');
    await this.notBusy(id);
    const { view: from, rec } = this.agentOf(await this.record(id, true));
    const to = this.place({ vpCount: rec.vpCount, memoryBytes: rec.memoryBytes, agent: wanted, selector: {} }, new Set());
    this.busy.add(id);
    try {
      await migratePartition(
        r,
        {
          source: { address: from.member!.address, client: from.client! },
          target: { address: to.member!.address, client: to.client! },
          relay,
          switched: (imported) => this.switchRecordAgent(id, rec, to, imported),
        },
        sink,
        signal,
      );
    } finally {
      this.busy.delete(id);
    }
  }

  /**
   * A migration's switch-over: compare-and-swap of the partition record from the source agent (its
   * agent, incarnation and generation as the migration began) to the target. A record that changed
   * meanwhile (deleted, checkpointed or moved by another replica, its agent lost) is ABORTED: the
   * migration is undone and the partition stays on the source.
   */
  private async switchRecordAgent(id: string, from: PartitionRecord, to: MemberView, imported: pb.Partition): Promise<void> {
    const e = await this.directory.fetch(id);
    const cur = e?.rec;
    if (!e || !cur || cur.agent !== from.agent || cur.incarnation !== from.incarnation || cur.generation !== from.generation || cur.state !== 'ACTIVE')
      throw new ApiError(
        Code.ABORTED,
        'HV_STATUS_OPERATION_FAILED',
        `partition ${id}: its record changed during the migration (${cur ? `${cur.state} on agent ${cur.agent}, generation ${cur.generation}` : 'deleted'}; expected ACTIVE on ${from.agent}, generation ${from.generation}); the move was undone`,
      );
    const moved: PartitionRecord = {
      ...cur,
      agent: to.name,
      incarnation: to.member!.incarnation,
      generation: cur.generation + 1,
      stateTimeUnixMs: Date.now(),
      partition: pb.Partition.toJSON(imported),
    };
    const key = partitionKey(id);
    const ns = this.store.ns;
    const res = await ns
      .if(key, 'Mod', '==', e.modRevision)
      .then(ns.put(key).value(encodeRecord(moved)))
      .commit()
      .catch((err) => Promise.reject(storeUnavailable(err, `switching partition ${id} to agent ${to.name}`)));
    if (!res.succeeded)
      throw new ApiError(Code.ABORTED, 'HV_STATUS_OPERATION_FAILED', `partition ${id}: its record changed at the switch-over; the move was undone`);
    this.directory.applyLocal(id, moved, Number(res.header.revision));
    this.log.info({ partition: id, from: from.agent, to: to.name }, 'fleet: partition migrated');
  }

  // ---- durability: checkpoints, recovery, repairs ---------------------------------------------

  override async checkpointPartition(r: pb.CheckpointPartitionRequest): Promise<pb.Partition> {
    const id = parsePartitionName(r.name);
    this.requireSynced();
    if (!this.store.config.checkpointDir)
      throw new ApiError(Code.FAILED_PRECONDITION, 'HV_STATUS_FEATURE_UNAVAILABLE', 'CheckpointPartition: vsm-service has no --checkpoint-dir');
    await this.notBusy(id);
    this.busy.add(id);
    try {
      return this.view(await this.checkpoint(id));
    } finally {
      this.busy.delete(id);
    }
  }

  override async recoverPartition(r: pb.RecoverPartitionRequest): Promise<pb.Partition> {
    const id = parsePartitionName(r.name);
    this.requireSynced();
    if (!this.store.config.checkpointDir)
      throw new ApiError(
        Code.FAILED_PRECONDITION,
        'HV_STATUS_FEATURE_UNAVAILABLE',
        'RecoverPartition: vsm-service has no --checkpoint-dir (no checkpoints to restart from)',
      );
    await this.notBusy(id);
    this.busy.add(id);
    try {
      return await this.recover(id, r.targetAgent, 'RecoverPartition');
    } finally {
      this.busy.delete(id);
    }
  }

  /** Waits while this replica's background work (a checkpoint, a restart) holds the partition. */
  private async notBusy(id: string): Promise<void> {
    for (const end = Date.now() + 120_000; this.busy.has(id) && Date.now() < end; ) await new Promise((r) => setTimeout(r, 50));
    if (this.busy.has(id)) throw new ApiError(Code.ABORTED, 'HV_STATUS_OPERATION_FAILED', `partition ${id} is busy here (a restart or checkpoint); retry`);
  }

  private checkpointPath(file: string): string {
    return path.join(this.store.config.checkpointDir!, file);
  }

  private dropCheckpointFile(file: string): void {
    fs.promises.unlink(this.checkpointPath(file)).catch(() => undefined);
  }

  /** Streams the partition's full state from its agent into a new checkpoint file and records it. */
  private async checkpoint(id: string): Promise<PartitionRecord> {
    const e = await this.record(id, true);
    const { view, rec } = this.agentOf(e);
    const file = `${id}.${Date.now()}.${crypto.randomBytes(4).toString('hex')}.vsmsnap`;
    const final = this.checkpointPath(file);
    const partial = `${final}.partial`;
    const hash = crypto.createHash('sha256').update(SNAPSHOT_FILE_MAGIC);
    let bytes = SNAPSHOT_FILE_MAGIC.length;
    const started = Date.now();
    try {
      async function* hashed(chunks: AsyncIterable<pb.SnapshotChunk>): AsyncIterable<pb.SnapshotChunk> {
        for await (const c of chunks) {
          for (const b of frameSnapshotChunk(c)) {
            hash.update(b);
            bytes += b.length;
          }
          yield c;
        }
      }
      await writeSnapshotFile(partial, hashed(view.client!.snapshots.exportPartition(pb.ExportPartitionRequest.fromPartial({ name: `partitions/${id}` }))));
      await fs.promises.rename(partial, final);
      const dir = await fs.promises.open(this.store.config.checkpointDir!, 'r');
      await dir.sync().finally(() => dir.close());
    } catch (err) {
      await fs.promises.unlink(partial).catch(() => undefined);
      if (err instanceof VsmError) {
        if (err.code === Code.UNAVAILABLE) this.directory.reportUnreachable(view.name, err.message);
        return relay(err);
      }
      throw new ApiError(
        Code.INTERNAL,
        'HV_STATUS_OPERATION_FAILED',
        `checkpoint of partition ${id} could not be written to --checkpoint-dir: ${errText(err)}`,
      );
    }
    const ref = { file, timeUnixMs: started, bytes, sha256: hash.digest('hex') };
    // Recorded only if the partition is still where it was exported from (and no newer checkpoint won).
    for (let attempt = 0; attempt < 4; attempt++) {
      const cur = await this.directory.fetch(id).catch(() => undefined);
      const now = cur?.rec;
      if (!now || now.agent !== rec.agent || now.incarnation !== rec.incarnation || now.state !== 'ACTIVE' || (now.checkpoint?.timeUnixMs ?? 0) >= started) {
        this.dropCheckpointFile(file);
        if (now?.checkpoint && now.agent === rec.agent && now.state === 'ACTIVE') return now;
        throw new ApiError(Code.ABORTED, 'HV_STATUS_OPERATION_FAILED', `partition ${id} changed while it was checkpointed; retry`);
      }
      const next: PartitionRecord = { ...now, checkpoint: ref, generation: now.generation + 1 };
      const key = partitionKey(id);
      const res = await this.store.ns
        .if(key, 'Mod', '==', cur!.modRevision)
        .then(this.store.ns.put(key).value(encodeRecord(next)))
        .commit()
        .catch((err) => {
          this.dropCheckpointFile(file);
          return Promise.reject(storeUnavailable(err, `recording the checkpoint of partition ${id}`));
        });
      if (res.succeeded) {
        this.directory.applyLocal(id, next, Number(res.header.revision));
        if (now.checkpoint && now.checkpoint.file !== file) this.dropCheckpointFile(now.checkpoint.file);
        this.log.debug({ partition: id, agent: rec.agent, bytes, ms: Date.now() - started }, 'fleet: checkpoint written');
        return next;
      }
    }
    this.dropCheckpointFile(file);
    throw new ApiError(Code.ABORTED, 'HV_STATUS_OPERATION_FAILED', `partition ${id} kept changing while its checkpoint was recorded; retry`);
  }

  /** Restarts an UNAVAILABLE partition from its checkpoint on another agent, under the same id. */
  private async recover(id: string, targetAgent: string, why: string): Promise<pb.Partition> {
    const e = await this.directory.fetch(id);
    if (!e) throw notFound(id);
    if (e.incompatible) throw precondition(`partition ${id}: ${e.incompatible.reason}`);
    const rec = e.rec!;
    if (rec.state !== 'UNAVAILABLE')
      throw precondition(
        `partition ${id} is ${rec.state}${rec.state === 'ACTIVE' ? ` on agent ${rec.agent}` : ''}: only an UNAVAILABLE partition (its agent lost) is restarted elsewhere`,
      );
    if (!rec.checkpoint) throw precondition(`partition ${id} has no checkpoint to restart from (it was lost before its first checkpoint)`);
    const file = this.checkpointPath(rec.checkpoint.file);
    if (!fs.existsSync(file))
      throw new ApiError(
        Code.DATA_LOSS,
        'HV_STATUS_OPERATION_FAILED',
        `partition ${id}: its checkpoint file ${rec.checkpoint.file} is not in --checkpoint-dir`,
      );
    const view = this.place({ vpCount: rec.vpCount, memoryBytes: rec.memoryBytes, agent: targetAgent, selector: {} }, new Set());
    const release = this.reserve(view.name, rec.vpCount, rec.memoryBytes);
    const key = partitionKey(id);
    const ns = this.store.ns;
    const restarting: PartitionRecord = {
      ...rec,
      state: 'CREATING',
      agent: view.name,
      incarnation: view.member!.incarnation,
      stateReason: '',
      stateTimeUnixMs: Date.now(),
      lostBy: undefined,
      generation: rec.generation + 1,
      creator: this.presence.id,
      recovering: { agent: rec.agent, incarnation: rec.incarnation, stateReason: rec.stateReason, stateTimeUnixMs: rec.stateTimeUnixMs, lostBy: rec.lostBy },
    };
    let revision: number;
    try {
      const res = await ns
        .if(key, 'Mod', '==', e.modRevision)
        .then(ns.put(key).value(encodeRecord(restarting)))
        .commit()
        .catch((err) => Promise.reject(storeUnavailable(err, `recording the restart of partition ${id}`)));
      if (!res.succeeded)
        throw new ApiError(Code.ABORTED, 'HV_STATUS_OPERATION_FAILED', `partition ${id} changed meanwhile (restarted by another replica?); retry`);
      revision = Number(res.header.revision);
      this.directory.applyLocal(id, restarting, revision);
    } finally {
      release();
    }
    this.log.warn({ partition: id, from: rec.agent, to: view.name, checkpoint: rec.checkpoint, why }, 'fleet: restarting a lost partition from its checkpoint');
    let answer: pb.Partition;
    try {
      answer = await view.client!.snapshots.importPartition(readSnapshotFiles([file]), { partitionId: id });
    } catch (err) {
      if (err instanceof VsmError && err.code === Code.UNAVAILABLE) this.directory.reportUnreachable(view.name, err.message);
      // Back to UNAVAILABLE where it was, saying why the restart failed.
      const back: PartitionRecord = {
        ...rec,
        stateReason: `restart on agent ${view.name} failed (${errText(err)}); ${rec.stateReason}`,
        generation: rec.generation + 2,
      };
      const res = await ns
        .if(key, 'Mod', '==', revision)
        .then(ns.put(key).value(encodeRecord(back)))
        .commit()
        .catch(() => undefined);
      if (res?.succeeded) this.directory.applyLocal(id, back, Number(res.header.revision));
      return relay(err);
    }
    const active: PartitionRecord = {
      ...restarting,
      state: 'ACTIVE',
      stateTimeUnixMs: Date.now(),
      generation: restarting.generation + 1,
      creator: undefined,
      recovering: undefined,
      partition: pb.Partition.toJSON(answer),
    };
    const done = await ns
      .if(key, 'Mod', '==', revision)
      .then(ns.put(key).value(encodeRecord(active)))
      .commit()
      .catch((err) => Promise.reject(storeUnavailable(err, `recording partition ${id} as restarted`)));
    if (!done.succeeded) {
      const now = await this.directory.fetch(id);
      if (!now?.rec) throw new ApiError(Code.ABORTED, 'HV_STATUS_OPERATION_FAILED', `partition ${id} was deleted while it was restarted`);
      return this.view(now.rec);
    }
    this.directory.applyLocal(id, active, Number(done.header.revision));
    this.log.info({ partition: id, agent: view.name, checkpointTimeUnixMs: rec.checkpoint.timeUnixMs }, 'fleet: partition restarted from its checkpoint');
    return this.view(active);
  }

  /**
   * A CREATING record whose replica died (between the record and the agent's answer): the agent has
   * the partition -> ACTIVE with the agent's answer; it has not -> a create's record is removed (its
   * request_id with it), a restart's goes back to UNAVAILABLE where it was. An agent that does not
   * answer is asked again on a later round; a lost agent's records are marked UNAVAILABLE anyway.
   */
  private async repairCreating(id: string): Promise<void> {
    const e = await this.directory.fetch(id);
    const rec = e?.rec;
    if (!e || !rec || rec.state !== 'CREATING') return;
    const m = this.directory.memberOf(rec);
    if ('why' in m) return;
    let live: pb.Partition | undefined;
    try {
      live = await m.view.client!.partitions.getPartition({ name: `partitions/${id}` }, { deadlineMs: 10_000 });
    } catch (err) {
      if (!(err instanceof VsmError && err.code === Code.NOT_FOUND)) return;
    }
    const ns = this.store.ns;
    const key = partitionKey(id);
    let txn = ns.if(key, 'Mod', '==', e.modRevision);
    let next: PartitionRecord | undefined;
    let what: string;
    if (live) {
      next = {
        ...rec,
        state: 'ACTIVE',
        stateReason: '',
        stateTimeUnixMs: Date.now(),
        generation: rec.generation + 1,
        creator: undefined,
        recovering: undefined,
        partition: pb.Partition.toJSON(live),
      };
      what = 'the agent has it: ACTIVE';
    } else if (rec.recovering) {
      const r = rec.recovering;
      next = {
        ...rec,
        state: 'UNAVAILABLE',
        agent: r.agent,
        incarnation: r.incarnation,
        stateReason: `its restart on agent ${rec.agent} was interrupted (the replica doing it is gone); ${r.stateReason}`,
        stateTimeUnixMs: r.stateTimeUnixMs,
        lostBy: r.lostBy,
        generation: rec.generation + 1,
        creator: undefined,
        recovering: undefined,
      };
      what = 'restart interrupted: UNAVAILABLE again';
    } else {
      what = 'the agent never created it: record removed';
    }
    if (next) txn = txn.then(ns.put(key).value(encodeRecord(next)));
    else if (rec.requestId) txn = txn.then(ns.delete().key(key), ns.delete().key(requestKey(rec.requestId)));
    else txn = txn.then(ns.delete().key(key));
    const res = await txn.commit().catch(() => undefined);
    if (!res?.succeeded) return;
    this.directory.applyLocal(id, next, Number(res.header.revision));
    this.log.warn(
      { partition: id, agent: rec.agent, creator: rec.creator, outcome: what },
      'fleet: repaired a partition left CREATING by a replica that is gone',
    );
  }

  /** The live replicas, this one included, in a stable order (who does a partition's background work). */
  private responsibleFor(id: string, replicas: string[]): boolean {
    return replicas[staticOwner(id, replicas)] === this.presence.id;
  }

  /** One round of background work over the cached records (only those this replica is responsible for). */
  private async maintain(): Promise<void> {
    if (this.closed || !this.directory.synced || !this.directory.watching || this.maintaining) return;
    this.maintaining = true;
    try {
      const now = Date.now();
      const replicas = [...new Set([...this.directory.replicas, this.presence.id])].sort();
      const cfg = this.store.config;
      const ttlMs = (this.opts.replicaTtlSeconds ?? 10) * 1000;
      for (const e of this.directory.records.values()) {
        const rec = e.rec;
        if (!rec || this.busy.has(rec.id)) continue;
        if (rec.state === 'CREATING') {
          // Orphaned: its creator's presence is gone (seen so here for a lease TTL), or an older version's record is old.
          const gone = rec.creator
            ? rec.creator !== this.presence.id && !this.directory.replicas.has(rec.creator)
            : now - rec.stateTimeUnixMs > (this.opts.orphanCreatingMs ?? 60_000);
          if (!gone) {
            this.orphanSince.delete(rec.id);
            continue;
          }
          const since = this.orphanSince.get(rec.id) ?? now;
          this.orphanSince.set(rec.id, since);
          if (rec.creator && now - since < ttlMs) continue;
          if (!this.responsibleFor(rec.id, replicas)) continue;
          this.task(rec.id, () => this.repairCreating(rec.id));
        } else if (!this.responsibleFor(rec.id, replicas)) {
          // Another replica's share.
        } else if (rec.state === 'UNAVAILABLE') {
          if (rec.recoveryPolicy !== 'RESTART' || !rec.checkpoint || !cfg.checkpointDir || (this.retryAt.get(rec.id) ?? 0) > now) continue;
          this.task(rec.id, async () => {
            try {
              await this.recover(rec.id, '', 'recovery_policy RESTART');
              this.retryAt.delete(rec.id);
            } catch (err) {
              // No agent free yet, the store away, ...: again in a few seconds.
              this.retryAt.set(rec.id, Date.now() + 3000);
              this.log.warn({ partition: rec.id, err: errText(err) }, 'fleet: automatic restart failed; retrying');
            }
          });
        } else if (cfg.checkpointDir && (cfg.checkpointIntervalMs ?? 0) > 0 && this.checkpointsInFlight < CHECKPOINTS_IN_FLIGHT) {
          if (rec.checkpoint && now - rec.checkpoint.timeUnixMs < cfg.checkpointIntervalMs!) continue;
          if ((this.retryAt.get(rec.id) ?? 0) > now || 'why' in this.directory.memberOf(rec)) continue;
          this.checkpointsInFlight++;
          this.task(rec.id, async () => {
            try {
              await this.checkpoint(rec.id);
              this.retryAt.delete(rec.id);
            } catch (err) {
              this.retryAt.set(rec.id, Date.now() + Math.min(cfg.checkpointIntervalMs!, 30_000));
              this.log.warn({ partition: rec.id, err: errText(err) }, 'fleet: periodic checkpoint failed');
            } finally {
              this.checkpointsInFlight--;
            }
          });
        }
      }
    } finally {
      this.maintaining = false;
    }
  }

  private task(id: string, run: () => Promise<void>): void {
    this.busy.add(id);
    void run()
      .catch((err) => this.log.warn({ partition: id, err: errText(err) }, 'fleet: background work failed'))
      .finally(() => this.busy.delete(id));
  }

  override async close(): Promise<void> {
    this.closed = true;
    if (this.maintenanceTimer) clearInterval(this.maintenanceTimer);
    await this.presence.close().catch(() => undefined);
    await this.directory.close();
    this.store.close();
  }
}
