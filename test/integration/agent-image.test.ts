// The vsm-kvm-agent image (deploy/agent.Dockerfile): builds; real guest code runs on /dev/kvm
// inside it with `--device /dev/kvm` and no capability at all (no --privileged); a bind mount of
// the node without `--device` is refused by the device cgroup. Once services/kvm-agent has its
// main (the entry point of the image), the agent is started and must become healthy, and
// vsm-service `--backend agent` in front of it must serve.
import fs from 'node:fs';
import path from 'node:path';
import { GenericContainer, StartedTestContainer, Wait } from 'testcontainers';
import { connect, pb } from '@vsm/client';
import {
  AGENT_IMAGE, BUILD_TIMEOUT_MS, SERVICE_IMAGE, buildImage, freePort, healthy, kvmUnavailable, repoRoot, requireEngine, run,
} from './support/docker';

// A MiniGuest from the agent's own KVM layer: `mov eax, 0x5a; out 0x10, al; hlt`.
const GUEST = `
const k = require('/app/services/kvm-agent/dist/kvm');
const s = k.KvmSystem.open();
const g = k.MiniGuest.create({ system: s });
g.load(new k.Asm().movR32Imm32('rax', 0x5a).outImm8Al(0x10).hlt().bytes());
const e = g.step();
console.log(JSON.stringify({ api: s.apiVersion(), exit: e.kind, port: e.port, value: e.value, uid: process.getuid() }));
g.close(); s.close();`;

// What docker-compose.yml and the docs prescribe for the agent: device, uid 0 without any
// capability (this machine's /dev/kvm is root:root 0600), no privilege escalation, read-only root.
const AGENT_RUN_FLAGS = ['--rm', '--network', 'host', '--device', '/dev/kvm', '--user', '0:0', '--cap-drop', 'ALL', '--security-opt', 'no-new-privileges', '--read-only'];

const kvm = kvmUnavailable();
if (kvm !== undefined) {
  // eslint-disable-next-line no-console
  console.log(`[agent-image.test] skipping the /dev/kvm checks: ${kvm}`);
}
const kvmTest = kvm === undefined ? test : test.skip;
const agentMainWritten = fs.existsSync(path.join(repoRoot, 'services/kvm-agent/src/main.ts'));

beforeAll(async () => {
  requireEngine();
  await buildImage(AGENT_IMAGE, 'deploy/agent.Dockerfile');
}, BUILD_TIMEOUT_MS);

describe('vsm-kvm-agent image', () => {
  test('carries the compiled agent, its runtime dependencies and koffi\'s native module', async () => {
    const r = await run('docker', ['run', '--rm', '--network', 'host', '--entrypoint', 'node', AGENT_IMAGE, '-e',
      "require('koffi'); require('/app/services/kvm-agent/dist/kvm'); console.log('loaded', process.getuid())"]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('loaded 1000');
  });

  kvmTest('runs guest code on /dev/kvm with --device and --cap-drop ALL (no --privileged)', async () => {
    const r = await run('docker', ['run', ...AGENT_RUN_FLAGS, '--entrypoint', 'node', AGENT_IMAGE, '-e', GUEST]);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({ api: 12, exit: 'io', port: 0x10, value: 0x5a, uid: 0 });
  });

  kvmTest('a bind mount of /dev/kvm without --device is refused (device cgroup), even as uid 0', async () => {
    const r = await run('docker', ['run', '--rm', '--network', 'host', '-v', '/dev/kvm:/dev/kvm', '--user', '0:0', '--cap-drop', 'ALL',
      '--entrypoint', 'node', AGENT_IMAGE, '-e', "require('fs').openSync('/dev/kvm', 'r+')"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/EPERM|operation not permitted/);
  });

  if (!agentMainWritten) {
    test('entry point services/kvm-agent/dist/main.js is not written yet: the container says so and exits', async () => {
      // eslint-disable-next-line no-console
      console.log('[agent-image.test] services/kvm-agent/src/main.ts does not exist yet: agent start-up and --backend agent are not exercised');
      const r = await run('docker', ['run', '--rm', '--network', 'host', AGENT_IMAGE]);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("Cannot find module '/app/services/kvm-agent/dist/main.js'");
    });
  } else {
    kvmTest('the agent becomes healthy on loopback, and vsm-service --backend agent serves through it', async () => {
      await buildImage(SERVICE_IMAGE, 'deploy/service.Dockerfile');
      const agentAddr = `127.0.0.1:${await freePort()}`;
      const svcAddr = `127.0.0.1:${await freePort()}`;
      let svc: StartedTestContainer | undefined;
      try {
        // Started with the docker CLI: testcontainers' GenericContainer has no device option.
        const a = await run('docker', ['run', '-d', ...AGENT_RUN_FLAGS, '--init', '-e', `VSM_LISTEN=${agentAddr}`, AGENT_IMAGE, '--listen', agentAddr]);
        expect(a.code).toBe(0);
        const agentId = a.stdout.trim();
        try {
          let ok = false;
          for (let i = 0; i < 60 && !ok; i++) {
            ok = await healthy(agentAddr);
            if (!ok) await new Promise((r) => setTimeout(r, 500));
          }
          if (!ok) {
            const logs = await run('docker', ['logs', agentId]);
            throw new Error(`agent not healthy on ${agentAddr}:\n${logs.stdout}${logs.stderr}`);
          }
          svc = await new GenericContainer(SERVICE_IMAGE)
            .withNetworkMode('host')
            .withEnvironment({ VSM_LISTEN: svcAddr, VSM_BACKEND: 'agent', VSM_AGENTS: agentAddr })
            .withHealthCheck({ test: ['CMD', 'node', '/app/deploy/healthcheck.js'], interval: 500, timeout: 5_000, retries: 30, startPeriod: 0 })
            .withWaitStrategy(Wait.forHealthCheck())
            .withStartupTimeout(60_000)
            .start();
          const client = connect(svcAddr, { deadlineMs: 10_000 });
          try {
            const p = await client.partitions.createPartition({ partitionId: 'it-agent', partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 } as pb.Partition });
            expect(p.name).toBe('partitions/it-agent');
          } finally {
            client.close();
          }
        } finally {
          await run('docker', ['stop', '-t', '10', agentId]);
        }
      } finally {
        await svc?.stop({ timeout: 10_000 });
      }
    }, 180_000);
  }
});
