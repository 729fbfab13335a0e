// Conformance: VTL enablement, VtlCall/VtlReturn through the hypercall page, private vs shared
// state (tlfs-vsm.md §4-6, §9). Public gRPC API only, so the same scenario runs on every backend.
import { status } from '@grpc/grpc-js';
import { pb } from '@vsm/client';
import { GiB, type Harness, failure, startHarness } from '../support/server';
import { HvMsr } from '@vsm/core';

const { HV_X64_MSR_GUEST_OS_ID, HV_X64_MSR_HYPERCALL, HV_X64_MSR_VP_ASSIST_PAGE } = HvMsr;
const R = pb.HvRegisterName;
const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h.stop();
});

async function regs(vp: string, vtl: number, names: pb.HvRegisterName[]): Promise<Map<number, bigint>> {
  const r = await h.client.vps.getVpRegisters({ name: vp, vtl, names });
  return new Map(r.registers.map((a) => [a.name, a.value?.value?.$case === 'reg64' ? a.value.value.value : -1n]));
}

/** Partition with VTL1 enabled on VP0, hypercall pages in both VTLs, VP assist page in VTL1. */
async function setup(id: string) {
  const p = await h.client.partitions.createPartition({ partitionId: id, partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 2 } as pb.Partition });
  const vp0 = `${p.name}/vps/0`;
  await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_GUEST_OS_ID, value: 0x8100_0000_0000_0001n });
  await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_HYPERCALL, value: 0x1000n | 1n });
  return { p, vp0 };
}

describe('VTL conformance', () => {
  test('enable VTL1, VtlCall from VTL0, VTL1 sees its initial context and shared registers, VtlReturn', async () => {
    const { p, vp0 } = await setup('vtl-basic');
    const en = await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    expect(en.enabledVtlSet).toBe(0b11);
    const ctx = pb.InitialVpContext.fromPartial({
      rip: 0x20_0000n,
      rsp: 0x21_0000n,
      rflags: 0x2n,
      efer: 0xd01n,
      cr0: 0x80050033n,
      cr3: 0x30_0000n,
      cr4: 0x6a0n,
      msrCrPat: 0x0007040600070406n,
      cs: { base: 0n, limit: 0xffffffff, selector: 0x08, attributes: 0xa09b },
      ds: { selector: 0x10, attributes: 0xc093, limit: 0xffffffff },
      es: { selector: 0x10, attributes: 0xc093 },
      fs: { selector: 0x10, attributes: 0xc093 },
      gs: { selector: 0x10, attributes: 0xc093 },
      ss: { selector: 0x10, attributes: 0xc093 },
      tr: { selector: 0x18, attributes: 0x8b, limit: 0x67 },
      ldtr: { attributes: 0x82 },
      idtr: { base: 0x5000n, limit: 0xfff },
      gdtr: { base: 0x6000n, limit: 0x1f },
    });
    const vp = await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1, initialContext: ctx });
    expect(vp.vp?.vtlStatus?.enabledVtlSet).toBe(0b11);
    expect(vp.vp?.vtlStatus?.activeVtl).toBe(0);

    // VTL0 state before the call.
    await h.client.vps.setVpRegisters({
      name: vp0,
      vtl: 0,
      registers: [
        r64(R.HV_REGISTER_NAME_X64_RIP, 0x40_1000n),
        r64(R.HV_REGISTER_NAME_X64_RBX, 0xb0b0n),
        r64(R.HV_REGISTER_NAME_X64_RSP, 0x7000n),
        r64(R.HV_REGISTER_NAME_X64_RAX, 0xaaaan),
      ],
    });
    const before0 = await h.client.vps.getVpRegisters({ name: vp0, vtl: 0 });

    const offs = (await regs(vp0, 0, [R.HV_REGISTER_NAME_VSM_CODE_PAGE_OFFSETS])).get(R.HV_REGISTER_NAME_VSM_CODE_PAGE_OFFSETS)!;
    const callOff = Number(offs & 0xfffn);
    const retOff = Number((offs >> 12n) & 0xfffn);
    expect([callOff, retOff]).toEqual([0x0f, 0x26]);

    const call = await h.client.guest.callHypercallPage({ name: vp0, offset: callOff, rcx: 0n });
    expect(call.outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_UNSPECIFIED);
    expect(call.outcome?.vtlSwitch).toEqual({ fromVtl: 0, toVtl: 1, entryReason: pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_VTL_CALL });
    const st = await h.client.vps.getVirtualProcessor({ name: vp0 });
    expect(st.vtlStatus).toMatchObject({ activeVtl: 1, lastEntryReason: pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_VTL_CALL });

    // VTL1 runs from its initial context; shared GPRs carry what VTL0 left (RBX), RAX/RCX were
    // clobbered by the call sequence (RAX = control input 0, RCX = 0x11).
    const v1 = await regs(vp0, 1, [
      R.HV_REGISTER_NAME_X64_RIP,
      R.HV_REGISTER_NAME_X64_RSP,
      R.HV_REGISTER_NAME_X64_CR3,
      R.HV_REGISTER_NAME_X64_RBX,
      R.HV_REGISTER_NAME_X64_RAX,
      R.HV_REGISTER_NAME_X64_RCX,
    ]);
    expect(v1.get(R.HV_REGISTER_NAME_X64_RIP)).toBe(0x20_0000n);
    expect(v1.get(R.HV_REGISTER_NAME_X64_RSP)).toBe(0x21_0000n);
    expect(v1.get(R.HV_REGISTER_NAME_X64_CR3)).toBe(0x30_0000n);
    expect(v1.get(R.HV_REGISTER_NAME_X64_RBX)).toBe(0xb0b0n);
    expect(v1.get(R.HV_REGISTER_NAME_X64_RAX)).toBe(0n);
    expect(v1.get(R.HV_REGISTER_NAME_X64_RCX)).toBe(0x11n);

    // VTL1 enables its own hypercall page (per-VTL MSR) and returns (fast).
    await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_GUEST_OS_ID, value: 0x8100_0000_0000_0002n });
    await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_HYPERCALL, value: 0x8000n | 1n });
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_X64_RBX, 0x1234n)] });
    const ret = await h.client.guest.callHypercallPage({ name: vp0, offset: retOff, rcx: 1n });
    expect(ret.outcome?.vtlSwitch).toMatchObject({ fromVtl: 1, toVtl: 0 });

    // VTL0's private state is untouched (RIP back at its caller after the stub's RET); shared RBX
    // carries VTL1's result; VTL0's guest OS id was not changed by VTL1's write.
    const after0 = await h.client.vps.getVpRegisters({ name: vp0, vtl: 0 });
    const shared = new Set<number>([
      R.HV_REGISTER_NAME_X64_RAX,
      R.HV_REGISTER_NAME_X64_RCX,
      R.HV_REGISTER_NAME_X64_RBX,
      R.HV_REGISTER_NAME_X64_RDX,
      R.HV_REGISTER_NAME_X64_R8,
      R.HV_REGISTER_NAME_TIME_REF_COUNT,
    ]);
    const priv = (x: pb.GetVpRegistersResponse) => x.registers.filter((a) => !shared.has(a.name));
    expect(priv(after0)).toEqual(priv(before0));
    const s0 = await regs(vp0, 0, [R.HV_REGISTER_NAME_X64_RBX, R.HV_REGISTER_NAME_GUEST_OS_ID]);
    expect(s0.get(R.HV_REGISTER_NAME_X64_RBX)).toBe(0x1234n);
    expect(s0.get(R.HV_REGISTER_NAME_GUEST_OS_ID)).toBe(0x8100_0000_0000_0001n);
  });

  test('normal VtlReturn restores RAX/RCX from HV_VP_VTL_CONTROL; fast return does not', async () => {
    const { p, vp0 } = await setup('vtl-raxrcx');
    await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_X64_RAX, 0xa0n)] });
    await h.client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n });
    // VTL1: enable its VP assist page at 0x9000, hypercall page at 0x8000.
    await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_VP_ASSIST_PAGE, value: 0x9000n | 1n });
    await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_GUEST_OS_ID, value: 1n });
    await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_HYPERCALL, value: 0x8001n });
    // VTL1 stores the values VTL0 shall see in VtlReturnX64Rax/Rcx (assist page +16/+24).
    const ctl = Buffer.alloc(16);
    ctl.writeBigUInt64LE(0x1111n, 0);
    ctl.writeBigUInt64LE(0x2222n, 8);
    await h.client.guest.writeMemory({ name: vp0, gpa: 0x9000n + 16n, data: ctl });
    await h.client.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 0n });
    let s = await regs(vp0, 0, [R.HV_REGISTER_NAME_X64_RAX, R.HV_REGISTER_NAME_X64_RCX]);
    expect([s.get(R.HV_REGISTER_NAME_X64_RAX), s.get(R.HV_REGISTER_NAME_X64_RCX)]).toEqual([0x1111n, 0x2222n]);
    // Again, with a fast return: RAX/RCX keep what the stub left (RAX = control 1, RCX = 0x12).
    await h.client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n });
    // This entry wrote EntryReason (+8) = HvVtlEntryVtlCall into VTL1's VP assist page; the page is
    // VTL1's overlay: RAM underneath is untouched and VTL0 does not see it.
    const seen = await h.client.memory.readGpa({ name: p.name, gpa: 0x9008n, length: 4, vtlView: 1 });
    expect(Buffer.from(seen.data).readUInt32LE(0)).toBe(1);
    const ram = await h.client.memory.readGpa({ name: p.name, gpa: 0x9000n, length: 32 });
    expect(Buffer.from(ram.data).equals(Buffer.alloc(32))).toBe(true);
    const vtl0view = await h.client.memory.readGpa({ name: p.name, gpa: 0x9000n, length: 32, vtlView: 0 });
    expect(Buffer.from(vtl0view.data).equals(Buffer.alloc(32))).toBe(true);
    await h.client.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 1n });
    s = await regs(vp0, 0, [R.HV_REGISTER_NAME_X64_RAX, R.HV_REGISTER_NAME_X64_RCX]);
    expect([s.get(R.HV_REGISTER_NAME_X64_RAX), s.get(R.HV_REGISTER_NAME_X64_RCX)]).toEqual([1n, 0x12n]);
  });

  test('forbidden calls raise #UD and switch nothing', async () => {
    const { p, vp0 } = await setup('vtl-ud');
    // VtlCall with no higher VTL enabled on the VP.
    let o = await h.client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n });
    expect(o.outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_UD);
    // VtlReturn from VTL0 (the lowest VTL).
    o = await h.client.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 0n });
    expect(o.outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_UD);
    await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
    // VtlCall with a non-zero control input.
    o = await h.client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 5n });
    expect(o.outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_UD);
    // VtlCall from CPL3.
    await h.client.vps.setVpRegisters({
      name: vp0,
      vtl: 0,
      registers: [
        { name: R.HV_REGISTER_NAME_X64_CS, value: { value: { $case: 'segment', value: { base: 0n, limit: 0xffffffff, selector: 0x2b, attributes: 0xa0fb } } } },
      ],
    });
    o = await h.client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n });
    expect(o.outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_UD);
    // An offset with no entry executes INT3.
    o = await h.client.guest.callHypercallPage({ name: vp0, offset: 0x800 });
    expect(o.outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_BP);
    expect((await h.client.vps.getVirtualProcessor({ name: vp0 })).vtlStatus?.activeVtl).toBe(0);
  });

  test('guest enablement rules give the TLFS status (HvCallEnablePartitionVtl / HvCallEnableVpVtl)', async () => {
    const { vp0 } = await setup('vtl-rules');
    const ENABLE_PARTITION_VTL = 0x000dn;
    const ENABLE_VP_VTL = 0x000fn;
    const partIn = (vtl: number, flags = 0, partitionId = 0xffff_ffff_ffff_ffffn) => {
      const b = Buffer.alloc(16);
      b.writeBigUInt64LE(partitionId, 0);
      b[8] = vtl;
      b[9] = flags;
      return b;
    };
    const call = (control: bigint, input: Buffer) => h.client.guest.hypercall({ name: vp0, control, inputGpa: 0x10000n, outputGpa: 0x11000n, input });
    expect((await call(ENABLE_PARTITION_VTL, partIn(1, 0, 5n))).status).toBe(pb.HvStatus.HV_STATUS_INVALID_PARTITION_ID);
    expect((await call(ENABLE_PARTITION_VTL, partIn(1, 0x80))).status).toBe(pb.HvStatus.HV_STATUS_INVALID_PARAMETER);
    expect((await call(ENABLE_PARTITION_VTL, partIn(3))).status).toBe(pb.HvStatus.HV_STATUS_ACCESS_DENIED);
    expect((await call(ENABLE_PARTITION_VTL, partIn(1))).status).toBe(pb.HvStatus.HV_STATUS_SUCCESS);
    expect((await call(ENABLE_PARTITION_VTL, partIn(1))).status).toBe(pb.HvStatus.HV_STATUS_INVALID_VTL_STATE);
    // Now VTL1 is the highest enabled below VTL2, so VTL0 may not enable VTL2.
    expect((await call(ENABLE_PARTITION_VTL, partIn(2))).status).toBe(pb.HvStatus.HV_STATUS_ACCESS_DENIED);
    const vpIn = (vp: number, vtl: number) => {
      const b = Buffer.alloc(240);
      b.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
      b.writeUInt32LE(vp, 8);
      b[12] = vtl;
      b.writeBigUInt64LE(0x80050033n, 16 + 192); // Cr0 with PE and PG
      b.writeBigUInt64LE(0xd01n, 16 + 184); // Efer: SCE | LME | LMA | NXE
      b.writeUInt16LE(0x08, 16 + 24 + 12); // Cs.Selector
      b.writeUInt16LE(0xa09b, 16 + 24 + 14); // Cs.Attributes: present, long, code
      return b;
    };
    expect((await call(ENABLE_VP_VTL, vpIn(7, 1))).status).toBe(pb.HvStatus.HV_STATUS_INVALID_VP_INDEX);
    expect((await call(ENABLE_VP_VTL, vpIn(0, 2))).status).toBe(pb.HvStatus.HV_STATUS_INVALID_VTL_STATE);
    const ctxNoPe = vpIn(0, 1);
    ctxNoPe.writeBigUInt64LE(0n, 16 + 192);
    expect((await call(ENABLE_VP_VTL, ctxNoPe)).status).toBe(pb.HvStatus.HV_STATUS_INVALID_REGISTER_VALUE);
    expect((await call(ENABLE_VP_VTL, vpIn(0, 1))).status).toBe(pb.HvStatus.HV_STATUS_SUCCESS);
    // VTL0 asking again for a VP where VTL1 runs: ACCESS_DENIED before VTL_ALREADY_ENABLED, so a lower
    // VTL cannot probe which VPs have VTL1 (issue #16; OpenHCL checks the caller first).
    expect((await call(ENABLE_VP_VTL, vpIn(0, 1))).status).toBe(pb.HvStatus.HV_STATUS_ACCESS_DENIED);
    // VTL1 now exists on VP0, so VTL0 may no longer enable it elsewhere: VTL1 does that itself.
    expect((await call(ENABLE_VP_VTL, vpIn(1, 1))).status).toBe(pb.HvStatus.HV_STATUS_ACCESS_DENIED);
    // VTL1 itself enables VP1 (VtlCall in first).
    await h.client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n });
    expect((await call(ENABLE_VP_VTL, vpIn(1, 1))).status).toBe(pb.HvStatus.HV_STATUS_SUCCESS);
    // An equal VTL may ask: VTL1 for VP0, where it runs, learns VTL_ALREADY_ENABLED (0x86).
    expect((await call(ENABLE_VP_VTL, vpIn(0, 1))).status).toBe(pb.HvStatus.HV_STATUS_VTL_ALREADY_ENABLED);
  });

  test('VSM registers through HvCallGetVpRegisters and the management API', async () => {
    const { p, vp0 } = await setup('vtl-regs');
    await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
    const s = await regs(vp0, 0, [R.HV_REGISTER_NAME_VSM_PARTITION_STATUS, R.HV_REGISTER_NAME_VSM_VP_STATUS]);
    expect(s.get(R.HV_REGISTER_NAME_VSM_PARTITION_STATUS)).toBe(0b11n | (2n << 16n));
    expect(s.get(R.HV_REGISTER_NAME_VSM_VP_STATUS)).toBe(0n | (0b11n << 16n));
    // HvCallGetVpRegisters from the guest (rep call, 1 element): VsmVpStatus of self.
    const input = Buffer.alloc(24);
    input.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
    input.writeUInt32LE(0xfffffffe, 8);
    input.writeUInt32LE(0x000d0003, 16);
    const r = await h.client.guest.hypercall({ name: vp0, control: 0x50n | (1n << 32n), inputGpa: 0x10000n, outputGpa: 0x11000n, input, outputSize: 16 });
    expect(r.status).toBe(pb.HvStatus.HV_STATUS_SUCCESS);
    expect(r.repsCompleted).toBe(1);
    expect(Buffer.from(r.output).readBigUInt64LE(0)).toBe(0b11n << 16n);
    // VTL0 asking for VTL1's registers: ACCESS_DENIED.
    input[12] = 0x11;
    const d = await h.client.guest.hypercall({ name: vp0, control: 0x50n | (1n << 32n), inputGpa: 0x10000n, outputGpa: 0x11000n, input, outputSize: 16 });
    expect(d.status).toBe(pb.HvStatus.HV_STATUS_ACCESS_DENIED);
    // EnableVtlProtection is write-once.
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 0x1n | (0xfn << 1n))] });
    const e = await failure(h.client.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 0xfn << 1n)] }));
    expect([e.code, e.reason]).toEqual([status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_REGISTER_VALUE']);
    const ro = await failure(h.client.vps.setVpRegisters({ name: vp0, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_VSM_VP_STATUS, 0n)] }));
    expect([ro.code, ro.reason]).toEqual([status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER']);
  });

  test('WatchVtlTransitions streams every switch in order', async () => {
    const { p, vp0 } = await setup('vtl-watch');
    await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
    const ac = new AbortController();
    const got: pb.VtlTransition[] = [];
    let registered!: () => void;
    const subscribed = new Promise<void>((r) => (registered = r));
    const reader = (async () => {
      for await (const ev of h.client.vtl.watchTransitions({ name: p.name }, ac.signal)) {
        if (ev.event?.$case === 'subscribed') registered();
        if (ev.event?.$case === 'transition') got.push(ev.event.value);
        if (got.length === 6) ac.abort();
      }
    })();
    await subscribed; // the stream's first event: every transition from here on is delivered
    for (let i = 0; i < 3; i++) {
      await h.client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n });
      if (i === 0) {
        await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_GUEST_OS_ID, value: 1n });
        await h.client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_HYPERCALL, value: 0x8001n });
      }
      await h.client.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 1n });
    }
    await reader;
    expect(got.map((t) => [t.fromVtl, t.toVtl, t.isReturn])).toEqual([
      [0, 1, false],
      [1, 0, true],
      [0, 1, false],
      [1, 0, true],
      [0, 1, false],
      [1, 0, true],
    ]);
    for (let i = 1; i < got.length; i++) expect(got[i]!.sequence).toBe(got[i - 1]!.sequence + 1n);
    const e = await failure(
      (async () => {
        for await (const _ of h.client.vtl.watchTransitions({ name: 'partitions/none' })) break;
      })(),
    );
    expect([e.code, e.reason]).toEqual([status.NOT_FOUND, 'HV_STATUS_INVALID_PARTITION_ID']);
  });
});
