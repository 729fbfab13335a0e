// RunGuestActions bad input: every refused action is answered with the unary RPC's error (gRPC code,
// ErrorInfo reason = HV_STATUS name) under its sequence, changes nothing, and does not end the
// stream; the per-stream in-flight cap answers RESOURCE_EXHAUSTED without running the action; a
// cancel mid-stream frees the stream and leaves the intercepted access pending for a monitor; roles
// are checked per action as for the unary RPCs (and the stream needs the operator role somewhere).
// Batched form (`batch` messages, answers in `results` messages): a bad entry (nested batch, no
// action, bad VP, over the cap, not authorized) is answered on its own and the other entries run; an
// empty batch is answered by nothing; a batch of more than 256 entries or with a non-zero outer
// sequence ends the stream INVALID_ARGUMENT with none of its entries run; big answers are split over
// `results` messages of about 1 MiB; single actions on the same stream are answered as before.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { status } from '@grpc/grpc-js';
import { type GuestActionSession, type VsmClient, VsmError, connect, pb } from '@vsm/client';
import type { RunningServer } from '@vsm/vsm-v1';
import { MAX_GUEST_ACTIONS_PER_BATCH, MAX_IN_FLIGHT_GUEST_ACTIONS, RESULTS_MESSAGE_BYTES } from '@vsm/vsm-v1/guest-action-stream';
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

/**
 * A stream whose responses are collected as they come (the answers inside `results` messages by
 * their own sequence; `messages` as received); `end` resolves 'ok' or with the stream's error.
 */
function open(c: VsmClient) {
  const s: GuestActionSession = c.guest.runGuestActions();
  const got = new Map<bigint, pb.RunGuestActionsResponse['result']>();
  const messages: pb.RunGuestActionsResponse[] = [];
  const end = (async (): Promise<'ok' | VsmError> => {
    try {
      for await (const m of s.results) {
        messages.push(m);
        for (const r of m.result?.$case === 'results' ? m.result.value.results : [m]) {
          if (got.has(r.sequence)) throw new Error(`two answers to action ${r.sequence}`);
          got.set(r.sequence, r.result);
        }
      }
      return 'ok';
    } catch (e) {
      if (e instanceof VsmError) return e;
      throw e;
    }
  })();
  const result = (seq: bigint) => waitFor(`the answer to action ${seq}`, () => got.get(seq));
  /** Sends `actions` as one batch message. */
  const batch = (actions: Partial<pb.RunGuestActionsRequest>[], sequence = 0n) =>
    s.send({ sequence, action: { $case: 'batch', value: { actions: actions.map((a) => pb.RunGuestActionsRequest.fromPartial(a)) } } });
  /** The sequences answered inside `results` messages, and those answered alone. */
  const layout = () => ({
    inResults: messages.flatMap((m) => (m.result?.$case === 'results' ? m.result.value.results.map((r) => r.sequence) : [])),
    alone: messages.filter((m) => m.result?.$case !== 'results').map((m) => m.sequence),
  });
  return { s, got, messages, end, result, batch, layout };
}
const errorOf = (r: pb.RunGuestActionsResponse['result']) => {
  if (r?.$case !== 'error') throw new Error(`expected an error, got ${JSON.stringify(r?.$case)}`);
  return { code: status[r.value.code], reason: r.value.reason, hvStatus: r.value.hvStatus, message: r.value.message };
};
const readMsr = (name: string) => ({ $case: 'readMsr' as const, value: { name, msr: MSR.GUEST_OS_ID } });
const writePlain = (name: string, gpa: bigint, data: Buffer) => ({ $case: 'writeMemory' as const, value: { name, gpa, data, gva: undefined } });
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

describe('RunGuestActions batches: bad input', () => {
  let srv: RunningServer;
  let c: VsmClient;
  let P: { name: string; vps: string[] };
  beforeAll(async () => {
    ({ srv } = await startSecured());
    c = client(srv.address);
    P = await setupVtl1Partition(c, 'gas-batch', 2, Buffer.from('secret'));
  });
  afterAll(() => srv.shutdown('test'));
  const memory = async (gpa: bigint, length: number) => Buffer.from((await c.memory.readGpa({ name: P.name, gpa, length })).data);

  test('entries that are batches, have no action or name a bad VP: answered INVALID_ARGUMENT / NOT_FOUND in `results`; the other entries run, nothing of a nested batch does', async () => {
    const { s, end, result, batch, messages, layout } = open(c);
    batch([
      { sequence: 1n, action: readMsr(P.vps[0]!) },
      { sequence: 2n, action: { $case: 'batch', value: { actions: [{ sequence: 20n, action: writePlain(P.vps[0]!, 0x60000n, Buffer.from('N')) }] } } },
      { sequence: 3n },
      { sequence: 4n, action: readMsr(`${P.name}/vps/2`) },
      { sequence: 5n, action: writePlain(P.vps[1]!, 0x61000n, Buffer.from('ok')) },
      { sequence: 6n, action: { $case: 'readMemory', value: { name: P.vps[1]!, gpa: 0x61000n, length: 2, gva: undefined } } },
    ]);
    const nested = errorOf(await result(2n));
    expect(nested).toMatchObject({ code: 'INVALID_ARGUMENT', reason: 'HV_STATUS_INVALID_PARAMETER', hvStatus: pb.HvStatus.HV_STATUS_INVALID_PARAMETER });
    expect(nested.message).toMatch(/may not be a batch itself/);
    const unset = errorOf(await result(3n));
    expect(unset).toMatchObject({ code: 'INVALID_ARGUMENT', reason: 'HV_STATUS_INVALID_PARAMETER', hvStatus: pb.HvStatus.HV_STATUS_INVALID_PARAMETER });
    expect(unset.message).toMatch(/action is required/);
    expect(errorOf(await result(4n))).toMatchObject({ code: 'NOT_FOUND', reason: 'HV_STATUS_INVALID_VP_INDEX' });
    const msr = await result(1n);
    expect(msr?.$case === 'readMsr' && msr.value.value).toBe(1n);
    expect((await result(5n))?.$case).toBe('writeMemory');
    const read = await result(6n); // after VP1's write (same VP: in order)
    expect(read?.$case === 'readMemory' && Buffer.from(read.value.data).toString()).toBe('ok');
    s.close();
    expect(await end).toBe('ok');
    // The entries' answers came only in `results` messages (sequence 0); the nested batch's entry never ran.
    expect(layout()).toEqual({ inResults: expect.arrayContaining([1n, 2n, 3n, 4n, 5n, 6n]), alone: [] });
    expect(layout().inResults).toHaveLength(6);
    expect(messages.every((m) => m.sequence === 0n)).toBe(true);
    expect(await memory(0x60000n, 1)).toEqual(Buffer.alloc(1));
    expect(await memory(0x61000n, 2)).toEqual(Buffer.from('ok'));
  });

  test('answers of one turn go out together: a batch on the in-process emulator is answered in one `results` message', async () => {
    const { s, end, batch, messages } = open(c);
    batch(Array.from({ length: 8 }, (_, i) => ({ sequence: BigInt(i), action: readMsr(P.vps[i % 2]!) })));
    s.close();
    expect(await end).toBe('ok');
    expect(messages).toHaveLength(1);
    const m = messages[0]!;
    expect(m.result?.$case === 'results' && m.result.value.results.map((r) => [r.sequence, r.result?.$case])).toEqual(
      Array.from({ length: 8 }, (_, i) => [BigInt(i), 'readMsr']),
    );
  });

  test('an empty batch is answered by nothing; single actions on the same stream are answered one per message as before', async () => {
    const { s, end, got, batch, messages, layout } = open(c);
    s.send({ sequence: 1n, action: readMsr(P.vps[0]!) });
    batch([]);
    s.send({ sequence: 2n, action: readMsr(P.vps[1]!) });
    batch([{ sequence: 3n, action: readMsr(P.vps[1]!) }]);
    s.send({ sequence: 4n, action: readMsr(P.vps[0]!) });
    s.send({ sequence: 5n }); // a single without action: answered alone, as before
    s.close();
    expect(await end).toBe('ok');
    expect([...got.keys()].sort()).toEqual([1n, 2n, 3n, 4n, 5n]);
    expect(layout()).toEqual({ inResults: [3n], alone: expect.arrayContaining([1n, 2n, 4n, 5n]) });
    expect(messages).toHaveLength(5); // 4 alone + one `results`; nothing for the empty batch
    for (const seq of [1n, 2n, 3n, 4n]) expect(got.get(seq)?.$case).toBe('readMsr');
    expect(errorOf(got.get(5n))).toMatchObject({ code: 'INVALID_ARGUMENT', reason: 'HV_STATUS_INVALID_PARAMETER' });
    // Per VP the answers come in the order sent: VP1's 2 before 3, VP0's 1 before 4.
    const order = messages.flatMap((m) => (m.result?.$case === 'results' ? m.result.value.results : [m])).map((r) => r.sequence);
    expect(order.indexOf(2n)).toBeLessThan(order.indexOf(3n));
    expect(order.indexOf(1n)).toBeLessThan(order.indexOf(4n));
  });

  test(`a batch over the in-flight cap (${MAX_IN_FLIGHT_GUEST_ACTIONS}): its entries beyond it RESOURCE_EXHAUSTED and not run, those before run`, async () => {
    await c.intercepts.setInterceptRoute({ name: P.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
    const { s, got, end, result, batch } = open(c);
    // VP0's first write waits for a monitor, the other 249 queue behind it: 250 in flight.
    const held = MAX_IN_FLIGHT_GUEST_ACTIONS - 6;
    batch(Array.from({ length: held }, (_, i) => ({ sequence: BigInt(i), action: writeSecret(P.vps[0]!) })));
    // Ten writes on VP1 in one batch: 6 fit under the cap, 4 do not.
    batch(Array.from({ length: 10 }, (_, k) => ({ sequence: 1000n + BigInt(k), action: writePlain(P.vps[1]!, 0x70000n + BigInt(k), Buffer.from([k + 1])) })));
    for (let k = 0; k < 10; k++) {
      const r = await result(1000n + BigInt(k));
      if (k < 6) expect(r?.$case).toBe('writeMemory');
      else
        expect(errorOf(r)).toMatchObject({
          code: 'RESOURCE_EXHAUSTED',
          reason: 'HV_STATUS_INSUFFICIENT_BUFFERS',
          hvStatus: pb.HvStatus.HV_STATUS_INSUFFICIENT_BUFFERS,
        });
    }
    expect(await memory(0x70000n, 10)).toEqual(Buffer.from([1, 2, 3, 4, 5, 6, 0, 0, 0, 0]));
    expect(got.size).toBe(10); // VP0's writes still wait
    // A batched monitor answers ALLOW to everything: every accepted write completes.
    const m = c.intercepts.monitor();
    m.send({ kind: { $case: 'subscribe', value: pb.MonitorSubscribe.fromPartial({ name: P.name, batch: true }) } });
    let answered = 0;
    const monitor = (async () => {
      for await (const ev of m.events) {
        const xs = ev.kind?.$case === 'intercepts' ? ev.kind.value.intercepts : ev.kind?.$case === 'intercept' ? [ev.kind.value] : [];
        const replies = xs
          .filter((x) => x.needsReply)
          .map((x) => ({ interceptId: x.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) }));
        if (replies.length) m.send({ kind: { $case: 'replies', value: { replies } } });
        answered += replies.length;
        if (answered === held) m.close();
      }
    })();
    await waitFor('every accepted write answered', () => got.size === held + 10, 60_000);
    for (let i = 0; i < held; i++) expect(got.get(BigInt(i))?.$case).toBe('writeMemory');
    // Below the cap again: a batch is accepted whole.
    batch([{ sequence: 2000n, action: readMsr(P.vps[1]!) }]);
    expect((await result(2000n))?.$case).toBe('readMsr');
    s.close();
    expect(await end).toBe('ok');
    await monitor;
    expect(answered).toBe(held);
    await c.intercepts.setInterceptRoute({ name: P.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_HIGHER_VTL });
  });

  test(`${MAX_GUEST_ACTIONS_PER_BATCH} entries are taken; ${MAX_GUEST_ACTIONS_PER_BATCH + 1} end the stream INVALID_ARGUMENT with none of them run`, async () => {
    const { got, end, batch, messages } = open(c);
    batch(
      Array.from({ length: MAX_GUEST_ACTIONS_PER_BATCH }, (_, k) => ({
        sequence: BigInt(k),
        action: writePlain(P.vps[k % 2]!, 0x80000n + BigInt(k), Buffer.from([1])),
      })),
    );
    await waitFor(`${MAX_GUEST_ACTIONS_PER_BATCH} answers`, () => got.size === MAX_GUEST_ACTIONS_PER_BATCH);
    expect([...got.values()].every((r) => r?.$case === 'writeMemory')).toBe(true);
    expect(messages.every((m) => m.result?.$case === 'results' && m.result.value.results.length <= MAX_GUEST_ACTIONS_PER_BATCH)).toBe(true);
    batch(
      Array.from({ length: MAX_GUEST_ACTIONS_PER_BATCH + 1 }, (_, k) => ({
        sequence: 1000n + BigInt(k),
        action: writePlain(P.vps[k % 2]!, 0x90000n + BigInt(k), Buffer.from([1])),
      })),
    );
    const e = await end;
    expect(e).toBeInstanceOf(VsmError);
    expect({ code: status[(e as VsmError).code], reason: (e as VsmError).reason }).toEqual({ code: 'INVALID_ARGUMENT', reason: 'HV_STATUS_INVALID_PARAMETER' });
    expect((e as VsmError).message).toMatch(/a batch holds 257 actions, at most 256/);
    expect(got.size).toBe(MAX_GUEST_ACTIONS_PER_BATCH);
    expect(await memory(0x80000n, MAX_GUEST_ACTIONS_PER_BATCH)).toEqual(Buffer.alloc(MAX_GUEST_ACTIONS_PER_BATCH, 1));
    expect(await memory(0x90000n, MAX_GUEST_ACTIONS_PER_BATCH + 1)).toEqual(Buffer.alloc(MAX_GUEST_ACTIONS_PER_BATCH + 1));
  });

  test('a batch whose own sequence is not 0 ends the stream INVALID_ARGUMENT with none of its entries run; answers given before it arrive', async () => {
    const { s, end, result, batch } = open(c);
    s.send({ sequence: 1n, action: readMsr(P.vps[0]!) });
    expect((await result(1n))?.$case).toBe('readMsr');
    batch([{ sequence: 2n, action: writePlain(P.vps[0]!, 0x91000n, Buffer.from('S')) }], 7n);
    const e = await end;
    expect(e).toBeInstanceOf(VsmError);
    expect({ code: status[(e as VsmError).code], reason: (e as VsmError).reason }).toEqual({ code: 'INVALID_ARGUMENT', reason: 'HV_STATUS_INVALID_PARAMETER' });
    expect((e as VsmError).message).toMatch(/own sequence must be 0/);
    expect(await memory(0x91000n, 1)).toEqual(Buffer.alloc(1));
    // A new stream works.
    const again = open(c);
    again.batch([{ sequence: 3n, action: readMsr(P.vps[0]!) }]);
    expect((await again.result(3n))?.$case).toBe('readMsr');
    again.s.close();
    expect(await again.end).toBe('ok');
  });

  test(`big answers: a batch of ${MAX_GUEST_ACTIONS_PER_BATCH} reads of 64 KiB (16 MiB) is answered whole, in \`results\` messages of about 1 MiB; the stream is not ended for lagging`, async () => {
    const page = Buffer.alloc(65536);
    for (let i = 0; i < page.length; i++) page[i] = i & 0xff;
    await c.memory.writeGpa({ name: P.name, gpa: 0x100000n, data: page });
    const { s, got, end, batch, messages } = open(c);
    batch(
      Array.from({ length: MAX_GUEST_ACTIONS_PER_BATCH }, (_, k) => ({
        sequence: BigInt(k),
        action: { $case: 'readMemory' as const, value: { name: P.vps[k % 2]!, gpa: 0x100000n, length: 65536, gva: undefined } },
      })),
    );
    s.close();
    expect(await end).toBe('ok');
    expect(got.size).toBe(MAX_GUEST_ACTIONS_PER_BATCH);
    for (const r of got.values()) expect(r?.$case === 'readMemory' && Buffer.from(r.value.data).equals(page)).toBe(true);
    const sizes = messages.map((m) => pb.RunGuestActionsResponse.encode(m).finish().length);
    expect(messages.length).toBeGreaterThanOrEqual(16);
    for (const n of sizes) expect(n).toBeLessThanOrEqual(RESULTS_MESSAGE_BYTES + 4096);
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

  test('in a batch: the entries on gas-b1 are PERMISSION_DENIED (audit-logged), the others run', async () => {
    const before = audits(lines, 'deny').filter((l) => l.principal === 'op').length;
    const { s, end, result, batch } = open(client(srv.address, 'op-token'));
    batch([
      { sequence: 1n, action: { $case: 'writeMsr', value: { name: 'partitions/gas-b1/vps/0', msr: MSR.GUEST_OS_ID, value: 7n } } },
      { sequence: 2n, action: { $case: 'writeMsr', value: { name: 'partitions/gas-a1/vps/0', msr: MSR.GUEST_OS_ID, value: 5n } } },
      { sequence: 3n, action: readMsr('partitions/gas-b1/vps/0') },
      { sequence: 4n, action: readMsr('partitions/gas-a1/vps/0') },
    ]);
    const denied = errorOf(await result(1n));
    expect(denied).toMatchObject({ code: 'PERMISSION_DENIED', reason: 'HV_STATUS_ACCESS_DENIED', hvStatus: pb.HvStatus.HV_STATUS_ACCESS_DENIED });
    expect(denied.message).toMatch(/op may not call vsm.v1.GuestService\/WriteMsr on partitions\/gas-b1 \(needs role operator\)/);
    expect(errorOf(await result(3n))).toMatchObject({ code: 'PERMISSION_DENIED', reason: 'HV_STATUS_ACCESS_DENIED' });
    expect((await result(2n))?.$case).toBe('writeMsr');
    const r4 = await result(4n);
    expect(r4?.$case === 'readMsr' && r4.value.value).toBe(5n); // after the write on the same VP
    s.close();
    expect(await end).toBe('ok');
    expect(
      audits(lines, 'deny')
        .filter((l) => l.principal === 'op')
        .slice(before)
        .map((l) => [l.method, l.resource]),
    ).toEqual([
      ['vsm.v1.GuestService/WriteMsr', 'partitions/gas-b1'],
      ['vsm.v1.GuestService/ReadMsr', 'partitions/gas-b1'],
    ]);
    const boss = client(srv.address, 'boss-token');
    expect((await boss.guest.readMsr({ name: 'partitions/gas-b1/vps/0', msr: MSR.GUEST_OS_ID })).value).toBe(1n); // the refused write changed nothing
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
