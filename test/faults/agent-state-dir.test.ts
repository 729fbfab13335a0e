// Agent restarts (issue #17): a vsm-kvm-agent started with --state-dir brings its partitions back
// after a SIGKILL — stopped, with their last durable state (VSM state, registers, RAM written through
// the API, protections) — instead of answering NOT_FOUND.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { connect, pb } from '@vsm/client';
import { HvMsr } from '@vsm/core';
import { AGENT_MAIN, type ChildService, spawnService } from '../support/child-service';
import { describeKvm } from '../support/kvm-gate';

const GiB = 1n << 30n;

describeKvm('vsm-kvm-agent with --state-dir', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-agent-state-'));
  let agent: ChildService | undefined;
  afterAll(async () => {
    if (agent && !agent.unexpectedExit()) await agent.stop('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('SIGKILL and restart: its partitions come back with their last durable state', async () => {
    agent = await spawnService(['--state-dir', dir], { main: AGENT_MAIN, name: 'vsm-kvm-agent (state-dir)' });
    let c = connect(agent.address, { deadlineMs: 30_000 });
    const p = await c.partitions.createPartition({ partitionId: 'kept', partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
    const vp0 = `${p.name}/vps/0`;
    await c.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 0x1234n });
    await c.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    await c.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
    await c.vps.setVpRegisters({
      name: vp0,
      vtl: 1,
      registers: [{ name: pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, value: { value: { $case: 'reg64', value: 1n | (0xfn << 1n) } } }],
    });
    await c.intercepts.modifyVtlProtectionMask({ name: p.name, protectingVtl: 1, mapFlags: 0x1, ranges: [{ startPage: 0x40n, pageCount: 4n }] });
    await c.memory.writeGpa({ name: p.name, gpa: 0x2000n, data: Buffer.from('kept across a crash') });
    c.close();
    await agent.stop('SIGKILL');

    agent = await spawnService(['--state-dir', dir], { main: AGENT_MAIN, name: 'vsm-kvm-agent (state-dir, restarted)' });
    c = connect(agent.address, { deadlineMs: 30_000 });
    try {
      expect((await c.partitions.listPartitions({})).partitions.map((x) => x.name)).toEqual([p.name]);
      expect((await c.guest.readMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID })).value).toBe(0x1234n);
      expect((await c.partitions.getPartition({ name: p.name })).enabledVtlSet).toBe(0b11);
      expect(Buffer.from((await c.memory.readGpa({ name: p.name, gpa: 0x2000n, length: 19 })).data).toString()).toBe('kept across a crash');
      const prot = await c.intercepts.getVtlProtections({ name: p.name, protectingVtl: 1 });
      expect(prot.ranges.map((r) => [r.pages!.startPage, r.pages!.pageCount, r.mapFlags])).toEqual([[0x40n, 4n, 0x1]]);
    } finally {
      c.close();
    }
  }, 180_000);
});
