// service layer: durable partitions in a state directory (--state-dir), kept so that a change costs
// O(what changed), not O(partition) (issue #17).
//
// The store is LMDB (the `lmdb` package): a copy-on-write B+tree in one memory-mapped file, crash-safe
// by design (a commit switches between two meta pages after the data is on disk; a process killed at
// any point leaves the last committed transaction), with reads synchronous from the map and commits
// (write + fsync) done on its own thread, off the event loop. Chosen over LevelDB (`classic-level`: a
// log-structured tree whose background compaction rewrites the 4 KiB pages of guest RAM again and
// again, and whose reads are all asynchronous) and SQLite (`better-sqlite3`: a synchronous API that
// would do the fsync on the event loop, and a native build this machine cannot fetch).
//
// Layout, one environment `state.lmdb` in the directory, three named databases:
//   meta    id                          → header (incarnation, answer-deadline policy: 16 bytes) +
//                                          vsm.v1.PartitionSnapshot without
//                                          RAM pages and protection ranges (VSM state, registers,
//                                          overlays and their pages, SynIC queues, pending intercepts,
//                                          deadline policy; small: O(VPs))
//   pages   [id, incarnation, gpfn]     → the 4 KiB RAM page
//   ranges  [id, incarnation, vtl, w]   → the protection ranges of VTL `vtl` starting in pages
//                                          [w·256, (w+1)·256), packed (start, end: float64; mask: u8)
// Every save of a partition is one LMDB transaction: all of it lands or none (the previous durable
// state stays). A new incarnation (create, restore, a full rewrite) replaces the previous one's
// records in the same transaction. A record that cannot be loaded is never overwritten: its id stays
// taken (create/restore under it are refused) until an operator deletes it (DeletePartition).
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { status as Code } from '@grpc/grpc-js';
import { type Database, type RootDatabase, open } from 'lmdb';
import { pb, type RpcMethod, vsmRpcs } from '@vsm/api';
import * as core from '@vsm/core';
import type { Backend, StreamSink } from './backend';
import { CoreBackend } from './backends/core-backend';
import { ApiError, toServiceError } from './errors';
import { toPbSnapshot } from './snapshot-codec';

const LEGACY_SUFFIX = '.snapshot';
const ID_RE = /^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$/;
/** Pages per protection window record. */
export const RANGE_WINDOW = 256;
const PAGE = 4096;

type Range = { start: number; end: number; mask: number };
/** A partition's answer-deadline policy (core Partition.interceptDeadline). */
export type DeadlinePolicy = { ms: number; action: core.InterceptAction };
/** In the order of vsm.v1.InterceptAction ALLOW..CRASH. */
const POLICY_ACTIONS: core.InterceptAction[] = ['allow', 'skip', 'retry', 'crash'];
const ROUTES: Record<core.InterceptRoute, pb.InterceptRoute> = {
  vtl: pb.InterceptRoute.INTERCEPT_ROUTE_HIGHER_VTL,
  monitor: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR,
  both: pb.InterceptRoute.INTERCEPT_ROUTE_BOTH,
};
/** Meta record header: incarnation (f64), deadline ms (u32), deadline action (u8: 0 none, 1 + index), 3 reserved. */
const HEADER = 16;

/** What changed in a partition since its last save (PersistentTracker builds it). */
export interface PartitionChanges {
  kind: 'changes';
  /** The partition's state without RAM pages and protection ranges. */
  meta: pb.PartitionSnapshot;
  /** RAM dropped as a whole (ZeroMemoryOnReset) before `pages` were written. */
  reset: boolean;
  pages: { gpfn: number; data: Buffer }[];
  /** Per VTL: every range (the map was replaced), or the windows whose ranges changed (empty list: none left there). */
  protections: ({ replace: Range[] } | { windows: Map<number, Range[]> } | null)[];
  deadline: DeadlinePolicy | undefined;
}

function packRanges(ranges: readonly Range[]): Buffer {
  const b = Buffer.alloc(ranges.length * 17);
  ranges.forEach((r, i) => {
    b.writeDoubleLE(r.start, i * 17);
    b.writeDoubleLE(r.end, i * 17 + 8);
    b.writeUInt8(r.mask, i * 17 + 16);
  });
  return b;
}
function unpackRanges(b: Buffer): Range[] {
  if (b.length % 17 !== 0) throw new Error(`a protection record of ${b.length} bytes is not whole ranges`);
  const out: Range[] = [];
  for (let o = 0; o < b.length; o += 17) out.push({ start: b.readDoubleLE(o), end: b.readDoubleLE(o + 8), mask: b.readUInt8(o + 16) });
  return out;
}
function byWindow(ranges: readonly Range[]): Map<number, Range[]> {
  const w = new Map<number, Range[]>();
  for (const r of ranges) {
    const k = Math.floor(r.start / RANGE_WINDOW);
    let l = w.get(k);
    if (!l) w.set(k, (l = []));
    l.push(r);
  }
  return w;
}
/** The snapshot without RAM pages and protection ranges (what the meta record holds). */
function stripped(s: pb.PartitionSnapshot): pb.PartitionSnapshot {
  return { ...s, memory: [], protections: s.protections.map((m) => ({ ...m, ranges: [] })) };
}

/**
 * A failed LMDB commit: its error carries `commitError`, a promise rejected with the cause (ENOSPC,
 * EIO, ...) right after; take the cause (and handle that promise, which nothing else does).
 */
async function commitFailure(e: unknown): Promise<Error> {
  const pending = (e as { commitError?: Promise<unknown> } | undefined)?.commitError;
  if (!pending) return e instanceof Error ? e : new Error(String(e));
  const cause = await Promise.race([
    pending.then(
      () => undefined,
      (x: unknown) => x,
    ),
    new Promise((r) => setTimeout(r, 1000, undefined)),
  ]);
  return new Error(`the state store could not commit: ${cause instanceof Error ? cause.message : 'commit failed'}`);
}

/** Waits for a transaction to be on disk; throws the commit's failure with its cause. */
async function settle(txn: Promise<unknown>): Promise<void> {
  try {
    await txn;
  } catch (e) {
    throw await commitFailure(e);
  }
}

/**
 * lmdb-js rejects some internal promises of a failed commit that nobody can hold (besides the
 * transaction's own promise, which save() awaits and reports to the caller): without a handler they
 * would end the process. This one drops exactly those (an Error carrying lmdb's `commitError`) and
 * rethrows anything else, which ends the process as Node's default would.
 */
let commitRejectionFilter = false;
function filterLmdbCommitRejections(): void {
  if (commitRejectionFilter) return;
  commitRejectionFilter = true;
  process.on('unhandledRejection', (reason) => {
    const commitError = (reason as { commitError?: Promise<unknown> } | null)?.commitError;
    if (reason instanceof Error && commitError && typeof commitError.then === 'function') {
      commitError.then(undefined, () => undefined);
      return;
    }
    throw reason;
  });
}

export class StateStore {
  private readonly root: RootDatabase;
  private readonly meta: Database<Buffer, string>;
  private readonly pages: Database<Buffer, (string | number)[]>;
  private readonly ranges: Database<Buffer, (string | number)[]>;
  /** Ids whose durable state could not be loaded: kept as is, the id taken, until DeletePartition. */
  readonly quarantined = new Map<string, string>();

  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    // Temp files of the former one-file-per-partition store, left by a crash.
    for (const f of fs.readdirSync(dir)) if (f.includes('.tmp-')) fs.rmSync(path.join(dir, f), { force: true });
    filterLmdbCommitRejections();
    this.root = open({ path: path.join(dir, 'state.lmdb'), maxDbs: 8, compression: false });
    this.meta = this.root.openDB<Buffer, string>({ name: 'meta', encoding: 'binary' });
    this.pages = this.root.openDB<Buffer, (string | number)[]>({ name: 'pages', encoding: 'binary' });
    this.ranges = this.root.openDB<Buffer, (string | number)[]>({ name: 'ranges', encoding: 'binary' });
  }

  private incarnation(id: string): number | undefined {
    const m = this.meta.get(id);
    return m && m.length >= HEADER ? m.readDoubleLE(0) : undefined;
  }

  /** Refuses (FAILED_PRECONDITION) an id whose durable state could not be loaded. */
  assertIdFree(id: string): void {
    const why = this.quarantined.get(id);
    if (why !== undefined)
      throw new ApiError(
        Code.FAILED_PRECONDITION,
        'DURABLE_STATE_NOT_LOADED',
        `partitions/${id} has durable state that could not be loaded (${why}); it is kept as it is and the id stays taken until an operator deletes it (DeletePartition partitions/${id})`,
      );
  }

  /** Removes every record of incarnation `inc` of `id` (queued into the current transaction). */
  private dropIncarnation(id: string, inc: number): void {
    for (const k of [...this.pages.getKeys({ start: [id, inc], end: [id, inc + 1] })]) this.pages.removeSync(k);
    for (const k of [...this.ranges.getKeys({ start: [id, inc], end: [id, inc + 1] })]) this.ranges.removeSync(k);
  }

  /**
   * Saves a partition: a whole snapshot (a new incarnation replacing the previous one) or the changes
   * since its last save. One transaction; resolves once it is on disk, rejects (nothing of it stored,
   * the previous durable state intact) when the write failed: ENOSPC, EIO, ...
   */
  async save(id: string, what: pb.PartitionSnapshot | PartitionChanges, deadline?: DeadlinePolicy): Promise<void> {
    if (!ID_RE.test(id)) throw new Error(`refusing to persist a partition id that is not a plain name: ${id}`);
    this.assertIdFree(id);
    const old = this.incarnation(id);
    const changes = 'kind' in what && what.kind === 'changes';
    if (changes && old === undefined) throw new Error(`partitions/${id} has no durable state to change: save it whole first`);
    // One transaction: the callback runs inside LMDB's write transaction (memory-mapped writes, no I/O);
    // the commit and its fsync happen on LMDB's write thread.
    const done = this.root.transaction(() => {
      if (changes && old !== undefined) {
        if (what.reset) for (const k of [...this.pages.getKeys({ start: [id, old], end: [id, old + 1] })]) this.pages.removeSync(k);
        for (const pg of what.pages) this.pages.putSync([id, old, pg.gpfn], pg.data);
        what.protections.forEach((c, vtl) => {
          if (!c) return;
          if ('replace' in c) {
            for (const k of [...this.ranges.getKeys({ start: [id, old, vtl], end: [id, old, vtl + 1] })]) this.ranges.removeSync(k);
            for (const [w, rs] of byWindow(c.replace)) this.ranges.putSync([id, old, vtl, w], packRanges(rs));
          } else
            for (const [w, rs] of c.windows) {
              if (rs.length) this.ranges.putSync([id, old, vtl, w], packRanges(rs));
              else this.ranges.removeSync([id, old, vtl, w]);
            }
        });
        this.meta.putSync(id, Buffer.concat([this.incHeader(old, what.deadline), pb.PartitionSnapshot.encode(stripped(what.meta)).finish()]));
      } else {
        const snapshot = what as pb.PartitionSnapshot;
        let inc = crypto.randomInt(2 ** 47);
        while (inc === old) inc = crypto.randomInt(2 ** 47);
        if (old !== undefined) this.dropIncarnation(id, old);
        for (const pg of snapshot.memory) this.pages.putSync([id, inc, Number(pg.gpfn)], Buffer.from(pg.data));
        snapshot.protections.forEach((m, vtl) => {
          const rs = m.ranges.map((r) => ({ start: Number(r.start), end: Number(r.end), mask: r.mask }));
          for (const [w, list] of byWindow(rs)) this.ranges.putSync([id, inc, vtl, w], packRanges(list));
        });
        this.meta.putSync(id, Buffer.concat([this.incHeader(inc, deadline), pb.PartitionSnapshot.encode(stripped(snapshot)).finish()]));
      }
    });
    await settle(done);
  }

  private incHeader(inc: number, policy: DeadlinePolicy | undefined): Buffer {
    const h = Buffer.alloc(HEADER);
    h.writeDoubleLE(inc, 0);
    h.writeUInt32LE(policy?.ms ?? 0, 8);
    h.writeUInt8(policy ? POLICY_ACTIONS.indexOf(policy.action) + 1 : 0, 12);
    return h;
  }

  /** The answer-deadline policy saved with a partition (it is not part of the vsm.v1 snapshot). */
  deadlinePolicy(id: string): DeadlinePolicy | undefined {
    const m = this.meta.get(id);
    if (!m || m.length < HEADER || m.readUInt8(12) === 0) return undefined;
    return { ms: m.readUInt32LE(8), action: POLICY_ACTIONS[m.readUInt8(12) - 1]! };
  }

  /** Removes a partition's durable state (and, for an id kept because it could not be loaded, releases the id). */
  async remove(id: string): Promise<void> {
    const done = this.root.transaction(() => {
      const inc = this.incarnation(id);
      if (inc !== undefined) this.dropIncarnation(id, inc);
      if (this.meta.get(id) !== undefined) this.meta.removeSync(id);
    });
    await settle(done);
    const legacy = path.join(this.dir, id + LEGACY_SUFFIX);
    if (this.quarantined.has(id) && fs.existsSync(legacy)) fs.renameSync(legacy, `${legacy}.discarded`);
    this.quarantined.delete(id);
  }

  /**
   * Every saved partition: id and its complete snapshot. A record that does not decode is reported,
   * not loaded, and its id quarantined. Snapshot files of the former store (`<id>.snapshot`) are
   * reported too (`legacy`): restoreAll moves them into the store.
   */
  loadAll(): { id: string; snapshot?: pb.PartitionSnapshot; error?: string; legacy?: boolean }[] {
    const out: { id: string; snapshot?: pb.PartitionSnapshot; error?: string; legacy?: boolean }[] = [];
    const seen = new Set<string>();
    for (const { key: id, value } of this.meta.getRange({})) {
      seen.add(id);
      try {
        out.push({ id, snapshot: this.assemble(id, value) });
      } catch (e) {
        const error = e instanceof Error ? e.message : String(e);
        this.quarantined.set(id, error);
        out.push({ id, error });
      }
    }
    for (const f of fs
      .readdirSync(this.dir)
      .filter((x) => x.endsWith(LEGACY_SUFFIX))
      .sort()) {
      const id = f.slice(0, -LEGACY_SUFFIX.length);
      if (seen.has(id)) continue;
      try {
        out.push({ id, snapshot: pb.PartitionSnapshot.decode(fs.readFileSync(path.join(this.dir, f))), legacy: true });
      } catch (e) {
        const error = e instanceof Error ? e.message : String(e);
        this.quarantined.set(id, error);
        out.push({ id, error, legacy: true });
      }
    }
    return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  private assemble(id: string, value: Buffer): pb.PartitionSnapshot {
    if (value.length < HEADER) throw new Error('meta record shorter than its header');
    const inc = value.readDoubleLE(0);
    const s = pb.PartitionSnapshot.decode(value.subarray(HEADER));
    for (const { key, value: data } of this.pages.getRange({ start: [id, inc], end: [id, inc + 1] })) {
      if (data.length !== PAGE) throw new Error(`page record ${String(key[2])} holds ${data.length} bytes, not ${PAGE}`);
      s.memory.push({ gpfn: BigInt(key[2] as number), data: Buffer.from(data) });
    }
    for (const { key, value: data } of this.ranges.getRange({ start: [id, inc], end: [id, inc + 1] })) {
      const vtl = key[2] as number;
      const m = s.protections[vtl];
      if (!m) throw new Error(`protection record of VTL ${vtl}, which has no protection map`);
      for (const r of unpackRanges(data)) m.ranges.push({ start: BigInt(r.start), end: BigInt(r.end), mask: r.mask });
    }
    return s;
  }

  /** Legacy snapshot file of `id` moved into the store: the file is renamed (kept, not deleted). */
  retireLegacy(id: string): void {
    const f = path.join(this.dir, id + LEGACY_SUFFIX);
    if (fs.existsSync(f)) fs.renameSync(f, `${f}.imported`);
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}

/**
 * The backend methods persistence saves after: every vsm.v1 RPC that does not declare
 * `idempotency_level = NO_SIDE_EFFECTS` in the proto (read from the descriptors, never guessed from
 * a method's name), by method name.
 */
export function persistedRpcs(): ReadonlyMap<string, RpcMethod> {
  return new Map(
    vsmRpcs()
      .filter((m) => !m.noSideEffects)
      .map((m) => [m.localName, m]),
  );
}

/** The partition a request (or its response) names: `name`, `partition_id`, or a oneof's `name` (Monitor's subscribe). */
function partitionOf(...msgs: unknown[]): string | undefined {
  for (const msg of msgs) {
    const m = (msg ?? {}) as { name?: unknown; partitionId?: unknown; kind?: { value?: { name?: unknown } } };
    for (const name of [m.name, m.kind?.value?.name]) {
      const id = typeof name === 'string' ? /^partitions\/([a-z0-9-]+)/.exec(name)?.[1] : undefined;
      if (id) return id;
    }
  }
  return undefined;
}

/**
 * What a partition changed since its last save: RAM pages written through the core (its RAM's write
 * and clear, wrapped on the instance), protection windows (ProtectionMap.watch), maps replaced; the
 * rest of its state is small and written whole each time. Guest code running on KVM writes RAM behind
 * the core's back: those pages are not seen here (see the kvm-agent README).
 */
class PartitionTracker {
  private pages = new Set<number>();
  private reset = false;
  private maps: (core.ProtectionMap | null)[];
  private windows: Set<number>[];
  private unwatch: (() => void)[] = [];
  /** A save failed: the next one writes the partition whole (what it had taken is not known to be stored). */
  needsFull = false;

  constructor(
    readonly p: core.Partition,
    /** Called when the partition changed outside an RPC (an intercept raised or answered by a deadline): save soon. */
    onBackgroundChange: () => void,
  ) {
    // Intercepts raised and answered: their pending state and ids are saved as they happen, not only
    // when the guest action waiting on them returns.
    const broker = p.intercepts;
    const publish = broker.publish.bind(broker);
    broker.publish = (r) => {
      publish(r);
      onBackgroundChange();
    };
    const answered = broker.markAnswered.bind(broker);
    broker.markAnswered = (id, outcome) => {
      answered(id, outcome);
      onBackgroundChange();
    };
    const ram = p.memory as core.GuestRam & { clear?: () => void };
    const write = ram.write.bind(ram);
    ram.write = (gpa: bigint, data: Uint8Array) => {
      write(gpa, data);
      if (data.length === 0) return;
      for (let g = Number(gpa >> 12n); g <= Number((gpa + BigInt(data.length) - 1n) >> 12n); g++) this.pages.add(g);
    };
    if (typeof ram.clear === 'function') {
      const clear = ram.clear.bind(ram);
      ram.clear = () => {
        clear();
        this.reset = true;
        this.pages.clear();
      };
    }
    this.maps = p.protections.map(() => null);
    this.windows = p.protections.map(() => new Set<number>());
    this.rewatch();
  }

  private rewatch(): void {
    for (const u of this.unwatch) u();
    this.unwatch = [];
    this.p.protections.map((m, vtl) => {
      this.maps[vtl] = m;
      this.windows[vtl]!.clear();
      if (!m) return undefined;
      this.unwatch.push(
        m.watch((lo, hi) => {
          const set = this.windows[vtl]!;
          // A window of pages [w·256, (w+1)·256) is rewritten if a range starting there may have changed.
          for (let w = Math.floor(lo / RANGE_WINDOW); w <= Math.floor((hi - 1) / RANGE_WINDOW); w++) set.add(w);
        }),
      );
      return undefined;
    });
  }

  /** Forgets what changed (after a whole save). */
  clean(): void {
    this.pages.clear();
    this.reset = false;
    this.needsFull = false;
    this.rewatch();
  }

  /** The changes since the last save, taken (the caller saves them, or marks needsFull on failure). */
  take(name: string): PartitionChanges {
    const p = this.p;
    // The VSM state without RAM and ranges: a view of the partition whose RAM and maps look empty.
    const view = Object.create(p, {
      memory: { value: { touchedPages: () => [], read: () => Buffer.alloc(0) } },
      protections: {
        value: {
          map: <U>(fn: (m: unknown, i: core.Vtl) => U) => p.protections.map((m, i) => fn(m ? { defaultMask: m.defaultMask, list: () => [] } : null, i)),
        },
      },
    }) as core.Partition;
    const meta = toPbSnapshot(core.snapshotPartition(view), name);
    const pages = [...this.pages].sort((a, b) => a - b).map((gpfn) => ({ gpfn, data: p.memory.read(BigInt(gpfn) << 12n, PAGE) }));
    const protections = p.protections.map((m, vtl): PartitionChanges['protections'][number] => {
      if (m !== this.maps[vtl]) return { replace: m ? m.list() : [] };
      if (!m || this.windows[vtl]!.size === 0) return null;
      const windows = new Map<number, Range[]>();
      for (const w of this.windows[vtl]!) {
        const lo = w * RANGE_WINDOW;
        const hi = lo + RANGE_WINDOW;
        windows.set(
          w,
          m.rangesFrom(lo, RANGE_WINDOW + 1).filter((r) => r.start >= lo && r.start < hi),
        );
      }
      return { windows };
    });
    const changes: PartitionChanges = { kind: 'changes', meta, reset: this.reset, pages, protections, deadline: p.interceptDeadline };
    this.pages = new Set();
    this.reset = false;
    if (protections.some((c) => c && 'replace' in c)) this.rewatch();
    else for (const s of this.windows) s.clear();
    return changes;
  }
}

/** Restores a partition from the store without writing it back (restoreAll uses it when the backend offers it). */
const RESTORE_STORED = Symbol('restoreStored');

/**
 * Wraps a backend so that every successful call of a mutating RPC (persistedRpcs) persists the
 * partition it touched before it is answered, or removes it on delete. With a core-backed backend
 * (emulator, KVM agent) a save writes what changed since the previous one (PartitionTracker): a
 * partition's first save, and the one after a failed save, write it whole. A failed save fails the
 * call (the previous durable state stays). A mutating stream (Monitor: its answers change partitions)
 * persists the partition it names after each message it sends (coalesced: one save at a time, one
 * more if something happened meanwhile) and when it ends. Other members pass through unchanged.
 */
export function persistentBackend(inner: Backend, store: StateStore, log: { warn(o: object, m: string): void } = console as never): Backend {
  const persisted = persistedRpcs();
  const trackers = new Map<string, PartitionTracker>();
  // The store's writes and removals of one partition happen one at a time, in the order the calls
  // finished: a save that read the partition before a delete cannot write it back after the removal.
  const queues = new Map<string, Promise<unknown>>();
  const inOrder = <T>(id: string, op: () => Promise<T> | T): Promise<T> => {
    const p = (queues.get(id) ?? Promise.resolve()).then(op);
    const tail = p.catch(() => undefined);
    queues.set(id, tail);
    void tail.then(() => {
      if (queues.get(id) === tail) queues.delete(id);
    });
    return p;
  };
  const corePartition = (id: string): core.Partition | undefined => {
    if (!(inner instanceof CoreBackend)) return undefined;
    try {
      return inner.partition(`partitions/${id}`);
    } catch {
      return undefined;
    }
  };
  const saveWhole = async (id: string, p: core.Partition | undefined) => {
    if (p) {
      const t = trackers.get(id)?.p === p ? trackers.get(id)! : new PartitionTracker(p, () => background(id));
      trackers.set(id, t);
      t.clean();
      try {
        await store.save(id, toPbSnapshot(core.snapshotPartition(p), `partitions/${id}`), p.interceptDeadline);
      } catch (e) {
        t.needsFull = true;
        throw e;
      }
    } else await store.save(id, await inner.savePartition({ name: `partitions/${id}` }));
  };
  const saveNow = async (id: string, quietIfGone = false): Promise<void> => {
    try {
      const p = corePartition(id);
      const t = trackers.get(id);
      if (!p || !t || t.p !== p || t.needsFull) return await saveWhole(id, p);
      const changes = t.take(`partitions/${id}`);
      try {
        await store.save(id, changes);
      } catch (e) {
        t.needsFull = true;
        throw e;
      }
    } catch (e) {
      // A stream's save after its partition was deleted finds nothing to save: not a failure.
      if (!(quietIfGone && toServiceError(e).code === Code.NOT_FOUND))
        log.warn({ partition: id, error: e instanceof Error ? e.message : String(e) }, 'could not persist partition');
      throw durableError(id, e);
    }
  };
  const save = (id: string, quietIfGone = false): Promise<void> => inOrder(id, () => saveNow(id, quietIfGone));
  // Saves after background changes, coalesced: one queued at a time per partition.
  const backgroundQueued = new Set<string>();
  const background = (id: string) => {
    if (backgroundQueued.has(id)) return;
    backgroundQueued.add(id);
    void inOrder(id, async () => {
      backgroundQueued.delete(id);
      if (trackers.has(id)) await saveNow(id, true).catch(() => undefined);
    });
  };
  const remove = (id: string) =>
    inOrder(id, async () => {
      trackers.delete(id);
      await store.remove(id);
    });
  const unary = (rpc: RpcMethod, fn: (req: unknown) => Promise<unknown>) => async (req: unknown) => {
    const named = partitionOf(req);
    const asked = (req as { partitionId?: unknown }).partitionId;
    if (typeof asked === 'string' && asked) store.assertIdFree(asked);
    if (rpc.localName === 'deletePartition' && named && store.quarantined.has(named)) {
      await remove(named);
      return {};
    }
    const res = await fn(req);
    const id = partitionOf(req, res);
    if (!id) return res;
    if (rpc.localName === 'deletePartition') await remove(id);
    else await save(id);
    return res;
  };
  const streaming =
    (rpc: RpcMethod, fn: (req: unknown, sink: StreamSink<unknown>, signal: AbortSignal) => Promise<void>) =>
    async (req: unknown, sink: StreamSink<unknown>, signal: AbortSignal): Promise<void> => {
      let id = rpc.kind === 'server_streaming' ? partitionOf(req) : undefined;
      let running: Promise<void> | undefined;
      let again = false;
      // A save that fails is logged (save() warns); the stream goes on.
      const kick = () => {
        if (!id) return;
        if (running) {
          again = true;
          return;
        }
        const target = id;
        running = save(target, true)
          .catch(() => undefined)
          .finally(() => {
            running = undefined;
            if (again) {
              again = false;
              kick();
            }
          });
      };
      const requests =
        rpc.kind === 'bidi_streaming'
          ? watchRequests(req as AsyncIterable<unknown>, (m) => {
              id ??= partitionOf(m);
            })
          : req;
      const persistingSink: StreamSink<unknown> = {
        write: (m) => {
          const ok = sink.write(m);
          kick();
          return ok;
        },
        drained: () => sink.drained(),
      };
      try {
        await fn(requests, persistingSink, signal);
      } finally {
        kick();
        while (running) await running;
      }
    };
  const restoreStored = async (id: string, snapshot: pb.PartitionSnapshot): Promise<void> => {
    await inner.restorePartition({ snapshot, partitionId: id });
    // The answer-deadline policy (saved beside the snapshot): back in force, and the deadlines of the
    // pending intercepts restart from now.
    const policy = store.deadlinePolicy(id);
    const route = ROUTES[snapshot.interceptRoute as core.InterceptRoute];
    if (policy && route)
      await inner.setInterceptRoute({
        name: `partitions/${id}`,
        route,
        answerDeadlineMs: BigInt(policy.ms),
        deadlineAction: pb.InterceptAction.INTERCEPT_ACTION_ALLOW + POLICY_ACTIONS.indexOf(policy.action),
      });
    const restored = corePartition(id);
    // The policy arms a deadline for each intercept as it is raised: announce the pending ones again
    // (before the server listens, so only the policy hears them; monitors get them on subscribe).
    if (policy && restored) for (const rec of [...restored.intercepts.pending.values()]) restored.intercepts.publish(rec);
    const p = corePartition(id);
    if (p) {
      const t = new PartitionTracker(p, () => background(id));
      t.clean(); // the store holds exactly this state already
      trackers.set(id, t);
    } else await save(id);
  };
  // A read answers after the saves of its partition already under way (an intercept raised in the
  // background, say): what a client reads is durable.
  const reads = new Set(
    vsmRpcs()
      .filter((m) => m.noSideEffects && m.kind === 'unary')
      .map((m) => m.localName),
  );
  const read = (fn: (req: unknown) => Promise<unknown>) => async (req: unknown) => {
    const res = await fn(req);
    const id = partitionOf(req);
    const pending = id ? queues.get(id) : undefined;
    if (pending) await pending;
    return res;
  };
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === RESTORE_STORED) return restoreStored;
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== 'function') return v;
      const fn = (v as (...a: unknown[]) => unknown).bind(target);
      const rpc = typeof prop === 'string' ? persisted.get(prop) : undefined;
      if (!rpc) return typeof prop === 'string' && reads.has(prop) ? read(fn as never) : fn;
      return rpc.kind === 'unary' ? unary(rpc, fn as never) : streaming(rpc, fn as never);
    },
  });
}

/** A failed save as the caller sees it: the call's effect is not durable. */
function durableError(id: string, e: unknown): unknown {
  if (toServiceError(e).code !== Code.INTERNAL) return e;
  return new ApiError(
    Code.UNAVAILABLE,
    'STATE_NOT_DURABLE',
    `the change to partitions/${id} was made but could not be stored durably (${e instanceof Error ? e.message : String(e)}); the state directory keeps the previous state until a save succeeds`,
  );
}

/** `source`, telling `seen` about each message as the backend takes it. */
function watchRequests(source: AsyncIterable<unknown>, seen: (m: unknown) => void): AsyncIterable<unknown> {
  return {
    [Symbol.asyncIterator]: () => {
      const it = source[Symbol.asyncIterator]();
      return {
        next: async () => {
          const r = await it.next();
          if (!r.done) seen(r.value);
          return r;
        },
        return: async (v?: unknown) => (await it.return?.(v)) ?? { done: true, value: undefined },
      };
    },
  };
}

/** Restores every partition of the store into the backend under its saved id. */
export async function restoreAll(
  backend: Backend,
  store: StateStore,
  log: { info(o: object, m: string): void; error(o: object, m: string): void },
): Promise<number> {
  let n = 0;
  const stored = (backend as unknown as Record<symbol, unknown>)[RESTORE_STORED] as ((id: string, s: pb.PartitionSnapshot) => Promise<void>) | undefined;
  for (const { id, snapshot, error, legacy } of store.loadAll()) {
    if (!snapshot) {
      log.error({ partition: id, error }, 'durable state does not decode; left in place, not loaded, its id kept until DeletePartition');
      continue;
    }
    try {
      if (legacy || !stored) {
        // Through the wrapper: written into the store whole.
        await backend.restorePartition({ snapshot, partitionId: id });
        if (legacy) store.retireLegacy(id);
      } else await stored(id, snapshot);
      n++;
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      store.quarantined.set(id, why);
      log.error({ partition: id, error: why }, 'durable state could not be restored; left in place, not loaded, its id kept until DeletePartition');
    }
  }
  log.info({ restored: n, dir: store.dir }, 'partitions restored from the state directory');
  return n;
}
