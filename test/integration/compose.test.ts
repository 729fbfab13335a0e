// docker-compose.yml, profile `emulator`, under testcontainers' DockerComposeEnvironment
// (Compose v2 `docker compose`). Profile emulator: up on a free loopback port, healthy through
// the compose healthcheck, RPCs with the generated client, the state volume writable by the
// service user, a partition surviving a container restart (--state-dir on the named volume).
// Profile kvm: etcd, the agent on /dev/kvm registered in it, and vsm-service --backend agent in
// fleet mode in front of it.
import { DockerComposeEnvironment, type StartedDockerComposeEnvironment, Wait } from 'testcontainers';
import { connect, pb } from '@vsm/client';
import { AGENT_IMAGE, BUILD_TIMEOUT_MS, SERVICE_IMAGE, buildImage, freePort, healthy, kvmUnavailable, repoRoot, requireEngine } from './support/docker';
import { gateDescribe } from '../support/kvm-gate';
import { HvMsr } from '@vsm/core';

const SERVICE = 'vsm-service-emulator-1'; // Compose names containers <project>-<service>-<n>

let env: StartedDockerComposeEnvironment | undefined;
let address = '';

beforeAll(async () => {
  requireEngine();
  // The compose file's image tag (vsm-service:local). Built with the docker CLI's cache (the same
  // build the other tests use) so that `up` finds it instead of building again with Compose's
  // BuildKit, whose cache is separate (the compose build path itself is checked by
  // deploy/scripts/ci-integration.sh when COMPOSE_BUILD=1, see deploy/README.md).
  await buildImage(SERVICE_IMAGE, 'deploy/service.Dockerfile');
  const port = await freePort();
  address = `127.0.0.1:${port}`;
  env = await new DockerComposeEnvironment(repoRoot, 'docker-compose.yml')
    .withProfiles('emulator')
    .withEnvironment({ VSM_SERVICE_PORT: String(port), VSM_IMAGE_TAG: SERVICE_IMAGE.split(':')[1]! })
    .withWaitStrategy(SERVICE, Wait.forHealthCheck())
    .withStartupTimeout(90_000)
    .up();
}, BUILD_TIMEOUT_MS + 120_000);

afterAll(async () => {
  await env?.down({ removeVolumes: true, timeout: 10_000 });
});

describe('docker compose --profile emulator', () => {
  test('the service is healthy on the configured loopback port', async () => {
    expect(await healthy(address)).toBe(true);
  });

  test('answers vsm.v1 (GetCapabilities, CreatePartition)', async () => {
    const client = connect(address, { deadlineMs: 10_000 });
    try {
      const caps = await client.partitions.getCapabilities({});
      expect(caps).toBeDefined();
      const p = await client.partitions.createPartition({
        partitionId: 'it-compose',
        partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 } as pb.Partition,
      });
      expect(p.name).toBe('partitions/it-compose');
    } finally {
      client.close();
    }
  });

  test('runs as node with the named state volume at /var/lib/vsm, read-only root', async () => {
    const c = env!.getContainer(SERVICE);
    const r = await c.exec(['sh', '-c', 'id -u; test -w /var/lib/vsm && echo state-writable; touch /app/probe 2>/dev/null || echo root-read-only']);
    expect(
      r.output
        .split('\n')
        .map((l) => l.trim())
        .filter(Boolean),
    ).toEqual(['1000', 'state-writable', 'root-read-only']);
  });

  test('a partition survives a container restart (state dir on the named volume)', async () => {
    let client = connect(address, { deadlineMs: 10_000 });
    const vp0 = 'partitions/it-durable/vps/0';
    try {
      await client.partitions.createPartition({ partitionId: 'it-durable', partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 } as pb.Partition });
      await client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 0x8100_0000_0000_0042n });
    } finally {
      client.close();
    }
    await env!.getContainer(SERVICE).restart({ timeout: 10_000 });
    let ok = false;
    for (let i = 0; i < 60 && !ok; i++) {
      ok = await healthy(address);
      if (!ok) await new Promise((r) => setTimeout(r, 500));
    }
    expect(ok).toBe(true);
    client = connect(address, { deadlineMs: 10_000 });
    try {
      expect((await client.partitions.getPartition({ name: 'partitions/it-durable' })).name).toBe('partitions/it-durable');
      expect((await client.guest.readMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID })).value).toBe(0x8100_0000_0000_0042n);
    } finally {
      client.close();
    }
  }, 60_000);
});

// Profile kvm: etcd (vsm-etcd image, Debian's etcd-server), vsm-kvm-agent on /dev/kvm with the
// compose file's device, user and capability settings, registered in etcd, and vsm-service
// --backend agent in fleet mode (started once both are healthy).
const kvm = kvmUnavailable();
gateDescribe(kvm)('docker compose --profile kvm', () => {
  let kenv: StartedDockerComposeEnvironment | undefined;
  let agentAddress = '';
  let serviceAddress = '';
  beforeAll(async () => {
    requireEngine();
    await buildImage(AGENT_IMAGE, 'deploy/agent.Dockerfile');
    await buildImage(SERVICE_IMAGE, 'deploy/service.Dockerfile');
    await buildImage(`vsm-etcd:${AGENT_IMAGE.split(':')[1]!}`, 'deploy/etcd.Dockerfile');
    const agentPort = await freePort();
    const servicePort = await freePort();
    const etcdPort = await freePort();
    const etcdPeerPort = await freePort();
    agentAddress = `127.0.0.1:${agentPort}`;
    serviceAddress = `127.0.0.1:${servicePort}`;
    kenv = await new DockerComposeEnvironment(repoRoot, 'docker-compose.yml')
      .withProfiles('kvm')
      .withEnvironment({
        VSM_AGENT_PORT: String(agentPort),
        VSM_SERVICE_PORT: String(servicePort),
        VSM_ETCD_PORT: String(etcdPort),
        VSM_ETCD_PEER_PORT: String(etcdPeerPort),
        VSM_IMAGE_TAG: AGENT_IMAGE.split(':')[1]!,
      })
      .withWaitStrategy('etcd-1', Wait.forHealthCheck())
      .withWaitStrategy('vsm-kvm-agent-1', Wait.forHealthCheck())
      .withWaitStrategy('vsm-service-1', Wait.forHealthCheck())
      .withStartupTimeout(90_000)
      .up();
  }, BUILD_TIMEOUT_MS + 120_000);
  afterAll(async () => {
    await kenv?.down({ removeVolumes: true, timeout: 10_000 });
  });

  test('both healthy; through vsm-service a partition runs on the agent (real KVM): MSR, VTL1, VtlCall', async () => {
    expect(await healthy(agentAddress)).toBe(true);
    expect(await healthy(serviceAddress)).toBe(true);
    const client = connect(serviceAddress, { deadlineMs: 15_000 });
    const direct = connect(agentAddress, { deadlineMs: 15_000 });
    try {
      // Fleet mode: the agent registered in etcd and answers the service's check.
      for (let i = 0; ; i++) {
        const agents = (await client.fleet.listAgents({})).agents;
        if (agents.some((a) => a.name === 'agents/local' && a.state === pb.AgentState.AGENT_STATE_READY)) break;
        if (i > 300) throw new Error(`the agent is not READY in the fleet: ${JSON.stringify(agents.map((a) => [a.name, a.state, a.stateReason]))}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const p = await client.partitions.createPartition({
        partitionId: 'it-compose-kvm',
        partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 } as pb.Partition,
      });
      expect(p.name).toBe('partitions/it-compose-kvm');
      expect(p.agent).toBe('local');
      const vp0 = `${p.name}/vps/0`;
      await client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 0x8100_0000_0000_0001n });
      expect((await client.guest.readMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID })).value).toBe(0x8100_0000_0000_0001n);
      await client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x1000n | 1n });
      await client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
      await client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
      const call = await client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n });
      expect(call.outcome?.vtlSwitch).toMatchObject({ fromVtl: 0, toVtl: 1 });
      // The partition lives in the agent.
      expect((await direct.partitions.getPartition({ name: p.name })).name).toBe(p.name);
    } finally {
      client.close();
      direct.close();
    }
  });

  test('the agent runs as uid 0 with no effective capability and a read-only root', async () => {
    const r = await kenv!.getContainer('vsm-kvm-agent-1').exec(['sh', '-c', 'id -u; grep ^CapEff /proc/self/status; touch /app/x 2>/dev/null || echo ro']);
    expect(
      r.output
        .split('\n')
        .map((l) => l.trim())
        .filter(Boolean),
    ).toEqual(['0', 'CapEff:\t0000000000000000', 'ro']);
  });
});
