// Fleet mode (#14) with real processes on loopback: a 3-member etcd cluster (Debian's etcd-server),
// 3 real vsm-kvm-agent processes registered under 3 s leases, and 2 vsm-service replicas with
// `--backend agent --etcd-endpoints`. Placement by capacity across replicas, one partition for 20
// concurrent creates of one id, request_id idempotency across replicas, etcd member and leader
// kills, an agent killed (its partitions turn UNAVAILABLE, the others keep serving), an agent that
// joins. Then the faults, on a separate single-member etcd: etcd unreachable at start (health
// NOT_SERVING, then SERVING), etcd lost while serving (cached reads work, mutations UNAVAILABLE),
// records and memberships written by a newer version, an advertised address that does not answer.
import { execFileSync } from 'node:child_process';
import * as net from 'node:net';
import { status } from '@grpc/grpc-js';
import { type VsmClient, VsmError, connect, pb } from '@vsm/client';
import { failure, healthStatus, listFleetAgents } from '../support/server';
import { Etcd3 } from 'etcd3';
import { vsmctl } from '../cli/support';
import { AGENT_MAIN, type ChildService, spawnService } from '../support/child-service';
import { EtcdCluster, etcdUnavailable, freePort } from '../support/etcd';
import { gateDescribe, kvmUnavailableReason } from '../support/kvm-gate';
import { waitFor } from '../support/wait';

jest.setTimeout(120_000);

const LEASE_TTL_S = 3;
const MiB = 1n << 20n;
const why = etcdUnavailable() ?? kvmUnavailableReason();

const SERVING = 1;
const NOT_SERVING = 2;

function startAgent(endpoints: string, name: string, extra: string[] = []): Promise<ChildService> {
  return spawnService(['--etcd-endpoints', endpoints, '--lease-ttl', String(LEASE_TTL_S), '--agent-name', name, ...extra], {
    main: AGENT_MAIN,
    name: `vsm-kvm-agent ${name}`,
  });
}

function startReplica(endpoints: string, name: string, extra: string[] = []): Promise<ChildService> {
  return spawnService(['--backend', 'agent', '--etcd-endpoints', endpoints, ...extra], { name });
}

async function readyAgents(c: VsmClient): Promise<pb.Agent[]> {
  return (await listFleetAgents(c)).filter((a) => a.state === pb.AgentState.AGENT_STATE_READY);
}

async function listAll(c: VsmClient): Promise<pb.Partition[]> {
  const out: pb.Partition[] = [];
  let token = '';
  do {
    const r = await c.partitions.listPartitions({ pageSize: 37, pageToken: token });
    out.push(...r.partitions);
    token = r.nextPageToken;
  } while (token);
  return out;
}

const spec = (vpCount = 1, labels: Record<string, string> = {}) => ({ partition: pb.Partition.fromPartial({ vpCount, memoryBytes: MiB, labels }) });

gateDescribe(why)('fleet on etcd: 3 etcd members, 3 agents, 2 service replicas', () => {
  let etcd: EtcdCluster;
  const agents: ChildService[] = [];
  const replicas: ChildService[] = [];
  const clients: VsmClient[] = [];

  beforeAll(async () => {
    etcd = await EtcdCluster.start(3);
    // Capacity in VPs: agent-2 offers twice what the others offer.
    const caps = [200, 200, 400];
    agents.push(...(await Promise.all(caps.map((cap, i) => startAgent(etcd.endpoints, `agent-${i}`, ['--capacity-vps', String(cap)])))));
    replicas.push(...(await Promise.all([0, 1].map((i) => startReplica(etcd.endpoints, `vsm-service replica ${i}`)))));
    for (const r of replicas) clients.push(connect(r.address, { retries: 0, deadlineMs: 60_000 }));
    for (const c of clients) await waitFor('3 agents READY on the replica', async () => (await readyAgents(c)).length === 3, 60_000, 100);
  }, 180_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    await Promise.all([...replicas, ...agents].map((p) => p.stop()));
    await etcd?.stop();
  });

  const byAgent = (ps: pb.Partition[]) => {
    const m = new Map<string, number>();
    for (const p of ps) m.set(p.agent, (m.get(p.agent) ?? 0) + 1);
    return m;
  };

  it('200 partitions created through both replicas at once spread by capacity; each is served through either replica', async () => {
    const created = await Promise.all(Array.from({ length: 200 }, (_, i) => clients[i % 2]!.partitions.createPartition(spec(1, { batch: 'spread' }))));
    expect(new Set(created.map((p) => p.name)).size).toBe(200);
    for (const c of clients) {
      const listed = (await listAll(c)).filter((p) => p.labels.batch === 'spread');
      expect(listed.map((p) => p.name).sort()).toEqual(created.map((p) => p.name).sort());
    }
    const counts = byAgent(created);
    // Capacities 200/200/400 VPs: agent-2 takes about half, the others a quarter each.
    expect([...counts.values()].reduce((a, b) => a + b, 0)).toBe(200);
    expect(counts.get('agent-2')!).toBeGreaterThan(Math.max(counts.get('agent-0')!, counts.get('agent-1')!));
    expect(Math.min(counts.get('agent-0')!, counts.get('agent-1')!)).toBeGreaterThanOrEqual(25);
    // Routing: every call lands on the agent of the record, through the other replica too.
    for (const [i, p] of created.slice(0, 40).entries()) {
      const other = clients[(i + 1) % 2]!;
      const got = await other.partitions.getPartition({ name: p.name });
      expect(got.agent).toBe(p.agent);
      expect(got.state).toBe(pb.PartitionState.PARTITION_STATE_ACTIVE);
      const vp = await other.vps.getVirtualProcessor({ name: `${p.name}/vps/0` });
      expect(vp.name).toBe(`${p.name}/vps/0`);
    }
    // vsmctl agents' view: load from the records.
    const listed = await clients[0]!.fleet.listAgents({});
    for (const a of listed.agents) expect(a.load!.partitions).toBeGreaterThanOrEqual(counts.get(a.name.replace('agents/', '')) ?? 0);
    console.log(`placement of 200 (capacities 200/200/400 VPs): ${JSON.stringify(Object.fromEntries(counts))}`);
  });

  it('20 concurrent creates of one id through both replicas make exactly one partition; a request_id is idempotent across replicas', async () => {
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) => clients[i % 2]!.partitions.createPartition({ ...spec(), partitionId: 'same-id' })),
    );
    const ok = results.filter((r) => r.status === 'fulfilled');
    expect(ok).toHaveLength(1);
    for (const r of results)
      if (r.status === 'rejected') {
        expect(r.reason).toBeInstanceOf(VsmError);
        expect((r.reason as VsmError).code).toBe(status.ALREADY_EXISTS);
      }
    // Exactly one agent holds it (asked directly).
    const holders: string[] = [];
    for (const a of agents) {
      const c = connect(a.address, { retries: 0 });
      await c.partitions.getPartition({ name: 'partitions/same-id' }).then(
        () => holders.push(a.address),
        (e: VsmError) => expect(e.code).toBe(status.NOT_FOUND),
      );
      c.close();
    }
    expect(holders).toHaveLength(1);

    const same = await Promise.all(
      Array.from({ length: 20 }, (_, i) => clients[i % 2]!.partitions.createPartition({ ...spec(2), partitionId: 'same-req', requestId: 'req-1' })),
    );
    expect(new Set(same.map((p) => `${p.name}@${p.agent}`)).size).toBe(1);
    expect(same[0]!.vpCount).toBe(2);
    // The same request_id with other content is refused, through either replica.
    for (const c of clients)
      expect((await failure(c.partitions.createPartition({ ...spec(3), partitionId: 'same-req', requestId: 'req-1' }))).code).toBe(status.ALREADY_EXISTS);
    // Without an id, a retried request_id returns the partition the first call made.
    const a = await clients[0]!.partitions.createPartition({ ...spec(), requestId: 'req-2' });
    const b = await clients[1]!.partitions.createPartition({ ...spec(), requestId: 'req-2' });
    expect(b.name).toBe(a.name);
  });

  it('a killed etcd member, then the leader, changes nothing visible', async () => {
    const check = async (tag: string) => {
      const p = await clients[0]!.partitions.createPartition({ ...spec(), partitionId: `after-${tag}` });
      const q = await clients[1]!.partitions.getPartition({ name: p.name });
      expect(q.agent).toBe(p.agent);
      await clients[1]!.partitions.deletePartition({ name: p.name });
      expect((await failure(clients[0]!.partitions.getPartition({ name: p.name }))).code).toBe(status.NOT_FOUND);
      expect((await listAll(clients[1]!)).length).toBeGreaterThanOrEqual(200);
    };
    const leader = etcd.leader();
    const follower = etcd.members.find((m) => m !== leader)!;
    await etcd.kill(follower);
    await check('follower');
    await etcd.restart(follower);
    const leader2 = etcd.leader();
    await etcd.kill(leader2);
    await check('leader');
    await etcd.restart(leader2);
    // The agents kept their leases through both.
    for (const c of clients) expect(await readyAgents(c)).toHaveLength(3);
  });

  it("a killed agent's partitions turn UNAVAILABLE within the lease TTL, the others keep serving, and a new agent takes new partitions", async () => {
    const all = await listAll(clients[0]!);
    const victim = 'agent-0';
    const lost = all.filter((p) => p.agent === victim);
    const kept = all.filter((p) => p.agent !== victim && p.state === pb.PartitionState.PARTITION_STATE_ACTIVE);
    expect(lost.length).toBeGreaterThan(0);
    const killedAt = Date.now();
    await agents[0]!.stop('SIGKILL');
    for (const c of clients)
      await waitFor(
        'the killed agent’s partitions UNAVAILABLE',
        // Until the lease expires the agent is still a member: Get fails UNAVAILABLE (connection refused).
        () =>
          c.partitions.getPartition({ name: lost[0]!.name }).then(
            // UNAVAILABLE shows as soon as the membership is gone; the record's rewrite adds the time.
            (x) => x.state === pb.PartitionState.PARTITION_STATE_UNAVAILABLE && x.stateTimeUnixMs !== undefined,
            (e: VsmError) => (e.code === status.UNAVAILABLE ? false : Promise.reject(e)),
          ),
        60_000,
        50,
      );
    const p = await clients[1]!.partitions.getPartition({ name: lost[0]!.name });
    expect(p.agent).toBe(victim);
    expect(p.stateReason).toMatch(/agent-0 left the fleet/);
    const delayMs = Number(p.stateTimeUnixMs!) - killedAt;
    console.log(`agent killed -> partitions UNAVAILABLE after ${delayMs} ms (lease TTL ${LEASE_TTL_S} s)`);
    // etcd expires a lease TTL after its last keep-alive; the bound leaves room for a loaded machine.
    expect(delayMs).toBeLessThan(LEASE_TTL_S * 1000 * 3 + 10_000);
    // Every lost partition is UNAVAILABLE in the records; calls on them fail fast with UNAVAILABLE.
    await waitFor('every lost partition UNAVAILABLE in the list', async () =>
      (await listAll(clients[0]!)).filter((x) => x.agent === victim).every((x) => x.state === pb.PartitionState.PARTITION_STATE_UNAVAILABLE),
    );
    for (const c of clients) {
      const e = await failure(c.vps.getVirtualProcessor({ name: `${lost[1]!.name}/vps/0` }));
      expect(e.code).toBe(status.UNAVAILABLE);
      expect(e.message).toMatch(/UNAVAILABLE/);
    }
    for (const x of kept.slice(0, 10)) expect((await clients[0]!.vps.getVirtualProcessor({ name: `${x.name}/vps/0` })).name).toBe(`${x.name}/vps/0`);
    // New partitions go to the live agents only.
    const fresh = await Promise.all(Array.from({ length: 6 }, (_, i) => clients[i % 2]!.partitions.createPartition(spec())));
    for (const f of fresh) expect(f.agent).not.toBe(victim);
    // Deleting an UNAVAILABLE partition removes its record.
    await clients[0]!.partitions.deletePartition({ name: lost[1]!.name });
    expect((await failure(clients[1]!.partitions.getPartition({ name: lost[1]!.name }))).code).toBe(status.NOT_FOUND);

    // A new agent joins (more capacity than anyone's free capacity): no restart anywhere.
    agents.push(await startAgent(etcd.endpoints, 'agent-3', ['--capacity-vps', '4000']));
    for (const c of clients) await waitFor('agent-3 READY', async () => (await readyAgents(c)).some((a) => a.name === 'agents/agent-3'), 60_000, 100);
    const next = await Promise.all(Array.from({ length: 6 }, (_, i) => clients[i % 2]!.partitions.createPartition(spec())));
    expect(next.filter((x) => x.agent === 'agent-3').length).toBeGreaterThan(0);
    // vsmctl agents: the live agents with their load, through either replica.
    const out = await vsmctl(['--address', replicas[1]!.address, 'agents']);
    expect(out.code).toBe(0);
    expect(out.stdout).toMatch(/agent-3\s+127\.0\.0\.1:\d+\s+ready/);
    expect(out.stdout).not.toMatch(/agent-0/);
    const json = await vsmctl(['--address', replicas[0]!.address, '--json', 'agents']);
    const listed = JSON.parse(json.stdout) as { name: string; state: string; load: { partitions: number } }[];
    expect(listed.map((a) => a.name).sort()).toEqual(['agents/agent-1', 'agents/agent-2', 'agents/agent-3']);
    expect(listed.every((a) => a.state === 'AGENT_STATE_READY')).toBe(true);
    const hinted = await clients[0]!.partitions.createPartition({ ...spec(), agent: 'agent-1' });
    expect(hinted.agent).toBe('agent-1');
    expect((await failure(clients[0]!.partitions.createPartition({ ...spec(), agent: victim }))).code).toBe(status.FAILED_PRECONDITION);
  });
});

gateDescribe(why)('fleet on etcd: faults', () => {
  let port: number;
  let etcd: EtcdCluster | undefined;
  let agent: ChildService | undefined;
  let replica: ChildService | undefined;
  let c: VsmClient | undefined;
  let silent: net.Server | undefined;
  let raw: Etcd3 | undefined;

  afterAll(async () => {
    c?.close();
    raw?.close();
    silent?.close();
    await Promise.all([replica?.stop(), agent?.stop()]);
    await etcd?.stop();
  });

  it('etcd unreachable at start: the replica serves NOT_SERVING with a clear error, retries, and serves once etcd answers', async () => {
    port = await freePort();
    const endpoints = `http://127.0.0.1:${port}`;
    let retried = false;
    replica = await spawnService(['--backend', 'agent', '--etcd-endpoints', endpoints], {
      name: 'vsm-service (fault)',
      onStdoutLine: (l) => {
        if (/etcd unreachable; retrying/.test(l)) retried = true;
      },
    });
    c = connect(replica.address, { retries: 0 });
    expect(await healthStatus(replica.address)).toBe(NOT_SERVING);
    const e = await failure(c.partitions.listPartitions({}));
    expect(e.code).toBe(status.UNAVAILABLE);
    expect(e.message).toMatch(/etcd .* not connected yet/);
    await waitFor('the retry log line', () => retried);
    etcd = await EtcdCluster.start(1, { clientPorts: [port] });
    await waitFor('health SERVING', async () => (await healthStatus(replica!.address)) === SERVING, 60_000, 100);
    agent = await startAgent(endpoints, 'solo');
    await waitFor('the agent READY', async () => (await readyAgents(c!)).length === 1, 60_000, 100);
    const p = await c.partitions.createPartition({ ...spec(), partitionId: 'before-loss' });
    expect(p.agent).toBe('solo');
  });

  it('records and memberships written by a newer version are reported, never rewritten, and do not break the rest', async () => {
    raw = new Etcd3({ hosts: etcd!.endpoints });
    const future = JSON.stringify({ format: 2, id: 'future-1', agent: 'solo', shape: 'unknown' });
    await raw.put('/vsm/partitions/future-1').value(future);
    await raw.put('/vsm/agents/future-agent').value(JSON.stringify({ format: 2, name: 'future-agent' }));
    await waitFor('the newer record seen', async () => (await listAll(c!)).some((p) => p.name === 'partitions/future-1'));
    const listed = (await listAll(c!)).find((p) => p.name === 'partitions/future-1')!;
    expect(listed.state).toBe(pb.PartitionState.PARTITION_STATE_UNAVAILABLE);
    expect(listed.stateReason).toMatch(/format 2 by a newer version/);
    const g = await failure(c!.partitions.getPartition({ name: 'partitions/future-1' }));
    expect(g.code).toBe(status.FAILED_PRECONDITION);
    expect((await failure(c!.partitions.deletePartition({ name: 'partitions/future-1' }))).code).toBe(status.FAILED_PRECONDITION);
    expect((await failure(c!.partitions.createPartition({ ...spec(), partitionId: 'future-1' }))).code).toBe(status.ALREADY_EXISTS);
    expect(await raw.get('/vsm/partitions/future-1').string()).toBe(future);
    const fa = (await c!.fleet.listAgents({})).agents.find((a) => a.name === 'agents/future-agent')!;
    expect(fa.state).toBe(pb.AgentState.AGENT_STATE_INCOMPATIBLE);
    const p = await c!.partitions.createPartition(spec());
    expect(p.agent).toBe('solo');
    await raw.delete().key('/vsm/partitions/future-1');
    await raw.delete().key('/vsm/agents/future-agent');
  });

  it('an agent advertising an address that does not answer is UNREACHABLE and takes no partitions; nothing hangs', async () => {
    // Accepts TCP connections and never answers (worse than a refused connection).
    silent = net.createServer(() => undefined);
    await new Promise<void>((r) => silent!.listen(0, '127.0.0.1', r));
    const address = `127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
    const lease = raw!.lease(30);
    const member = {
      format: 1,
      name: 'ghost',
      address,
      incarnation: 'ghost-1',
      backend: 'kvm',
      version: 'test',
      registerTimeUnixMs: Date.now(),
      labels: {},
      capacity: { partitions: 4096, vps: 100000, memoryBytes: String(1n << 40n), memslots: 4096 },
    };
    await lease.put('/vsm/agents/ghost').value(JSON.stringify(member));
    await waitFor(
      'ghost UNREACHABLE',
      async () => (await c!.fleet.listAgents({})).agents.find((a) => a.name === 'agents/ghost')?.state === pb.AgentState.AGENT_STATE_UNREACHABLE,
      60_000,
      100,
    );
    // Far more free capacity than solo, but it does not answer: placement skips it.
    for (let i = 0; i < 5; i++) expect((await c!.partitions.createPartition(spec())).agent).toBe('solo');
    const e = await failure(c!.partitions.createPartition({ ...spec(), agent: 'ghost' }));
    expect(e.code).toBe(status.UNAVAILABLE);
    expect(e.message).toMatch(/ghost/);
    await lease.revoke();
  });

  it('etcd lost while serving: cached records keep routing and reading, mutations fail UNAVAILABLE, and it recovers', async () => {
    const before = await listAll(c!);
    await etcd!.kill(etcd!.members[0]!);
    // Reads and routed calls from the cache.
    const got = await c!.partitions.getPartition({ name: 'partitions/before-loss' });
    expect(got.agent).toBe('solo');
    expect((await c!.vps.getVirtualProcessor({ name: 'partitions/before-loss/vps/0' })).name).toBe('partitions/before-loss/vps/0');
    expect((await listAll(c!)).map((p) => p.name).sort()).toEqual(before.map((p) => p.name).sort());
    // Mutations of the fleet state need etcd.
    const ce = await failure(c!.partitions.createPartition(spec()));
    expect(ce.code).toBe(status.UNAVAILABLE);
    expect(ce.message).toMatch(/etcd/);
    const de = await failure(c!.partitions.deletePartition({ name: 'partitions/before-loss' }));
    expect(de.code).toBe(status.UNAVAILABLE);
    await etcd!.restart(etcd!.members[0]!);
    await waitFor(
      'creates work again',
      () =>
        c!.partitions.createPartition({ ...spec(), partitionId: 'after-recovery' }).then(
          () => true,
          (e: VsmError) => (e.code === status.UNAVAILABLE ? false : Promise.reject(e)),
        ),
      60_000,
      200,
    );
    await c!.partitions.deletePartition({ name: 'partitions/before-loss' });
    // The agent's membership survived (or was renewed with the same incarnation).
    await waitFor('the agent READY again', async () => (await readyAgents(c!)).length === 1, 60_000, 100);
    expect(execFileSync('etcdctl', ['--endpoints', etcd!.endpoints, 'get', '--prefix', '--keys-only', '/vsm/agents/']).toString()).toMatch(/solo/);
  });
});
