// The vsm-service image (deploy/service.Dockerfile) under testcontainers: built with the docker
// CLI (see support/docker.ts for why not fromDockerfile), started with host networking on a free
// loopback port, health through the image's own probe, then the README walk-through with the
// generated client: partition, HV_X64_MSR_GUEST_OS_ID, hypercall page, VTL1, VtlCall.
import { GenericContainer, type StartedTestContainer, Wait } from 'testcontainers';
import { connect, pb, type VsmClient } from '@vsm/client';
import { BUILD_TIMEOUT_MS, SERVICE_IMAGE, buildImage, freePort, healthy, listenAddresses, requireEngine } from './support/docker';
import { HvMsr } from '@vsm/core';

const { HV_X64_MSR_GUEST_OS_ID, HV_X64_MSR_HYPERCALL } = HvMsr;
const GiB = 1n << 30n;

let container: StartedTestContainer | undefined;
let client: VsmClient | undefined;
let address = '';
const logs: string[] = [];

beforeAll(async () => {
  requireEngine();
  await buildImage(SERVICE_IMAGE, 'deploy/service.Dockerfile');
  const port = await freePort();
  address = `127.0.0.1:${port}`;
  container = await new GenericContainer(SERVICE_IMAGE)
    .withNetworkMode('host')
    .withEnvironment({ VSM_LISTEN: address })
    // The image's HEALTHCHECK command, polled faster than its 10 s interval.
    .withHealthCheck({ test: ['CMD', 'node', '/app/deploy/healthcheck.js'], interval: 500, timeout: 5_000, retries: 30, startPeriod: 0 })
    .withWaitStrategy(Wait.forHealthCheck())
    .withStartupTimeout(90_000)
    .withLogConsumer((s) => s.on('data', (d: Buffer | string) => logs.push(d.toString())))
    .start();
  client = connect(address, { deadlineMs: 10_000 });
}, BUILD_TIMEOUT_MS + 120_000);

afterAll(async () => {
  client?.close();
  await container?.stop({ timeout: 10_000 });
});

describe('vsm-service image', () => {
  test('is healthy (grpc.health.v1 through deploy/healthcheck.js, from the host too)', async () => {
    expect(await healthy(address)).toBe(true);
  });

  test('runs as the non-root user node and listens on 127.0.0.1 only', async () => {
    const id = await container!.exec(['id', '-u']);
    expect(id.output.trim()).toBe('1000');
    // Host networking: /proc/net/tcp* inside the container is the host's.
    const tcp = await container!.exec(['sh', '-c', 'cat /proc/net/tcp /proc/net/tcp6 2>/dev/null']);
    expect(listenAddresses(tcp.output, Number(address.split(':')[1]))).toEqual(['127.0.0.1']);
  });

  test('serves vsm.v1: partition, guest OS id MSR, hypercall page, VTL1, VtlCall', async () => {
    const c = client!;
    const p = await c.partitions.createPartition({ partitionId: 'it-image', partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 2 } as pb.Partition });
    expect(p.name).toBe('partitions/it-image');
    const vp0 = `${p.name}/vps/0`;

    await c.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_GUEST_OS_ID, value: 0x8100_0000_0000_0001n });
    const rd = await c.guest.readMsr({ name: vp0, msr: HV_X64_MSR_GUEST_OS_ID });
    expect(rd.value).toBe(0x8100_0000_0000_0001n);

    await c.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_HYPERCALL, value: 0x1000n | 1n });
    const en = await c.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    expect(en.enabledVtlSet).toBe(0b11);
    const vp = await c.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
    expect(vp.vp?.vtlStatus?.enabledVtlSet).toBe(0b11);

    const call = await c.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n });
    expect(call.outcome?.vtlSwitch).toEqual({ fromVtl: 0, toVtl: 1, entryReason: pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_VTL_CALL });
    const st = await c.vps.getVirtualProcessor({ name: vp0 });
    expect(st.vtlStatus).toMatchObject({ activeVtl: 1, lastEntryReason: pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_VTL_CALL });
  });

  test('stops gracefully on SIGTERM, well within the 10 s grace period', async () => {
    client!.close();
    client = undefined;
    const t0 = Date.now();
    await container!.stop({ timeout: 10_000 });
    container = undefined;
    expect(Date.now() - t0).toBeLessThan(8_000);
    const text = logs.join('');
    expect(text).toContain('"reason":"SIGTERM"');
    expect(text).toContain('"msg":"stopped"');
  });
});
