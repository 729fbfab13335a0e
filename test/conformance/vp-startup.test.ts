// Conformance (issue #16): VP startup — HvCallStartVirtualProcessor (0x0099), HvCallGetVpIndexFromApicId
// (0x009A), DenyLowerVtlStartup and InterceptVpStartup of HvRegisterVsmPartitionConfig (tlfs-vsm.md
// §3.4, §10; tlfs-hypercalls.md §2.10) — and where a VtlReturn goes with three VTLs (core README
// "VtlReturn with three VTLs"). Public gRPC API only, the same scenario on every backend.
import { pb } from '@vsm/client';
import { HvMsr, longModeContext } from '@vsm/core';
import { encodeGetVpIndexFromApicIdHeader, encodeStartVirtualProcessorInput } from '@vsm/core/tlfs/startup';
import { GiB, type Harness, startHarness } from '../support/server';

const R = pb.HvRegisterName;
const S = pb.HvStatus;
const SELF = 0xffff_ffff_ffff_ffffn;
const IN = 0x20000n;
const OUT = 0x21000n;
const START = 0x99n;
const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });
const startInput = (vpIndex: number, targetVtl: number, rip: bigint, o: { partitionId?: bigint; rsvdZ?: number } = {}) =>
  encodeStartVirtualProcessorInput({
    partitionId: o.partitionId ?? SELF,
    vpIndex,
    targetVtl,
    rsvdZ: o.rsvdZ ?? 0,
    vpContext: { ...longModeContext(), rip, rsp: 0x9000n },
  });
/** HvRegisterVsmPartitionConfig: EnableVtlProtection off, default mask RWX, ZeroMemoryOnReset, and the two startup bits. */
const config = (deny: boolean, intercept: boolean) => (0xfn << 1n) | (1n << 5n) | (deny ? 1n << 6n : 0n) | (intercept ? 1n << 9n : 0n);

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h.stop();
});

async function partition(id: string, vpCount: number, maximumVtl: number) {
  const p = await h.client.partitions.createPartition({ partitionId: id, partition: { vpCount, memoryBytes: GiB, maximumVtl } as pb.Partition });
  const vps = Array.from({ length: vpCount }, (_, i) => `${p.name}/vps/${i}`);
  return { name: p.name, vps };
}
async function hypercallPage(vp: string, gpa: bigint, osId: bigint) {
  await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: osId });
  await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: gpa | 1n });
}
const vtlCall = (vp: string) => h.client.guest.callHypercallPage({ name: vp, offset: 0x0f, rcx: 0n });
const vtlReturn = (vp: string) => h.client.guest.callHypercallPage({ name: vp, offset: 0x26, rcx: 1n });
const start = (vp: string, input: Buffer, control = START) => h.client.guest.hypercall({ name: vp, control, inputGpa: IN, input });
async function rip(vp: string, vtl: number): Promise<bigint> {
  const r = await h.client.vps.getVpRegisters({ name: vp, vtl, names: [R.HV_REGISTER_NAME_X64_RIP] });
  const v = r.registers[0]?.value?.value;
  return v?.$case === 'reg64' ? v.value : -1n;
}

describe('HvCallStartVirtualProcessor', () => {
  test('VTL0 starts VP1 at its context; with VTL1 enabled on VP2, VP2 starts in VTL1 first and VtlReturns to the started VTL0', async () => {
    const { name, vps } = await partition('start-basic', 3, 1);
    await h.client.vtl.enablePartitionVtl({ name, targetVtl: 1 });
    await h.client.vtl.enableVpVtl({ name: vps[2]!, targetVtl: 1 });
    const r = await start(vps[0]!, startInput(1, 0, 0x7000n));
    expect(r.status).toBe(S.HV_STATUS_SUCCESS);
    expect(await rip(vps[1]!, 0)).toBe(0x7000n);
    expect((await h.client.vps.getVirtualProcessor({ name: vps[1]! })).vtlStatus?.activeVtl).toBe(0);

    expect((await start(vps[0]!, startInput(2, 0, 0x8000n))).status).toBe(S.HV_STATUS_SUCCESS);
    expect((await h.client.vps.getVirtualProcessor({ name: vps[2]! })).vtlStatus?.activeVtl).toBe(1);
    await hypercallPage(vps[2]!, 0x3000n, 2n); // VTL1's own hypercall page
    const ret = await vtlReturn(vps[2]!);
    expect(ret.outcome?.vtlSwitch).toMatchObject({ fromVtl: 1, toVtl: 0 });
    expect(await rip(vps[2]!, 0)).toBe(0x8000n);
  });

  test('bad input: statuses (the caller first), nothing started', async () => {
    const { vps } = await partition('start-bad', 2, 1);
    const before = await rip(vps[1]!, 0);
    const st = async (input: Buffer, control = START) => (await start(vps[0]!, input, control)).status;
    expect(await st(startInput(1, 0, 0x7000n, { partitionId: 7n }))).toBe(S.HV_STATUS_INVALID_PARTITION_ID);
    expect(await st(startInput(1, 0, 0x7000n, { rsvdZ: 1 }))).toBe(S.HV_STATUS_INVALID_PARAMETER);
    expect(await st(startInput(1, 1, 0x7000n))).toBe(S.HV_STATUS_ACCESS_DENIED); // a VTL above the caller
    expect(await st(startInput(0, 0, 0x7000n))).toBe(S.HV_STATUS_INVALID_VP_INDEX); // the caller itself
    expect(await st(startInput(5, 0, 0x7000n))).toBe(S.HV_STATUS_INVALID_VP_INDEX);
    expect(await st(startInput(1, 0, 0x7000n), START | (1n << 32n))).toBe(S.HV_STATUS_INVALID_HYPERCALL_INPUT); // rep count on a simple call
    expect(await rip(vps[1]!, 0)).toBe(before);
  });

  test('DenyLowerVtlStartup: VTL0 refused (ACCESS_DENIED, even for a VP that does not exist); VTL1 may start VPs', async () => {
    const { name, vps } = await partition('start-deny', 2, 1);
    await h.client.vtl.enablePartitionVtl({ name, targetVtl: 1 });
    await h.client.vtl.enableVpVtl({ name: vps[0]!, targetVtl: 1 });
    await h.client.vps.setVpRegisters({ name: vps[0]!, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, config(true, false))] });
    expect((await start(vps[0]!, startInput(1, 0, 0x7000n))).status).toBe(S.HV_STATUS_ACCESS_DENIED);
    expect((await start(vps[0]!, startInput(9, 0, 0x7000n))).status).toBe(S.HV_STATUS_ACCESS_DENIED);
    await hypercallPage(vps[0]!, 0x1000n, 1n);
    await vtlCall(vps[0]!);
    expect((await start(vps[0]!, startInput(1, 0, 0x7000n))).status).toBe(S.HV_STATUS_SUCCESS);
    expect(await rip(vps[1]!, 0)).toBe(0x7000n);
  });

  test('InterceptVpStartup: VTL0 start does not complete; VTL1 receives HvMessageTypeHypercallIntercept in SINT0 and is entered', async () => {
    const { name, vps } = await partition('start-intercept', 2, 1);
    const vp0 = vps[0]!;
    await h.client.vtl.enablePartitionVtl({ name, targetVtl: 1 });
    await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
    await hypercallPage(vp0, 0x1000n, 1n);
    await vtlCall(vp0);
    await hypercallPage(vp0, 0x2000n, 2n);
    await h.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_SIMP, value: 0x9000n | 1n });
    await h.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_SCONTROL, value: 1n });
    await h.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_SINT0, value: 0x30n });
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, config(false, true))] });
    await vtlReturn(vp0);
    const ripBefore = await rip(vp0, 0);
    const r = await start(vp0, startInput(1, 0, 0x7000n));
    expect(r.resultValue).toBe(0n);
    expect(r.outcome?.vtlSwitch).toEqual({ fromVtl: 0, toVtl: 1, entryReason: pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_INTERRUPT });
    expect(r.outcome?.intercept?.protectingVtl).toBe(1);
    const msg = Buffer.from(r.outcome!.intercept!.hvMessage);
    expect(msg.readUInt32LE(0)).toBe(0x80000050); // HvMessageTypeHypercallIntercept
    expect(msg[4]).toBe(208); // PayloadSize: HV_X64_HYPERCALL_INTERCEPT_MESSAGE
    expect(msg.readBigUInt64LE(16 + 24)).toBe(ripBefore); // header Rip: on the VMCALL
    expect(msg.readBigUInt64LE(16 + 56)).toBe(START); // Rcx: the hypercall input value
    expect(msg.readBigUInt64LE(16 + 64)).toBe(IN); // Rdx: the input GPA
    // The same message sits in VTL1's SIM slot 0; VP1 was not started; VTL0 is still on its VMCALL.
    const sim = await h.client.guest.readMemory({ name: vp0, gpa: 0x9000n, length: 256 }); // VTL1 reads its SIM page
    expect(Buffer.from(sim.data).equals(msg)).toBe(true);
    expect(await rip(vp0, 0)).toBe(ripBefore);
    expect(await rip(vps[1]!, 0)).not.toBe(0x7000n);
  });
});

describe('HvCallGetVpIndexFromApicId', () => {
  const GET = (n: number) => 0x9an | (BigInt(n) << 32n);
  const input = (ids: number[], o: { targetVtl?: number; rsvdZ?: bigint } = {}) => {
    const e = Buffer.alloc(Math.ceil((ids.length * 4) / 8) * 8);
    for (const [i, id] of ids.entries()) e.writeUInt32LE(id, 4 * i);
    return Buffer.concat([encodeGetVpIndexFromApicIdHeader({ partitionId: SELF, targetVtl: o.targetVtl ?? 0, rsvdZ: o.rsvdZ ?? 0n }), e]);
  };
  test('APIC ids to VP indices; an unknown id stops the call with INVALID_PARAMETER after the ids before it', async () => {
    const { vps } = await partition('apic-ids', 3, 1);
    const ok = await h.client.guest.hypercall({ name: vps[0]!, control: GET(3), inputGpa: IN, outputGpa: OUT, input: input([2, 0, 1]), outputSize: 16 });
    expect(ok).toMatchObject({ status: S.HV_STATUS_SUCCESS, repsCompleted: 3 });
    const out = Buffer.from(ok.output);
    expect([out.readUInt32LE(0), out.readUInt32LE(4), out.readUInt32LE(8)]).toEqual([2, 0, 1]);
    const bad = await h.client.guest.hypercall({ name: vps[0]!, control: GET(3), inputGpa: IN, outputGpa: OUT, input: input([1, 9, 0]) });
    expect(bad).toMatchObject({ status: S.HV_STATUS_INVALID_PARAMETER, repsCompleted: 1 });
    const call = (i: Buffer, control = GET(1)) => h.client.guest.hypercall({ name: vps[0]!, control, inputGpa: IN, outputGpa: OUT, input: i });
    expect((await call(input([0], { rsvdZ: 1n }))).status).toBe(S.HV_STATUS_INVALID_PARAMETER);
    expect((await call(input([0], { targetVtl: 0x11 }))).status).toBe(S.HV_STATUS_ACCESS_DENIED); // VTL1 from VTL0
    expect((await call(input([0]), 0x9an)).status).toBe(S.HV_STATUS_INVALID_HYPERCALL_INPUT); // rep count 0
  });
});

describe('VtlReturn with three VTLs', () => {
  test('a VTL0 access intercepted straight into VTL2 returns to VTL0 (VTL1 is not entered); nested calls unwind one level', async () => {
    const { name, vps } = await partition('three-vtls', 1, 2);
    const vp = vps[0]!;
    await h.client.vtl.enablePartitionVtl({ name, targetVtl: 1 });
    await h.client.vtl.enablePartitionVtl({ name, targetVtl: 2 });
    await h.client.vtl.enableVpVtl({ name: vp, targetVtl: 1 });
    await h.client.vtl.enableVpVtl({ name: vp, targetVtl: 2 });
    await hypercallPage(vp, 0x1000n, 1n);
    expect((await vtlCall(vp)).outcome?.vtlSwitch).toMatchObject({ fromVtl: 0, toVtl: 1 });
    await hypercallPage(vp, 0x2000n, 2n);
    expect((await vtlCall(vp)).outcome?.vtlSwitch).toMatchObject({ fromVtl: 1, toVtl: 2 });
    await hypercallPage(vp, 0x3000n, 3n);
    // VTL2: EnableVtlProtection (default RWX), then no write on page 0x40 for the VTLs below.
    await h.client.vps.setVpRegisters({ name: vp, vtl: 2, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] });
    const mask = Buffer.alloc(24);
    mask.writeBigUInt64LE(SELF, 0);
    mask.writeUInt32LE(0x1 | 0x4, 8);
    mask.writeBigUInt64LE(0x40n, 16);
    expect((await h.client.guest.hypercall({ name: vp, control: 0x0cn | (1n << 32n), inputGpa: IN, input: mask })).status).toBe(S.HV_STATUS_SUCCESS);
    // Nested calls unwind one level at a time.
    expect((await vtlReturn(vp)).outcome?.vtlSwitch).toMatchObject({ fromVtl: 2, toVtl: 1 });
    expect((await vtlReturn(vp)).outcome?.vtlSwitch).toMatchObject({ fromVtl: 1, toVtl: 0 });
    // VTL0's write intercepts straight into VTL2.
    const w = await h.client.guest.writeMemory({ name: vp, gpa: 0x40000n, data: Buffer.from('12345678') });
    expect(w.outcome?.vtlSwitch).toMatchObject({ fromVtl: 0, toVtl: 2 });
    // VTL2 skips the write (moves VTL0's RIP) and returns: to VTL0.
    const at = await rip(vp, 0);
    await h.client.vps.setVpRegisters({ name: vp, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_X64_RIP, at + 4n)] });
    const ret = await vtlReturn(vp);
    expect(ret.outcome?.vtlSwitch).toMatchObject({ fromVtl: 2, toVtl: 0 });
    expect(ret.outcome?.resumedAccess).toMatchObject({ skipped: true });
    const st = await h.client.vps.getVirtualProcessor({ name: vp });
    expect(st.vtlStatus?.activeVtl).toBe(0);
  });
});
