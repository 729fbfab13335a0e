// Conformance (issue #16): secure register intercepts (tlfs-vsm.md §3.8; TLFS vsm.md "Secure Register
// Intercepts"). VTL1 locks MSRs with HvX64RegisterCrInterceptControl through its own
// HvCallSetVpRegisters; VTL0's WRMSR/RDMSR of a locked MSR does not take effect and arrives in VTL1's
// SIM slot 0 as HV_X64_MSR_INTERCEPT_MESSAGE (0x80010001), entering VTL1. Public API only.
import { pb } from '@vsm/client';
import { HvMsr } from '@vsm/core';
import { GiB, type Harness, startHarness } from '../support/server';

const R = pb.HvRegisterName;
const S = pb.HvStatus;
const LSTAR = 0xc0000082;
const EFER = 0xc0000080;
const SFMASK = 0xc0000084;
const CR_INTERCEPT_CONTROL = 0x000e0000;
const SIMP_GPA = 0x9000n;

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h.stop();
});

async function reg(vp: string, vtl: number, name: pb.HvRegisterName): Promise<bigint> {
  const r = await h.client.vps.getVpRegisters({ name: vp, vtl, names: [name] });
  const v = r.registers[0]?.value?.value;
  return v?.$case === 'reg64' ? v.value : -1n;
}

/** VTL1 enabled on VP0 with its SynIC; VTL1 (active) sets its CrInterceptControl for VTL0 by HvCallSetVpRegisters, then returns. */
async function setup(id: string, control: bigint) {
  const p = await h.client.partitions.createPartition({ partitionId: id, partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
  const vp = `${p.name}/vps/0`;
  await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
  await h.client.vtl.enableVpVtl({ name: vp, targetVtl: 1 });
  await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 1n });
  await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x1000n | 1n });
  await h.client.guest.callHypercallPage({ name: vp, offset: 0x0f, rcx: 0n });
  await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 2n });
  await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x2000n | 1n });
  await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_SIMP, value: SIMP_GPA | 1n });
  await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_SCONTROL, value: 1n });
  await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_SINT0, value: 0x30n });
  // HvCallSetVpRegisters (0x51, 1 rep) on itself: HvX64RegisterCrInterceptControl = control.
  const input = Buffer.alloc(48);
  input.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
  input.writeUInt32LE(0xffff_fffe, 8);
  input.writeUInt32LE(CR_INTERCEPT_CONTROL, 16);
  input.writeBigUInt64LE(control, 32);
  const set = await h.client.guest.hypercall({ name: vp, control: 0x51n | (1n << 32n), inputGpa: 0x20000n, input });
  expect(set).toMatchObject({ status: S.HV_STATUS_SUCCESS, repsCompleted: 1 });
  await h.client.guest.callHypercallPage({ name: vp, offset: 0x26, rcx: 1n });
  return { vp };
}

describe('secure MSR intercepts', () => {
  test('VTL0 WRMSR of a locked LSTAR does not take effect; VTL1 gets HV_X64_MSR_INTERCEPT_MESSAGE in SINT0 and is entered', async () => {
    const { vp } = await setup('regint-lstar', (1n << 6n) | (1n << 13n)); // MsrLstarWrite, MsrEferRead
    // An MSR it does not lock is VTL0's own register.
    expect((await h.client.guest.writeMsr({ name: vp, msr: SFMASK, value: 0x700n })).outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_UNSPECIFIED);
    const before = await reg(vp, 0, R.HV_REGISTER_NAME_X64_LSTAR);
    const w = await h.client.guest.writeMsr({ name: vp, msr: LSTAR, value: 0xffff_8000_dead_beefn });
    expect(w.outcome?.vtlSwitch).toEqual({ fromVtl: 0, toVtl: 1, entryReason: pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_INTERRUPT });
    expect(await reg(vp, 0, R.HV_REGISTER_NAME_X64_LSTAR)).toBe(before);
    const slot = Buffer.from((await h.client.guest.readMemory({ name: vp, gpa: SIMP_GPA, length: 256 })).data);
    expect(slot.readUInt32LE(0)).toBe(0x80010001); // HvMessageTypeMsrIntercept
    expect(slot[4]).toBe(64);
    expect(slot[16 + 5]).toBe(1); // InterceptAccessType: write
    expect((slot.readUInt16LE(16 + 6) >> 7) & 0xf).toBe(0); // ExecutionState.Vtl: VTL0
    expect(slot.readUInt32LE(16 + 40)).toBe(LSTAR);
    expect(slot.readBigUInt64LE(16 + 48)).toBe(0xffff_8000n); // Rdx
    expect(slot.readBigUInt64LE(16 + 56)).toBe(0xdead_beefn); // Rax
    // VTL1 consumes it and returns; VTL0's locked read of EFER intercepts too (access type read).
    await h.client.guest.writeMemory({ name: vp, gpa: SIMP_GPA, data: Buffer.alloc(4) });
    await h.client.guest.callHypercallPage({ name: vp, offset: 0x26, rcx: 1n });
    const r = await h.client.guest.readMsr({ name: vp, msr: EFER });
    expect(r.outcome?.activeVtl).toBe(1);
    const slot2 = Buffer.from((await h.client.guest.readMemory({ name: vp, gpa: SIMP_GPA, length: 256 })).data);
    expect([slot2.readUInt32LE(0), slot2[16 + 5], slot2.readUInt32LE(16 + 40)]).toEqual([0x80010001, 0, EFER]);
  });

  test('bad input: reserved control bits are INVALID_REGISTER_VALUE; VTL0 has no instance (INVALID_PARAMETER)', async () => {
    const p = await h.client.partitions.createPartition({
      partitionId: 'regint-bad',
      partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition,
    });
    const vp = `${p.name}/vps/0`;
    const input = (v: bigint) => {
      const b = Buffer.alloc(48);
      b.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
      b.writeUInt32LE(0xffff_fffe, 8);
      b.writeUInt32LE(CR_INTERCEPT_CONTROL, 16);
      b.writeBigUInt64LE(v, 32);
      return b;
    };
    await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 1n });
    const r0 = await h.client.guest.hypercall({ name: vp, control: 0x51n | (1n << 32n), inputGpa: 0x20000n, input: input(1n) });
    expect(r0).toMatchObject({ status: S.HV_STATUS_INVALID_PARAMETER, repsCompleted: 0 });
    await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    await h.client.vtl.enableVpVtl({ name: vp, targetVtl: 1 });
    await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x1000n | 1n });
    await h.client.guest.callHypercallPage({ name: vp, offset: 0x0f, rcx: 0n });
    const r1 = await h.client.guest.hypercall({ name: vp, control: 0x51n | (1n << 32n), inputGpa: 0x20000n, input: input(1n << 25n) });
    expect(r1).toMatchObject({ status: S.HV_STATUS_INVALID_REGISTER_VALUE, repsCompleted: 0 });
  });
});
