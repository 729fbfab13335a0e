// vsm-kvm-agent's configuration, and a server over KvmBackend on a unix socket whose shutdown
// frees every fd and mapping it made (/dev/kvm, VMs, vCPUs, memfds).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { connect, type pb } from '@vsm/client';
import { HvMsr } from '@vsm/core';
import { UsageError, startServer } from '@vsm/vsm-v1';
import { KvmBackend } from '@vsm/vsm-v1';
import { parseAgentConfig, unixSocketPath } from '../src/main';
import { GiB, describeKvm } from './agent-support';

describe('vsm-kvm-agent configuration', () => {
  test('defaults: loopback 50061, 2 s action deadline, /dev/kvm', () => {
    const c = parseAgentConfig([], {});
    expect([c.listen, c.actionTimeoutMs, c.memslotBudget, c.device, c.service.logLevel]).toEqual(['127.0.0.1:50061', 2000, 4096, '/dev/kvm', 'info']);
  });
  test('unix sockets, flags over environment, the service flags pass through', () => {
    const c = parseAgentConfig(
      ['--listen', 'unix:///run/vsm/agent.sock', '--action-timeout-ms=500', '--memslot-budget', '256', '--max-vps', '8', '--log-level', 'debug'],
      { VSM_LISTEN: '127.0.0.1:1234', VSM_KVM_DEVICE: '/dev/kvm2', VSM_AGENT_MEMSLOT_BUDGET: '100' },
    );
    expect([c.listen, c.actionTimeoutMs, c.memslotBudget, c.device, c.service.limits.maxVpCount, c.service.logLevel]).toEqual([
      'unix:///run/vsm/agent.sock',
      500,
      256,
      '/dev/kvm2',
      8,
      'debug',
    ]);
    expect(parseAgentConfig([], { VSM_AGENT_MEMSLOT_BUDGET: '100' }).memslotBudget).toBe(100);
    expect(parseAgentConfig([], { VSM_LISTEN: '127.0.0.1:1234' }).listen).toBe('127.0.0.1:1234');
    expect(unixSocketPath('unix:///run/a.sock')).toBe('/run/a.sock');
    expect(unixSocketPath('unix:/run/a.sock')).toBe('/run/a.sock');
    expect(unixSocketPath('127.0.0.1:1')).toBeUndefined();
  });
  test('bad input', () => {
    expect(() => parseAgentConfig(['--listen', 'unix:relative.sock'], {})).toThrow(UsageError);
    expect(() => parseAgentConfig(['--listen', '0.0.0.0:50061'], {})).toThrow(/plaintext/);
    expect(parseAgentConfig(['--listen', '0.0.0.0:50061', '--insecure-allow-remote'], {}).listen).toBe('0.0.0.0:50061');
    expect(() => parseAgentConfig(['--action-timeout-ms', '0'], {})).toThrow(UsageError);
    expect(() => parseAgentConfig(['--memslot-budget', '10'], {})).toThrow(/memslot-budget/);
    expect(() => parseAgentConfig(['--memslot-budget', '40000'], {})).toThrow(/memslot-budget/);
    expect(() => parseAgentConfig(['--backend', 'emulator'], {})).toThrow(/runs partitions itself/);
    expect(() => parseAgentConfig(['--bogus', '1'], {})).toThrow(/usage: vsm-kvm-agent/);
    expect(() => parseAgentConfig(['--help'], {})).toThrow(/usage: vsm-kvm-agent/);
  });
});

// The fds this server can own: /dev/kvm, VM and vCPU anon inodes, memfds and sockets. Counting
// every fd of the jest worker was flaky (CI stop 24: 31 before, 25 after — the worker closed
// fds of its own meanwhile), so the check is "no fd of these kinds that was not there before".
const OWNED = /^(\/dev\/kvm|anon_inode:kvm-|\/memfd:|socket:)/;
const ownedFds = () => {
  const out = new Set<string>();
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    let link: string;
    try {
      link = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // the fd readdir itself used, closed by now
    }
    if (OWNED.test(link)) out.add(`${fd} ${link}`);
  }
  return out;
};
const newFds = (before: Set<string>) => [...ownedFds()].filter((f) => !before.has(f));
const memfdMaps = () =>
  fs
    .readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes('/memfd:vsm-')).length;

describeKvm('vsm-kvm-agent server on a unix socket', () => {
  test('serves vsm.v1; shutdown frees every fd and mapping', async () => {
    const fds0 = ownedFds();
    const maps0 = memfdMaps();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-agent-'));
    const listen = `unix://${path.join(dir, 'agent.sock')}`;
    const backend = new KvmBackend();
    const srv = await startServer({ listen, backend, logger: pino({ level: 'silent' }), shutdownGraceMs: 500 });
    const client = connect(listen);
    try {
      expect((await client.partitions.getCapabilities({})).backend).toBe('kvm');
      for (const id of ['sock-a', 'sock-b']) {
        const p = await client.partitions.createPartition({ partitionId: id, partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
        await client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
        await client.vtl.enableVpVtl({ name: `${p.name}/vps/1`, targetVtl: 1 });
        for (const vp of [0, 1]) {
          await client.guest.writeMsr({ name: `${p.name}/vps/${vp}`, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 1n });
          await client.guest.writeMsr({ name: `${p.name}/vps/${vp}`, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x1001n });
        }
        await client.guest.callHypercallPage({ name: `${p.name}/vps/1`, offset: 0x0f, rcx: 0n }); // VTL1 runs: its VM exists
        await client.guest.readMemory({ name: `${p.name}/vps/1`, gpa: 0x1000n, length: 16 });
      }
      expect(newFds(fds0).filter((f) => f.includes('kvm')).length).toBeGreaterThan(2); // /dev/kvm, VMs, vCPUs
      expect(memfdMaps()).toBe(maps0 + 6); // RAM, overlay pages, agent region per partition
      await client.partitions.deletePartition({ name: 'partitions/sock-a' });
      expect(memfdMaps()).toBe(maps0 + 3);
    } finally {
      client.close();
      await srv.shutdown('test');
      fs.rmSync(dir, { recursive: true, force: true });
    }
    expect(memfdMaps()).toBe(maps0);
    expect(newFds(fds0)).toEqual([]);
  });
});
