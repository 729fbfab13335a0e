// Conformance: save/restore of a partition's complete VSM state. A restored partition answers
// every read exactly like the original and behaves identically afterwards.
import { status } from '@grpc/grpc-js';
import { pb } from '@vsm/client';
import { GiB, type Harness, failure, startHarness } from '../support/server';
import { HvMsr } from '@vsm/core';

const MSR = {
  GUEST_OS_ID: HvMsr.HV_X64_MSR_GUEST_OS_ID,
  HYPERCALL: HvMsr.HV_X64_MSR_HYPERCALL,
  SCONTROL: HvMsr.HV_X64_MSR_SCONTROL,
  SIMP: HvMsr.HV_X64_MSR_SIMP,
  EOM: HvMsr.HV_X64_MSR_EOM,
  VP_ASSIST: HvMsr.HV_X64_MSR_VP_ASSIST_PAGE,
};
const R = pb.HvRegisterName;
const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });
const normalize = (x: unknown) =>
  JSON.parse(
    JSON.stringify(x, (_k, v) =>
      typeof v === 'bigint' ? v.toString() : v && v.type === 'Buffer' && Array.isArray(v.data) ? Buffer.from(v.data).toString('hex') : v,
    ),
  );

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h.stop();
});

async function richPartition(id: string) {
  const p = await h.client.partitions.createPartition({
    partitionId: id,
    partition: pb.Partition.fromPartial({ vpCount: 2, memoryBytes: GiB, maximumVtl: 1, labels: { a: 'b' } }),
  });
  const vp0 = `${p.name}/vps/0`;
  await h.client.memory.writeGpa({ name: p.name, gpa: 0x1000n, data: Buffer.from('RAM under the hypercall page') });
  await h.client.memory.writeGpa({ name: p.name, gpa: 0x40000n, data: Buffer.from('protected page') });
  await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
  await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 1n });
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x1001n });
  await h.client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n });
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 2n });
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x2001n });
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.SIMP, value: 0x9001n });
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.SCONTROL, value: 1n });
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.VP_ASSIST, value: 0xa001n });
  await h.client.vps.setVpRegisters({
    name: vp0,
    vtl: 1,
    registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n)), r64(R.HV_REGISTER_NAME_X64_R12, 0x1212n)],
  });
  await h.client.intercepts.modifyVtlProtectionMask({ name: p.name, protectingVtl: 1, mapFlags: 0x1, ranges: [{ startPage: 0x40n, pageCount: 16n }] });
  await h.client.synic.postMessage({ name: vp0, vtl: 1, sint: 0, messageType: 7, payload: Buffer.from('first') });
  await h.client.synic.postMessage({ name: vp0, vtl: 1, sint: 0, messageType: 8, payload: Buffer.from('queued') });
  await h.client.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 1n }); // back to VTL0, parked VTL1 stub
  // An intercept that VTL1 has in its SINT0 queue behind the busy slot, with VTL0's access pending.
  await h.client.guest.writeMemory({ name: vp0, gpa: 0x40000n, data: Buffer.from('X') });
  return { name: p.name, vp0 };
}

async function observe(name: string) {
  const vps = [0, 1].map((i) => `${name}/vps/${i}`);
  const out: unknown[] = [];
  for (const vp of vps) {
    out.push((await h.client.vps.getVirtualProcessor({ name: vp })).vtlStatus);
    for (const vtl of [0, 1]) {
      const r = await h.client.vps.getVpRegisters({ name: vp, vtl }).catch((e) => e.reason);
      out.push(typeof r === 'string' ? r : r.registers.filter((a: pb.RegisterAssoc) => a.name !== R.HV_REGISTER_NAME_TIME_REF_COUNT));
      out.push(await h.client.synic.getSynicState({ name: vp, vtl }).catch((e) => e.reason));
    }
  }
  for (const vtlView of [undefined, 0, 1])
    for (const gpa of [0x1000n, 0x2000n, 0x9000n, 0xa000n, 0x40000n]) out.push((await h.client.memory.readGpa({ name, gpa, length: 64, vtlView })).data);
  out.push((await h.client.memory.listOverlays({ name })).overlays);
  out.push(await h.client.intercepts.getVtlProtections({ name, protectingVtl: 1 }));
  const p = await h.client.partitions.getPartition({ name });
  out.push([p.vpCount, p.memoryBytes, p.labels, p.maximumVtl, p.enabledVtlSet, p.state]);
  return normalize(out);
}

test('save and restore: every observable is identical, and so is behaviour afterwards', async () => {
  const { name } = await richPartition('snap-src');
  const snap = await h.client.snapshots.savePartition({ name });
  expect(snap.formatVersion).toBe(1);
  expect(snap.memory.length).toBeGreaterThanOrEqual(2);
  const restored = await h.client.snapshots.restorePartition({ snapshot: snap, partitionId: 'snap-copy' });
  expect(restored.name).toBe('partitions/snap-copy');
  expect(await observe('partitions/snap-copy')).toEqual(await observe(name));
  // Identical behaviour: VTL1 drains its queue (clear slot + EOM twice), lifts the protection,
  // VTL0's retried write completes; same on both.
  const run = async (part: string) => {
    const vp0 = `${part}/vps/0`;
    const res: unknown[] = [];
    res.push(await h.client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n }).catch((e) => e.reason));
    for (let i = 0; i < 3; i++) {
      res.push((await h.client.memory.readGpa({ name: part, gpa: 0x9000n, length: 32, vtlView: 1 })).data);
      await h.client.guest.writeMemory({ name: vp0, gpa: 0x9000n, data: Buffer.alloc(4) });
      await h.client.guest.writeMsr({ name: vp0, msr: MSR.EOM, value: 0n });
    }
    res.push(
      await h.client.intercepts.modifyVtlProtectionMask({ name: part, protectingVtl: 1, mapFlags: 0xf, ranges: [{ startPage: 0x40n, pageCount: 16n }] }),
    );
    res.push(await h.client.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 1n }));
    res.push((await h.client.memory.readGpa({ name: part, gpa: 0x40000n, length: 16 })).data);
    return normalize(res);
  };
  const a = await run(name);
  const b = await run('partitions/snap-copy');
  expect(b).toEqual(a);
  expect(
    Buffer.from(String((a as string[])[a.length - 1]), 'hex')
      .toString()
      .startsWith('Xrotected page'),
  ).toBe(true);
});

test('a pending monitor intercept survives save/restore and is answered once', async () => {
  const p = await h.client.partitions.createPartition({ partitionId: 'snap-mon', partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
  const vp0 = `${p.name}/vps/0`;
  await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
  await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
  await h.client.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] });
  await h.client.intercepts.modifyVtlProtectionMask({ name: p.name, protectingVtl: 1, mapFlags: 0x1, ranges: [{ startPage: 0x40n, pageCount: 1n }] });
  await h.client.intercepts.setInterceptRoute({ name: p.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
  const write = h.client.guest.writeMemory({ name: vp0, gpa: 0x40000n, data: Buffer.from('ok') });
  // The write is suspended on its intercept once it is pending.
  for (let i = 0; i < 1000 && (await h.client.intercepts.listPendingIntercepts({ name: p.name })).intercepts.length === 0; i++)
    await new Promise((r) => setTimeout(r, 10));
  const snap = await h.client.snapshots.savePartition({ name: p.name });
  await h.client.snapshots.restorePartition({ snapshot: snap, partitionId: 'snap-mon-copy' });
  const pending = await h.client.intercepts.listPendingIntercepts({ name: 'partitions/snap-mon-copy' });
  expect(pending.intercepts).toHaveLength(1);
  expect((await h.client.vps.getVirtualProcessor({ name: 'partitions/snap-mon-copy/vps/0' })).vtlStatus?.interceptSuspended).toBe(true);
  const m = h.client.intercepts.monitor();
  const it = m.events[Symbol.asyncIterator]();
  m.send({ kind: { $case: 'subscribe', value: { name: 'partitions/snap-mon-copy', accessMask: 0 } as pb.MonitorSubscribe } });
  await it.next();
  const ev = (await it.next()).value;
  if (ev.kind?.$case !== 'intercept') throw new Error('expected intercept');
  expect(ev.kind.value.interceptId).toBe(pending.intercepts[0]!.interceptId);
  m.send({
    kind: { $case: 'reply', value: { interceptId: ev.kind.value.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } },
  });
  const rr = (await it.next()).value;
  expect(rr.kind?.$case === 'replyResult' && rr.kind.value.status).toBe(pb.ReplyStatus.REPLY_STATUS_APPLIED);
  expect(Buffer.from((await h.client.memory.readGpa({ name: 'partitions/snap-mon-copy', gpa: 0x40000n, length: 2 })).data).toString()).toBe('ok');
  m.cancel();
  // The original is still suspended on its own copy of the intercept; answer it to finish the call.
  const m2 = h.client.intercepts.monitor();
  const it2 = m2.events[Symbol.asyncIterator]();
  m2.send({ kind: { $case: 'subscribe', value: { name: p.name, accessMask: 0 } as pb.MonitorSubscribe } });
  await it2.next();
  const ev2 = (await it2.next()).value;
  if (ev2.kind?.$case !== 'intercept') throw new Error('expected intercept');
  m2.send({
    kind: { $case: 'reply', value: { interceptId: ev2.kind.value.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_SKIP, data: Buffer.alloc(0) } },
  });
  await it2.next();
  await write;
  m2.cancel();
});

test('malformed snapshots are refused whole', async () => {
  const { name } = await richPartition('snap-bad');
  const good = await h.client.snapshots.savePartition({ name });
  const count = async () => (await h.client.partitions.listPartitions({ pageSize: 1000 })).partitions.length;
  const before = await count();
  const bad: [string, pb.PartitionSnapshot][] = [
    ['format version', { ...good, formatVersion: 2 }],
    ['vp count', { ...good, vpCount: 3 }],
    ['page size', { ...good, memory: [{ gpfn: 1n, data: Buffer.alloc(10) }] }],
    ['page outside', { ...good, memory: [{ gpfn: 1n << 40n, data: Buffer.alloc(4096) }] }],
    ['route', { ...good, interceptRoute: 'nowhere' }],
    ['active vtl disabled', { ...good, vps: good.vps.map((v, i) => (i === 1 ? { ...v, activeVtl: 1 } : v)) }],
  ];
  for (const [what, snapshot] of bad) {
    const e = await failure(h.client.snapshots.restorePartition({ snapshot }));
    expect([what, e.code, e.reason]).toEqual([what, status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER']);
  }
  let e = await failure(h.client.snapshots.restorePartition({}));
  expect([e.code, e.reason]).toEqual([status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER']);
  e = await failure(h.client.snapshots.restorePartition({ snapshot: good, partitionId: 'snap-bad' }));
  expect([e.code, e.reason]).toEqual([status.ALREADY_EXISTS, 'HV_STATUS_OBJECT_IN_USE']);
  e = await failure(h.client.snapshots.savePartition({ name: 'partitions/nope' }));
  expect([e.code, e.reason]).toEqual([status.NOT_FOUND, 'HV_STATUS_INVALID_PARTITION_ID']);
  expect(await count()).toBe(before);
});
