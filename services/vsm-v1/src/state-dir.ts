// service layer: durable partitions in a state directory (--state-dir). Each partition is one
// file `<id>.snapshot` holding its vsm.v1.PartitionSnapshot. Writes are atomic: write a temp file,
// fsync it, rename it over the old one, fsync the directory; a crash at any point leaves either the
// previous snapshot or the new one, never a torn file. Temp files left by a crash are removed at
// start-up.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pb, type RpcMethod, vsmRpcs } from '@vsm/api';
import { status as Code } from '@grpc/grpc-js';
import type { Backend, StreamSink } from './backend';
import { toServiceError } from './errors';

const SUFFIX = '.snapshot';
const ID_RE = /^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$/;

export class StateStore {
  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    for (const f of fs.readdirSync(dir)) if (f.includes('.tmp-')) fs.rmSync(path.join(dir, f), { force: true });
  }

  save(id: string, snapshot: pb.PartitionSnapshot): void {
    if (!ID_RE.test(id)) throw new Error(`refusing to persist a partition id that is not a plain name: ${id}`);
    const bytes = pb.PartitionSnapshot.encode(snapshot).finish();
    const final = path.join(this.dir, id + SUFFIX);
    const tmp = `${final}.tmp-${process.pid}-${Date.now()}`;
    const fd = fs.openSync(tmp, 'w', 0o600);
    try {
      fs.writeSync(fd, bytes);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, final);
    this.syncDir();
  }

  remove(id: string): void {
    fs.rmSync(path.join(this.dir, id + SUFFIX), { force: true });
    this.syncDir();
  }

  /** Every saved partition: id and snapshot. A file that does not decode is reported, not loaded. */
  loadAll(): { id: string; snapshot?: pb.PartitionSnapshot; error?: string }[] {
    return fs
      .readdirSync(this.dir)
      .filter((f) => f.endsWith(SUFFIX))
      .sort()
      .map((f) => {
        const id = f.slice(0, -SUFFIX.length);
        try {
          return { id, snapshot: pb.PartitionSnapshot.decode(fs.readFileSync(path.join(this.dir, f))) };
        } catch (e) {
          return { id, error: e instanceof Error ? e.message : String(e) };
        }
      });
  }

  private syncDir(): void {
    const d = fs.openSync(this.dir, 'r');
    try {
      fs.fsyncSync(d);
    } finally {
      fs.closeSync(d);
    }
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
 * Wraps a backend so that every successful call of a mutating RPC (persistedRpcs) persists the
 * partition it touched, or removes it on delete. Guest actions that wait for a monitor are persisted
 * when they complete. A mutating stream (Monitor: its answers change partitions) persists the
 * partition it names after each message it sends (coalesced: one save at a time, one more if
 * something happened meanwhile) and when it ends. Other members (kind, close, what a backend adds)
 * pass through unchanged.
 */
export function persistentBackend(inner: Backend, store: StateStore, log: { warn(o: object, m: string): void } = console as never): Backend {
  const persisted = persistedRpcs();
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
  const save = (id: string, quietIfGone = false): Promise<void> =>
    inOrder(id, async () => {
      try {
        store.save(id, await inner.savePartition({ name: `partitions/${id}` }));
      } catch (e) {
        // A stream's save after its partition was deleted finds nothing to save: not a failure.
        if (!(quietIfGone && toServiceError(e).code === Code.NOT_FOUND))
          log.warn({ partition: id, error: e instanceof Error ? e.message : String(e) }, 'could not persist partition');
        throw e;
      }
    });
  const unary = (rpc: RpcMethod, fn: (req: unknown) => Promise<unknown>) => async (req: unknown) => {
    const res = await fn(req);
    const id = partitionOf(req, res);
    if (!id) return res;
    if (rpc.localName === 'deletePartition') await inOrder(id, () => store.remove(id));
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
  return new Proxy(inner, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== 'function') return v;
      const fn = (v as (...a: unknown[]) => unknown).bind(target);
      const rpc = typeof prop === 'string' ? persisted.get(prop) : undefined;
      if (!rpc) return fn;
      return rpc.kind === 'unary' ? unary(rpc, fn as never) : streaming(rpc, fn as never);
    },
  });
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
  for (const { id, snapshot, error } of store.loadAll()) {
    if (!snapshot) {
      log.error({ partition: id, error }, 'state file does not decode; left in place, not loaded');
      continue;
    }
    try {
      await backend.restorePartition({ snapshot, partitionId: id });
      n++;
    } catch (e) {
      log.error({ partition: id, error: e instanceof Error ? e.message : String(e) }, 'state file could not be restored; left in place, not loaded');
    }
  }
  log.info({ restored: n, dir: store.dir }, 'partitions restored from the state directory');
  return n;
}
