// vsmctl cr write: MOV to CR0/CR4 as a guest action (GuestService.WriteControlRegister), compiled CLI
// as a child process against a server started here: a write that takes effect, one VTL1 locked (not
// written, the register intercept reported, --json), and a bad register name (exit 2).
import { pb } from '@vsm/client';
import { HvMsr } from '@vsm/core';
import { type Harness, startHarness } from '../support/server';
import { type Run, assertBuilt, vsmctl } from './support';

jest.setTimeout(60_000);

let h: Harness;
beforeAll(async () => {
  assertBuilt();
  h = await startHarness();
});
afterAll(async () => {
  await h?.stop();
});

const cli = (args: string[]): Promise<Run> => vsmctl(['--address', h.address, ...args]);
const r64 = (name: number, v: bigint): pb.RegisterAssoc => ({ name: name as pb.HvRegisterName, value: { value: { $case: 'reg64', value: v } } });

test('cr write: written, refused by a VTL1 lock (register intercept), bad register name', async () => {
  const p = await h.client.partitions.createPartition({
    partitionId: 'cli-cr',
    partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: 64n << 20n, maximumVtl: 1 }),
  });
  const vp = `${p.name}/vps/0`;
  const ok = await cli(['cr', 'write', 'cli-cr', '0', 'cr4', '0x20']);
  expect([ok.code, ok.stderr]).toEqual([0, '']);
  expect(ok.stdout).toContain('CR4 <- 0x0000000000000020  (VTL 0)');
  const cr4 = await h.client.vps.getVpRegisters({ name: vp, vtl: 0, names: [pb.HvRegisterName.HV_REGISTER_NAME_X64_CR4] });
  expect(cr4.registers[0]?.value?.value).toEqual({ $case: 'reg64', value: 0x20n });

  // VTL1 locks CR0.WP (HvX64RegisterCrInterceptControl bit 0, Cr0Mask bit 16).
  await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 1n });
  await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x1001n });
  await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
  await h.client.vtl.enableVpVtl({ name: vp, targetVtl: 1 });
  await h.client.vps.setVpRegisters({ name: vp, vtl: 0, registers: [r64(pb.HvRegisterName.HV_REGISTER_NAME_X64_CR0, 0x8001_0033n)] });
  await h.client.vps.setVpRegisters({ name: vp, vtl: 1, registers: [r64(0x000e0000, 1n), r64(0x000e0001, 0x1_0000n)] });
  const locked = await cli(['--json', 'cr', 'write', 'cli-cr', '0', 'cr0', '0x80000033']);
  expect(locked.code).toBe(0);
  const j = JSON.parse(locked.stdout) as { register: string; outcome: { activeVtl: number; intercept: { protectingVtl: number } } };
  expect([j.register, j.outcome.activeVtl, j.outcome.intercept.protectingVtl]).toEqual(['CR0', 1, 1]);
  const cr0 = await h.client.vps.getVpRegisters({ name: vp, vtl: 0, names: [pb.HvRegisterName.HV_REGISTER_NAME_X64_CR0] });
  expect(cr0.registers[0]?.value?.value).toEqual({ $case: 'reg64', value: 0x8001_0033n });

  const bad = await cli(['cr', 'write', 'cli-cr', '0', 'cr3', '0']);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toContain('expected cr0 or cr4');
});
