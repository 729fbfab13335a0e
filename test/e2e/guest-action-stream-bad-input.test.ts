// RunGuestActions bad input: every refused action is answered with the unary RPC's error (gRPC code,
// ErrorInfo reason = HV_STATUS name) under its sequence, changes nothing, and does not end the
// stream; the per-stream in-flight cap answers RESOURCE_EXHAUSTED without running the action; a
// cancel mid-stream frees the stream and leaves the intercepted access pending for a monitor; roles
// are checked per action as for the unary RPCs (and the stream needs the operator role somewhere).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { status } from '@grpc/grpc-js';
import { type GuestActionSession, type VsmClient, VsmError, connect, pb } from '@vsm/client';
import type { RunningServer } from '@vsm/vsm-v1';
import { MAX_IN_FLIGHT_GUEST_ACTIONS } from '@vsm/vsm-v1/guest-action-stream';
import { MSR, VTL1_LAYOUT, audits, setupVtl1Partition, startSecured, tokenHash, type LogLine } from '../security/support';
import { tempDir } from '../support/tls';
import { waitFor } from '../support/wait';

const clients: VsmClient[] = [];
afterAll(() => {
  for (const c of clients) c.close();
});
const client = (address: string, token?: string) => {
  const c = connect(address, { token, retries: 0, deadlineMs: 10_000 });
  clients.push(c);
  return c;
};

/** A stream whose responses are collected as they come; `end` resolves 'ok' or with the stream's error. */
function open(c: VsmClient) {
  const s: GuestActionSession = c.guest.runGuestActions();
  const got = new Map<bigint, pb.RunGuestActionsResponse['result']>();
  const end = (async (): Promise<'ok' | VsmError> => {
    try {
      for await (const r of s.results) got.set(r.sequence, r.result);
      return 'ok';
    } catch (e) {
      if (e instanceof VsmError) return e;
      throw e;
    }
  })();
  const result = (seq: bigint) => waitFor(`the answer to action ${seq}`, () => got.get(seq));
  return { s, got, end, result };
}
const errorOf = (r: pb.RunGuestActionsResponse['result']) => {
  if (r?.$case !== 'error') throw new Error(`expected an error, got ${JSON.stringify(r?.$case)}`);
  return { code: status[r.value.code], reason: r.value.reason, hvStatus: r.value.hvStatus, message: r.value.message };
};
const readMsr = (name: string) => ({ $case: 'readMsr' as const, value: { name, msr: MSR.GUEST_OS_ID } });
const writeSecret = (name: string) => ({
  $case: 'writeMemory' as const,
  value: { name, gpa: VTL1_LAYOUT.secretGpa, data: Buffer.from('Z'), gva: undefined },
});

describe('RunGuestActions without a policy', () => {
  let srv: RunningServer;
  let lines: LogLine[];
  let c: VsmClient;
  let P: { name: string; vps: string[] };
  beforeAll(async () => {
    ({ srv, lines } = await startSecured());
    c = client(srv.address);
    P = await setupVtl1Partition(c, 'gas-bad', 2, Buffer.from('secret'));
  });
  afterAll(() => srv.shutdown('test'));

  test('unknown partition, bad VP, bad name, oneof unset, bad lengths: per-action errors, the stream goes on', async () => {
    const { s, end, result } = open(c);
    s.send({ sequence: 1n, action: readMsr('partitions/gas-nope/vps/0') });
    s.send({ sequence: 2n, action: readMsr(`${P.name}/vps/2`) });
    s.send({ sequence: 3n, action: readMsr('partitions/gas-bad') });
    s.send({ sequence: 4n }); // no action
    s.send({ sequence: 5n, action: { $case: 'readMemory', value: { name: P.vps[0]!, gpa: 0x50000n, length: 0, gva: undefined } } });
    s.send({ sequence: 6n, action: { $case: 'writeMemory', value: { name: P.vps[0]!, gpa: 0x50000n, data: Buffer.alloc(65537), gva: undefined } } });
    s.send({ sequence: 7n, action: { $case: 'executeMemory', value: { name: P.vps[1]!, gpa: 0x50000n, length: 17, gva: undefined } } });
    s.send({ sequence: 8n, action: { $case: 'hypercall', value: pb.HypercallRequest.fromPartial({ name: P.vps[0]!, input: Buffer.alloc(4097) }) } });
    s.send({ sequence: 9n, action: readMsr(P.vps[0]!) });
    expect(errorOf(await result(1n))).toMatchObject({
      code: 'NOT_FOUND',
      reason: 'HV_STATUS_INVALID_PARTITION_ID',
      hvStatus: pb.HvStatus.HV_STATUS_INVALID_PARTITION_ID,
    });
    expect(errorOf(await result(2n))).toMatchObject({
      code: 'NOT_FOUND',
      reason: 'HV_STATUS_INVALID_VP_INDEX',
      hvStatus: pb.HvStatus.HV_STATUS_INVALID_VP_INDEX,
    });
    expect(errorOf(await result(3n))).toMatchObject({ code: 'INVALID_ARGUMENT', reason: 'HV_STATUS_INVALID_PARAMETER' });
    const unset = errorOf(await result(4n));
    expect(unset).toMatchObject({ code: 'INVALID_ARGUMENT', reason: 'HV_STATUS_INVALID_PARAMETER', hvStatus: pb.HvStatus.HV_STATUS_INVALID_PARAMETER });
    expect(unset.message).toMatch(/action is required/);
    for (const seq of [5n, 6n, 7n, 8n]) expect(errorOf(await result(seq))).toMatchObject({ code: 'INVALID_ARGUMENT', reason: 'HV_STATUS_INVALID_PARAMETER' });
    // The same errors as the unary calls give.
    const unary = await c.guest.readMsr(readMsr('partitions/gas-nope/vps/0').value).then(
      () => undefined,
      (e: VsmError) => e,
    );
    expect(errorOf(await result(1n)).message).toBe(unary?.message);
    // ... and the stream still works.
    const ok = await result(9n);
    expect(ok?.$case).toBe('readMsr');
    if (ok?.$case === 'readMsr') expect(ok.value.value).toBe(1n);
    // Nothing was written by the refused write.
    expect(Buffer.from((await c.memory.readGpa({ name: P.name, gpa: 0x50000n, length: 4 })).data)).toEqual(Buffer.alloc(4));
    s.close();
    expect(await end).toBe('ok');
  });

  test(`more than ${MAX_IN_FLIGHT_GUEST_ACTIONS} unanswered actions: RESOURCE_EXHAUSTED for the excess, not run; the rest answered once a monitor answers`, async () => {
    await c.intercepts.setInterceptRoute({ name: P.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
    const { s, got, end, result } = open(c);
    // VP0's first write waits for a monitor; the other writes queue behind it: the cap is reached.
    for (let i = 0; i < MAX_IN_FLIGHT_GUEST_ACTIONS; i++) s.send({ sequence: BigInt(i), action: writeSecret(P.vps[0]!) });
    const over = BigInt(MAX_IN_FLIGHT_GUEST_ACTIONS);
    s.send({ sequence: over, action: readMsr(P.vps[1]!) }); // another VP: the cap is per stream
    expect(errorOf(await result(over))).toMatchObject({
      code: 'RESOURCE_EXHAUSTED',
      reason: 'HV_STATUS_INSUFFICIENT_BUFFERS',
      hvStatus: pb.HvStatus.HV_STATUS_INSUFFICIENT_BUFFERS,
    });
    expect(got.size).toBe(1);
    // A monitor answers ALLOW to each intercept: every accepted write completes.
    const m = c.intercepts.monitor();
    m.send({ kind: { $case: 'subscribe', value: pb.MonitorSubscribe.fromPartial({ name: P.name }) } });
    let answered = 0;
    const monitor = (async () => {
      for await (const ev of m.events) {
        if (ev.kind?.$case !== 'intercept' || !ev.kind.value.needsReply) continue;
        m.send({
          kind: { $case: 'reply', value: { interceptId: ev.kind.value.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } },
        });
        if (++answered === MAX_IN_FLIGHT_GUEST_ACTIONS) m.close();
      }
    })();
    await waitFor('every accepted write answered', () => got.size === MAX_IN_FLIGHT_GUEST_ACTIONS + 1, 60_000);
    for (let i = 0; i < MAX_IN_FLIGHT_GUEST_ACTIONS; i++) expect(got.get(BigInt(i))?.$case).toBe('writeMemory');
    // Below the cap again: accepted.
    s.send({ sequence: over + 1n, action: readMsr(P.vps[1]!) });
    expect((await result(over + 1n))?.$case).toBe('readMsr');
    s.close();
    expect(await end).toBe('ok');
    await monitor;
    expect(answered).toBe(MAX_IN_FLIGHT_GUEST_ACTIONS);
    await c.intercepts.setInterceptRoute({ name: P.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_HIGHER_VTL });
  });

  test('cancel mid-stream: the stream is freed, the waiting access stays pending for a monitor, new streams work', async () => {
    await c.intercepts.setInterceptRoute({ name: P.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
    const { s, end, result } = open(c);
    s.send({ sequence: 1n, action: readMsr(P.vps[1]!) });
    await result(1n);
    s.send({ sequence: 2n, action: writeSecret(P.vps[0]!) });
    const pending = await waitFor('the write intercepted', async () => {
      const l = await c.intercepts.listPendingIntercepts({ name: P.name });
      return l.intercepts.length === 1 && l.intercepts[0];
    });
    const closedBefore = lines.filter((l) => l.msg === 'stream closed' && l.method === 'RunGuestActions').length;
    s.cancel();
    expect(await end).toBe('ok'); // a cancel the client made is not an error for it
    await waitFor(
      'the service closed the stream',
      () => lines.filter((l) => l.msg === 'stream closed' && l.method === 'RunGuestActions').length > closedBefore,
    );
    expect(lines.filter((l) => l.level >= 50)).toEqual([]); // nothing logged as a server failure
    expect(srv.guard.streams.active).toBe(0);
    // The access is still pending; a monitor's answer applies.
    const m = c.intercepts.monitor();
    m.send({ kind: { $case: 'subscribe', value: pb.MonitorSubscribe.fromPartial({ name: P.name }) } });
    for await (const ev of m.events) {
      if (ev.kind?.$case === 'intercept') {
        expect(ev.kind.value.interceptId).toBe(pending.interceptId);
        m.send({
          kind: { $case: 'reply', value: { interceptId: pending.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } },
        });
      }
      if (ev.kind?.$case === 'replyResult') {
        expect(ev.kind.value.status).toBe(pb.ReplyStatus.REPLY_STATUS_APPLIED);
        break;
      }
    }
    m.cancel();
    expect((await c.intercepts.listPendingIntercepts({ name: P.name })).intercepts).toHaveLength(0);
    // A new stream on the same VP works.
    const again = open(c);
    again.s.send({ sequence: 7n, action: readMsr(P.vps[0]!) });
    expect((await again.result(7n))?.$case).toBe('readMsr');
    again.s.close();
    expect(await again.end).toBe('ok');
  });
});

describe('Monitor replies (batched answers): bad input', () => {
  let srv: RunningServer;
  let c: VsmClient;
  beforeAll(async () => {
    ({ srv } = await startSecured());
    c = client(srv.address);
  });
  afterAll(() => srv.shutdown('test'));
  const ALLOW = pb.InterceptAction.INTERCEPT_ACTION_ALLOW;

  test('more than 4096 replies in one message: INVALID_ARGUMENT, nothing applied', async () => {
    const P = await setupVtl1Partition(c, 'gas-r1', 1, Buffer.from('s'));
    await c.intercepts.setInterceptRoute({ name: P.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
    const { s, result } = open(c);
    s.send({ sequence: 1n, action: writeSecret(P.vps[0]!) });
    const [pending] = await waitFor('the intercept', async () => {
      const l = (await c.intercepts.listPendingIntercepts({ name: P.name })).intercepts;
      return l.length === 1 && l;
    });
    const m = c.intercepts.monitor();
    m.send({ kind: { $case: 'subscribe', value: pb.MonitorSubscribe.fromPartial({ name: P.name, batch: true }) } });
    const replies = Array.from({ length: 4097 }, () => ({ interceptId: pending!.interceptId, action: ALLOW, data: Buffer.alloc(0) }));
    m.send({ kind: { $case: 'replies', value: { replies } } });
    let err: unknown;
    try {
      for await (const _ of m.events);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(VsmError);
    expect({ code: status[(err as VsmError).code], reason: (err as VsmError).reason }).toEqual({
      code: 'INVALID_ARGUMENT',
      reason: 'HV_STATUS_INVALID_PARAMETER',
    });
    expect((err as VsmError).message).toMatch(/at most 4096/);
    expect((await c.intercepts.listPendingIntercepts({ name: P.name })).intercepts).toHaveLength(1); // not applied
    // A proper answer still applies.
    const m2 = c.intercepts.monitor();
    m2.send({ kind: { $case: 'subscribe', value: pb.MonitorSubscribe.fromPartial({ name: P.name }) } });
    m2.send({ kind: { $case: 'replies', value: { replies: [{ interceptId: pending!.interceptId, action: ALLOW, data: Buffer.alloc(0) }] } } });
    const got: pb.MonitorResponse[] = [];
    const reader = (async () => {
      for await (const ev of m2.events) got.push(ev);
    })();
    expect((await result(1n))?.$case).toBe('writeMemory');
    m2.close();
    await reader;
    const rr = got.find((ev) => ev.kind?.$case === 'replyResults');
    expect(rr?.kind?.$case === 'replyResults' && rr.kind.value.results.map((r) => r.status)).toEqual([pb.ReplyStatus.REPLY_STATUS_APPLIED]);
    s.close();
  });

  test('a CRASH among the replies: the ones after it are not applied (INVALID), then the stream ends with the partition', async () => {
    const P = await setupVtl1Partition(c, 'gas-r2', 2, Buffer.from('s'));
    await c.intercepts.setInterceptRoute({ name: P.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
    const { s, result } = open(c);
    for (const [i, vp] of P.vps.entries()) s.send({ sequence: BigInt(i), action: writeSecret(vp) });
    const ids = await waitFor('two intercepts', async () => {
      const l = (await c.intercepts.listPendingIntercepts({ name: P.name })).intercepts;
      return l.length === 2 && l.map((x) => x.interceptId);
    });
    const m = c.intercepts.monitor();
    m.send({ kind: { $case: 'subscribe', value: pb.MonitorSubscribe.fromPartial({ name: P.name, batch: true }) } });
    m.send({
      kind: {
        $case: 'replies',
        value: {
          replies: [
            { interceptId: ids[0]!, action: pb.InterceptAction.INTERCEPT_ACTION_CRASH, data: Buffer.alloc(0) },
            { interceptId: ids[1]!, action: ALLOW, data: Buffer.alloc(0) },
          ],
        },
      },
    });
    let results: pb.ReplyResult[] | undefined;
    let err: unknown;
    try {
      for await (const ev of m.events) if (ev.kind?.$case === 'replyResults') results = ev.kind.value.results;
    } catch (e) {
      err = e;
    }
    expect(results?.map((r) => r.status)).toEqual([pb.ReplyStatus.REPLY_STATUS_APPLIED, pb.ReplyStatus.REPLY_STATUS_INVALID]);
    expect((err as VsmError).code).toBe(status.FAILED_PRECONDITION);
    // Both guest actions end: the partition was stopped.
    for (const seq of [0n, 1n]) {
      const r = await result(seq);
      expect(r?.$case === 'writeMemory' && r.value.outcome?.partitionCrashed).toBe(true);
    }
    s.close();
  });
});

describe('RunGuestActions with a policy: each action authorized as its unary RPC', () => {
  let dir: string;
  let srv: RunningServer;
  let lines: LogLine[];
  beforeAll(async () => {
    dir = tempDir('vsm-gas-authz-');
    const file = path.join(dir, 'policy.json');
    fs.writeFileSync(
      file,
      JSON.stringify({
        principals: {
          boss: { tokens: [tokenHash('boss-token')], roles: { 'partitions/*': ['admin'] } },
          op: { tokens: [tokenHash('op-token')], roles: { 'partitions/gas-a*': ['operator'], 'partitions/*': ['viewer'] } },
          viewer: { tokens: [tokenHash('viewer-token')], roles: { 'partitions/*': ['viewer', 'monitor'] } },
        },
      }),
    );
    ({ srv, lines } = await startSecured({ security: { authzPolicy: { file } } }));
    const boss = client(srv.address, 'boss-token');
    await setupVtl1Partition(boss, 'gas-a1', 1, Buffer.from('a'));
    await setupVtl1Partition(boss, 'gas-b1', 1, Buffer.from('b'));
  });
  afterAll(async () => {
    await srv.shutdown('test');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('an operator of gas-a*: its actions on gas-a1 run, those on gas-b1 are PERMISSION_DENIED (audit-logged), same stream', async () => {
    const { s, end, result } = open(client(srv.address, 'op-token'));
    s.send({ sequence: 1n, action: readMsr('partitions/gas-b1/vps/0') });
    s.send({ sequence: 2n, action: readMsr('partitions/gas-a1/vps/0') });
    s.send({ sequence: 3n, action: { $case: 'writeMsr', value: { name: 'partitions/gas-b1/vps/0', msr: MSR.GUEST_OS_ID, value: 9n } } });
    expect(errorOf(await result(1n))).toMatchObject({
      code: 'PERMISSION_DENIED',
      reason: 'HV_STATUS_ACCESS_DENIED',
      hvStatus: pb.HvStatus.HV_STATUS_ACCESS_DENIED,
    });
    expect((await result(2n))?.$case).toBe('readMsr');
    expect(errorOf(await result(3n)).message).toMatch(/op may not call vsm.v1.GuestService\/WriteMsr on partitions\/gas-b1 \(needs role operator\)/);
    s.close();
    expect(await end).toBe('ok');
    const denied = audits(lines, 'deny').filter((l) => l.principal === 'op');
    expect(denied.map((l) => [l.method, l.resource])).toEqual([
      ['vsm.v1.GuestService/ReadMsr', 'partitions/gas-b1'],
      ['vsm.v1.GuestService/WriteMsr', 'partitions/gas-b1'],
    ]);
    // The refused write changed nothing.
    const boss = client(srv.address, 'boss-token');
    const r = await boss.guest.readMsr({ name: 'partitions/gas-b1/vps/0', msr: MSR.GUEST_OS_ID });
    expect(r.value).toBe(1n);
  });

  test('no operator role anywhere: the stream is refused PERMISSION_DENIED; no credentials: UNAUTHENTICATED', async () => {
    const v = open(client(srv.address, 'viewer-token'));
    v.s.send({ sequence: 1n, action: readMsr('partitions/gas-a1/vps/0') });
    const e = await v.end;
    expect(e).toBeInstanceOf(VsmError);
    expect({ code: status[(e as VsmError).code], reason: (e as VsmError).reason }).toEqual({ code: 'PERMISSION_DENIED', reason: 'HV_STATUS_ACCESS_DENIED' });
    expect(v.got.size).toBe(0);
    const anon = open(client(srv.address));
    anon.s.send({ sequence: 1n, action: readMsr('partitions/gas-a1/vps/0') });
    const e2 = await anon.end;
    expect((e2 as VsmError).code).toBe(status.UNAUTHENTICATED);
    expect(anon.got.size).toBe(0);
  });
});
