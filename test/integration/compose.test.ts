// docker-compose.yml, profile `emulator`, under testcontainers' DockerComposeEnvironment
// (Compose v2 `docker compose`): up on a free loopback port, healthy through the compose
// healthcheck, one RPC with the generated client, the state volume mounted and writable by the
// service user, then down with volumes.
import { DockerComposeEnvironment, StartedDockerComposeEnvironment, Wait } from 'testcontainers';
import { connect, pb } from '@vsm/client';
import { AGENT_IMAGE, BUILD_TIMEOUT_MS, SERVICE_IMAGE, buildImage, freePort, healthy, kvmUnavailable, repoRoot, requireEngine } from './support/docker';

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
      const p = await client.partitions.createPartition({ partitionId: 'it-compose', partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 } as pb.Partition });
      expect(p.name).toBe('partitions/it-compose');
    } finally {
      client.close();
    }
  });

  test('runs as node with the named state volume at /var/lib/vsm, read-only root', async () => {
    const c = env!.getContainer(SERVICE);
    const r = await c.exec(['sh', '-c', 'id -u; touch /var/lib/vsm/probe && echo state-writable; touch /app/probe 2>/dev/null || echo root-read-only']);
    expect(r.output.split('\n').map((l) => l.trim()).filter(Boolean)).toEqual(['1000', 'state-writable', 'root-read-only']);
  });
});

// Profile kvm, the agent alone: vsm-service's agent backend does not exist yet (`--backend
// agent` exits 2), so only vsm-kvm-agent is brought up, with the compose file's device, user and
// capability settings, on real /dev/kvm.
const kvm = kvmUnavailable();
(kvm === undefined ? describe : describe.skip)('docker compose --profile kvm (vsm-kvm-agent only)', () => {
  let kenv: StartedDockerComposeEnvironment | undefined;
  let agentAddress = '';
  beforeAll(async () => {
    requireEngine();
    await buildImage(AGENT_IMAGE, 'deploy/agent.Dockerfile');
    const port = await freePort();
    agentAddress = `127.0.0.1:${port}`;
    kenv = await new DockerComposeEnvironment(repoRoot, 'docker-compose.yml')
      .withProfiles('kvm')
      .withEnvironment({ VSM_AGENT_PORT: String(port), VSM_SERVICE_PORT: String(await freePort()), VSM_IMAGE_TAG: AGENT_IMAGE.split(':')[1]! })
      .withWaitStrategy('vsm-kvm-agent-1', Wait.forHealthCheck())
      .withStartupTimeout(90_000)
      .up(['vsm-kvm-agent']);
  }, BUILD_TIMEOUT_MS + 120_000);
  afterAll(async () => {
    await kenv?.down({ removeVolumes: true, timeout: 10_000 });
  });

  test('the agent is healthy and runs a partition on /dev/kvm (uid 0, no capability, read-only root)', async () => {
    expect(await healthy(agentAddress)).toBe(true);
    const client = connect(agentAddress, { deadlineMs: 15_000 });
    try {
      const p = await client.partitions.createPartition({ partitionId: 'it-compose-kvm', partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 } as pb.Partition });
      expect(p.name).toBe('partitions/it-compose-kvm');
      const vp0 = `${p.name}/vps/0`;
      await client.guest.writeMsr({ name: vp0, msr: 0x40000000, value: 0x8100_0000_0000_0001n });
      expect((await client.guest.readMsr({ name: vp0, msr: 0x40000000 })).value).toBe(0x8100_0000_0000_0001n);
    } finally {
      client.close();
    }
    const r = await kenv!.getContainer('vsm-kvm-agent-1').exec(['sh', '-c', 'id -u; grep ^CapEff /proc/self/status; touch /app/x 2>/dev/null || echo ro']);
    expect(r.output.split('\n').map((l) => l.trim()).filter(Boolean)).toEqual(['0', 'CapEff:\t0000000000000000', 'ro']);
  });
});
