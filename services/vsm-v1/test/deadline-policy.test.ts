// The partition's deadline policy (SetInterceptRoute answer_deadline_ms + deadline_action) through
// CoreBackend, with jest's fake timers (deterministic: no real waiting, no timing assertions).
//  - The policy applies to every intercept a monitor must answer, not only to those a guest action
//    waits for: a hypercall's parameter block on a refused page suspends the VP and returns at once;
//    the policy must still release it.
//  - A RETRY policy whose retry intercepts again (the page is still refused) backs off (twice the
//    time for each consecutive retry, up to 1 s): with a fixed 1 ms period every monitor answer
//    arrived after the next retry (DUPLICATE) and the waiting guest action never returned: the
//    intercept fuzzer's "blocked guest action" (seed 424242).
//  - No policy timer outlives its intercept (answered, crash, delete).
import * as core from '@vsm/core';
import { HvRegisterName as R, type Partition, longModeContext, reg64 } from '@vsm/core';
import { pb } from '@vsm/api';
import { CoreBackend } from '../src/backends/core-backend';
import { POLICY_RETRY_BACKOFF_CAP_MS, policyDelayMs } from '../src/backends/monitor-wait';

const A = pb.InterceptAction;
const SECRET = 0x40000n; // VTL1: VTL0 may not write it (nor store a hypercall input block there)

async function monitoredPartition(b: CoreBackend, id: string, policy?: { ms: bigint; action: pb.InterceptAction }): Promise<{ name: string; p: Partition }> {
  const { name } = await b.createPartition({
    partitionId: id,
    partition: { architecture: pb.Architecture.ARCHITECTURE_X64, vpCount: 2, memoryBytes: 1n << 24n, maximumVtl: 1, labels: {} } as unknown as pb.Partition,
  } as pb.CreatePartitionRequest);
  const p = b.partition(name);
  p.enablePartitionVtl('host', 1, 0);
  for (let i = 0; i < 2; i++) p.enableVpVtl('host', i, 1, longModeContext());
  p.setRegisters(p.vp(0), 1, [{ name: R.HvRegisterVsmPartitionConfig, value: reg64(1n | (0xfn << 1n)) }], 'host');
  p.modifyVtlProtectionMask('host', 1, 0x1 | 0x4, [{ start: SECRET >> 12n, count: 1n }]);
  await b.setInterceptRoute({
    name,
    route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR,
    answerDeadlineMs: policy?.ms,
    deadlineAction: policy?.action ?? A.INTERCEPT_ACTION_UNSPECIFIED,
  });
  return { name, p };
}

const suspendedOn = async (b: CoreBackend, vp: string) => (await b.getVirtualProcessor({ name: vp })).vtlStatus?.suspendedInterceptId ?? 0n;

beforeEach(() => {
  jest.useFakeTimers();
});
afterEach(() => {
  jest.useRealTimers();
});

test('the policy releases a VP suspended by a hypercall parameter block, which no guest action waits for', async () => {
  const b = new CoreBackend();
  const { name, p } = await monitoredPartition(b, 'dl-hypercall', { ms: 100n, action: A.INTERCEPT_ACTION_SKIP });
  const vp0 = `${name}/vps/0`;
  // HvCallModifyVtlProtectionMask with its input block stored on the refused page: the store intercepts.
  const r = await b.hypercall({
    name: vp0,
    control: 0x0cn | (1n << 32n),
    inputGpa: SECRET,
    input: Buffer.alloc(24),
    outputGpa: 0n,
    outputSize: 0,
  } as pb.HypercallRequest);
  const id = r.outcome?.intercept?.interceptId ?? 0n;
  expect(id).toBeGreaterThan(0n);
  expect(await suspendedOn(b, vp0)).toBe(id);
  await jest.advanceTimersByTimeAsync(99);
  expect(await suspendedOn(b, vp0)).toBe(id);
  await jest.advanceTimersByTimeAsync(1);
  // SKIP: the store completed without writing; the VP runs again.
  expect(p.intercepts.status(id)).toBe('duplicate');
  expect(p.intercepts.outcomeOf(id)).toMatchObject({ status: 'completed' });
  expect(await suspendedOn(b, vp0)).toBe(0n);
  expect(p.memory.read(SECRET, 8)).toEqual(Buffer.alloc(8));
  expect(jest.getTimerCount()).toBe(0);
});

test('a RETRY policy that intercepts again backs off, so a monitor slower than the policy gets its answer applied', async () => {
  const b = new CoreBackend();
  const { name, p } = await monitoredPartition(b, 'dl-retry', { ms: 1n, action: A.INTERCEPT_ACTION_RETRY });
  const raised: { id: bigint; at: number }[] = [];
  p.intercepts.subscribe((x) => raised.push({ id: x.id, at: Date.now() }));
  const t0 = Date.now();
  let done: pb.WriteMemoryResponse | undefined;
  const w = b.writeMemory({ name: `${name}/vps/0`, gpa: SECRET, data: Buffer.from('vp0') }).then((r) => {
    done = r;
  });
  // Each retry intercepts again; the n-th waits 2^n ms, then 1 s at most.
  await jest.advanceTimersByTimeAsync(1 + 2 + 4 + 8 + 16 + 32 + 64 + 128 + 256 + 512 + 1000 + 1000);
  const gaps = raised.map((x, i) => x.at - (i === 0 ? t0 : raised[i - 1]!.at));
  expect(gaps).toEqual([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000]);
  expect(done).toBeUndefined();
  // A monitor that answers 50 ms after it sees an intercept: it loses to nothing now.
  const last = raised[raised.length - 1]!.id;
  await jest.advanceTimersByTimeAsync(50);
  expect(core.answerIntercept(p, last, 'skip')).toMatchObject({ result: 'applied', outcome: { status: 'completed' } });
  await w;
  expect(done?.outcome?.intercept).toBeUndefined();
  expect(done?.outcome?.partitionCrashed).toBe(false);
  expect(p.vp(0).suspendedOn).toBeNull();
  expect(p.intercepts.pending.size).toBe(0);
  expect(jest.getTimerCount()).toBe(0);
});

test('a monitor RETRY starts the policy afresh; the backoff follows consecutive policy RETRYs of one access only', () => {
  expect([0, 1, 2, 3, 9, 10, 11, 50, 2000].map((n) => policyDelayMs(1, n))).toEqual([1, 2, 4, 8, 512, 1000, 1000, 1000, 1000]);
  expect([0, 1, 2, 3].map((n) => policyDelayMs(300, n))).toEqual([300, 600, 1000, 1000]);
  // A policy longer than the cap is never shortened.
  expect([0, 1, 5].map((n) => policyDelayMs(5000, n))).toEqual([5000, 5000, 5000]);
  expect(POLICY_RETRY_BACKOFF_CAP_MS).toBe(1000);
});

test('the policy in force when an intercept is raised is its policy; crash and delete leave no timer behind', async () => {
  const b = new CoreBackend();
  const { name, p } = await monitoredPartition(b, 'dl-end', { ms: 500n, action: A.INTERCEPT_ACTION_CRASH });
  const w1 = b.writeMemory({ name: `${name}/vps/1`, gpa: SECRET, data: Buffer.from('vp1') });
  await b.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR, answerDeadlineMs: 2000n, deadlineAction: A.INTERCEPT_ACTION_ALLOW });
  const w0 = b.writeMemory({ name: `${name}/vps/0`, gpa: SECRET, data: Buffer.from('vp0') });
  expect(jest.getTimerCount()).toBe(2);
  await jest.advanceTimersByTimeAsync(500);
  // VP1's CRASH ended the partition and resolved VP0's intercept: its ALLOW timer is gone.
  expect(p.state).toBe('crashed');
  expect((await w1).outcome?.partitionCrashed).toBe(true);
  expect((await w0).outcome?.partitionCrashed).toBe(true);
  expect(jest.getTimerCount()).toBe(0);

  const other = await monitoredPartition(b, 'dl-delete', { ms: 60_000n, action: A.INTERCEPT_ACTION_ALLOW });
  const r = await b.hypercall({
    name: `${other.name}/vps/0`,
    control: 0x0cn | (1n << 32n),
    inputGpa: SECRET,
    input: Buffer.alloc(24),
    outputGpa: 0n,
    outputSize: 0,
  } as pb.HypercallRequest);
  expect(r.outcome?.intercept?.interceptId).toBeGreaterThan(0n);
  expect(jest.getTimerCount()).toBe(1);
  await b.deletePartition({ name: other.name });
  expect(jest.getTimerCount()).toBe(0);
});
