// Without etcd (#14): `--backend agent --agent A,B` routes by the partition id's static owner
// (rendezvous hashing over the list, staticOwner), never by asking the agents. Two in-process agents
// (the emulator backend behind a real gRPC server each; what is tested is the routing, not KVM) and
// two service replicas with the same list: each partition lives on the agent its id names, the other
// agent is never called for it, a replica that never saw a partition serves it, one id created 20
// times at once through both replicas exists once, a request_id retried without an id returns the
// same partition, and an agent that is down makes only its own partitions UNAVAILABLE.
import { status } from '@grpc/grpc-js';
import pino from 'pino';
import { type VsmClient, type VsmError, connect, pb } from '@vsm/client';
import { failure } from '../support/server';
import { type Backend, CoreBackend, RemoteBackend, type RunningServer, startServer, staticOwner } from '@vsm/vsm-v1';

jest.setTimeout(60_000);

const logger = pino({ level: 'silent' });
const spec = { partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: 1n << 20n }) };

/** A backend whose calls are counted per method (what the agent was asked). */
function counted(b: Backend, calls: Map<string, number>): Backend {
  return new Proxy(b, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (typeof v !== 'function' || typeof prop !== 'string') return v;
      return (...args: unknown[]) => {
        calls.set(prop, (calls.get(prop) ?? 0) + 1);
        return v.apply(target, args);
      };
    },
  });
}

describe('static --agent list: routing by the id, no fan-out', () => {
  const calls = [new Map<string, number>(), new Map<string, number>()];
  const agents: RunningServer[] = [];
  const replicas: RunningServer[] = [];
  const clients: VsmClient[] = [];
  let addresses: string[];

  beforeAll(async () => {
    for (const c of calls) agents.push(await startServer({ listen: '127.0.0.1:0', backend: counted(new CoreBackend(), c), logger, shutdownGraceMs: 100 }));
    addresses = agents.map((a) => a.address);
    for (let i = 0; i < 2; i++) {
      // The same list in another order: the owner depends on the set of addresses only.
      const list = i === 0 ? addresses : [...addresses].reverse();
      replicas.push(await startServer({ listen: '127.0.0.1:0', backend: new RemoteBackend(list), logger, shutdownGraceMs: 100 }));
    }
    for (const r of replicas) clients.push(connect(r.address, { retries: 0, deadlineMs: 10_000 }));
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    await Promise.all([...replicas, ...agents].map((s) => s.shutdown('test')));
  });

  it('staticOwner: stable, order-independent, spread, and only a removed agent’s ids move', () => {
    const list = ['10.0.0.1:50061', '10.0.0.2:50061', '10.0.0.3:50061'];
    const owners = Array.from({ length: 3000 }, (_, i) => staticOwner(`p-${i}`, list));
    for (let k = 0; k < 3; k++) expect(owners.filter((o) => o === k).length).toBeGreaterThan(850);
    const reversed = [...list].reverse();
    for (let i = 0; i < 100; i++) expect(reversed[staticOwner(`p-${i}`, reversed)]).toBe(list[owners[i]!]);
    const shrunk = [list[0]!, list[2]!];
    for (let i = 0; i < 3000; i++) if (owners[i] !== 1) expect(shrunk[staticOwner(`p-${i}`, shrunk)]).toBe(list[owners[i]!]);
    expect(staticOwner('x', [])).toBe(-1);
  });

  it('each partition is created on, and served only by, the agent its id names, through either replica', async () => {
    const ids = Array.from({ length: 16 }, (_, i) => `st-${i}`);
    for (const c of calls) c.clear();
    for (const [i, id] of ids.entries()) await clients[i % 2]!.partitions.createPartition({ ...spec, partitionId: id });
    const on = await Promise.all(
      agents.map(async (a) => {
        const c = connect(a.address, { retries: 0 });
        try {
          return (await c.partitions.listPartitions({ pageSize: 100 })).partitions.map((p) => p.name);
        } finally {
          c.close();
        }
      }),
    );
    for (const id of ids) expect(on[staticOwner(id, addresses)]).toContain(`partitions/${id}`);
    expect(on[0]!.length).toBeGreaterThan(0);
    expect(on[1]!.length).toBeGreaterThan(0);
    for (const c of calls) c.clear();
    // Through the replica that did not create it: reaches the owner only.
    for (const [i, id] of ids.entries()) {
      const p = await clients[(i + 1) % 2]!.partitions.getPartition({ name: `partitions/${id}` });
      expect(p.name).toBe(`partitions/${id}`);
      await clients[(i + 1) % 2]!.vps.getVirtualProcessor({ name: `partitions/${id}/vps/0` });
    }
    const perAgent = [0, 1].map((k) => ids.filter((id) => staticOwner(id, addresses) === k).length);
    for (const k of [0, 1]) {
      expect(calls[k]!.get('getPartition') ?? 0).toBe(perAgent[k]);
      expect(calls[k]!.get('getVirtualProcessor') ?? 0).toBe(perAgent[k]);
    }
    // A partition that does not exist: one agent asked, NOT_FOUND.
    for (const c of calls) c.clear();
    const nf = await failure(clients[0]!.partitions.getPartition({ name: 'partitions/nowhere' }));
    expect(nf.code).toBe(status.NOT_FOUND);
    expect((calls[0]!.get('getPartition') ?? 0) + (calls[1]!.get('getPartition') ?? 0)).toBe(1);
    // ListPartitions pages over the list.
    const names: string[] = [];
    let pageToken = '';
    do {
      const r = await clients[1]!.partitions.listPartitions({ pageSize: 5, pageToken });
      names.push(...r.partitions.map((p) => p.name));
      pageToken = r.nextPageToken;
    } while (pageToken);
    expect(names.filter((n) => n.startsWith('partitions/st-')).sort()).toEqual(ids.map((id) => `partitions/${id}`).sort());
    for (const id of ids) await clients[0]!.partitions.deletePartition({ name: `partitions/${id}` });
  });

  it('one id created 20 times at once through both replicas exists once; a request_id without an id is idempotent', async () => {
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) => clients[i % 2]!.partitions.createPartition({ ...spec, partitionId: 'st-same' })),
    );
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    for (const r of results) if (r.status === 'rejected') expect((r.reason as VsmError).code).toBe(status.ALREADY_EXISTS);
    const a = await clients[0]!.partitions.createPartition({ ...spec, requestId: 'st-req' });
    const b = await clients[1]!.partitions.createPartition({ ...spec, requestId: 'st-req' });
    expect(b.name).toBe(a.name);
    expect(a.name).toMatch(/^partitions\/p-[0-9a-f]{12}$/);
    const c = await clients[1]!.partitions.createPartition(spec);
    expect(c.name).not.toBe(a.name);
  });

  it('an agent that is down makes only its own partitions UNAVAILABLE (promptly); the other agent’s keep serving', async () => {
    const ids = Array.from({ length: 8 }, (_, i) => `down-${i}`);
    for (const id of ids) await clients[0]!.partitions.createPartition({ ...spec, partitionId: id });
    await agents[1]!.shutdown('test');
    for (const id of ids) {
      const call = clients[1]!.vps.getVirtualProcessor({ name: `partitions/${id}/vps/0` });
      if (staticOwner(id, addresses) === 0) expect((await call).name).toBe(`partitions/${id}/vps/0`);
      else expect((await failure(call)).code).toBe(status.UNAVAILABLE);
    }
  });
});
