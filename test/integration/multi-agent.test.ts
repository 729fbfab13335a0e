// Beyond one machine: two vsm-kvm-agent containers (each with --device /dev/kvm, no capability) on
// two loopback ports, and two stateless vsm-service replicas with `--backend agent --agent A,B` in
// front of both. A partition created through one replica is served through the other (both replicas
// compute a partition's agent from its id and the same list, rendezvous hashing: no shared state,
// no coordination, no agent asked where a partition is). Partitions are spread over the agents, every call reaches the agent that hosts the
// partition, ListPartitions pages over both, and when one agent stops its partitions answer
// UNAVAILABLE while the other agent's partitions keep working.
import { status } from '@grpc/grpc-js';
import { GenericContainer, type StartedTestContainer, Wait } from 'testcontainers';
import { connect, type pb, type VsmClient, VsmError } from '@vsm/client';
import { AGENT_IMAGE, BUILD_TIMEOUT_MS, SERVICE_IMAGE, buildImage, freePort, healthy, kvmUnavailable, requireEngine, run } from './support/docker';
import { gateDescribe } from '../support/kvm-gate';
import { HvMsr } from '@vsm/core';
import { staticOwner } from '@vsm/vsm-v1';

const GUEST_OS_ID = HvMsr.HV_X64_MSR_GUEST_OS_ID;
const AGENT_FLAGS = [
  '--network',
  'host',
  '--init',
  '--device',
  '/dev/kvm',
  '--user',
  '0:0',
  '--cap-drop',
  'ALL',
  '--security-opt',
  'no-new-privileges',
  '--read-only',
];

const kvm = kvmUnavailable();

gateDescribe(kvm)('vsm-service in front of two KVM agents', () => {
  const agents: { id: string; address: string }[] = [];
  const ids: string[] = [];
  let svc: StartedTestContainer | undefined;
  let svc2: StartedTestContainer | undefined;
  let client: VsmClient | undefined;
  let client2: VsmClient | undefined;

  beforeAll(async () => {
    requireEngine();
    await buildImage(AGENT_IMAGE, 'deploy/agent.Dockerfile');
    await buildImage(SERVICE_IMAGE, 'deploy/service.Dockerfile');
    for (let n = 0; n < 2; n++) {
      const address = `127.0.0.1:${await freePort()}`;
      const r = await run('docker', ['run', '-d', '--rm', ...AGENT_FLAGS, '-e', `VSM_LISTEN=${address}`, AGENT_IMAGE]);
      if (r.code !== 0) throw new Error(`docker run of agent ${n} failed: ${r.stderr}`);
      agents.push({ id: r.stdout.trim(), address });
    }
    for (const a of agents) {
      let ok = false;
      for (let i = 0; i < 60 && !ok; i++) {
        ok = await healthy(a.address);
        if (!ok) await new Promise((r) => setTimeout(r, 500));
      }
      if (!ok) throw new Error(`agent on ${a.address} not healthy within 30 s`);
    }
    const replica = async () => {
      const address = `127.0.0.1:${await freePort()}`;
      const c = await new GenericContainer(SERVICE_IMAGE)
        .withNetworkMode('host')
        .withEnvironment({ VSM_LISTEN: address, VSM_BACKEND: 'agent', VSM_AGENTS: agents.map((a) => a.address).join(',') })
        .withHealthCheck({ test: ['CMD', 'node', '/app/deploy/healthcheck.js'], interval: 500, timeout: 5_000, retries: 30, startPeriod: 0 })
        .withWaitStrategy(Wait.forHealthCheck())
        .withStartupTimeout(60_000)
        .start();
      return { c, client: connect(address, { deadlineMs: 10_000 }) };
    };
    // Ids whose static owners cover both agents (two each), so the spread below is deterministic.
    const want = [0, 0];
    for (let n = 0; want.some((w) => w < 2); n++) {
      const owner = staticOwner(
        `ma-${n}`,
        agents.map((a) => a.address),
      );
      if (want[owner]! < 2) {
        want[owner]!++;
        ids.push(`ma-${n}`);
      }
    }
    const r1 = await replica();
    const r2 = await replica();
    svc = r1.c;
    client = r1.client;
    svc2 = r2.c;
    client2 = r2.client;
  }, BUILD_TIMEOUT_MS + 120_000);

  afterAll(async () => {
    client?.close();
    client2?.close();
    await svc?.stop({ timeout: 10_000 });
    await svc2?.stop({ timeout: 10_000 });
    for (const a of agents) await run('docker', ['rm', '-f', a.id]);
  });

  const home = new Map<string, number>(); // partition id -> agent index

  async function onAgent(i: number): Promise<string[]> {
    const c = connect(agents[i]!.address, { deadlineMs: 10_000 });
    try {
      return (await c.partitions.listPartitions({ pageSize: 100 })).partitions.map((p) => p.name);
    } finally {
      c.close();
    }
  }

  test('partitions are spread over both agents, each call reaches the hosting agent', async () => {
    for (const [n, id] of ids.entries()) {
      const p = await client!.partitions.createPartition({ partitionId: id, partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 } as pb.Partition });
      expect(p.name).toBe(`partitions/${id}`);
      await client!.guest.writeMsr({ name: `${p.name}/vps/0`, msr: GUEST_OS_ID, value: 0x8100_0000_0000_0000n + BigInt(n) });
    }
    const [a, b] = [await onAgent(0), await onAgent(1)];
    expect([...a, ...b].sort()).toEqual(ids.map((id) => `partitions/${id}`).sort());
    expect(a.length).toBeGreaterThan(0);
    expect(b.length).toBeGreaterThan(0);
    // Each on the agent its id names (the replicas' routing rule).
    for (const id of ids)
      expect(a.includes(`partitions/${id}`) ? 0 : 1).toBe(
        staticOwner(
          id,
          agents.map((x) => x.address),
        ),
      );
    for (const name of a) home.set(name.split('/')[1]!, 0);
    for (const name of b) home.set(name.split('/')[1]!, 1);
    for (const [n, id] of ids.entries()) {
      expect((await client!.guest.readMsr({ name: `partitions/${id}/vps/0`, msr: GUEST_OS_ID })).value).toBe(0x8100_0000_0000_0000n + BigInt(n));
    }
  });

  test('a partition created through one replica is served through the other', async () => {
    const p = await client!.partitions.createPartition({ partitionId: 'ma-replica', partition: { vpCount: 1, memoryBytes: 1n << 30n } as pb.Partition });
    await client!.guest.writeMsr({ name: `${p.name}/vps/0`, msr: GUEST_OS_ID, value: 0x1234n });
    expect((await client2!.guest.readMsr({ name: `${p.name}/vps/0`, msr: GUEST_OS_ID })).value).toBe(0x1234n);
    await client2!.guest.writeMsr({ name: `${p.name}/vps/0`, msr: GUEST_OS_ID, value: 0x5678n });
    expect((await client!.guest.readMsr({ name: `${p.name}/vps/0`, msr: GUEST_OS_ID })).value).toBe(0x5678n);
    await client2!.partitions.deletePartition({ name: p.name });
    const gone = await client!.partitions.getPartition({ name: p.name }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((gone as VsmError).code).toBe(status.NOT_FOUND);
  });

  test('ListPartitions through the service pages over both agents', async () => {
    const names: string[] = [];
    let pageToken = '';
    do {
      const r = await client!.partitions.listPartitions({ pageSize: 1, pageToken });
      names.push(...r.partitions.map((p) => p.name));
      pageToken = r.nextPageToken;
    } while (pageToken);
    expect(names.sort()).toEqual(ids.map((id) => `partitions/${id}`).sort());
  });

  test("one agent stops: its partitions are UNAVAILABLE, the other agent's keep working", async () => {
    expect(home.size).toBe(ids.length);
    const stop = await run('docker', ['stop', '-t', '10', agents[0]!.id]);
    expect(stop.code).toBe(0);
    for (const [n, id] of ids.entries()) {
      const call = client!.guest.readMsr({ name: `partitions/${id}/vps/0`, msr: GUEST_OS_ID });
      if (home.get(id) === 1) {
        expect((await call).value).toBe(0x8100_0000_0000_0000n + BigInt(n));
      } else {
        const err = await call.then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(VsmError);
        expect((err as VsmError).code).toBe(status.UNAVAILABLE);
      }
    }
    // The other replica never located these partitions before: it still serves the live agent's.
    for (const [n, id] of ids.entries()) {
      if (home.get(id) !== 1) continue;
      expect((await client2!.guest.readMsr({ name: `partitions/${id}/vps/0`, msr: GUEST_OS_ID })).value).toBe(0x8100_0000_0000_0000n + BigInt(n));
    }
  });
});
