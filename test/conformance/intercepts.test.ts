// Conformance: VTL protections and memory intercepts (tlfs-vsm.md §7-8, tlfs-intercepts.md §6.7),
// delivery to the protecting VTL's SIMP and to external monitors (seeds 000, 001). Public API only.
import { status } from '@grpc/grpc-js';
import { type MonitorSession, pb } from '@vsm/client';
import { GiB, type Harness, failure, startHarness } from '../support/server';
import { HvMsr } from '@vsm/core';

const MSR = {
  GUEST_OS_ID: HvMsr.HV_X64_MSR_GUEST_OS_ID,
  HYPERCALL: HvMsr.HV_X64_MSR_HYPERCALL,
  SCONTROL: HvMsr.HV_X64_MSR_SCONTROL,
  SIMP: HvMsr.HV_X64_MSR_SIMP,
  EOM: HvMsr.HV_X64_MSR_EOM,
  SINT0: HvMsr.HV_X64_MSR_SINT0,
};
const R = pb.HvRegisterName;
const PROTECTED = 0x40000n; // page 0x40
const SIMP_GPA = 0x9000n;
const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h.stop();
});

/** VTL1 enabled on VP0 (and VP1), with EnableVtlProtection, hypercall pages in both VTLs and VTL1's SynIC set up. */
async function setup(id: string, vpCount = 1) {
  const p = await h.client.partitions.createPartition({ partitionId: id, partition: { vpCount, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
  const vps = Array.from({ length: vpCount }, (_, i) => `${p.name}/vps/${i}`);
  await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
  for (const vp of vps) {
    await h.client.vtl.enableVpVtl({ name: vp, targetVtl: 1 });
    await h.client.guest.writeMsr({ name: vp, msr: MSR.GUEST_OS_ID, value: 1n });
    await h.client.guest.writeMsr({ name: vp, msr: MSR.HYPERCALL, value: 0x1000n | 1n });
    await h.client.guest.callHypercallPage({ name: vp, offset: 0x0f, rcx: 0n }); // VTL1 from here
    await h.client.guest.writeMsr({ name: vp, msr: MSR.GUEST_OS_ID, value: 2n });
    await h.client.guest.writeMsr({ name: vp, msr: MSR.HYPERCALL, value: 0x2000n | 1n });
    await h.client.guest.writeMsr({ name: vp, msr: MSR.SIMP, value: SIMP_GPA | 1n });
    await h.client.guest.writeMsr({ name: vp, msr: MSR.SCONTROL, value: 1n });
    await h.client.guest.writeMsr({ name: vp, msr: MSR.SINT0, value: 0x30n });
  }
  // VTL1: EnableVtlProtection with default mask RWX.
  await h.client.vps.setVpRegisters({ name: vps[0]!, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] });
  await h.client.memory.writeGpa({ name: p.name, gpa: PROTECTED, data: Buffer.from('original') });
  return { name: p.name, vps, vp0: vps[0]! };
}

/** VTL1 (active) protects PROTECTED with `flags` through HvCallModifyVtlProtectionMask, then returns to VTL0. */
async function protectFromVtl1(vp: string, flags: number) {
  const input = Buffer.alloc(24);
  input.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
  input.writeUInt32LE(flags, 8);
  input.writeBigUInt64LE(PROTECTED >> 12n, 16);
  const r = await h.client.guest.hypercall({ name: vp, control: 0x0cn | (1n << 32n), inputGpa: 0x20000n, input });
  expect(r.status).toBe(pb.HvStatus.HV_STATUS_SUCCESS);
  expect(r.repsCompleted).toBe(1);
}
const vtlReturn = (vp: string, fast = true) => h.client.guest.callHypercallPage({ name: vp, offset: 0x26, rcx: fast ? 1n : 0n });
const simSlot = async (name: string) => Buffer.from((await h.client.memory.readGpa({ name, gpa: SIMP_GPA, length: 256, vtlView: 1 })).data);

describe('memory intercepts to the protecting VTL', () => {
  test.each([
    ['read', pb.HvInterceptAccessType.HV_INTERCEPT_ACCESS_TYPE_READ, 0x0], // no access (read-less masks are illegal)
    ['write', pb.HvInterceptAccessType.HV_INTERCEPT_ACCESS_TYPE_WRITE, 0x1 | 0x4],
    ['execute', pb.HvInterceptAccessType.HV_INTERCEPT_ACCESS_TYPE_EXECUTE, 0x1 | 0x2],
  ])('%s violation: HV_X64_MEMORY_INTERCEPT_MESSAGE in VTL1 SINT0, entry, then retry after VTL1 relents', async (kind, accessType, flags) => {
    const { name, vp0 } = await setup(`ic-${kind}`);
    await protectFromVtl1(vp0, flags);
    await vtlReturn(vp0);
    await h.client.vps.setVpRegisters({
      name: vp0,
      vtl: 0,
      registers: [r64(R.HV_REGISTER_NAME_X64_RIP, 0x40_1234n), r64(R.HV_REGISTER_NAME_X64_RBX, 0xbbbbn)],
    });
    const act = () =>
      kind === 'read'
        ? h.client.guest.readMemory({ name: vp0, gpa: PROTECTED + 8n, length: 8 })
        : kind === 'write'
          ? h.client.guest.writeMemory({ name: vp0, gpa: PROTECTED + 8n, data: Buffer.from('12345678') })
          : h.client.guest.executeMemory({ name: vp0, gpa: PROTECTED + 8n, length: 4 });
    const o = (await act()).outcome!;
    expect(o.intercept).toMatchObject({ protectingVtl: 1, gpa: PROTECTED + 8n, accessType, heldBack: false });
    expect(o.vtlSwitch).toEqual({ fromVtl: 0, toVtl: 1, entryReason: pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_INTERRUPT });
    expect(o.activeVtl).toBe(1);
    // The SIM slot of SINT0 holds the message, byte for byte as the notice reports it.
    const slot = await simSlot(name);
    expect(slot.equals(Buffer.from(o.intercept!.hvMessage))).toBe(true);
    expect(slot.readUInt32LE(0)).toBe(0x80000001); // HvMessageTypeGpaIntercept
    expect(slot[4]).toBe(240); // PayloadSize: the long form
    expect(slot.readUInt32LE(16 + 0)).toBe(0); // VpIndex
    expect(slot[16 + 5]).toBe(accessType); // InterceptAccessType
    expect((slot.readUInt16LE(16 + 6) >> 7) & 0xf).toBe(0); // ExecutionState.Vtl = faulting VTL0
    expect(slot.readUInt16LE(16 + 6) & 3).toBe(0); // Cpl
    expect(slot.readBigUInt64LE(16 + 24)).toBe(0x40_1234n); // Rip of the faulting instruction
    expect(slot.readUInt32LE(16 + 40)).toBe(6); // CacheType WB
    expect(slot.readBigUInt64LE(16 + 56)).toBe(PROTECTED + 8n); // GuestPhysicalAddress
    expect(slot.readBigUInt64LE(16 + 112 + 3 * 8)).toBe(0xbbbbn); // Rbx
    expect((await h.client.vps.getVirtualProcessor({ name: vp0 })).vtlStatus?.lastEntryReason).toBe(pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_INTERRUPT);
    // VTL1 consumes the message, lifts the protection and returns: the access is retried and completes.
    await h.client.guest.writeMemory({ name: vp0, gpa: SIMP_GPA, data: Buffer.alloc(4) });
    await protectFromVtl1(vp0, 0xf);
    const ret = await vtlReturn(vp0);
    expect(ret.outcome?.resumedAccess).toMatchObject({ completed: true, skipped: false, interceptedAgain: false });
    if (kind === 'read') expect(Buffer.from(ret.outcome!.resumedAccess!.data).toString()).toBe('\0'.repeat(8));
    if (kind === 'write') expect(Buffer.from((await h.client.memory.readGpa({ name, gpa: PROTECTED + 8n, length: 8 })).data).toString()).toBe('12345678');
    expect((await h.client.vps.getVirtualProcessor({ name: vp0 })).vtlStatus?.activeVtl).toBe(0);
  });

  test('EOM redelivers the second of two pending intercepts; MessagePending is set meanwhile', async () => {
    const { name, vp0 } = await setup('ic-eom');
    await protectFromVtl1(vp0, 0x1);
    await vtlReturn(vp0);
    const first = (await h.client.guest.writeMemory({ name: vp0, gpa: PROTECTED, data: Buffer.from([1]) })).outcome!;
    expect(first.intercept).toBeDefined();
    // VTL1 returns without handling (slot still full): VTL0 retries and intercepts again.
    const ret = await vtlReturn(vp0);
    expect(ret.outcome?.resumedAccess?.interceptedAgain).toBe(true);
    const second = ret.outcome!.intercept!;
    expect(second.interceptId).toBeGreaterThan(first.intercept!.interceptId);
    let slot = await simSlot(name);
    expect(slot.equals(Buffer.from(first.intercept!.hvMessage).fill(0, 0, 0))).toBe(false); // flags changed:
    expect(slot[5]! & 1).toBe(1); // MessagePending
    expect(slot.subarray(16).equals(Buffer.from(first.intercept!.hvMessage).subarray(16))).toBe(true);
    // VTL1 clears the slot and writes EOM: the queued message arrives.
    await h.client.guest.writeMemory({ name: vp0, gpa: SIMP_GPA, data: Buffer.alloc(4) });
    await h.client.guest.writeMsr({ name: vp0, msr: MSR.EOM, value: 0n });
    slot = await simSlot(name);
    expect(slot.equals(Buffer.from(second.hvMessage))).toBe(true);
    expect(slot[5]! & 1).toBe(0);
  });

  test('VTL1 skips the instruction by advancing VTL0 RIP: the access is not retried', async () => {
    const { name, vp0 } = await setup('ic-skip');
    await protectFromVtl1(vp0, 0x1);
    await vtlReturn(vp0);
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_X64_RIP, 0x5000n)] });
    await h.client.guest.writeMemory({ name: vp0, gpa: PROTECTED, data: Buffer.from('evil') });
    // VTL1 uses HvCallSetVpRegisters(TargetVtl = 0) to move VTL0 past the instruction.
    const input = Buffer.alloc(16 + 32);
    input.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
    input.writeUInt32LE(0xfffffffe, 8);
    input[12] = 0x10; // UseTargetVtl, TargetVtl 0
    input.writeUInt32LE(0x00020010, 16); // HvX64RegisterRip
    input.writeBigUInt64LE(0x5003n, 32);
    const set = await h.client.guest.hypercall({ name: vp0, control: 0x51n | (1n << 32n), inputGpa: 0x20000n, input });
    expect(set.status).toBe(pb.HvStatus.HV_STATUS_SUCCESS);
    const ret = await vtlReturn(vp0);
    expect(ret.outcome?.resumedAccess).toMatchObject({ skipped: true, completed: false });
    expect(Buffer.from((await h.client.memory.readGpa({ name, gpa: PROTECTED, length: 8 })).data).toString()).toBe('original');
  });

  test('protection rules: only higher VTLs, only after EnableVtlProtection, legal flags, RAM only', async () => {
    const p = await h.client.partitions.createPartition({
      partitionId: 'ic-rules',
      partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition,
    });
    const vp0 = `${p.name}/vps/0`;
    const modify = (flags: number, page: bigint, targetVtl = 0) => {
      const input = Buffer.alloc(24);
      input.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
      input.writeUInt32LE(flags, 8);
      input[12] = targetVtl;
      input.writeBigUInt64LE(page, 16);
      return h.client.guest.hypercall({ name: vp0, control: 0x0cn | (1n << 32n), inputGpa: 0x20000n, input });
    };
    expect((await modify(0x1, 0x40n)).status).toBe(pb.HvStatus.HV_STATUS_INVALID_PARAMETER); // VTL0 protects nothing
    expect((await modify(0x1, 0x40n, 0x11)).status).toBe(pb.HvStatus.HV_STATUS_ACCESS_DENIED); // VTL1 above the caller
    await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
    await h.client.guest.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 1n });
    await h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x1001n });
    await h.client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n });
    expect((await modify(0x1, 0x40n)).status).toBe(pb.HvStatus.HV_STATUS_ACCESS_DENIED); // before EnableVtlProtection
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] });
    expect((await modify(0x2, 0x40n)).status).toBe(pb.HvStatus.HV_STATUS_INVALID_REGISTER_VALUE); // write-only
    expect((await modify(0x4, 0x40n)).status).toBe(pb.HvStatus.HV_STATUS_INVALID_REGISTER_VALUE); // execute-only
    const nonRam = await modify(0x1, GiB >> 12n);
    expect([nonRam.status, nonRam.repsCompleted]).toEqual([pb.HvStatus.HV_STATUS_INVALID_PARAMETER, 0]);
    expect((await modify(0x1, 0x40n)).status).toBe(pb.HvStatus.HV_STATUS_SUCCESS);
    // Management view: one range, read-only.
    const prot = await h.client.intercepts.getVtlProtections({ name: p.name, protectingVtl: 1 });
    expect(prot.protectionEnabled).toBe(true);
    expect(prot.ranges).toEqual([{ pages: { startPage: 0x40n, pageCount: 1n }, mapFlags: 0x1 }]);
  });

  test('ranges scale: 1,048,576 contiguous pages are one range', async () => {
    const p = await h.client.partitions.createPartition({
      partitionId: 'ic-scale',
      partition: { vpCount: 1, memoryBytes: 8n * GiB, maximumVtl: 1 } as pb.Partition,
    });
    await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    await h.client.vtl.enableVpVtl({ name: `${p.name}/vps/0`, targetVtl: 1 });
    await h.client.vps.setVpRegisters({ name: `${p.name}/vps/0`, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] });
    const before = (await h.client.intercepts.getVtlProtections({ name: p.name, protectingVtl: 1 })).viewGeneration;
    const r = await h.client.intercepts.modifyVtlProtectionMask({
      name: p.name,
      protectingVtl: 1,
      mapFlags: 0x1,
      ranges: [{ startPage: 0x100n, pageCount: 1_048_576n }],
    });
    expect(r.pagesChanged).toBe(1_048_576n);
    expect(r.viewGeneration).toBeGreaterThan(before);
    const prot = await h.client.intercepts.getVtlProtections({ name: p.name, protectingVtl: 1 });
    expect(prot.ranges).toHaveLength(1);
    // A write in the middle intercepts; just outside does not.
    expect((await h.client.guest.writeMemory({ name: `${p.name}/vps/0`, gpa: (0x100n + 500_000n) << 12n, data: Buffer.from([1]) })).outcome?.exception).toBe(0);
  });
});

describe('external monitors', () => {
  async function monitored(id: string, vpCount = 1) {
    const s = await setup(id, vpCount);
    for (const vp of s.vps) {
      await protectFromVtl1(vp, 0x1);
      await vtlReturn(vp);
    }
    await h.client.intercepts.setInterceptRoute({ name: s.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
    return s;
  }
  async function open(name: string, accessMask = 0): Promise<{ m: MonitorSession; next: () => Promise<pb.MonitorResponse> }> {
    const m = h.client.intercepts.monitor();
    const it = m.events[Symbol.asyncIterator]();
    m.send({ kind: { $case: 'subscribe', value: { name, accessMask } as pb.MonitorSubscribe } });
    const next = async () => {
      const r = await it.next();
      if (r.done) throw new Error('monitor stream ended');
      return r.value;
    };
    expect((await next()).kind?.$case).toBe('subscription');
    return { m, next };
  }
  const intercept = (r: pb.MonitorResponse) => {
    if (r.kind?.$case !== 'intercept') throw new Error(`expected an intercept, got ${r.kind?.$case}`);
    return r.kind.value;
  };
  const replyResult = (r: pb.MonitorResponse) => {
    if (r.kind?.$case !== 'replyResult') throw new Error(`expected a reply result, got ${r.kind?.$case}`);
    return r.kind.value;
  };

  test('ALLOW performs the access once; a duplicate answer is ignored', async () => {
    const { name, vp0 } = await monitored('mon-allow');
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_X64_RIP, 0x40_5678n)] });
    const { m, next } = await open(name);
    const pending = h.client.guest.writeMemory({ name: vp0, gpa: PROTECTED, data: Buffer.from('allowed!') });
    const ev = intercept(await next());
    expect(ev).toMatchObject({ vpIndex: 0, vtl: 0, protectingVtl: 1, gpa: PROTECTED, needsReply: true, redelivered: false, messageType: 0x80000001 });
    expect(Buffer.from(ev.writeData).toString()).toBe('allowed!');
    // rip: the faulting VP's RIP in VTL0, as HV_X64_INTERCEPT_MESSAGE_HEADER.Rip holds it.
    expect(ev.rip).toBe(0x40_5678n);
    expect(Buffer.from(ev.hvMessage).readBigUInt64LE(16 + 24)).toBe(0x40_5678n);
    expect((await h.client.vps.getVirtualProcessor({ name: vp0 })).vtlStatus).toMatchObject({ interceptSuspended: true, suspendedInterceptId: ev.interceptId });
    m.send({ kind: { $case: 'reply', value: { interceptId: ev.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } } });
    expect(replyResult(await next()).status).toBe(pb.ReplyStatus.REPLY_STATUS_APPLIED);
    expect((await pending).outcome?.exception).toBe(0);
    expect(Buffer.from((await h.client.memory.readGpa({ name, gpa: PROTECTED, length: 8 })).data).toString()).toBe('allowed!');
    m.send({ kind: { $case: 'reply', value: { interceptId: ev.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } } });
    expect(replyResult(await next()).status).toBe(pb.ReplyStatus.REPLY_STATUS_DUPLICATE);
    // The protection still holds for the next write.
    const again = h.client.guest.writeMemory({ name: vp0, gpa: PROTECTED, data: Buffer.from('x') });
    const ev2 = intercept(await next());
    expect(ev2.interceptId).toBeGreaterThan(ev.interceptId);
    m.send({ kind: { $case: 'reply', value: { interceptId: ev2.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_SKIP, data: Buffer.alloc(0) } } });
    expect(replyResult(await next()).status).toBe(pb.ReplyStatus.REPLY_STATUS_APPLIED);
    await again;
    expect(Buffer.from((await h.client.memory.readGpa({ name, gpa: PROTECTED, length: 8 })).data).toString()).toBe('allowed!');
    m.cancel();
  });

  test('SKIP completes a read with the monitor data; RETRY with a stale generation is refused, with the current one applies', async () => {
    const { name, vp0 } = await monitored('mon-skip');
    await h.client.intercepts.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: 0x0, ranges: [{ startPage: PROTECTED >> 12n, pageCount: 1n }] });
    const { m, next } = await open(name);
    const read = h.client.guest.readMemory({ name: vp0, gpa: PROTECTED, length: 4 });
    const ev = intercept(await next());
    m.send({ kind: { $case: 'reply', value: { interceptId: ev.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_SKIP, data: Buffer.from('fake') } } });
    expect(replyResult(await next()).status).toBe(pb.ReplyStatus.REPLY_STATUS_APPLIED);
    expect(Buffer.from((await read).data).toString()).toBe('fake');
    // RETRY after lifting the protection; the answer must carry the generation after that change.
    const read2 = h.client.guest.readMemory({ name: vp0, gpa: PROTECTED, length: 8 });
    const ev2 = intercept(await next());
    const lifted = await h.client.intercepts.modifyVtlProtectionMask({
      name,
      protectingVtl: 1,
      mapFlags: 0xf,
      ranges: [{ startPage: PROTECTED >> 12n, pageCount: 1n }],
    });
    m.send({
      kind: {
        $case: 'reply',
        value: { interceptId: ev2.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_RETRY, data: Buffer.alloc(0), viewGeneration: ev2.viewGeneration },
      },
    });
    expect(replyResult(await next()).status).toBe(pb.ReplyStatus.REPLY_STATUS_STALE_GENERATION);
    m.send({
      kind: {
        $case: 'reply',
        value: {
          interceptId: ev2.interceptId,
          action: pb.InterceptAction.INTERCEPT_ACTION_RETRY,
          data: Buffer.alloc(0),
          viewGeneration: lifted.viewGeneration,
        },
      },
    });
    expect(replyResult(await next()).status).toBe(pb.ReplyStatus.REPLY_STATUS_APPLIED);
    expect(Buffer.from((await read2).data).toString()).toBe('original');
    m.cancel();
  });

  test('CRASH stops the partition', async () => {
    const { name, vp0 } = await monitored('mon-crash');
    const { m, next } = await open(name);
    const w = h.client.guest.writeMemory({ name: vp0, gpa: PROTECTED, data: Buffer.from('x') });
    const ev = intercept(await next());
    m.send({ kind: { $case: 'reply', value: { interceptId: ev.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_CRASH, data: Buffer.alloc(0) } } });
    expect(replyResult(await next()).status).toBe(pb.ReplyStatus.REPLY_STATUS_APPLIED);
    expect((await w).outcome?.partitionCrashed).toBe(true);
    expect((await h.client.partitions.getPartition({ name })).state).toBe(pb.PartitionState.PARTITION_STATE_CRASHED);
    const e = await failure(h.client.guest.readMsr({ name: vp0, msr: MSR.GUEST_OS_ID }));
    expect([e.code, e.reason]).toEqual([status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_PARTITION_STATE']);
    m.cancel();
  });

  test('a monitor that disconnects loses nothing: pending intercepts go to the next one, once', async () => {
    const { name, vps } = await monitored('mon-reconnect', 2);
    const first = await open(name);
    const writes = vps.map((vp, i) => h.client.guest.writeMemory({ name: vp, gpa: PROTECTED + BigInt(i), data: Buffer.from([0x41 + i]) }));
    const seen = [intercept(await first.next()), intercept(await first.next())];
    expect(new Set(seen.map((e) => e.vpIndex))).toEqual(new Set([0, 1]));
    first.m.cancel(); // goes away without answering
    expect((await h.client.intercepts.listPendingIntercepts({ name })).intercepts).toHaveLength(2);
    const second = await open(name);
    const again = [intercept(await second.next()), intercept(await second.next())];
    expect(again.map((e) => e.interceptId).sort()).toEqual(seen.map((e) => e.interceptId).sort());
    expect(again.every((e) => e.redelivered)).toBe(true);
    for (const e of again) {
      second.m.send({
        kind: { $case: 'reply', value: { interceptId: e.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } },
      });
      expect(replyResult(await second.next()).status).toBe(pb.ReplyStatus.REPLY_STATUS_APPLIED);
    }
    await Promise.all(writes);
    expect([...(await h.client.memory.readGpa({ name, gpa: PROTECTED, length: 2 })).data]).toEqual([0x41, 0x42]);
    expect((await h.client.intercepts.listPendingIntercepts({ name })).intercepts).toHaveLength(0);
    second.m.cancel();
  });

  test('subscriptions: set, enable and disable event kinds, each answered with the mask now enabled', async () => {
    const { name, vp0 } = await monitored('mon-mask');
    const { m, next } = await open(name, 0x1); // reads only
    const sub = async (op: pb.EventMaskOp, accessMask: number) => {
      m.send({ kind: { $case: 'updateEvents', value: { op, accessMask } } });
      const r = await next();
      if (r.kind?.$case !== 'subscription') throw new Error('expected subscription');
      return r.kind.value.accessMask;
    };
    expect(await sub(pb.EventMaskOp.EVENT_MASK_OP_ENABLE, 0x2)).toBe(0x3);
    expect(await sub(pb.EventMaskOp.EVENT_MASK_OP_DISABLE, 0x1)).toBe(0x2);
    expect(await sub(pb.EventMaskOp.EVENT_MASK_OP_SET, 0x4)).toBe(0x4);
    // A write is not delivered to this monitor now (mask = execute only): still pending for others.
    const w = h.client.guest.writeMemory({ name: vp0, gpa: PROTECTED, data: Buffer.from('x') }, { deadlineMs: 30_000 });
    expect(await sub(pb.EventMaskOp.EVENT_MASK_OP_ENABLE, 0x2)).toBe(0x6);
    // Enabling writes does not replay the earlier one on this stream; a fresh monitor gets it.
    const other = await open(name);
    const ev = intercept(await other.next());
    other.m.send({ kind: { $case: 'reply', value: { interceptId: ev.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_SKIP, data: Buffer.alloc(0) } } });
    expect(replyResult(await other.next()).status).toBe(pb.ReplyStatus.REPLY_STATUS_APPLIED);
    await w;
    m.cancel();
    other.m.cancel();
  });

  test('bad monitor input', async () => {
    const { name } = await monitored('mon-bad');
    const m = h.client.intercepts.monitor();
    m.send({ kind: { $case: 'reply', value: { interceptId: 1n, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } } });
    let e = await failure(
      (async () => {
        for await (const _ of m.events) {
          /* drain */
        }
      })(),
    );
    expect([e.code, e.reason]).toEqual([status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER']);
    const m2 = h.client.intercepts.monitor();
    m2.send({ kind: { $case: 'subscribe', value: { name: 'partitions/nope', accessMask: 0 } as pb.MonitorSubscribe } });
    e = await failure(
      (async () => {
        for await (const _ of m2.events) {
          /* drain */
        }
      })(),
    );
    expect([e.code, e.reason]).toEqual([status.NOT_FOUND, 'HV_STATUS_INVALID_PARTITION_ID']);
    const { m: m3, next } = await open(name);
    m3.send({ kind: { $case: 'reply', value: { interceptId: 999n, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } } });
    expect(replyResult(await next()).status).toBe(pb.ReplyStatus.REPLY_STATUS_UNKNOWN_INTERCEPT);
    m3.send({ kind: { $case: 'reply', value: { interceptId: 1n, action: pb.InterceptAction.INTERCEPT_ACTION_UNSPECIFIED, data: Buffer.alloc(0) } } });
    expect(replyResult(await next()).status).toBe(pb.ReplyStatus.REPLY_STATUS_INVALID);
    m3.cancel();
    const e2 = await failure(h.client.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_UNSPECIFIED }));
    expect([e2.code, e2.reason]).toEqual([status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER']);
    const e3 = await failure(
      h.client.intercepts.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: 0x1, ranges: [{ startPage: GiB >> 12n, pageCount: 1n }] }),
    );
    expect([e3.code, e3.reason]).toEqual([status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER']);
    const e4 = await failure(
      h.client.intercepts.modifyVtlProtectionMask({ name, protectingVtl: 0, mapFlags: 0x1, ranges: [{ startPage: 1n, pageCount: 1n }] }),
    );
    expect([e4.code, e4.reason]).toEqual([status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER']);
    const e5 = await failure(h.client.intercepts.getVtlProtections({ name, protectingVtl: 0 }));
    expect([e5.code, e5.reason]).toEqual([status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER']);
  });
});

describe('SynIC queues, held-back sources, observe-only monitors, arm64', () => {
  test('messages queue behind a busy slot up to 16 per SINT; a full SINT0 holds the faulting VP back', async () => {
    const { name, vp0 } = await setup('syn-full');
    await protectFromVtl1(vp0, 0x1);
    const post = (i: number) => h.client.synic.postMessage({ name: vp0, vtl: 1, sint: 0, messageType: 0x100 + i, payload: Buffer.from([i]) });
    expect((await post(0)).delivered).toBe(true);
    for (let i = 1; i <= 16; i++) expect((await post(i)).delivered).toBe(false);
    const e = await failure(post(17));
    expect([e.code, e.reason]).toEqual([status.RESOURCE_EXHAUSTED, 'HV_STATUS_INSUFFICIENT_BUFFERS']);
    expect((await h.client.synic.getSynicState({ name: vp0, vtl: 1 })).queued[0]).toBe(16);
    await vtlReturn(vp0);
    const w = await h.client.guest.writeMemory({ name: vp0, gpa: PROTECTED, data: Buffer.from([9]) });
    expect(w.outcome?.intercept?.heldBack).toBe(true);
    expect(w.outcome?.activeVtl).toBe(0); // stays at the faulting instruction, nothing dropped
    expect(Buffer.from((await h.client.memory.readGpa({ name, gpa: PROTECTED, length: 1 })).data)[0]).toBe('o'.charCodeAt(0));
    // Slot order: EOM after clearing brings the queue forward one at a time, MessagePending while more wait.
    await h.client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n });
    let slot = await simSlot(name);
    expect([slot.readUInt32LE(0), slot[5]! & 1]).toEqual([0x100, 1]);
    await h.client.guest.writeMemory({ name: vp0, gpa: SIMP_GPA, data: Buffer.alloc(4) });
    await h.client.guest.writeMsr({ name: vp0, msr: MSR.EOM, value: 0n });
    slot = await simSlot(name);
    expect([slot.readUInt32LE(0), slot[4], slot[16], slot[5]! & 1]).toEqual([0x101, 1, 1, 1]);
  });

  test('event flags: SignalEvent sets SIEF bits once; masked SINTs and disabled pages are refused', async () => {
    const { name, vp0 } = await setup('syn-events');
    const sig = (sint: number, flag: number) => h.client.synic.signalEvent({ name: vp0, vtl: 1, sint, flag });
    let e = await failure(sig(0, 5));
    expect([e.code, e.reason]).toEqual([status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_SYNIC_STATE']); // no SIEF page
    await h.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_SIEFP, value: 0xa000n | 1n }); // VTL1 SIEFP
    expect((await sig(0, 13)).newlySet).toBe(true);
    expect((await sig(0, 13)).newlySet).toBe(false);
    const sief = Buffer.from((await h.client.memory.readGpa({ name, gpa: 0xa000n, length: 4, vtlView: 1 })).data);
    expect(sief[1]).toBe(1 << 5); // flag 13: byte 1, bit 5
    e = await failure(sig(3, 1)); // SINT3 is masked
    expect([e.code, e.reason]).toEqual([status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_SYNIC_STATE']);
    e = await failure(sig(16, 1));
    expect([e.code, e.reason]).toEqual([status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER']);
    e = await failure(h.client.synic.postMessage({ name: vp0, vtl: 1, sint: 0, messageType: 0x80000001, payload: Buffer.alloc(0) }));
    expect([e.code, e.reason]).toEqual([status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER']);
  });

  test('route BOTH: the VTL handles the intercept, a monitor observes it without answering', async () => {
    const { name, vp0 } = await setup('syn-both');
    await protectFromVtl1(vp0, 0x1);
    await vtlReturn(vp0);
    await h.client.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_BOTH });
    const m = h.client.intercepts.monitor();
    const it = m.events[Symbol.asyncIterator]();
    m.send({ kind: { $case: 'subscribe', value: { name, accessMask: 0 } as pb.MonitorSubscribe } });
    expect((await it.next()).value.kind?.$case).toBe('subscription');
    const w = await h.client.guest.writeMemory({ name: vp0, gpa: PROTECTED, data: Buffer.from('x') });
    expect(w.outcome?.vtlSwitch?.toVtl).toBe(1);
    const ev = (await it.next()).value;
    expect(ev.kind?.$case).toBe('intercept');
    if (ev.kind?.$case === 'intercept') {
      expect(ev.kind.value.needsReply).toBe(false);
      expect(ev.kind.value.interceptId).toBe(w.outcome!.intercept!.interceptId);
      expect(Buffer.from(ev.kind.value.hvMessage).equals(await simSlot(name))).toBe(true);
    }
    expect((await h.client.intercepts.listPendingIntercepts({ name })).intercepts).toHaveLength(0);
    m.cancel();
  });

  test('arm64: memory intercepts carry ESR_EL2 and the fault address in the arm64 layout; no x64 MSR path', async () => {
    const caps = await h.client.partitions.getCapabilities({});
    if (!caps.architectures.includes(pb.Architecture.ARCHITECTURE_ARM64)) {
      // A backend without arm64 (the KVM agent on an x86-64 host) must refuse it clearly.
      const e = await failure(
        h.client.partitions.createPartition({ partition: { architecture: pb.Architecture.ARCHITECTURE_ARM64, vpCount: 1, memoryBytes: GiB } as pb.Partition }),
      );
      expect(e.code).not.toBe(status.INTERNAL);
      expect(e.reason).toMatch(/^HV_STATUS_/);
      console.info(`arm64 scenario not applicable: backend ${caps.backend} reports no arm64 support (${e.message})`);
      return;
    }
    const p = await h.client.partitions.createPartition({
      partitionId: 'arm',
      partition: { architecture: pb.Architecture.ARCHITECTURE_ARM64, vpCount: 2, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition,
    });
    const vp0 = `${p.name}/vps/0`;
    expect((await h.client.guest.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 1n })).outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_UD);
    const hc = await failure(h.client.guest.hypercall({ name: vp0, control: 0x50n }));
    expect([hc.code, hc.reason]).toEqual([status.UNIMPLEMENTED, 'HV_STATUS_FEATURE_UNAVAILABLE']);
    await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
    // VTL1's SynIC through its registers (arm64 has no MSRs): SIMP and SCONTROL.
    await h.client.vps.setVpRegisters({
      name: vp0,
      vtl: 1,
      registers: [
        r64(R.HV_REGISTER_NAME_SIPP, SIMP_GPA | 1n),
        r64(R.HV_REGISTER_NAME_SCONTROL, 1n),
        r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n)),
      ],
    });
    await h.client.intercepts.modifyVtlProtectionMask({
      name: p.name,
      protectingVtl: 1,
      mapFlags: 0x1,
      ranges: [{ startPage: PROTECTED >> 12n, pageCount: 1n }],
    });
    const w = await h.client.guest.writeMemory({ name: vp0, gpa: PROTECTED + 0x10n, data: Buffer.from([1]) });
    expect(w.outcome?.vtlSwitch?.toVtl).toBe(1);
    const slot = await simSlot(p.name);
    expect([slot.readUInt32LE(0), slot[4]]).toEqual([0x80000001, 64]); // HV_ARM64_MEMORY_INTERCEPT_MESSAGE
    expect(slot[16 + 5]).toBe(1); // write
    expect((slot.readUInt16LE(16 + 6) >> 4) & 0xf).toBe(0); // Vtl of the faulting context
    expect(slot.readBigUInt64LE(16 + 48)).toBe(PROTECTED + 0x10n); // GuestPhysicalAddress
    const esr = slot.readBigUInt64LE(16 + 56);
    expect(esr >> 26n).toBe(0x24n); // EC: data abort from a lower EL
    expect((esr >> 6n) & 1n).toBe(1n); // WnR
    expect(esr & 0x3fn).toBe(0x0fn); // permission fault, level 3
    // Route MONITOR (VP 1, still in VTL0): the InterceptEvent's rip is the faulting PC, the arm64
    // header's Pc, not the bytes where the x64 header has its Rip (+24 here: CacheType...).
    const vp1 = `${p.name}/vps/1`;
    await h.client.vtl.enableVpVtl({ name: vp1, targetVtl: 1 });
    await h.client.intercepts.setInterceptRoute({ name: p.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
    const m = h.client.intercepts.monitor();
    const events = m.events[Symbol.asyncIterator]();
    m.send({ kind: { $case: 'subscribe', value: { name: p.name } as pb.MonitorSubscribe } });
    expect((await events.next()).value?.kind?.$case).toBe('subscription');
    const w1 = h.client.guest.writeMemory({ name: vp1, gpa: PROTECTED + 0x20n, data: Buffer.from([2]) });
    const r = (await events.next()).value as pb.MonitorResponse;
    if (r.kind?.$case !== 'intercept') throw new Error(`expected an intercept, got ${r.kind?.$case}`);
    const ev = r.kind.value;
    const listed = (await h.client.intercepts.listPendingIntercepts({ name: p.name })).intercepts;
    m.send({ kind: { $case: 'reply', value: { interceptId: ev.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } } });
    expect((await w1).outcome?.exception).toBe(0);
    m.cancel();
    const message = Buffer.from(ev.hvMessage);
    expect([message.readUInt32LE(0), message[4]]).toEqual([0x80000001, 64]);
    expect(ev).toMatchObject({ vpIndex: 1, messageType: 0x80000001, rip: message.readBigUInt64LE(16 + 8) }); // Pc
    expect(message.readUInt32LE(16 + 24)).toBe(6); // CacheType WB, where an x64 message has its Rip
    expect(ev.rip).not.toBe(message.readBigUInt64LE(16 + 24));
    expect(listed.map((x) => x.rip)).toEqual([ev.rip]);
  });
});

test("deadline policy: with no monitor, an unanswered intercept gets the partition's deadline action", async () => {
  const { name, vp0 } = await setup('mon-deadline');
  await protectFromVtl1(vp0, 0x1);
  await vtlReturn(vp0);
  const set = await h.client.intercepts.setInterceptRoute({
    name,
    route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR,
    answerDeadlineMs: 200n,
    deadlineAction: pb.InterceptAction.INTERCEPT_ACTION_SKIP,
  });
  expect(set.answerDeadlineMs).toBe(200n);
  const w = await h.client.guest.writeMemory({ name: vp0, gpa: PROTECTED, data: Buffer.from('x') });
  expect(w.outcome?.exception).toBe(0);
  expect(Buffer.from((await h.client.memory.readGpa({ name, gpa: PROTECTED, length: 1 })).data).toString()).toBe('o');
  const e = await failure(h.client.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR, answerDeadlineMs: 10n }));
  expect([e.code, e.reason]).toEqual([status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER']);
});
