// The deadline policy over the public API (a real server on loopback), for the intercept fuzzer's
// stuck guest actions (seed 424242: a guest action waiting 30 s, then DEADLINE_EXCEEDED, while its
// VP's intercept id kept changing):
//  - A RETRY policy whose retry intercepts again retried every `answer_deadline_ms` for ever: any
//    monitor answering later than that (here: 30 ms after it saw the intercept) got DUPLICATE for
//    each intercept, and the waiting guest action never returned. The policy now backs off.
//  - The policy ran only while a guest action waited: an intercept raised by a Hypercall's input
//    block or by a VtlReturn that re-executes an access (both return at once) kept its VP suspended
//    for ever whatever the policy said.
import { pb, type VsmClient } from '@vsm/client';
import { type Harness, startHarness } from '../support/server';
import { waitFor } from '../support/wait';
import { VTL1_LAYOUT, setupVtl1Partition } from '../security/support';

jest.setTimeout(120_000);

const A = pb.InterceptAction;
const SECRET = VTL1_LAYOUT.secretGpa; // no access for VTL0

let h: Harness;
let c: VsmClient;
beforeAll(async () => {
  h = await startHarness();
  c = h.client;
});
afterAll(async () => {
  await h.stop();
});

async function monitored(id: string, route: Partial<pb.SetInterceptRouteRequest>) {
  const { name, vps } = await setupVtl1Partition(c, id, 2, Buffer.from('original'));
  await c.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR, ...route });
  return { name, vp0: vps[0]! };
}

const suspendedOn = async (vp: string) => {
  const st = (await c.vps.getVirtualProcessor({ name: vp })).vtlStatus;
  return st?.interceptSuspended ? st.suspendedInterceptId : undefined;
};

test('a RETRY policy of 1 ms on a page that stays refused: a monitor answering 30 ms after each intercept gets its SKIP applied and the write returns', async () => {
  const { name, vp0 } = await monitored('dl-e2e-retry', { answerDeadlineMs: 1n, deadlineAction: A.INTERCEPT_ACTION_RETRY });
  const s = c.intercepts.monitor();
  s.send({ kind: { $case: 'subscribe', value: { name, accessMask: 0 } as pb.MonitorSubscribe } });
  const statuses: string[] = [];
  let intercepts = 0;
  const timers = new Set<NodeJS.Timeout>();
  const reading = (async () => {
    for await (const ev of s.events) {
      const k = ev.kind;
      if (k?.$case === 'intercept' && k.value.needsReply) {
        intercepts++;
        const id = k.value.interceptId;
        const t = setTimeout(() => {
          timers.delete(t);
          try {
            s.send({ kind: { $case: 'reply', value: { interceptId: id, action: A.INTERCEPT_ACTION_SKIP, data: Buffer.alloc(0) } as pb.InterceptReply } });
          } catch {
            // the stream ended: what counts is what was applied
          }
        }, 30);
        timers.add(t);
      }
      if (k?.$case === 'replyResult') statuses.push(pb.ReplyStatus[k.value.status] ?? String(k.value.status));
    }
  })().catch(() => undefined);
  try {
    const r = await c.guest.writeMemory({ name: vp0, gpa: SECRET, data: Buffer.from('vp0') }, { deadlineMs: 60_000 });
    // SKIP: completed without the write; the monitor's answer (not the policy) ended it.
    expect(r.outcome?.intercept).toBeUndefined();
    expect(r.outcome?.partitionCrashed).toBe(false);
    await waitFor('the APPLIED reply result', () => statuses.includes('REPLY_STATUS_APPLIED'));
    expect(intercepts).toBeGreaterThan(1); // the policy did retry before the monitor's answer landed
    expect(await suspendedOn(vp0)).toBeUndefined();
    expect((await c.intercepts.listPendingIntercepts({ name })).intercepts).toEqual([]);
    expect(Buffer.from((await c.memory.readGpa({ name, gpa: SECRET, length: 8 })).data).toString()).toBe('original');
  } finally {
    for (const t of timers) clearTimeout(t);
    s.cancel();
    await reading;
  }
});

test('the policy releases a VP suspended by a Hypercall whose input block is on a refused page (no guest action waits for it)', async () => {
  const { name, vp0 } = await monitored('dl-e2e-hypercall', { answerDeadlineMs: 200n, deadlineAction: A.INTERCEPT_ACTION_SKIP });
  // HvCallModifyVtlProtectionMask with its input block stored on the refused page: the store intercepts.
  const r = await c.guest.hypercall({ name: vp0, control: 0x0cn | (1n << 32n), inputGpa: SECRET, input: Buffer.alloc(24) });
  const id = r.outcome?.intercept?.interceptId;
  expect(id).toBeGreaterThan(0n);
  await waitFor('the deadline policy to release VP0', async () => (await suspendedOn(vp0)) === undefined);
  expect((await c.intercepts.listPendingIntercepts({ name })).intercepts).toEqual([]);
  expect(Buffer.from((await c.memory.readGpa({ name, gpa: SECRET, length: 8 })).data).toString()).toBe('original');
  // The VP acts again.
  expect((await c.guest.readMemory({ name: vp0, gpa: 0x30000n, length: 4 })).outcome?.intercept).toBeUndefined();
});

test('the policy releases a VP whose VtlReturn re-executed an access into a monitor intercept', async () => {
  const { name, vp0 } = await monitored('dl-e2e-vtlreturn', {});
  // Route HIGHER_VTL: the refused write enters VTL1 and waits there as VTL0's pending access.
  await c.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_HIGHER_VTL });
  const first = await c.guest.writeMemory({ name: vp0, gpa: SECRET, data: Buffer.from('vtl0') });
  expect(first.outcome?.activeVtl).toBe(1);
  // Now MONITOR with an ALLOW policy; VTL1 returns without moving VTL0's RIP: the write runs again.
  await c.intercepts.setInterceptRoute({
    name,
    route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR,
    answerDeadlineMs: 200n,
    deadlineAction: A.INTERCEPT_ACTION_ALLOW,
  });
  const back = await c.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 1n });
  expect(back.outcome?.activeVtl).toBe(0);
  expect(back.outcome?.resumedAccess?.interceptedAgain).toBe(true);
  await waitFor('the deadline policy to release VP0', async () => (await suspendedOn(vp0)) === undefined);
  expect(Buffer.from((await c.memory.readGpa({ name, gpa: SECRET, length: 4 })).data).toString()).toBe('vtl0');
});
