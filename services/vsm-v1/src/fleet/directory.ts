// fleet, service side: this replica's view of the fleet, kept current from etcd. One paged range at a
// pinned revision loads every membership and partition record, then one watch from the next revision
// keeps them current (a compacted or failed watch loads again). Routing reads this cache; placement
// counts each agent's load from it. Writes made here are applied to the cache at once (by revision,
// so a later, older watch event never undoes them).
//
// Agent loss: when a membership disappears (lease expired, or the agent shut down) or comes back with
// a new incarnation, every record still ACTIVE/CREATING on the old incarnation is rewritten
// UNAVAILABLE (time, agent, reason) with a compare-and-swap on its revision; all replicas may try, one
// wins. Until then routing already fails fast (the record's agent is no member). The same
// incarnation registering again (its lease lapsed while etcd was away, the partitions are intact)
// turns them ACTIVE again. Each replica checks that a new member's address answers before placing
// anything there (CONNECTING -> READY or UNREACHABLE, checked again every few seconds).
import { connect, type pb, type VsmClient } from '@vsm/client';
import type { IKeyValue, Namespace, Watcher } from 'etcd3';
import type { Logger } from 'pino';
import {
  AGENTS,
  type AgentMember,
  type Incompatible,
  PARTITIONS,
  type PartitionRecord,
  REPLICAS,
  agentKey,
  decodeReplicaId,
  decodeMember,
  decodeRecord,
  encodeRecord,
  isIncompatible,
  partitionKey,
} from './records';
import { type FleetStore, storeUnavailable } from './store';

/** A forwarded unary call's default deadline (as RemoteBackend's). */
const AGENT_DEADLINE_MS = 30_000;
const PAGE = 1000;

export type AgentReadiness = 'CONNECTING' | 'READY' | 'UNREACHABLE' | 'INCOMPATIBLE';

export interface MemberView {
  /** The key's name (agents/{name}). */
  name: string;
  member?: AgentMember;
  incompatible?: Incompatible;
  modRevision: number;
  readiness: AgentReadiness;
  reason: string;
  client?: VsmClient;
  capabilities?: pb.Capabilities;
}

export interface RecordEntry {
  id: string;
  rec?: PartitionRecord;
  incompatible?: Incompatible;
  modRevision: number;
}

export interface Load {
  partitions: number;
  vps: number;
  memoryBytes: bigint;
}

export interface DirectoryOptions {
  store: FleetStore;
  log: Logger;
  /** How long a new member's address may take to answer (default 3000 ms). */
  probeDeadlineMs?: number;
  /** How often an unreachable member is checked again (default 3000 ms). */
  probeIntervalMs?: number;
}

export const prefixEnd = (p: string) => p.slice(0, -1) + String.fromCharCode(p.charCodeAt(p.length - 1) + 1);
const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

export class FleetDirectory {
  readonly members = new Map<string, MemberView>();
  readonly records = new Map<string, RecordEntry>();
  /** Live service replicas (their presence keys), this one included once registered. */
  readonly replicas = new Set<string>();
  /** Called after a record changed here (the backend's maintenance: recovery, repair). */
  onRecordChange: ((e: RecordEntry) => void) | undefined;
  private readonly byAgent = new Map<string, Set<string>>();
  /** Revisions of writes applied here before the watch delivered them. */
  private readonly localRev = new Map<string, number>();
  private readonly waiters = new Map<string, Set<() => void>>();
  private readonly probeTimers = new Map<string, NodeJS.Timeout>();
  private watcher: Watcher | undefined;
  private closed = false;
  private resyncing: Promise<void> | undefined;
  /** True once the first full load finished (health SERVING from then on). */
  synced = false;
  /** Whether the watch stream is connected (etcd reachable). */
  watching = false;
  private onSynced: (() => void) | undefined;
  readonly firstSync = new Promise<void>((r) => {
    this.onSynced = r;
  });
  private readonly ns: Namespace;

  constructor(private readonly o: DirectoryOptions) {
    this.ns = o.store.ns;
  }

  start(): void {
    void this.syncLoop();
  }

  private async syncLoop(): Promise<void> {
    for (let attempt = 0; !this.closed; attempt++) {
      try {
        await this.resync();
        return;
      } catch (e) {
        if (this.closed) return;
        this.o.log.error(
          { err: e instanceof Error ? e.message : String(e), endpoints: this.o.store.config.endpoints, attempt },
          this.synced ? 'fleet: reloading from etcd failed; retrying' : 'fleet: etcd unreachable; retrying (health NOT_SERVING until connected)',
        );
        await delay(Math.min(5000, 200 * 2 ** Math.min(attempt, 5)));
      }
    }
  }

  /** Loads everything at one revision, then watches from the next. */
  private resync(): Promise<void> {
    this.resyncing ??= this.doResync().finally(() => {
      this.resyncing = undefined;
    });
    return this.resyncing;
  }

  private async doResync(): Promise<void> {
    const old = this.watcher;
    this.watcher = undefined;
    if (old) await old.cancel().catch(() => undefined);
    let revision: string | undefined;
    const load = async (prefix: string): Promise<IKeyValue[]> => {
      const out: IKeyValue[] = [];
      let start = prefix;
      for (;;) {
        let b = this.ns
          .getAll()
          .inRange({ start, end: prefixEnd(prefix) })
          .limit(PAGE);
        if (revision) b = b.revision(revision);
        const res = await b.exec();
        revision ??= res.header.revision;
        out.push(...res.kvs);
        if (!res.more || res.kvs.length === 0) return out;
        start = res.kvs[res.kvs.length - 1]!.key.toString() + '\0';
      }
    };
    const agents = await load(AGENTS);
    const parts = await load(PARTITIONS);
    const replicas = await load(REPLICAS);
    this.replicas.clear();
    for (const kv of replicas) this.replicas.add(decodeReplicaId(kv.key.toString()));
    // Replace the view: memberships first (their loss marks records), then records.
    const seen = new Set<string>();
    for (const kv of agents) {
      const name = decodeURIComponent(kv.key.toString().slice(AGENTS.length));
      seen.add(name);
      this.memberPut(name, kv.value, Number(kv.mod_revision), true);
    }
    for (const name of [...this.members.keys()]) if (!seen.has(name)) this.memberDelete(name, true);
    this.records.clear();
    this.byAgent.clear();
    this.localRev.clear();
    for (const kv of parts) this.recordPut(kv.key.toString().slice(PARTITIONS.length), kv.value, Number(kv.mod_revision));
    const watcher = await this.ns
      .watch()
      .prefix('')
      .startRevision(String(Number(revision) + 1))
      .create();
    if (this.closed) {
      await watcher.cancel().catch(() => undefined);
      return;
    }
    this.watcher = watcher;
    this.watching = true;
    watcher.on('data', (res) => {
      for (const ev of res.events) this.applyEvent(ev.type, ev.kv);
    });
    watcher.on('disconnected', (err) => {
      if (this.watching) this.o.log.warn({ err: err?.message }, 'fleet: etcd watch disconnected; serving from the cached records');
      this.watching = false;
    });
    watcher.on('connected', () => {
      if (!this.watching) this.o.log.info('fleet: etcd watch connected again');
      this.watching = true;
      this.reconcile();
    });
    watcher.on('error', (err) => {
      // Compacted past our revision, or cancelled by etcd: load everything again.
      this.o.log.warn({ err: err?.message }, 'fleet: etcd watch cancelled; reloading');
      this.watching = false;
      if (!this.closed) void this.syncLoop();
    });
    const first = !this.synced;
    this.synced = true;
    if (first) {
      this.o.log.info({ agents: this.members.size, partitions: this.records.size, revision }, 'fleet: loaded from etcd');
      this.onSynced?.();
    }
    this.reconcile();
  }

  private applyEvent(type: string, kv: IKeyValue): void {
    const key = kv.key.toString();
    const rev = Number(kv.mod_revision);
    const local = this.localRev.get(key);
    if (local !== undefined) {
      if (rev >= local) this.localRev.delete(key);
      if (rev <= local) return;
    }
    const put = type === 'Put';
    if (key.startsWith(AGENTS)) {
      const name = decodeURIComponent(key.slice(AGENTS.length));
      if (put) this.memberPut(name, kv.value, rev, false);
      else this.memberDelete(name, false);
    } else if (key.startsWith(PARTITIONS)) {
      const id = key.slice(PARTITIONS.length);
      if (put) this.recordPut(id, kv.value, rev);
      else this.recordDelete(id);
    } else if (key.startsWith(REPLICAS)) {
      if (put) this.replicas.add(decodeReplicaId(key));
      else this.replicas.delete(decodeReplicaId(key));
    }
  }

  // ---- memberships --------------------------------------------------------------------------

  private memberPut(name: string, value: Buffer, rev: number, loading: boolean): void {
    const prev = this.members.get(name);
    if (prev && prev.modRevision === rev) return;
    const decoded = decodeMember(value);
    if (isIncompatible(decoded)) {
      this.dropClient(prev);
      this.members.set(name, { name, incompatible: decoded, modRevision: rev, readiness: 'INCOMPATIBLE', reason: decoded.reason });
      this.o.log.warn({ agent: name, reason: decoded.reason }, 'fleet: agent membership not understood; no placement on it');
      return;
    }
    const sameProcess = prev?.member?.incarnation === decoded.incarnation && prev.member.address === decoded.address;
    const view: MemberView = sameProcess
      ? { ...prev!, member: decoded, modRevision: rev }
      : { name, member: decoded, modRevision: rev, readiness: 'CONNECTING', reason: 'not checked yet' };
    if (!sameProcess) {
      this.dropClient(prev);
      view.client = connect(decoded.address, { deadlineMs: AGENT_DEADLINE_MS, retries: 0 });
    }
    this.members.set(name, view);
    if (!loading)
      this.o.log.info(
        { agent: name, address: decoded.address, incarnation: decoded.incarnation },
        prev ? 'fleet: agent membership updated' : 'fleet: agent joined',
      );
    if (prev?.member && prev.member.incarnation !== decoded.incarnation)
      this.markLost(name, prev.member.incarnation, `agent ${name} restarted (a new incarnation registered); its partitions were lost`, 'agent-restarted');
    if (!sameProcess) void this.probe(name, view);
    // The same process registered again after its lease lapsed: its partitions are intact.
    if (!prev || sameProcess) this.revive(name, decoded.incarnation);
  }

  private memberDelete(name: string, loading: boolean): void {
    const prev = this.members.get(name);
    if (!prev) return;
    this.members.delete(name);
    this.dropClient(prev);
    if (!loading) this.o.log.warn({ agent: name }, 'fleet: agent left (membership lease expired or it shut down)');
    if (prev.member) this.markLost(name, prev.member.incarnation, `agent ${name} left the fleet (its membership lease expired, or it shut down)`, 'agent-lost');
  }

  private dropClient(v: MemberView | undefined): void {
    if (!v) return;
    const t = this.probeTimers.get(v.name);
    if (t) clearTimeout(t);
    this.probeTimers.delete(v.name);
    // In-flight calls on the old channel finish or fail on their own; new ones use the new client.
    if (v.client) {
      const c = v.client;
      setTimeout(() => c.close(), AGENT_DEADLINE_MS).unref();
    }
  }

  /** Asks a member's address to answer (GetCapabilities, short deadline). */
  private async probe(name: string, view: MemberView): Promise<void> {
    if (this.closed || !view.client) return;
    const deadlineMs = this.o.probeDeadlineMs ?? 3000;
    try {
      const caps = await view.client.partitions.getCapabilities({}, { deadlineMs });
      if (this.members.get(name) !== view) return;
      const was = view.readiness;
      view.readiness = 'READY';
      view.reason = '';
      view.capabilities = caps;
      if (was !== 'READY') this.o.log.info({ agent: name, address: view.member?.address }, 'fleet: agent answers; placement on it enabled');
    } catch (e) {
      if (this.members.get(name) !== view) return;
      const was = view.readiness;
      view.readiness = 'UNREACHABLE';
      view.reason = `${view.member?.address} does not answer: ${e instanceof Error ? e.message : String(e)}`;
      if (was !== 'UNREACHABLE') this.o.log.warn({ agent: name, reason: view.reason }, 'fleet: agent unreachable; no placement on it');
      const t = setTimeout(() => void this.probe(name, view), this.o.probeIntervalMs ?? 3000);
      t.unref();
      this.probeTimers.set(name, t);
    }
  }

  /** A forwarded call found the agent down: no placement there until it answers a check again. */
  reportUnreachable(name: string, why: string): void {
    const view = this.members.get(name);
    if (view?.readiness !== 'READY') return;
    view.readiness = 'UNREACHABLE';
    view.reason = why;
    const t = setTimeout(() => void this.probe(name, view), 200);
    t.unref();
    this.probeTimers.set(name, t);
  }

  /** The live member a record's partition is on, or why there is none. */
  memberOf(rec: PartitionRecord): { view: MemberView } | { why: string } {
    const view = this.members.get(rec.agent);
    if (!view?.member) return { why: `agent ${rec.agent} is not in the fleet (its membership lease expired, or it shut down)` };
    if (view.member.incarnation !== rec.incarnation) return { why: `agent ${rec.agent} restarted since the partition was placed; its partitions were lost` };
    return { view };
  }

  // ---- records --------------------------------------------------------------------------------

  private recordPut(id: string, value: Buffer | string, rev: number): void {
    const prev = this.records.get(id);
    if (prev && prev.modRevision >= rev) return;
    const decoded = decodeRecord(value);
    const entry: RecordEntry = isIncompatible(decoded) ? { id, incompatible: decoded, modRevision: rev } : { id, rec: decoded, modRevision: rev };
    if (prev?.rec && prev.rec.agent !== entry.rec?.agent) this.byAgent.get(prev.rec.agent)?.delete(id);
    this.records.set(id, entry);
    if (entry.rec) {
      let set = this.byAgent.get(entry.rec.agent);
      if (!set) this.byAgent.set(entry.rec.agent, (set = new Set()));
      set.add(id);
      // A record put on an agent that is already gone (its loss was handled before this arrived).
      if (this.synced && entry.rec.state !== 'UNAVAILABLE' && 'why' in this.memberOf(entry.rec)) this.reconcileOne(entry);
    }
    this.notify(id);
    if (this.synced) this.onRecordChange?.(entry);
  }

  private recordDelete(id: string): void {
    const prev = this.records.get(id);
    if (!prev) return;
    this.records.delete(id);
    if (prev.rec) this.byAgent.get(prev.rec.agent)?.delete(id);
    this.notify(id);
  }

  /** A write made by this replica, applied before the watch delivers it. */
  applyLocal(id: string, rec: PartitionRecord | undefined, revision: number): void {
    const key = partitionKey(id);
    this.localRev.set(key, Math.max(revision, this.localRev.get(key) ?? 0));
    if (rec) this.recordPut(id, encodeRecord(rec), revision);
    else this.recordDelete(id);
  }

  /** Reads one record from etcd (linearizable) into the cache. Throws UNAVAILABLE when etcd does not answer. */
  async fetch(id: string): Promise<RecordEntry | undefined> {
    let res: Awaited<ReturnType<ReturnType<Namespace['get']>['exec']>>;
    try {
      res = await this.ns.get(partitionKey(id)).exec();
    } catch (e) {
      throw storeUnavailable(e, `reading partition ${id}`);
    }
    const kv = res.kvs[0];
    if (!kv) {
      // Gone at this revision: drop a cached copy older than it.
      const cached = this.records.get(id);
      if (cached && cached.modRevision < Number(res.header.revision)) this.applyLocal(id, undefined, Number(res.header.revision));
      return undefined;
    }
    this.recordPut(id, kv.value, Number(kv.mod_revision));
    return this.records.get(id);
  }

  /** A record read elsewhere (a List page) taken into the cache; the newer of the two is returned. */
  absorb(id: string, value: Buffer, revision: number): RecordEntry {
    this.recordPut(id, value, revision);
    return this.records.get(id)!;
  }

  private notify(id: string): void {
    const ws = this.waiters.get(id);
    if (ws) for (const w of [...ws]) w();
  }

  /** Resolves when `ready(entry)` holds for the cached record (checked on every change), or rejects after timeoutMs. */
  waitFor(id: string, ready: (e: RecordEntry | undefined) => boolean, timeoutMs: number): Promise<RecordEntry | undefined> {
    return new Promise((resolve, reject) => {
      let set = this.waiters.get(id);
      if (!set) this.waiters.set(id, (set = new Set()));
      const done = () => {
        set!.delete(check);
        if (set!.size === 0) this.waiters.delete(id);
        clearTimeout(t);
      };
      const check = () => {
        const e = this.records.get(id);
        if (ready(e)) {
          done();
          resolve(e);
        }
      };
      const t = setTimeout(() => {
        done();
        reject(new Error(`partition ${id}: no change within ${timeoutMs} ms`));
      }, timeoutMs);
      set.add(check);
      check();
    });
  }

  /** Load of each agent: its current incarnation's records that are not UNAVAILABLE. */
  loadOf(view: MemberView): Load {
    const load: Load = { partitions: 0, vps: 0, memoryBytes: 0n };
    const inc = view.member?.incarnation;
    for (const id of this.byAgent.get(view.name) ?? []) {
      const rec = this.records.get(id)?.rec;
      if (!rec || rec.incarnation !== inc || rec.state === 'UNAVAILABLE') continue;
      load.partitions++;
      load.vps += rec.vpCount;
      load.memoryBytes += rec.memoryBytes;
    }
    return load;
  }

  // ---- agent loss -----------------------------------------------------------------------------

  /** Rewrites the lost incarnation's records UNAVAILABLE (compare-and-swap on each record's revision). */
  private markLost(agent: string, incarnation: string, reason: string, lostBy: 'agent-lost' | 'agent-restarted'): void {
    const ids = [...(this.byAgent.get(agent) ?? [])];
    const targets = ids
      .map((id) => this.records.get(id))
      .filter((e): e is RecordEntry => !!e?.rec && e.rec.incarnation === incarnation && e.rec.state !== 'UNAVAILABLE');
    if (targets.length === 0) return;
    this.o.log.warn({ agent, partitions: targets.length, reason }, 'fleet: partitions of a lost agent turn UNAVAILABLE');
    void this.rewrite(targets, (rec) => ({
      ...rec,
      state: 'UNAVAILABLE',
      stateReason: reason,
      stateTimeUnixMs: Date.now(),
      lostBy,
      recovering: undefined,
      creator: undefined,
    }));
  }

  /** The same incarnation registered again: its partitions lost by a lapsed lease are ACTIVE again. */
  private revive(agent: string, incarnation: string): void {
    if (!this.synced) return;
    const targets = [...(this.byAgent.get(agent) ?? [])]
      .map((id) => this.records.get(id))
      .filter((e): e is RecordEntry => !!e?.rec && e.rec.incarnation === incarnation && e.rec.state === 'UNAVAILABLE' && e.rec.lostBy === 'agent-lost');
    if (targets.length === 0) return;
    this.o.log.info({ agent, partitions: targets.length }, 'fleet: agent registered again with the same incarnation; its partitions are ACTIVE again');
    void this.rewrite(targets, (rec) => ({ ...rec, state: 'ACTIVE', stateReason: '', stateTimeUnixMs: Date.now(), lostBy: undefined }));
  }

  /** Every record whose agent is gone (e.g. lost while no replica watched) turns UNAVAILABLE. */
  reconcile(): void {
    if (!this.synced) return;
    for (const e of this.records.values()) if (e.rec && e.rec.state !== 'UNAVAILABLE' && 'why' in this.memberOf(e.rec)) this.reconcileOne(e);
  }

  private reconcileOne(e: RecordEntry): void {
    const m = this.memberOf(e.rec!);
    if (!('why' in m)) return;
    const restarted = this.members.get(e.rec!.agent)?.member !== undefined;
    void this.rewrite([e], (rec) => ({
      ...rec,
      state: 'UNAVAILABLE',
      stateReason: m.why,
      stateTimeUnixMs: Date.now(),
      lostBy: restarted ? 'agent-restarted' : 'agent-lost',
      recovering: undefined,
      creator: undefined,
    }));
  }

  private readonly rewriting = new Set<string>();

  private async rewrite(entries: RecordEntry[], change: (r: PartitionRecord) => PartitionRecord): Promise<void> {
    const queue = entries.filter((e) => !this.rewriting.has(e.id));
    for (const e of queue) this.rewriting.add(e.id);
    const worker = async () => {
      for (let e = queue.shift(); e; e = queue.shift()) {
        try {
          const rec = { ...change(e.rec!), generation: e.rec!.generation + 1 };
          const key = partitionKey(e.id);
          const res = await this.ns
            .if(key, 'Mod', '==', e.modRevision)
            .then(this.ns.put(key).value(encodeRecord(rec)))
            .commit();
          if (res.succeeded) this.applyLocal(e.id, rec, Number(res.header.revision));
        } catch (err) {
          // etcd unreachable: the watch's reconnection runs reconcile() again.
          this.o.log.debug({ partition: e.id, err: err instanceof Error ? err.message : String(err) }, 'fleet: record rewrite failed');
        } finally {
          this.rewriting.delete(e.id);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(16, queue.length) }, worker));
  }

  // ---- lifecycle ------------------------------------------------------------------------------

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.probeTimers.values()) clearTimeout(t);
    this.probeTimers.clear();
    const w = this.watcher;
    this.watcher = undefined;
    if (w) await Promise.race([w.cancel().catch(() => undefined), delay(1000)]);
    for (const v of this.members.values()) v.client?.close();
  }
}

export { agentKey };
