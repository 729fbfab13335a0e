// service layer: durable partitions in a state directory (--state-dir). Each partition is one
// file `<id>.snapshot` holding its vsm.v1.PartitionSnapshot. Writes are atomic: write a temp file,
// fsync it, rename it over the old one, fsync the directory; a crash at any point leaves either the
// previous snapshot or the new one, never a torn file. Temp files left by a crash are removed at
// start-up.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pb } from '@vsm/client';
import type { Backend } from './backend';

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

/** RPCs that never change a partition (no save needed). */
const READ_ONLY = /^(get|list|read|watch|monitor|save|close|kind)/i;

/**
 * Wraps a backend so that every successful mutating call persists the partition it touched (or
 * removes it on delete). Guest actions that wait for a monitor are persisted when they complete;
 * the monitor's answer itself is persisted through the guest action it completes.
 */
export function persistentBackend(inner: Backend, store: StateStore, log: { warn(o: object, m: string): void } = console as never): Backend {
  const idOf = (req: unknown, res: unknown): string | undefined => {
    const name = (req as { name?: string })?.name || (res as { name?: string })?.name;
    const m = /^partitions\/([a-z0-9-]+)/.exec(name ?? '');
    return m?.[1];
  };
  return new Proxy(inner, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof prop !== 'string' || typeof v !== 'function' || READ_ONLY.test(prop)) return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      return async (req: unknown, ...rest: unknown[]) => {
        const res = await (v as (...a: unknown[]) => Promise<unknown>).call(target, req, ...rest);
        const id = idOf(req, res);
        if (!id) return res;
        if (prop === 'deletePartition') store.remove(id);
        else {
          try {
            store.save(id, await target.savePartition({ name: `partitions/${id}` }));
          } catch (e) {
            log.warn({ partition: id, error: e instanceof Error ? e.message : String(e) }, 'could not persist partition');
            throw e;
          }
        }
        return res;
      };
    },
  });
}

/** Restores every partition of the store into the backend under its saved id. */
export async function restoreAll(backend: Backend, store: StateStore, log: { info(o: object, m: string): void; error(o: object, m: string): void }): Promise<number> {
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
