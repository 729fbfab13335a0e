// fleet: the agent backend when etcd is configured (vsm-service --backend agent --etcd-endpoints).
// Every forwarded call goes to the agent named by the partition's record (this replica's watched
// cache; a miss reads etcd), never to all agents. CreatePartition places by free capacity (or the
// request's agent / agent_selector) and writes the record in a transaction that fails if the id
// exists, so an id is unique across replicas; a request_id is recorded in the same transaction, so
// a retry through any replica returns the same partition. Get/List read the records (List pages from
// etcd; Get adds the live fields from the one agent). With etcd unreachable, routing and reads use
// the cached records and Create/Delete fail UNAVAILABLE.
import * as crypto from 'node:crypto';
import { status as Code } from '@grpc/grpc-js';
import { pb, VsmError } from '@vsm/client';
import type { Logger } from 'pino';
import { RemoteBackend, type RemoteAgent, relay } from '../backends/remote';
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
}

const unavailable = (message: string) => new ApiError(Code.UNAVAILABLE, 'HV_STATUS_OPERATION_FAILED', message);
const notFound = (id: string) => new ApiError(Code.NOT_FOUND, 'HV_STATUS_INVALID_PARTITION_ID', `partition ${id} not found`);

export class FleetBackend extends RemoteBackend {
  readonly directory: FleetDirectory;
  private readonly store: FleetStore;
  private readonly log: Logger;
  /** Placements decided here whose CREATING record is not written yet (concurrent creates see them). */
  private readonly pending = new Map<string, { partitions: number; vps: number; memoryBytes: bigint }>();

  constructor(o: FleetBackendOptions) {
    super([]);
    this.store = o.store;
    this.log = o.log;
    this.directory = new FleetDirectory({ store: o.store, log: o.log, probeDeadlineMs: o.probeDeadlineMs, probeIntervalMs: o.probeIntervalMs });
  }

  /** Starts loading from etcd (retrying until it answers); `directory.firstSync` resolves when loaded. */
  start(): void {
    this.directory.start();
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
    this.requireSynced();
    const selector = r.agentSelector ?? {};
    const fingerprint = JSON.stringify({
      partitionId: r.partitionId,
      partition: pb.Partition.toJSON(pb.Partition.fromPartial(want)),
      agent: r.agent,
      agentSelector: Object.entries(selector).sort(([a], [b]) => a.localeCompare(b)),
    });
    const forward: pb.CreatePartitionRequest = { ...r, agent: '', agentSelector: {} };
    return this.placeAndCreate({
      what: 'CreatePartition',
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

  private async placeAndCreate(o: {
    what: string;
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
          if (!o.agent && attempt + 1 < PLACEMENT_ATTEMPTS) {
            this.log.warn({ agent: view.name, partition: id, err: e.message }, `fleet: ${o.what} failed on the chosen agent; placing elsewhere`);
            continue;
          }
        }
        return relay(e);
      }
      const active: PartitionRecord = {
        ...rec,
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
      return { ...answer, agent: view.name, requestId: o.requestId, stateReason: '' };
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
    return { ...live, agent: e.rec!.agent, requestId: e.rec!.requestId, stateReason: live.stateReason };
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

  override async close(): Promise<void> {
    await this.directory.close();
    this.store.close();
  }
}
