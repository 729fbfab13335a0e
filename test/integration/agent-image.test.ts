// The vsm-kvm-agent image (deploy/agent.Dockerfile): builds; real guest code runs on /dev/kvm
// inside it with `--device /dev/kvm` and no capability at all (no --privileged); a bind mount of
// the node without `--device` is refused by the device cgroup; the agent process (the image's
// entry point) started the same way becomes healthy, serves vsm.v1 on real KVM and stops on
// SIGTERM; vsm-service `--backend agent` in front of it serves.
import { GenericContainer, Wait } from 'testcontainers';
import { connect, type pb } from '@vsm/client';
import { AGENT_IMAGE, BUILD_TIMEOUT_MS, SERVICE_IMAGE, buildImage, freePort, healthy, kvmUnavailable, requireEngine, run } from './support/docker';
import { gateDescribe, gateTests } from '../support/kvm-gate';
import { HvMsr } from '@vsm/core';

// A MiniGuest from the agent's own KVM layer: `mov eax, 0x5a; out 0x10, al; hlt`.
const GUEST = `
const k = require('/app/services/platform-kvm/dist/kvm');
const s = k.KvmSystem.open();
const g = k.MiniGuest.create({ system: s });
g.load(new k.Asm().movR32Imm32('rax', 0x5a).outImm8Al(0x10).hlt().bytes());
const e = g.step();
console.log(JSON.stringify({ api: s.apiVersion(), exit: e.kind, port: e.port, value: e.value, uid: process.getuid() }));
g.close(); s.close();`;

// What docker-compose.yml and the docs prescribe for the agent: device, uid 0 without any
// capability (this machine's /dev/kvm is root:root 0600), no privilege escalation, read-only root.
const AGENT_RUN_FLAGS = [
  '--rm',
  '--network',
  'host',
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
const kvmTest = gateTests(test, kvm);

beforeAll(async () => {
  requireEngine();
  await buildImage(AGENT_IMAGE, 'deploy/agent.Dockerfile');
}, BUILD_TIMEOUT_MS);

describe('vsm-kvm-agent image', () => {
  test("carries the compiled agent, its runtime dependencies and koffi's native module", async () => {
    const r = await run('docker', [
      'run',
      '--rm',
      '--network',
      'host',
      '--entrypoint',
      'node',
      AGENT_IMAGE,
      '-e',
      "require('koffi'); require('/app/services/platform-kvm/dist/kvm'); console.log('loaded', process.getuid())",
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('loaded 1000');
  });

  kvmTest('runs guest code on /dev/kvm with --device and --cap-drop ALL (no --privileged)', async () => {
    const r = await run('docker', ['run', ...AGENT_RUN_FLAGS, '--entrypoint', 'node', AGENT_IMAGE, '-e', GUEST]);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({ api: 12, exit: 'io', port: 0x10, value: 0x5a, uid: 0 });
  });

  kvmTest('a bind mount of /dev/kvm without --device is refused (device cgroup), even as uid 0', async () => {
    const r = await run('docker', [
      'run',
      '--rm',
      '--network',
      'host',
      '-v',
      '/dev/kvm:/dev/kvm',
      '--user',
      '0:0',
      '--cap-drop',
      'ALL',
      '--entrypoint',
      'node',
      AGENT_IMAGE,
      '-e',
      "require('fs').openSync('/dev/kvm', 'r+')",
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/EPERM|operation not permitted/);
  });

  describe('the agent process (vsm-kvm-agent) in the image', () => {
    const d = gateDescribe(kvm);
    d('with --device /dev/kvm and no capability', () => {
      let agentId = '';
      let agentAddr = '';
      beforeAll(async () => {
        agentAddr = `127.0.0.1:${await freePort()}`;
        // Started with the docker CLI: testcontainers' GenericContainer has no device option.
        // No --rm: the exit code is read after the SIGTERM test.
        const flags = AGENT_RUN_FLAGS.filter((f) => f !== '--rm');
        const a = await run('docker', ['run', '-d', ...flags, '--init', '-e', `VSM_LISTEN=${agentAddr}`, AGENT_IMAGE]);
        if (a.code !== 0) throw new Error(`docker run of the agent failed: ${a.stderr}`);
        agentId = a.stdout.trim();
        for (let i = 0; i < 60; i++) {
          if (await healthy(agentAddr)) return;
          await new Promise((r) => setTimeout(r, 500));
        }
        const logs = await run('docker', ['logs', agentId]);
        throw new Error(`agent not healthy on ${agentAddr} within 30 s:\n${logs.stdout}${logs.stderr}`);
      }, 60_000);
      afterAll(async () => {
        if (agentId) await run('docker', ['rm', '-f', agentId]);
      });

      test('is healthy on its loopback port and serves vsm.v1 on real KVM: partition, MSR, hypercall page, VTL1, VtlCall', async () => {
        const c = connect(agentAddr, { deadlineMs: 15_000 });
        try {
          const p = await c.partitions.createPartition({
            partitionId: 'it-agent',
            partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 } as pb.Partition,
          });
          expect(p.name).toBe('partitions/it-agent');
          const vp0 = `${p.name}/vps/0`;
          await c.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 0x8100_0000_0000_0001n });
          expect((await c.guest.readMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID })).value).toBe(0x8100_0000_0000_0001n);
          await c.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x1000n | 1n });
          expect((await c.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 })).enabledVtlSet).toBe(0b11);
          await c.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
          const call = await c.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n });
          expect(call.outcome?.vtlSwitch).toMatchObject({ fromVtl: 0, toVtl: 1 });
          await c.partitions.deletePartition({ name: p.name });
        } finally {
          c.close();
        }
      });

      test('vsm-service --backend agent in front of it serves (the partition lands on the agent)', async () => {
        await buildImage(SERVICE_IMAGE, 'deploy/service.Dockerfile');
        const svcAddr = `127.0.0.1:${await freePort()}`;
        const svc = await new GenericContainer(SERVICE_IMAGE)
          .withNetworkMode('host')
          .withEnvironment({ VSM_LISTEN: svcAddr, VSM_BACKEND: 'agent', VSM_AGENTS: agentAddr })
          .withHealthCheck({ test: ['CMD', 'node', '/app/deploy/healthcheck.js'], interval: 500, timeout: 5_000, retries: 30, startPeriod: 0 })
          .withWaitStrategy(Wait.forHealthCheck())
          .withStartupTimeout(60_000)
          .start();
        const client = connect(svcAddr, { deadlineMs: 10_000 });
        try {
          const p = await client.partitions.createPartition({
            partitionId: 'it-via-service',
            partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 } as pb.Partition,
          });
          expect(p.name).toBe('partitions/it-via-service');
          const direct = connect(agentAddr, { deadlineMs: 10_000 });
          try {
            expect((await direct.partitions.getPartition({ name: p.name })).name).toBe(p.name);
          } finally {
            direct.close();
          }
        } finally {
          client.close();
          await svc.stop({ timeout: 10_000 });
        }
      }, 120_000);

      test('stops on SIGTERM with exit 0, well within the grace period', async () => {
        const t0 = Date.now();
        const r = await run('docker', ['stop', '-t', '10', agentId]);
        expect(r.code).toBe(0);
        expect(Date.now() - t0).toBeLessThan(8_000);
        const code = await run('docker', ['inspect', '-f', '{{.State.ExitCode}}', agentId]);
        expect(code.stdout.trim()).toBe('0');
      });
    });
  });
});
