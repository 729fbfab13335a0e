// Fleet mode (#14) + live migration (#17), real processes on loopback: a single-member etcd, two
// vsm-kvm-agent processes registered in it and two vsm-service replicas. A running 2-VP guest moves
// from agent-a to agent-b through replica 0: the partition record switches agents atomically (its
// agent, incarnation and generation compared and swapped at the switch-over), replica 1 routes to the
// new agent at once, the guest keeps running there. A record changed during the migration (as
// another replica would) makes the switch-over fail: the move is undone, the partition stays on
// agent-a, running, its record untouched. Bad targets are refused before anything moves.
import { status } from '@grpc/grpc-js';
import { type VsmClient, connect, pb } from '@vsm/client';
import { failure, listFleetAgents } from '../support/server';
import { Etcd3 } from 'etcd3';
import { MG, migrationGuestImage } from '../../services/kvm-agent/test/migration-guest';
import { AGENT_MAIN, type ChildService, spawnService } from '../support/child-service';
import { EtcdCluster, etcdUnavailable } from '../support/etcd';
import { gateDescribe, kvmUnavailableReason } from '../support/kvm-gate';
import { waitFor } from '../support/wait';

jest.setTimeout(120_000);

const why = etcdUnavailable() ?? kvmUnavailableReason();

async function collect(it: AsyncIterable<pb.MigrationProgress>, onEach?: (m: pb.MigrationProgress) => Promise<void>): Promise<pb.MigrationProgress[]> {
  const out: pb.MigrationProgress[] = [];
  for await (const m of it) {
    out.push(m);
    await onEach?.(m);
  }
  return out;
}

gateDescribe(why)('fleet mode: live migration switches the partition record atomically', () => {
  let etcd: EtcdCluster;
  let raw: Etcd3;
  const agents = new Map<string, ChildService>();
  const replicas: ChildService[] = [];
  const clients: VsmClient[] = [];

  beforeAll(async () => {
    etcd = await EtcdCluster.start(1);
    raw = new Etcd3({ hosts: etcd.endpoints });
    replicas.push(
      ...(await Promise.all(
        [0, 1].map((i) => spawnService(['--backend', 'agent', '--etcd-endpoints', etcd.endpoints, '--replica-ttl', '2'], { name: `vsm-service replica ${i}` })),
      )),
    );
    for (const r of replicas) clients.push(connect(r.address, { retries: 0, deadlineMs: 60_000 }));
    for (const name of ['agent-a', 'agent-b']) {
      agents.set(
        name,
        await spawnService(['--etcd-endpoints', etcd.endpoints, '--lease-ttl', '2', '--agent-name', name], { main: AGENT_MAIN, name: `vsm-kvm-agent ${name}` }),
      );
    }
    for (const c of clients)
      await waitFor(
        'both agents READY',
        async () => (await listFleetAgents(c)).filter((x) => x.state === pb.AgentState.AGENT_STATE_READY).length === 2,
        60_000,
        100,
      );
  }, 180_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    raw?.close();
    await Promise.all([...replicas, ...agents.values()].map((p) => p.stop()));
    await etcd?.stop();
  });

  const record = async (id: string) =>
    JSON.parse((await raw.get(`/vsm/partitions/${id}`).string())!) as Record<string, unknown> & { agent: string; generation: number };
  const vp1Counter = async (c: VsmClient, name: string) => Buffer.from((await c.memory.readGpa({ name, gpa: MG.counter1, length: 8 })).data).readBigUInt64LE(0);

  async function runningGuest(id: string) {
    const [c] = clients;
    const p = await c!.partitions.createPartition({
      partitionId: id,
      agent: 'agent-a',
      partition: pb.Partition.fromPartial({ vpCount: 2, memoryBytes: MG.memoryBytes }),
    });
    await c!.execution.loadGuestImage({
      name: p.name,
      image: migrationGuestImage(),
      format: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_FLAT,
      loadGpa: MG.flat,
      entryPoint: MG.flat,
      entryMode: pb.GuestEntryMode.GUEST_ENTRY_MODE_LONG64,
    });
    await c!.execution.startPartition({ name: p.name });
    await waitFor('the guest counting', async () => (await vp1Counter(c!, p.name)) > 2n, 30_000, 50);
    return p.name;
  }

  it('moves a running guest to agent-b: the record switches (agent, generation + 1), the other replica routes there at once', async () => {
    const name = await runningGuest('fm-run');
    const before = await record('fm-run');
    expect(before.agent).toBe('agent-a');
    const progress = await collect(clients[0]!.snapshots.migratePartition({ name, targetAgent: 'agents/agent-b', maxRounds: 2 }));
    const res = progress[progress.length - 1]!.result!;
    expect(res.targetAgent).toBe(agents.get('agent-b')!.address);
    expect(res.sourceAgent).toBe(agents.get('agent-a')!.address);
    const after = await record('fm-run');
    expect([after.agent, after.generation, after.state]).toEqual(['agent-b', before.generation + 1, 'ACTIVE']);
    expect(after.incarnation).not.toBe(before.incarnation);
    for (const c of clients) {
      const p = await c.partitions.getPartition({ name });
      expect([p.agent, p.runState]).toEqual(['agent-b', pb.RunState.RUN_STATE_RUNNING]);
    }
    const n = await vp1Counter(clients[1]!, name);
    await waitFor('VP 1 counting on agent-b (through replica 1)', async () => (await vp1Counter(clients[1]!, name)) > n + 2n, 30_000, 50);
    expect(Buffer.from((await clients[1]!.memory.readGpa({ name, gpa: MG.vp1Bad, length: 8 })).data).readBigUInt64LE(0)).toBe(0n);
    console.log(`fleet-mode live migration of a running 2-VP guest: downtime ${res.downtimeMs} ms, total ${res.totalMs} ms, ${res.rounds} rounds`);
    await clients[1]!.partitions.deletePartition({ name });
  });

  it('a record changed during the migration: the switch-over is ABORTED, the move undone, the partition running on agent-a with its record as it was', async () => {
    const name = await runningGuest('fm-cas');
    let bumped: Record<string, unknown> | undefined;
    const e = await failure(
      collect(clients[0]!.snapshots.migratePartition({ name, targetAgent: 'agent-b', maxRounds: 3, maxDirtyPages: 1 }), async (m) => {
        if (bumped || m.phase !== pb.MigrationPhase.MIGRATION_PHASE_PRECOPY) return;
        // What another replica's write would do (e.g. a checkpoint): the record's generation moves on.
        const rec = await record('fm-cas');
        bumped = { ...rec, generation: rec.generation + 1 };
        await raw.put('/vsm/partitions/fm-cas').value(JSON.stringify(bumped));
      }),
    );
    expect([e.code, e.message]).toEqual([status.ABORTED, expect.stringContaining('record changed during the migration')]);
    const rec = await record('fm-cas');
    expect([rec.agent, rec.generation]).toEqual(['agent-a', bumped!.generation]);
    expect((await clients[1]!.partitions.getPartition({ name })).runState).toBe(pb.RunState.RUN_STATE_RUNNING);
    const direct = connect(agents.get('agent-b')!.address, { retries: 0 });
    try {
      expect((await failure(direct.partitions.getPartition({ name }))).code).toBe(status.NOT_FOUND);
    } finally {
      direct.close();
    }
    const n = await vp1Counter(clients[0]!, name);
    await waitFor('VP 1 still counting on agent-a', async () => (await vp1Counter(clients[0]!, name)) > n + 2n, 30_000, 50);

    // Bad targets, refused before anything moves.
    const none = await failure(collect(clients[0]!.snapshots.migratePartition({ name, targetAgent: 'agents/agent-z' })));
    expect([none.code, none.message]).toEqual([status.FAILED_PRECONDITION, expect.stringContaining('not in the fleet')]);
    const same = await failure(collect(clients[0]!.snapshots.migratePartition({ name, targetAgent: 'agent-a' })));
    expect([same.code, same.message]).toEqual([status.FAILED_PRECONDITION, expect.stringContaining('already on agent')]);
    expect((await failure(collect(clients[0]!.snapshots.migratePartition({ name, targetAgent: '' })))).code).toBe(status.INVALID_ARGUMENT);
    expect((await record('fm-cas')).agent).toBe('agent-a');
    await clients[0]!.partitions.deletePartition({ name });
  });
});
