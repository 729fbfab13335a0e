// Faults of the durable state (issue #17), against the real service process with --state-dir:
// - a full disk: a 2 MiB tmpfs this test mounts fills up under 256 KiB WriteGpa calls; every call
//   is answered OK only if its state is on disk, the first that is not fails (UNAVAILABLE,
//   STATE_NOT_DURABLE), and after a SIGKILL the last acknowledged state comes back;
// - SIGTERM and SIGKILL restarts with an intercept pending on the monitor route: the intercept, its
//   id and the suspended VP come back, the answer applies once; an answer-deadline policy comes back
//   and answers it;
// - a record that cannot be loaded keeps its id taken until DeletePartition.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { status } from '@grpc/grpc-js';
import { type VsmClient, connect, pb } from '@vsm/client';
import { type ChildService, spawnService } from '../support/child-service';
import { waitFor } from '../support/wait';

const GiB = 1n << 30n;
const dirs: string[] = [];
const mounts: string[] = [];
const children: ChildService[] = [];

function tempDir(tag: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `vsm-${tag}-`));
  dirs.push(d);
  return d;
}
async function serve(dir: string): Promise<{ svc: ChildService; c: VsmClient }> {
  const svc = await spawnService(['--state-dir', dir], { name: 'vsm-service (state-dir faults)' });
  children.push(svc);
  return { svc, c: connect(svc.address, { deadlineMs: 30_000 }) };
}
const failure = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: unknown) => e as { code: number; message: string },
  );

afterAll(async () => {
  for (const c of children) if (!c.unexpectedExit()) await c.stop('SIGKILL').catch(() => undefined);
  for (const m of mounts) {
    try {
      execFileSync('umount', [m]);
    } catch {}
  }
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

test('a full disk: no call answered OK whose state did not land; the last acknowledged state survives a SIGKILL', async () => {
  const dir = tempDir('full');
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', dir]);
  } catch (e) {
    throw new Error(`this test mounts a 2 MiB tmpfs and must run as root: ${e instanceof Error ? e.message : String(e)}`);
  }
  mounts.push(dir);
  let { svc, c } = await serve(dir);
  const p = await c.partitions.createPartition({ partitionId: 'full', partition: { vpCount: 1, memoryBytes: GiB } as pb.Partition });
  let acknowledged = 0;
  let refused: { code: number; message: string } | undefined;
  for (let i = 0; i < 16 && !refused; i++) {
    const data = Buffer.alloc(256 * 1024, i + 1);
    refused = await failure(c.memory.writeGpa({ name: p.name, gpa: BigInt(i) * 256n * 1024n, data }));
    if (!refused) acknowledged++;
  }
  expect(refused).toBeDefined(); // 16 × 256 KiB cannot fit 2 MiB
  expect(refused!.code).toBe(status.UNAVAILABLE);
  expect(refused!.message).toMatch(/could not be stored durably/);
  expect(acknowledged).toBeGreaterThan(0);
  c.close();
  await svc.stop('SIGKILL');
  ({ svc, c } = await serve(dir));
  for (let i = 0; i < acknowledged; i++) {
    const back = await c.memory.readGpa({ name: p.name, gpa: BigInt(i) * 256n * 1024n + 4095n, length: 2 });
    expect([...back.data]).toEqual([i + 1, i + 1]);
  }
  c.close();
  await svc.stop('SIGTERM');
}, 180_000);

async function pendingIntercept(c: VsmClient, id: string, deadline?: { ms: bigint; action: pb.InterceptAction }) {
  const p = await c.partitions.createPartition({ partitionId: id, partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
  const vp0 = `${p.name}/vps/0`;
  await c.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
  await c.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
  await c.vps.setVpRegisters({
    name: vp0,
    vtl: 1,
    registers: [{ name: pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, value: { value: { $case: 'reg64', value: 1n | (0xfn << 1n) } } }],
  });
  await c.intercepts.modifyVtlProtectionMask({ name: p.name, protectingVtl: 1, mapFlags: 0x1, ranges: [{ startPage: 0x40n, pageCount: 1n }] });
  await c.intercepts.setInterceptRoute({
    name: p.name,
    route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR,
    answerDeadlineMs: deadline?.ms,
    deadlineAction: deadline?.action ?? pb.InterceptAction.INTERCEPT_ACTION_UNSPECIFIED,
  });
  // The VP's write waits for a monitor's answer; the call gives up, the intercept stays pending.
  const e = await failure(c.guest.writeMemory({ name: `${p.name}/vps/1`, gpa: 0x40010n, data: Buffer.from('blocked') }, { deadlineMs: 300 }));
  expect(e?.code).toBe(status.DEADLINE_EXCEEDED);
  const pending = (await c.intercepts.listPendingIntercepts({ name: p.name })).intercepts;
  expect(pending).toHaveLength(1);
  return { name: p.name, interceptId: pending[0]!.interceptId };
}

/** Answers ALLOW twice through a Monitor stream; the two reply statuses. */
async function answerTwice(c: VsmClient, name: string, interceptId: bigint): Promise<pb.ReplyStatus[]> {
  const m = c.intercepts.monitor();
  try {
    const it = m.events[Symbol.asyncIterator]();
    m.send({ kind: { $case: 'subscribe', value: { name, accessMask: 0 } as pb.MonitorSubscribe } });
    const reply = { interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) };
    m.send({ kind: { $case: 'reply', value: reply } });
    m.send({ kind: { $case: 'reply', value: reply } });
    const statuses: pb.ReplyStatus[] = [];
    while (statuses.length < 2) {
      const r = await it.next();
      if (r.done) throw new Error('the monitor stream ended before both replies were answered');
      if (r.value.kind?.$case === 'replyResult') statuses.push(r.value.kind.value.status);
    }
    return statuses;
  } finally {
    m.cancel();
  }
}

for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
  test(`${signal} with an intercept pending: it comes back with its id and the suspended VP; answered once`, async () => {
    const dir = tempDir(`pending-${signal}`);
    let { svc, c } = await serve(dir);
    const { name, interceptId } = await pendingIntercept(c, 'held');
    c.close();
    await svc.stop(signal);
    ({ svc, c } = await serve(dir));
    const pending = (await c.intercepts.listPendingIntercepts({ name })).intercepts;
    expect(pending.map((x) => x.interceptId)).toEqual([interceptId]);
    const vp = await c.vps.getVirtualProcessor({ name: `${name}/vps/1` });
    expect(vp.vtlStatus?.interceptSuspended).toBe(true);
    expect(vp.vtlStatus?.suspendedInterceptId).toBe(interceptId);
    expect(await answerTwice(c, name, interceptId)).toEqual([pb.ReplyStatus.REPLY_STATUS_APPLIED, pb.ReplyStatus.REPLY_STATUS_DUPLICATE]);
    expect(Buffer.from((await c.memory.readGpa({ name, gpa: 0x40010n, length: 7 })).data).toString()).toBe('blocked');
    // The answer is durable too: after another SIGKILL nothing is pending and the VP runs.
    c.close();
    await svc.stop('SIGKILL');
    ({ svc, c } = await serve(dir));
    expect((await c.intercepts.listPendingIntercepts({ name })).intercepts).toEqual([]);
    expect((await c.vps.getVirtualProcessor({ name: `${name}/vps/1` })).vtlStatus?.interceptSuspended).toBe(false);
    c.close();
    await svc.stop('SIGTERM');
  }, 180_000);
}

test('an answer-deadline policy survives a SIGKILL and answers the intercept pending across it', async () => {
  const dir = tempDir('deadline');
  let { svc, c } = await serve(dir);
  // Long enough that it does not fire before the kill on a loaded machine.
  const { name } = await pendingIntercept(c, 'policy', { ms: 4000n, action: pb.InterceptAction.INTERCEPT_ACTION_SKIP });
  c.close();
  await svc.stop('SIGKILL');
  ({ svc, c } = await serve(dir));
  await waitFor(
    'the restored deadline policy answered the intercept',
    async () => (await c.intercepts.listPendingIntercepts({ name })).intercepts.length === 0,
    60_000,
  );
  expect((await c.vps.getVirtualProcessor({ name: `${name}/vps/1` })).vtlStatus?.interceptSuspended).toBe(false);
  c.close();
  await svc.stop('SIGTERM');
}, 180_000);

test('a record that cannot be loaded keeps its id taken until DeletePartition', async () => {
  const dir = tempDir('unloadable');
  let { svc, c } = await serve(dir);
  await c.partitions.createPartition({ partitionId: 'ok', partition: { vpCount: 1, memoryBytes: GiB } as pb.Partition });
  c.close();
  await svc.stop('SIGTERM');
  fs.writeFileSync(path.join(dir, 'bad.snapshot'), Buffer.from([0xff, 0xff, 0xff]));
  ({ svc, c } = await serve(dir));
  expect((await c.partitions.listPartitions({})).partitions.map((x) => x.name)).toEqual(['partitions/ok']);
  const e = await failure(c.partitions.createPartition({ partitionId: 'bad', partition: { vpCount: 1, memoryBytes: GiB } as pb.Partition }));
  expect(e?.code).toBe(status.FAILED_PRECONDITION);
  expect(e?.message).toMatch(/could not be loaded.*DeletePartition partitions\/bad/);
  expect(fs.readFileSync(path.join(dir, 'bad.snapshot'))).toEqual(Buffer.from([0xff, 0xff, 0xff]));
  await c.partitions.deletePartition({ name: 'partitions/bad' });
  expect(fs.existsSync(path.join(dir, 'bad.snapshot.discarded'))).toBe(true);
  await c.partitions.createPartition({ partitionId: 'bad', partition: { vpCount: 1, memoryBytes: GiB } as pb.Partition });
  c.close();
  await svc.stop('SIGTERM');
}, 120_000);
