// Conformance (issue #16): secure interrupts, VINA and per-VTL interrupt state (tlfs-vsm.md §9.1, §10),
// and MOV to CR0/CR4 under HvX64RegisterCrInterceptControl (WriteControlRegister, §3.8). Public gRPC API
// only, so the same scenarios run on the emulator and on the KVM agent
// (VSM_BACKEND=agent npx jest test/conformance/secure-interrupts.test.ts --selectProjects conformance).
// The interrupts are the core's: raised by HvCallSendSyntheticClusterIpi with a target VTL and by a
// SynIC event, observed through GetVirtualProcessor (VpVtlStatus.vtl_interrupts), the VP assist page
// (HV_VP_VTL_CONTROL.EntryReason / VinaStatus) and the guest actions' outcomes.
import { pb } from '@vsm/client';
import { HvMsr } from '@vsm/core';
import { GiB, type Harness, failure, startHarness } from '../support/server';

const R = pb.HvRegisterName;
const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });
const u64 = (v: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
};
const HV_X64_MSR_EOI = 0x40000070;
const HV_X64_MSR_TPR = 0x40000072;
const HV_X64_MSR_ICR = 0x40000071;
const X2APIC_ICR = 0x830;
const X2APIC_TPR = 0x808;
const X2APIC_EOI = 0x80b;
const IA32_APIC_BASE = 0x1b;
const ASSIST = 0x5000n; // VP 0's VTL1 VP assist page
const ENTRY_REASON = ASSIST + 8n; // HV_VP_VTL_CONTROL.EntryReason
const VINA_STATUS = ASSIST + 12n; // HV_VP_VTL_CONTROL.VinaStatus
// HvX64RegisterCrInterceptControl / Cr0Mask (tlfs-vsm.md §3.8): not in the proto's register enum.
const CR_INTERCEPT_CONTROL = 0x000e0000 as pb.HvRegisterName;
const CR_INTERCEPT_CR0_MASK = 0x000e0001 as pb.HvRegisterName;
const TARGET_VTL1 = 0x11n << 32n; // HV_INPUT_VTL UseTargetVtl | 1 in bits 39:32 of RDX

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
}, 120_000);
afterAll(async () => {
  await h.stop();
});

/** A 2-VP partition with VTL1 on both VPs; hypercall pages at 0x1000 (VTL0); VP 0's VTL1 VP assist page at 0x5000. */
async function setup(id: string) {
  const p = await h.client.partitions.createPartition({ partitionId: id, partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
  const vp0 = `${p.name}/vps/0`;
  const vp1 = `${p.name}/vps/1`;
  for (const vp of [vp0, vp1]) {
    await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 0x8100_0000_0000_0001n });
    await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x1000n | 1n });
  }
  await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
  await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
  await h.client.vtl.enableVpVtl({ name: vp1, targetVtl: 1 });
  await h.client.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VP_ASSIST_PAGE, ASSIST | 1n)] });
  return { p, vp0, vp1 };
}

/** VTL1 of `vp` gets its hypercall page (0x2000) the first time it runs: VtlReturn needs it. */
async function vtl1HypercallPage(vp: string) {
  await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 0x8100_0000_0000_0001n });
  await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x2000n | 1n });
}
async function vtlCall(vp: string) {
  const o = await h.client.guest.callHypercallPage({ name: vp, offset: 0x0f, rcx: 0n });
  expect(o.outcome?.activeVtl).toBe(1);
  await vtl1HypercallPage(vp);
}
const vtlReturn = (vp: string) => h.client.guest.callHypercallPage({ name: vp, offset: 0x26, rcx: 0n });
/** HvCallSendSyntheticClusterIpi (0x000B), fast: RDX = Vector | TargetVtl << 32, R8 = ProcessorMask. */
const ipi = (vp: string, rdx: bigint, mask: bigint) =>
  h.client.guest.hypercall({ name: vp, control: 0x0bn | (1n << 16n), input: Buffer.concat([u64(rdx), u64(mask)]) });
async function irq(vp: string, vtl: number) {
  const v = await h.client.vps.getVirtualProcessor({ name: vp });
  const s = v.vtlStatus?.vtlInterrupts.find((x) => x.vtl === vtl);
  if (!s) throw new Error(`no interrupt state for VTL ${vtl}`);
  return { ...s, activeVtl: v.vtlStatus!.activeVtl, lastEntryReason: v.vtlStatus!.lastEntryReason };
}
/** A DWORD as VTL1 sees it (its VP assist page overlay on top of RAM). */
const readU32 = async (pname: string, gpa: bigint) =>
  Buffer.from((await h.client.memory.readGpa({ name: pname, gpa, length: 4, vtlView: 1 })).data).readUInt32LE(0);

describe('secure interrupts (tlfs-vsm.md §10)', () => {
  test('an IPI to VTL1 of a VP running VTL0 enters VTL1 (entry reason Interrupt); EOI completes it; VtlReturn goes back', async () => {
    const { p, vp0, vp1 } = await setup('c16-secure-irq');
    await vtlCall(vp1);
    // VP 1 in VTL1 interrupts VTL1 of VP 0 (its own VTL; a VTL may not target a higher one).
    const sent = await ipi(vp1, 0x40n | TARGET_VTL1, 1n);
    expect(sent.status).toBe(pb.HvStatus.HV_STATUS_SUCCESS);
    expect(sent.outcome?.activeVtl).toBe(1);
    const s = await irq(vp0, 1);
    expect([s.activeVtl, s.lastEntryReason]).toEqual([1, pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_INTERRUPT]);
    expect([s.pendingVectors, s.inServiceVectors]).toEqual([[], [0x40]]);
    expect(await readU32(p.name, ENTRY_REASON)).toBe(2); // HvVtlEntryInterrupt in VTL1's HV_VP_VTL_CONTROL
    // VTL0's APIC has nothing: each VTL has its own.
    expect((await irq(vp0, 0)).inServiceVectors).toEqual([]);
    await vtl1HypercallPage(vp0);
    // EOI from VTL1 (HV_X64_MSR_EOI) clears its in-service vector; VtlReturn resumes VTL0.
    expect((await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_EOI, value: 0n })).outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_UNSPECIFIED);
    expect((await irq(vp0, 1)).inServiceVectors).toEqual([]);
    const back = await vtlReturn(vp0);
    expect([back.outcome?.activeVtl, back.outcome?.reentry]).toEqual([0, undefined]);
    // Bad input: VTL0 may not target VTL1 (ACCESS_DENIED); nothing is raised.
    expect((await ipi(vp0, 0x41n | TARGET_VTL1, 2n)).status).toBe(pb.HvStatus.HV_STATUS_ACCESS_DENIED);
    expect((await irq(vp1, 1)).pendingVectors).toEqual([]);
  });

  test("VTL1's TPR holds a lower-class interrupt back (no switch); a higher class preempts VTL0", async () => {
    const { vp0, vp1 } = await setup('c16-secure-tpr');
    await vtlCall(vp0);
    expect((await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_TPR, value: 0x50n })).outcome?.exception).toBe(0);
    expect((await h.client.guest.readMsr({ name: vp0, msr: HV_X64_MSR_TPR })).value).toBe(0x50n);
    expect((await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_TPR, value: 0x100n })).outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_GP);
    expect((await vtlReturn(vp0)).outcome?.activeVtl).toBe(0);
    // VTL0's TPR is its own.
    expect((await h.client.guest.readMsr({ name: vp0, msr: HV_X64_MSR_TPR })).value).toBe(0n);
    await vtlCall(vp1);
    await ipi(vp1, 0x45n | TARGET_VTL1, 1n);
    let s = await irq(vp0, 1);
    expect([s.activeVtl, s.pendingVectors, s.tpr]).toEqual([0, [0x45], 0x50]);
    await ipi(vp1, 0x61n | TARGET_VTL1, 1n);
    s = await irq(vp0, 1);
    expect([s.activeVtl, s.lastEntryReason, s.inServiceVectors, s.pendingVectors]).toEqual([
      1,
      pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_INTERRUPT,
      [0x61],
      [0x45],
    ]);
    // Lowering the TPR lets 0x45 through once 0x61 is completed (PPR = max(TPR, in service)).
    await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_TPR, value: 0n });
    expect((await irq(vp0, 1)).pendingVectors).toEqual([0x45]);
    await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_EOI, value: 0n });
    s = await irq(vp0, 1);
    expect([s.pendingVectors, s.inServiceVectors]).toEqual([[], [0x45]]);
  });

  test('a SynIC event for SINT2 of VTL1 preempts VTL0 (the SINT vector is raised in VTL1)', async () => {
    const { p, vp0 } = await setup('c16-secure-sint');
    // VTL1's SynIC on VP 0: SIEFP at 0x6000, SCONTROL enabled, SINT2 vector 0x52 unmasked.
    await h.client.vps.setVpRegisters({
      name: vp0,
      vtl: 1,
      registers: [r64(R.HV_REGISTER_NAME_SIFP, 0x6000n | 1n), r64(R.HV_REGISTER_NAME_SCONTROL, 1n), r64(R.HV_REGISTER_NAME_SINT2, 0x52n)],
    });
    await h.client.execution.createConnection({ name: p.name, connectionId: 7, kind: pb.ConnectionKind.CONNECTION_KIND_EVENT, vpIndex: 0, sint: 2, vtl: 1 });
    // VTL0 signals the event (HvCallSignalEvent 0x005D, fast: RDX = ConnectionId | FlagNumber << 32).
    const o = await h.client.guest.hypercall({ name: vp0, control: 0x5dn | (1n << 16n), input: Buffer.concat([u64(7n), u64(0n)]) });
    expect(o.status).toBe(pb.HvStatus.HV_STATUS_SUCCESS);
    // The call completed in VTL0 (RIP moved there), then the interrupt entered VTL1.
    expect(o.outcome?.vtlSwitch).toEqual({ fromVtl: 0, toVtl: 1, entryReason: pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_INTERRUPT });
    expect((await irq(vp0, 1)).inServiceVectors).toEqual([0x52]);
  });
});

describe('HvCallSendSyntheticClusterIpiEx (0x0015) with a target VTL', () => {
  /** Input: Vector, TargetVtl (HV_INPUT_VTL), padding, HV_VP_SET sparse 4K (Format 0, ValidBanksMask 1, bank 0 = `mask`). */
  const exInput = (vector: number, targetVtl: number, mask: bigint, o: { format?: bigint; pad?: number } = {}) => {
    const b = Buffer.alloc(32);
    b.writeUInt32LE(vector, 0);
    b[4] = targetVtl;
    b[5] = o.pad ?? 0;
    b.writeBigUInt64LE(o.format ?? 0n, 8);
    b.writeBigUInt64LE(1n, 16);
    b.writeBigUInt64LE(mask, 24);
    return b;
  };
  const ex = (vp: string, input: Buffer) => h.client.guest.hypercall({ name: vp, control: 0x15n | (1n << 17n), inputGpa: 0x10000n, input });

  test('VTL1 interrupts VTL1 of a VP running VTL0 (preempted) and VTL0 of another (held while VTL1 runs there); statuses for bad input', async () => {
    const { vp0, vp1 } = await setup('c16-ipi-ex');
    await vtlCall(vp1);
    expect((await ex(vp1, exInput(0x49, 0x11, 1n))).status).toBe(pb.HvStatus.HV_STATUS_SUCCESS);
    let s = await irq(vp0, 1);
    expect([s.activeVtl, s.lastEntryReason, s.inServiceVectors]).toEqual([1, pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_INTERRUPT, [0x49]]);
    // VP 0's VTL1 to VP 1's VTL0 (a lower VTL, HV_INPUT_VTL 0x10): VP 1 runs VTL1, so it waits there.
    await vtl1HypercallPage(vp0);
    expect((await ex(vp0, exInput(0x4a, 0x10, 2n))).status).toBe(pb.HvStatus.HV_STATUS_SUCCESS);
    s = await irq(vp1, 0);
    expect([s.activeVtl, s.pendingVectors]).toEqual([1, [0x4a]]);
    // VP 1 returns to VTL0, which takes it.
    expect((await vtlReturn(vp1)).outcome?.activeVtl).toBe(0);
    expect((await irq(vp1, 0)).inServiceVectors).toEqual([0x4a]);
    // Bad input: VTL0 may not target VTL1; padding set; an unknown HV_VP_SET format; vector < 0x10.
    expect((await ex(vp1, exInput(0x4b, 0x11, 1n))).status).toBe(pb.HvStatus.HV_STATUS_ACCESS_DENIED);
    expect((await ex(vp1, exInput(0x4b, 0x10, 1n, { pad: 1 }))).status).toBe(pb.HvStatus.HV_STATUS_INVALID_PARAMETER);
    expect((await ex(vp1, exInput(0x4b, 0x10, 1n, { format: 7n }))).status).toBe(pb.HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
    expect((await ex(vp1, exInput(0x05, 0x10, 1n))).status).toBe(pb.HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
    expect((await irq(vp0, 1)).pendingVectors).toEqual([]);
  });
});

describe("IPIs through a VTL's own APIC (HV_X64_MSR_ICR 0x40000071, x2APIC ICR 0x830)", () => {
  test("VTL1's ICR on VP 1 interrupts VTL1 of VP 0, which runs VTL0: preempted; an ICR IPI stays in its VTL; bad ICR values #GP", async () => {
    const { vp0, vp1 } = await setup('c16-icr');
    await vtlCall(vp1);
    // Fixed, physical destination APIC id 0 (VP 0), vector 0x44, level assert.
    const w = await h.client.guest.writeMsr({ name: vp1, msr: HV_X64_MSR_ICR, value: 0x0000_0000_0000_4044n });
    expect([w.outcome?.exception, w.outcome?.activeVtl]).toEqual([pb.X64Exception.X64_EXCEPTION_UNSPECIFIED, 1]);
    expect((await h.client.guest.readMsr({ name: vp1, msr: HV_X64_MSR_ICR })).value).toBe(0x4044n);
    let s = await irq(vp0, 1);
    expect([s.activeVtl, s.lastEntryReason, s.inServiceVectors]).toEqual([1, pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_INTERRUPT, [0x44]]);
    // VP 0, now in VTL1, answers VP 1 (destination 1): VTL1's ICR interrupts VP 1's VTL1 (it runs
    // there: taken at once), never its VTL0.
    await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_ICR, value: (1n << 32n) | 0x4045n });
    s = await irq(vp1, 1);
    expect([s.activeVtl, s.inServiceVectors]).toEqual([1, [0x45]]);
    const v0 = await irq(vp1, 0);
    expect([v0.pendingVectors, v0.inServiceVectors]).toEqual([[], []]);
    // Shorthand "all excluding self" from VP 1's VTL1: VP 0's VTL1 gets 0x46, held behind 0x44 in
    // service (same priority class) until VTL1's EOI.
    await h.client.guest.writeMsr({ name: vp1, msr: HV_X64_MSR_ICR, value: (3n << 18n) | 0x4046n });
    s = await irq(vp0, 1);
    expect([s.inServiceVectors, s.pendingVectors]).toEqual([[0x44], [0x46]]);
    await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_EOI, value: 0n });
    s = await irq(vp0, 1);
    expect([s.inServiceVectors, s.pendingVectors]).toEqual([[0x46], []]);
    // Bad: reserved bit 13, logical destination, NMI delivery (not modelled), the x2APIC ICR in xAPIC mode.
    for (const v of [0x2044n, 0x0844n, 0x0444n])
      expect((await h.client.guest.writeMsr({ name: vp1, msr: HV_X64_MSR_ICR, value: v })).outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_GP);
    expect((await h.client.guest.writeMsr({ name: vp1, msr: X2APIC_ICR, value: 0x4044n })).outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_GP);
  });
});

describe('VtlReturn re-evaluates pending interrupts (tlfs-vsm.md §6.2, §10)', () => {
  test('three VTLs: VTL2, entered from VTL0 by an intercept, IPIs VTL1 and returns: VTL1 is entered at once (reentry)', async () => {
    const p = await h.client.partitions.createPartition({
      partitionId: 'c16-reentry',
      partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 2 } as pb.Partition,
    });
    const vp = `${p.name}/vps/0`;
    const page = async (gpa: bigint) => {
      await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 0x8100_0000_0000_0001n });
      await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: gpa | 1n });
    };
    await page(0x1000n);
    await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 2 });
    await h.client.vtl.enableVpVtl({ name: vp, targetVtl: 1 });
    await h.client.vtl.enableVpVtl({ name: vp, targetVtl: 2 });
    await h.client.guest.callHypercallPage({ name: vp, offset: 0x0f, rcx: 0n });
    await page(0x2000n);
    await h.client.guest.callHypercallPage({ name: vp, offset: 0x0f, rcx: 0n });
    await page(0x3000n);
    // VTL2: EnableVtlProtection, then page 0x40 not writable for the VTLs below; back to VTL0.
    await h.client.vps.setVpRegisters({ name: vp, vtl: 2, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] });
    const mask = Buffer.alloc(24);
    mask.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
    mask.writeUInt32LE(0x1 | 0x4, 8);
    mask.writeBigUInt64LE(0x40n, 16);
    expect((await h.client.guest.hypercall({ name: vp, control: 0x0cn | (1n << 32n), inputGpa: 0x20000n, input: mask })).status).toBe(
      pb.HvStatus.HV_STATUS_SUCCESS,
    );
    expect((await vtlReturn(vp)).outcome?.activeVtl).toBe(1);
    expect((await vtlReturn(vp)).outcome?.activeVtl).toBe(0);
    // VTL0's write intercepts straight into VTL2.
    const w = await h.client.guest.writeMemory({ name: vp, gpa: 0x40000n, data: Buffer.from('12345678') });
    expect(w.outcome?.vtlSwitch).toMatchObject({ fromVtl: 0, toVtl: 2 });
    // VTL2 interrupts VTL1 of this VP (a lower VTL: it waits while VTL2 runs).
    expect((await ipi(vp, 0x48n | TARGET_VTL1, 1n)).outcome?.activeVtl).toBe(2);
    expect((await irq(vp, 1)).pendingVectors).toEqual([0x48]);
    // VTL2 skips VTL0's write and returns to VTL0, which VTL1's pending interrupt preempts at once.
    const rip = (await h.client.vps.getVpRegisters({ name: vp, vtl: 0, names: [R.HV_REGISTER_NAME_X64_RIP] })).registers[0]!.value!.value as { value: bigint };
    await h.client.vps.setVpRegisters({ name: vp, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_X64_RIP, rip.value + 4n)] });
    const ret = await vtlReturn(vp);
    expect(ret.outcome?.vtlSwitch).toMatchObject({ fromVtl: 2, toVtl: 0 });
    expect(ret.outcome?.reentry).toEqual({ fromVtl: 0, toVtl: 1, entryReason: pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_INTERRUPT });
    expect(ret.outcome?.activeVtl).toBe(1);
    const s = await irq(vp, 1);
    expect([s.activeVtl, s.pendingVectors, s.inServiceVectors]).toEqual([1, [], [0x48]]);
  });
});

describe('VINA (HvRegisterVsmVina 0x000D0005, tlfs-vsm.md §3.7, §10.1)', () => {
  test('an interrupt for VTL0 while VTL1 runs raises the VINA vector once; AutoReset clears VinaAsserted on return', async () => {
    const { p, vp0, vp1 } = await setup('c16-vina');
    // Vector 0x30, Enabled (bit 8), AutoReset (bit 9).
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_VINA, 0x330n)] });
    await vtlCall(vp0);
    await ipi(vp1, 0x41n, 1n); // VP 1 (VTL0) to VP 0's VTL0
    let s1 = await irq(vp0, 1);
    expect([s1.activeVtl, s1.vinaAsserted, s1.inServiceVectors]).toEqual([1, true, [0x30]]);
    expect(await readU32(p.name, VINA_STATUS)).toBe(1);
    expect((await irq(vp0, 0)).pendingVectors).toEqual([0x41]);
    // While asserted no further VINA interrupt: EOI the first, a second IPI raises none.
    await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_EOI, value: 0n });
    await ipi(vp1, 0x42n, 1n);
    s1 = await irq(vp0, 1);
    expect([s1.vinaAsserted, s1.inServiceVectors, s1.pendingVectors]).toEqual([true, [], []]);
    // VtlReturn: AutoReset clears VinaAsserted; VTL0 takes its interrupts (highest first, one per class).
    const back = await vtlReturn(vp0);
    expect(back.outcome?.activeVtl).toBe(0);
    expect((await irq(vp0, 1)).vinaAsserted).toBe(false);
    expect(await readU32(p.name, VINA_STATUS)).toBe(0);
    const s0 = await irq(vp0, 0);
    expect([s0.inServiceVectors, s0.pendingVectors]).toEqual([[0x42], [0x41]]);
    await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_EOI, value: 0n });
    expect((await irq(vp0, 0)).inServiceVectors).toEqual([0x41]);
  });

  test('bad input: VINA for VTL0, reserved bits are kept (ReservedP)', async () => {
    const { vp0 } = await setup('c16-vina-bad');
    const e = await failure(h.client.vps.setVpRegisters({ name: vp0, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_VSM_VINA, 0x130n)] }));
    expect(e.reason).toBe('HV_STATUS_INVALID_PARAMETER');
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_VINA, (1n << 40n) | 0x130n)] });
    expect((await irq(vp0, 1)).vina).toBe(0x130n);
  });
});

describe('per-VTL local APIC state (tlfs-vsm.md §9.1)', () => {
  test('x2APIC mode, TPR and EOI are per VTL; x2APIC MSRs #GP in xAPIC mode', async () => {
    const { vp0 } = await setup('c16-apic');
    // VTL0 in xAPIC mode (the reset state: enabled, BSP, 0xFEE00000).
    const s0 = await irq(vp0, 0);
    expect([s0.apicBase, s0.x2apic]).toEqual([0xfee0_0900n, false]);
    expect((await h.client.guest.readMsr({ name: vp0, msr: X2APIC_TPR })).outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_GP);
    await vtlCall(vp0);
    // VTL1 switches its own APIC to x2APIC mode (EN | EXTD) and uses the x2APIC TPR.
    expect((await h.client.guest.writeMsr({ name: vp0, msr: IA32_APIC_BASE, value: 0xfee0_0d00n })).outcome?.exception).toBe(0);
    expect((await h.client.guest.writeMsr({ name: vp0, msr: X2APIC_TPR, value: 0x20n })).outcome?.exception).toBe(0);
    expect((await h.client.guest.writeMsr({ name: vp0, msr: X2APIC_EOI, value: 1n })).outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_GP);
    const s1 = await irq(vp0, 1);
    expect([s1.x2apic, s1.tpr]).toEqual([true, 0x20]);
    expect((await vtlReturn(vp0)).outcome?.activeVtl).toBe(0);
    const back = await irq(vp0, 0);
    expect([back.x2apic, back.tpr]).toEqual([false, 0]);
    expect((await h.client.guest.writeMsr({ name: vp0, msr: X2APIC_EOI, value: 0n })).outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_GP);
  });
});

describe('WriteControlRegister under HvX64RegisterCrInterceptControl (tlfs-vsm.md §3.8)', () => {
  test('a write changing a bit VTL1 locked does not take effect and becomes the register intercept; other bits are written', async () => {
    const { vp0 } = await setup('c16-cr');
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_X64_CR0, 0x8001_0033n)] });
    // VTL1 intercepts CR0 writes (bit 0) that change CR0.WP (bit 16).
    await h.client.vps.setVpRegisters({
      name: vp0,
      vtl: 1,
      registers: [r64(CR_INTERCEPT_CONTROL, 1n), r64(CR_INTERCEPT_CR0_MASK, 0x1_0000n)],
    });
    const cr0 = async () =>
      (await h.client.vps.getVpRegisters({ name: vp0, vtl: 0, names: [R.HV_REGISTER_NAME_X64_CR0] })).registers[0]!.value!.value as { value: bigint };
    const CR0 = pb.ControlRegister.CONTROL_REGISTER_CR0;
    // Clearing WP: intercepted, CR0 unchanged, VTL1 entered with HvMessageTypeRegisterIntercept (0x80010006).
    const o = await h.client.guest.writeControlRegister({ name: vp0, register: CR0, value: 0x8000_0033n });
    expect(o.outcome?.activeVtl).toBe(1);
    expect(o.outcome?.intercept?.protectingVtl).toBe(1);
    expect(Buffer.from(o.outcome!.intercept!.hvMessage).readUInt32LE(0)).toBe(0x80010006);
    expect((await cr0()).value).toBe(0x8001_0033n);
    await vtl1HypercallPage(vp0);
    expect((await vtlReturn(vp0)).outcome?.activeVtl).toBe(0);
    // A bit outside the mask (AM, bit 18) is written.
    const ok = await h.client.guest.writeControlRegister({ name: vp0, register: CR0, value: 0x8005_0033n });
    expect([ok.outcome?.activeVtl, ok.outcome?.intercept]).toEqual([0, undefined]);
    expect((await cr0()).value).toBe(0x8005_0033n);
    // CR4 is not selected by VTL1 (bit 1 clear): written.
    const c4 = await h.client.guest.writeControlRegister({ name: vp0, register: pb.ControlRegister.CONTROL_REGISTER_CR4, value: 0x20n });
    expect(c4.outcome?.intercept).toBeUndefined();
    // Bad input: no register, a VP that does not exist.
    expect((await failure(h.client.guest.writeControlRegister({ name: vp0, register: pb.ControlRegister.CONTROL_REGISTER_UNSPECIFIED, value: 0n }))).code).toBe(
      3, // INVALID_ARGUMENT
    );
    expect((await failure(h.client.guest.writeControlRegister({ name: vp0.replace(/0$/, '9'), register: CR0, value: 0n }))).code).toBe(5); // NOT_FOUND
  });
});
