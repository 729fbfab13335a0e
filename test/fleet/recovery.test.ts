// Fleet mode (#14), durability across agents, with real processes on loopback: a single-member etcd,
// real vsm-kvm-agent processes (2 s leases) and 2 vsm-service replicas sharing one --checkpoint-dir.
// Checkpoints (CheckpointPartition and every --checkpoint-interval) hold a partition's state; when its
// agent is killed with SIGKILL a partition whose spec asks (recovery_policy RESTART) comes back on
// another agent with that state, and RecoverPartition restarts one by a call (bad input refused).
// A CREATING record left by a replica that died (written as such, and a replica really killed
// during 30 creates) is repaired. ImportPartition places and records like CreatePartition.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { status } from '@grpc/grpc-js';
import { type VsmClient, connect, pb } from '@vsm/client';
import { failure, listFleetAgents } from '../support/server';
import { HvMsr } from '@vsm/core';
import { Etcd3 } from 'etcd3';
import { vsmctl } from '../cli/support';
import { AGENT_MAIN, type ChildService, spawnService } from '../support/child-service';
import { EtcdCluster, etcdUnavailable } from '../support/etcd';
import { gateDescribe, kvmUnavailableReason } from '../support/kvm-gate';
import { waitFor } from '../support/wait';

jest.setTimeout(120_000);

const LEASE_TTL_S = 2;
const MiB = 1n << 20n;
const GUEST_OS_ID = HvMsr.HV_X64_MSR_GUEST_OS_ID;
const why = etcdUnavailable() ?? kvmUnavailableReason();

const spec = (policy = pb.RecoveryPolicy.RECOVERY_POLICY_UNSPECIFIED) => ({
  partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: MiB, recoveryPolicy: policy }),
});

gateDescribe(why)('fleet durability: checkpoints, restart on another agent, CREATING repair, import', () => {
  let etcd: EtcdCluster;
  let raw: Etcd3;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-checkpoints-'));
  const agents = new Map<string, ChildService>();
  const replicas: ChildService[] = [];
  const clients: VsmClient[] = [];

  const startAgent = async (name: string) => {
    const a = await spawnService(['--etcd-endpoints', etcd.endpoints, '--lease-ttl', String(LEASE_TTL_S), '--agent-name', name], {
      main: AGENT_MAIN,
      name: `vsm-kvm-agent ${name}`,
    });
    agents.set(name, a);
    for (const c of clients)
      await waitFor(
        `${name} READY`,
        async () => (await listFleetAgents(c)).some((x) => x.name === `agents/${name}` && x.state === pb.AgentState.AGENT_STATE_READY),
        60_000,
        100,
      );
    return a;
  };
  const startReplica = (name: string) =>
    spawnService(['--backend', 'agent', '--etcd-endpoints', etcd.endpoints, '--checkpoint-dir', dir, '--checkpoint-interval', '1', '--replica-ttl', '2'], {
      name,
    });
  const files = (id: string) => fs.readdirSync(dir).filter((f) => f.startsWith(`${id}.`));
  const incarnation = async (agent: string) => JSON.parse((await raw.get(`/vsm/agents/${agent}`).string())!).incarnation as string;

  beforeAll(async () => {
    etcd = await EtcdCluster.start(1);
    raw = new Etcd3({ hosts: etcd.endpoints });
    replicas.push(...(await Promise.all([0, 1].map((i) => startReplica(`vsm-service replica ${i}`)))));
    for (const r of replicas) clients.push(connect(r.address, { retries: 0, deadlineMs: 60_000 }));
    await Promise.all(['agent-a', 'agent-b'].map(startAgent));
  }, 180_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    raw?.close();
    await Promise.all([...replicas, ...agents.values()].map((p) => p.stop()));
    await etcd?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('checkpoints: on CheckpointPartition and every --checkpoint-interval, one file per partition in the shared directory', async () => {
    const p = await clients[0]!.partitions.createPartition({ ...spec(), partitionId: 'per-1' });
    await waitFor(
      'a periodic checkpoint',
      async () => (await clients[1]!.partitions.getPartition({ name: p.name })).checkpointTimeUnixMs !== undefined,
      30_000,
      100,
    );
    const t1 = (await clients[1]!.partitions.getPartition({ name: p.name })).checkpointTimeUnixMs!;
    await waitFor('a later checkpoint', async () => (await clients[0]!.partitions.getPartition({ name: p.name })).checkpointTimeUnixMs! > t1, 30_000, 100);
    const now = await clients[1]!.fleet.checkpointPartition({ name: p.name });
    expect(now.checkpointTimeUnixMs).toBeDefined();
    expect(now.agent).toMatch(/^agent-[ab]$/);
    await waitFor('old checkpoint files removed', () => files('per-1').filter((f) => !f.endsWith('.partial')).length === 1, 30_000, 100);
    // Bad input.
    expect((await failure(clients[0]!.fleet.checkpointPartition({ name: 'partitions/nowhere' }))).code).toBe(status.NOT_FOUND);
    expect((await failure(clients[0]!.fleet.checkpointPartition({ name: 'nope' }))).code).toBe(status.INVALID_ARGUMENT);
    const bad = await failure(
      clients[0]!.partitions.createPartition({ partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: MiB, recoveryPolicy: 7 as pb.RecoveryPolicy }) }),
    );
    expect(bad.code).toBe(status.INVALID_ARGUMENT);
    await clients[0]!.partitions.deletePartition({ name: p.name });
    await waitFor('its checkpoint file removed with it', () => files('per-1').length === 0, 30_000, 100);
  });

  it('kill -9 of its agent: a partition with recovery_policy RESTART comes back on another agent with its checkpointed state; one without stays UNAVAILABLE', async () => {
    const auto = await clients[0]!.partitions.createPartition({ ...spec(pb.RecoveryPolicy.RECOVERY_POLICY_RESTART), partitionId: 'auto-1', agent: 'agent-a' });
    expect(auto.recoveryPolicy).toBe(pb.RecoveryPolicy.RECOVERY_POLICY_RESTART);
    const manual = await clients[1]!.partitions.createPartition({ ...spec(), partitionId: 'man-1', agent: 'agent-a' });
    for (const [i, p] of [auto, manual].entries()) {
      await clients[0]!.memory.writeGpa({ name: p.name, gpa: 0x3000n, data: Buffer.from(`state of ${p.name}`) });
      await clients[1]!.guest.writeMsr({ name: `${p.name}/vps/0`, msr: GUEST_OS_ID, value: 0x8100_0000_0000_0000n + BigInt(i) });
      // Its state from now on is in a checkpoint (the periodic one may have been taken before the writes).
      await clients[i]!.fleet.checkpointPartition({ name: p.name });
    }
    const killedAt = Date.now();
    await agents.get('agent-a')!.stop('SIGKILL');
    for (const c of clients)
      await waitFor(
        'auto-1 ACTIVE on agent-b',
        async () => {
          const p = await c.partitions.getPartition({ name: auto.name }).catch(() => undefined);
          return p?.state === pb.PartitionState.PARTITION_STATE_ACTIVE && p.agent === 'agent-b';
        },
        60_000,
        100,
      );
    console.log(`agent killed -> partition restarted on another agent after ${Date.now() - killedAt} ms (lease TTL ${LEASE_TTL_S} s)`);
    for (const c of clients) {
      expect((await c.memory.readGpa({ name: auto.name, gpa: 0x3000n, length: 26 })).data.toString()).toBe('state of partitions/auto-1');
      expect((await c.guest.readMsr({ name: `${auto.name}/vps/0`, msr: GUEST_OS_ID })).value).toBe(0x8100_0000_0000_0000n);
    }
    const m = await clients[1]!.partitions.getPartition({ name: manual.name });
    expect(m.state).toBe(pb.PartitionState.PARTITION_STATE_UNAVAILABLE);
    expect(m.agent).toBe('agent-a');
    expect(m.checkpointTimeUnixMs).toBeDefined();
    expect((await failure(clients[0]!.fleet.checkpointPartition({ name: manual.name }))).code).toBe(status.UNAVAILABLE);
  });

  it('RecoverPartition restarts an UNAVAILABLE partition on the agent asked for (vsmctl partitions recover); bad input is refused and changes nothing', async () => {
    await startAgent('agent-c');
    const c = clients[0]!;
    expect((await failure(c.fleet.recoverPartition({ name: 'partitions/nowhere' }))).code).toBe(status.NOT_FOUND);
    expect((await failure(c.fleet.recoverPartition({ name: 'bad name' }))).code).toBe(status.INVALID_ARGUMENT);
    const active = await failure(c.fleet.recoverPartition({ name: 'partitions/auto-1' }));
    expect(active.code).toBe(status.FAILED_PRECONDITION);
    expect(active.message).toMatch(/ACTIVE on agent agent-b/);
    expect((await failure(c.fleet.recoverPartition({ name: 'partitions/man-1', targetAgent: 'agent-zz' }))).code).toBe(status.FAILED_PRECONDITION);
    expect((await failure(c.fleet.recoverPartition({ name: 'partitions/man-1', targetAgent: 'agent-a' }))).code).toBe(status.FAILED_PRECONDITION);
    // A lost partition that never had a checkpoint.
    const rec = {
      format: 1,
      id: 'nocp-1',
      agent: 'agent-a',
      incarnation: 'gone',
      state: 'UNAVAILABLE',
      stateReason: 'agent agent-a left the fleet',
      stateTimeUnixMs: Date.now(),
      generation: 3,
      createTimeUnixMs: Date.now(),
      requestId: '',
      vpCount: 1,
      memoryBytes: String(MiB),
    };
    await raw.put('/vsm/partitions/nocp-1').value(JSON.stringify(rec));
    const nocp = await failure(c.fleet.recoverPartition({ name: 'partitions/nocp-1' }));
    expect(nocp.code).toBe(status.FAILED_PRECONDITION);
    expect(nocp.message).toMatch(/no checkpoint/);
    await c.partitions.deletePartition({ name: 'partitions/nocp-1' });
    const still = await clients[1]!.partitions.getPartition({ name: 'partitions/man-1' });
    expect(still.state).toBe(pb.PartitionState.PARTITION_STATE_UNAVAILABLE);

    const out = await vsmctl(['--address', replicas[1]!.address, 'partitions', 'recover', 'man-1', '--agent', 'agent-c']);
    expect(out.stderr).toBe('');
    expect(out.code).toBe(0);
    expect(out.stdout).toMatch(/agent-c/);
    const back = await c.partitions.getPartition({ name: 'partitions/man-1' });
    expect(back.state).toBe(pb.PartitionState.PARTITION_STATE_ACTIVE);
    expect(back.agent).toBe('agent-c');
    expect((await c.memory.readGpa({ name: back.name, gpa: 0x3000n, length: 25 })).data.toString()).toBe('state of partitions/man-1');
    expect((await clients[1]!.guest.readMsr({ name: `${back.name}/vps/0`, msr: GUEST_OS_ID })).value).toBe(0x8100_0000_0000_0001n);
    expect((await failure(c.fleet.recoverPartition({ name: 'partitions/man-1' }))).code).toBe(status.FAILED_PRECONDITION);
  });

  it('a CREATING record whose replica is gone is repaired: ACTIVE when the agent has it, removed when not, UNAVAILABLE again for an interrupted restart', async () => {
    const incB = await incarnation('agent-b');
    const creating = (id: string, extra: Record<string, unknown> = {}) => ({
      format: 1,
      id,
      agent: 'agent-b',
      incarnation: incB,
      state: 'CREATING',
      stateReason: '',
      stateTimeUnixMs: Date.now(),
      generation: 1,
      createTimeUnixMs: Date.now(),
      requestId: '',
      vpCount: 1,
      memoryBytes: String(MiB),
      creator: 'r-died-mid-create',
      ...extra,
    });
    // The replica died after the agent created it (orph-made), before (orph-none, with its request_id), and mid-restart (orph-restart).
    const direct = connect(agents.get('agent-b')!.address, { retries: 0 });
    await direct.partitions.createPartition({ ...spec(), partitionId: 'orph-made' });
    direct.close();
    await raw.put('/vsm/partitions/orph-made').value(JSON.stringify(creating('orph-made')));
    await raw.put('/vsm/partitions/orph-none').value(JSON.stringify(creating('orph-none', { requestId: 'orph-req' })));
    await raw.put('/vsm/requests/orph-req').value(JSON.stringify({ format: 1, partitionId: 'orph-none', fingerprint: 'x' }));
    await raw
      .put('/vsm/partitions/orph-restart')
      .value(
        JSON.stringify(
          creating('orph-restart', { recovering: { agent: 'agent-a', incarnation: 'old', stateReason: 'agent agent-a left the fleet', stateTimeUnixMs: 1 } }),
        ),
      );
    const c = clients[1]!;
    await waitFor(
      'orph-made ACTIVE',
      async () =>
        (await c.partitions.getPartition({ name: 'partitions/orph-made' }).catch(() => undefined))?.state === pb.PartitionState.PARTITION_STATE_ACTIVE,
      60_000,
      100,
    );
    expect((await c.vps.getVirtualProcessor({ name: 'partitions/orph-made/vps/0' })).name).toBe('partitions/orph-made/vps/0');
    await waitFor('orph-none removed', async () => (await raw.get('/vsm/partitions/orph-none').string()) === null, 60_000, 100);
    expect(await raw.get('/vsm/requests/orph-req').string()).toBeNull();
    expect((await failure(c.partitions.getPartition({ name: 'partitions/orph-none' }))).code).toBe(status.NOT_FOUND);
    await waitFor(
      'orph-restart UNAVAILABLE on its old agent',
      async () => {
        const p = await c.partitions.getPartition({ name: 'partitions/orph-restart' });
        return p.state === pb.PartitionState.PARTITION_STATE_UNAVAILABLE && p.agent === 'agent-a';
      },
      60_000,
      100,
    );
    expect((await c.partitions.getPartition({ name: 'partitions/orph-restart' })).stateReason).toMatch(/interrupted/);
    await c.partitions.deletePartition({ name: 'partitions/orph-restart' });
  });

  it('a replica killed during 30 creates leaves no CREATING record behind, and every recorded partition exists on its agent', async () => {
    const victim = await startReplica('vsm-service replica (killed)');
    const vc = connect(victim.address, { retries: 0, deadlineMs: 60_000 });
    await waitFor(
      'the replica serving',
      () =>
        vc.fleet.listAgents({}).then(
          (r) => r.agents.length > 0,
          () => false,
        ),
      60_000,
      100,
    );
    const creates = Array.from({ length: 30 }, (_, i) => vc.partitions.createPartition({ ...spec(), partitionId: `kill-${i}` }).catch(() => undefined));
    await waitFor('some creates recorded', async () => (await raw.getAll().prefix('/vsm/partitions/kill-').keys()).length >= 5, 60_000, 5);
    await victim.stop('SIGKILL');
    await Promise.all(creates);
    vc.close();
    await waitFor(
      'no CREATING record',
      async () => Object.values(await raw.getAll().prefix('/vsm/partitions/kill-').strings()).every((v) => JSON.parse(v).state !== 'CREATING'),
      60_000,
      200,
    );
    const recs = Object.values(await raw.getAll().prefix('/vsm/partitions/kill-').strings()).map(
      (v) => JSON.parse(v) as { id: string; agent: string; state: string },
    );
    for (const r of recs) {
      expect(r.state).toBe('ACTIVE');
      expect((await clients[0]!.vps.getVirtualProcessor({ name: `partitions/${r.id}/vps/0` })).name).toBe(`partitions/${r.id}/vps/0`);
    }
    // And the other way round: no agent holds a kill-* partition without a record (no orphan).
    const held: string[] = [];
    for (const [, a] of agents) {
      if (a.child.exitCode !== null || a.child.signalCode !== null) continue;
      const direct = connect(a.address, { retries: 0 });
      held.push(...(await direct.partitions.listPartitions({ pageSize: 1000 })).partitions.map((p) => p.name).filter((n) => n.startsWith('partitions/kill-')));
      direct.close();
    }
    expect(held.sort()).toEqual(recs.map((r) => `partitions/${r.id}`).sort());
    console.log(`replica killed mid-creates: ${recs.length} of 30 recorded, every one ACTIVE on its agent, none unrecorded on an agent`);
  });

  it('ImportPartition in fleet mode is placed and recorded like CreatePartition; an existing id or a stream without a header creates nothing', async () => {
    const chunks: pb.SnapshotChunk[] = [];
    for await (const ch of clients[0]!.snapshots.exportPartition({ name: 'partitions/auto-1' })) chunks.push(ch);
    const imported = await clients[1]!.snapshots.importPartition(chunks, { partitionId: 'imp-1' });
    expect(imported.name).toBe('partitions/imp-1');
    expect(imported.agent).toMatch(/^agent-[bc]$/);
    const got = await clients[0]!.partitions.getPartition({ name: 'partitions/imp-1' });
    expect(got.agent).toBe(imported.agent);
    expect((await clients[0]!.memory.readGpa({ name: got.name, gpa: 0x3000n, length: 26 })).data.toString()).toBe('state of partitions/auto-1');
    const rec = JSON.parse((await raw.get('/vsm/partitions/imp-1').string())!);
    expect(rec.state).toBe('ACTIVE');
    expect(rec.agent).toBe(imported.agent);
    const dup = await failure(clients[0]!.snapshots.importPartition(chunks, { partitionId: 'imp-1' }));
    expect(dup.code).toBe(status.ALREADY_EXISTS);
    const noHeader = await failure(clients[0]!.snapshots.importPartition(chunks.slice(1), { partitionId: 'imp-2' }));
    expect(noHeader.code).toBe(status.INVALID_ARGUMENT);
    expect(await raw.get('/vsm/partitions/imp-2').string()).toBeNull();
    // Without an id: one is drawn and recorded.
    const anon = await clients[0]!.snapshots.importPartition(chunks);
    expect(anon.name).toMatch(/^partitions\/p-[0-9a-f]{12}$/);
    expect(JSON.parse((await raw.get(`/vsm/${anon.name}`).string())!).state).toBe('ACTIVE');
  });
});
