// Conformance: GuestService.RunGuestActions (proto/vsm/v1/guest.proto) gives exactly what the unary
// guest-action RPCs give. One scenario - MSRs, a hypercall, VtlCall/VtlReturn through the page,
// reads/writes/fetches (one intercepted by VTL1's protection, route HIGHER_VTL), actions that fail
// (bad VP, unknown partition, bad lengths) - runs on two identical partitions: once as unary calls,
// once through one stream with both VPs' actions sent at once; the per-action results, intercepts and
// errors and the VPs' final state must be the same; a third partition runs it through `batch`
// messages (answers in `results` messages) with the same per-action outcomes. Then route MONITOR: an
// action waiting for the monitor holds back only its own VP, sent alone or in a batch. Runs on the
// emulator and with VSM_BACKEND=agent (KVM).
import { type VsmClient, VsmError, pb } from '@vsm/client';
import { type Harness, startHarness } from '../support/server';
import { MSR, VTL1_LAYOUT, setupVtl1Partition } from '../security/support';

/** One action (not a batch). */
type Action = Exclude<NonNullable<pb.RunGuestActionsRequest['action']>, { $case: 'batch' }>;
type Result = NonNullable<pb.RunGuestActionsResponse['result']>;

/** The per-action answers of one stream message: a `results` message's entries, or the message itself. */
const answersOf = (r: pb.RunGuestActionsResponse): pb.RunGuestActionsResponse[] => (r.result?.$case === 'results' ? r.result.value.results : [r]);

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h.stop();
});

const SECRET = Buffer.from('stream-secret');
const PLAIN = 0x50000n;

/** One VP's part of the scenario (it starts in VTL0; VTL1 protects the secret page no-access). */
function vpScript(vp: string, i: number): Action[] {
  return [
    { $case: 'readMsr', value: { name: vp, msr: MSR.GUEST_OS_ID } },
    { $case: 'writeMsr', value: { name: vp, msr: 0x40000099, value: 1n } }, // unknown synthetic MSR: #GP
    { $case: 'writeMemory', value: { name: vp, gpa: PLAIN + BigInt(i) * 0x1000n, data: Buffer.from(`vp${i}`), gva: undefined } },
    { $case: 'readMemory', value: { name: vp, gpa: PLAIN + BigInt(i) * 0x1000n, length: 3, gva: undefined } },
    { $case: 'executeMemory', value: { name: vp, gpa: PLAIN, length: 0, gva: undefined } }, // bad length: INVALID_ARGUMENT
    { $case: 'writeMemory', value: { name: vp, gpa: PLAIN, data: Buffer.alloc(0), gva: undefined } }, // empty: INVALID_ARGUMENT
    { $case: 'hypercall', value: pb.HypercallRequest.fromPartial({ name: vp, control: 0xffffn }) }, // unknown call code
    // VTL0 reads the protected page: intercepted, delivered to VTL1 (VTL switch).
    { $case: 'readMemory', value: { name: vp, gpa: VTL1_LAYOUT.secretGpa, length: SECRET.length, gva: undefined } },
    { $case: 'readMsr', value: { name: vp, msr: MSR.SIMP } },
    { $case: 'readMemory', value: { name: vp, gpa: VTL1_LAYOUT.secretGpa, length: SECRET.length, gva: undefined } },
    { $case: 'callHypercallPage', value: { name: vp, offset: 0x26, rcx: 1n, rdx: undefined, r8: undefined } }, // VtlReturn
    { $case: 'executeMemory', value: { name: vp, gpa: PLAIN, length: 4, gva: undefined } },
    { $case: 'writeControlRegister', value: { name: vp, register: pb.ControlRegister.CONTROL_REGISTER_CR4, value: 0x20n | 0x200n } }, // PAE | OSFXSR
  ];
}

/** Actions that fail whichever VP: a VP index out of range, a partition that does not exist, a bad name. */
function errorScript(name: string): Action[] {
  return [
    { $case: 'readMsr', value: { name: `${name}/vps/7`, msr: MSR.GUEST_OS_ID } },
    { $case: 'writeMsr', value: { name: 'partitions/gas-nope/vps/0', msr: MSR.GUEST_OS_ID, value: 1n } },
    { $case: 'readMemory', value: { name: 'not-a-vp', gpa: 0n, length: 1, gva: undefined } },
  ];
}

/** The action as its unary RPC: the response, or the error as the stream reports one. */
async function unary(c: VsmClient, a: Action): Promise<Result> {
  try {
    switch (a.$case) {
      case 'writeMsr':
        return { $case: a.$case, value: await c.guest.writeMsr(a.value) };
      case 'readMsr':
        return { $case: a.$case, value: await c.guest.readMsr(a.value) };
      case 'hypercall':
        return { $case: a.$case, value: await c.guest.hypercall(a.value) };
      case 'callHypercallPage':
        return { $case: a.$case, value: await c.guest.callHypercallPage(a.value) };
      case 'readMemory':
        return { $case: a.$case, value: await c.guest.readMemory(a.value) };
      case 'writeMemory':
        return { $case: a.$case, value: await c.guest.writeMemory(a.value) };
      case 'executeMemory':
        return { $case: a.$case, value: await c.guest.executeMemory(a.value) };
      case 'writeControlRegister':
        return { $case: a.$case, value: await c.guest.writeControlRegister(a.value) };
    }
  } catch (e) {
    if (!(e instanceof VsmError)) throw e;
    return { $case: 'error', value: { code: e.code, message: e.message, reason: e.reason ?? '', hvStatus: 0 } };
  }
}

/** Sends every action at once on one stream and returns the results by sequence. */
async function streamed(c: VsmClient, actions: Action[]): Promise<{ results: Result[]; order: number[] }> {
  const s = c.guest.runGuestActions();
  for (const [i, action] of actions.entries()) s.send({ sequence: BigInt(i), action });
  s.close();
  const results: Result[] = [];
  const order: number[] = [];
  for await (const r of s.results) {
    order.push(Number(r.sequence));
    results[Number(r.sequence)] = r.result!;
  }
  return { results, order };
}

/**
 * Sends the actions in `batch` messages of `size` (all at once) and returns the results by sequence,
 * and the stream's messages (each a `results` message for batched actions).
 */
async function batched(c: VsmClient, actions: Action[], size: number): Promise<{ results: Result[]; messages: pb.RunGuestActionsResponse[] }> {
  const s = c.guest.runGuestActions();
  for (let i = 0; i < actions.length; i += size)
    s.send({ action: { $case: 'batch', value: { actions: actions.slice(i, i + size).map((action, k) => ({ sequence: BigInt(i + k), action })) } } });
  s.close();
  const results: Result[] = [];
  const messages: pb.RunGuestActionsResponse[] = [];
  for await (const m of s.results) {
    messages.push(m);
    for (const r of answersOf(m)) {
      expect(results[Number(r.sequence)]).toBeUndefined(); // one answer per action
      results[Number(r.sequence)] = r.result!;
    }
  }
  return { results, messages };
}

/** Comparable form: partition ids and intercept ids (allocation order differs between runs) left out; hv_status only on the stream's side. */
function norm(x: unknown, ids: string[]): unknown {
  return JSON.parse(
    JSON.stringify(x, (k, v) => {
      if (k === 'interceptId' || k === 'hvStatus') return undefined;
      if (typeof v === 'bigint') return `${v}n`;
      if (v && typeof v === 'object' && v.type === 'Buffer') return Buffer.from(v.data).toString('hex');
      if (v instanceof Uint8Array) return Buffer.from(v).toString('hex');
      if (typeof v === 'string') return ids.reduce((s, id) => s.split(id).join('<p>'), v);
      return v;
    }),
  );
}

describe('RunGuestActions against the unary guest actions', () => {
  test('one scenario three ways (unary, stream, stream of batches): the same results, intercepts, errors and final VP state', async () => {
    const tag = `${h.backend.slice(0, 3)}${Date.now() % 100000}`;
    const A = await setupVtl1Partition(h.client, `gas-u-${tag}`, 2, SECRET);
    const B = await setupVtl1Partition(h.client, `gas-s-${tag}`, 2, SECRET);
    const C = await setupVtl1Partition(h.client, `gas-t-${tag}`, 2, SECRET);
    const script = (p: { name: string; vps: string[] }) => {
      // Interleaved: VP0, VP1, VP0, ... (each VP's own actions stay in their order).
      const per = p.vps.map((vp, i) => vpScript(vp, i));
      const out: Action[] = [];
      for (let k = 0; k < per[0]!.length; k++) for (const s of per) out.push(s[k]!);
      return [...out, ...errorScript(p.name)];
    };
    const viaUnary: Result[] = [];
    for (const a of script(A)) viaUnary.push(await unary(h.client, a));
    const { results: viaStream } = await streamed(h.client, script(B));
    // Batches of 5: each mixes both VPs and some cut a VP's sequence across two batches.
    const { results: viaBatches, messages } = await batched(h.client, script(C), 5);
    const ids = [A.name.split('/')[1]!, B.name.split('/')[1]!, C.name.split('/')[1]!];

    expect(viaStream).toHaveLength(viaUnary.length);
    expect(norm(viaStream, ids)).toEqual(norm(viaUnary, ids));
    expect(viaBatches).toHaveLength(viaUnary.length);
    expect(norm(viaBatches, ids)).toEqual(norm(viaUnary, ids));
    expect(norm(viaBatches, ids)).toEqual(norm(viaStream, ids)); // hv_status included
    // Batched actions are answered in `results` messages only (outer sequence 0, never empty).
    for (const m of messages) {
      expect(m.result?.$case).toBe('results');
      expect(m.sequence).toBe(0n);
      expect(answersOf(m).length).toBeGreaterThan(0);
    }
    // The scenario did what it claims (so equality is not between two empty answers).
    const cases = viaStream.map((r) => r.$case);
    expect(cases.filter((c) => c === 'error')).toHaveLength(2 * 2 + 3);
    const intercepted = viaStream.filter((r) => r.$case === 'readMemory' && r.value.outcome?.intercept);
    expect(intercepted).toHaveLength(2);
    const crWrites = viaStream.filter((r) => r.$case === 'writeControlRegister');
    expect(crWrites).toHaveLength(2);
    for (const r of crWrites) if (r.$case === 'writeControlRegister') expect(r.value.outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_UNSPECIFIED);
    for (const r of intercepted) if (r.$case === 'readMemory') expect(r.value.outcome?.vtlSwitch?.toVtl).toBe(1);
    const secretReads = viaStream.filter((r) => r.$case === 'readMemory' && Buffer.from(r.value.data).equals(SECRET));
    expect(secretReads).toHaveLength(2); // read in VTL1
    const errors = viaStream.filter((r) => r.$case === 'error').map((r) => (r.$case === 'error' ? r.value : undefined)!);
    expect(errors.map((e) => e.reason)).toEqual([
      'HV_STATUS_INVALID_PARAMETER',
      'HV_STATUS_INVALID_PARAMETER',
      'HV_STATUS_INVALID_PARAMETER',
      'HV_STATUS_INVALID_PARAMETER',
      'HV_STATUS_INVALID_VP_INDEX',
      'HV_STATUS_INVALID_PARTITION_ID',
      'HV_STATUS_INVALID_PARAMETER',
    ]);
    // The stream's error carries the numeric HV_STATUS of its reason.
    expect(errors[4]!.hvStatus).toBe(pb.HvStatus.HV_STATUS_INVALID_VP_INDEX);
    expect(errors[4]!.code).toBe(5); // NOT_FOUND

    for (let i = 0; i < 2; i++) {
      const [u, s, t] = await Promise.all([A, B, C].map((p) => h.client.vps.getVirtualProcessor({ name: p.vps[i]! })));
      expect(norm(s, ids)).toEqual(norm(u, ids));
      expect(norm(t, ids)).toEqual(norm(u, ids));
      const regs = await Promise.all(
        [A, B, C].map((p) =>
          h.client.vps.getVpRegisters({
            name: p.vps[i]!,
            vtl: 0,
            names: [pb.HvRegisterName.HV_REGISTER_NAME_X64_RIP, pb.HvRegisterName.HV_REGISTER_NAME_X64_RAX],
          }),
        ),
      );
      expect(norm(regs[1], ids)).toEqual(norm(regs[0], ids));
      expect(norm(regs[2], ids)).toEqual(norm(regs[0], ids));
    }
    for (const p of [A, B, C]) await h.client.partitions.deletePartition({ name: p.name });
  });

  test.each(['alone', 'in one batch'])(
    'route MONITOR, actions sent %s: an action waiting for the monitor holds back only its own VP; per-VP order kept',
    async (how) => {
      const inBatch = how === 'in one batch';
      const tag = `${h.backend.slice(0, 3)}${Date.now() % 100000}`;
      const P = await setupVtl1Partition(h.client, `gas-m${inBatch ? 'b' : ''}-${tag}`, 2, SECRET);
      await h.client.intercepts.setInterceptRoute({ name: P.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
      const [vp0, vp1] = P.vps as [string, string];
      const s = h.client.guest.runGuestActions();
      const got: pb.RunGuestActionsResponse[] = [];
      const kinds: string[] = [];
      let notify: (() => void) | undefined;
      const reader = (async () => {
        for await (const m of s.results) {
          kinds.push(m.result?.$case ?? 'none');
          got.push(...answersOf(m));
          notify?.();
        }
      })();
      const until = async (n: number) => {
        while (got.length < n) await new Promise<void>((res) => (notify = res));
      };
      const actions: pb.RunGuestActionsRequest[] = [
        // VP0: a write into the protected page (waits for a monitor), then an MSR read queued behind it.
        { sequence: 1n, action: { $case: 'writeMemory', value: { name: vp0, gpa: VTL1_LAYOUT.secretGpa, data: Buffer.from('X'), gva: undefined } } },
        { sequence: 2n, action: { $case: 'readMsr', value: { name: vp0, msr: MSR.GUEST_OS_ID } } },
        // VP1: three actions that complete meanwhile.
        ...[3n, 4n, 5n].map((seq) => ({ sequence: seq, action: { $case: 'readMsr' as const, value: { name: vp1, msr: MSR.GUEST_OS_ID } } })),
      ];
      if (inBatch) s.send({ action: { $case: 'batch', value: { actions } } });
      else for (const a of actions) s.send(a);
      await until(3);
      expect(got.map((r) => r.sequence)).toEqual([3n, 4n, 5n]);
      const pending = await h.client.intercepts.listPendingIntercepts({ name: P.name });
      expect(pending.intercepts).toHaveLength(1);
      expect(pending.intercepts[0]!.vpIndex).toBe(0);

      // A monitor answers ALLOW: VP0's write completes, then its MSR read.
      const m = h.client.intercepts.monitor();
      m.send({ kind: { $case: 'subscribe', value: pb.MonitorSubscribe.fromPartial({ name: P.name }) } });
      for await (const ev of m.events) {
        if (ev.kind?.$case !== 'intercept') continue;
        m.send({
          kind: { $case: 'reply', value: { interceptId: ev.kind.value.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } },
        });
        break;
      }
      s.close();
      await reader;
      m.cancel();
      expect(got.map((r) => r.sequence)).toEqual([3n, 4n, 5n, 1n, 2n]);
      // Alone: one message per answer; in a batch: `results` messages only (the answers of one batch
      // spread over several, as they complete).
      if (inBatch) {
        expect(kinds.every((k) => k === 'results')).toBe(true);
        expect(kinds.length).toBeGreaterThanOrEqual(2);
      } else expect(kinds).toEqual(['readMsr', 'readMsr', 'readMsr', 'writeMemory', 'readMsr']);
      const w = got[3]!.result;
      expect(w?.$case).toBe('writeMemory');
      if (w?.$case === 'writeMemory') expect(w.value.outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_UNSPECIFIED);
      const data = await h.client.memory.readGpa({ name: P.name, gpa: VTL1_LAYOUT.secretGpa, length: 1 });
      expect(Buffer.from(data.data).toString()).toBe('X'); // the allowed write landed
      await h.client.partitions.deletePartition({ name: P.name });
    },
  );
});

describe('Monitor batching (subscribe.batch, replies)', () => {
  /** A VTL1 partition of `vpCount` VPs on route MONITOR and a monitor subscribed with batch (its subscription read). */
  async function batchMonitored(prefix: string, vpCount: number) {
    const tag = `${h.backend.slice(0, 3)}${Date.now() % 100000}`;
    const P = await setupVtl1Partition(h.client, `${prefix}-${tag}`, vpCount, SECRET);
    await h.client.intercepts.setInterceptRoute({ name: P.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
    const m = h.client.intercepts.monitor();
    m.send({ kind: { $case: 'subscribe', value: pb.MonitorSubscribe.fromPartial({ name: P.name, batch: true }) } });
    const events = m.events[Symbol.asyncIterator]();
    expect((await events.next()).value?.kind?.$case).toBe('subscription');
    return { P, m, events };
  }

  test('intercepts come in `intercepts` messages, one `replies` message answers them all, one `reply_results` answers it', async () => {
    const { P, m, events } = await batchMonitored('gas-b', 2);
    // Both VPs write into the protected page through one stream: two intercepts.
    const s = h.client.guest.runGuestActions();
    for (const [i, vp] of P.vps.entries())
      s.send({
        sequence: BigInt(i),
        action: { $case: 'writeMemory', value: { name: vp, gpa: VTL1_LAYOUT.secretGpa + BigInt(i), data: Buffer.from([0x41 + i]), gva: undefined } },
      });
    const seen: pb.InterceptEvent[] = [];
    while (seen.length < 2) {
      const ev = (await events.next()).value as pb.MonitorResponse;
      // Live intercepts of a batch subscription never come one per `intercept` message.
      expect(ev.kind?.$case).toBe('intercepts');
      if (ev.kind?.$case === 'intercepts') seen.push(...ev.kind.value.intercepts);
    }
    expect(seen.map((x) => x.vpIndex).sort()).toEqual([0, 1]);
    expect(seen.every((x) => x.needsReply && x.hvMessage.length === 256)).toBe(true);
    // One message answers both, plus an unknown id: one result per reply, in order.
    const ALLOW = pb.InterceptAction.INTERCEPT_ACTION_ALLOW;
    m.send({
      kind: {
        $case: 'replies',
        value: {
          replies: [
            ...seen.map((x) => ({ interceptId: x.interceptId, action: ALLOW, data: Buffer.alloc(0) })),
            { interceptId: 999999n, action: ALLOW, data: Buffer.alloc(0) },
          ],
        },
      },
    });
    const res = (await events.next()).value as pb.MonitorResponse;
    expect(res.kind?.$case).toBe('replyResults');
    if (res.kind?.$case === 'replyResults')
      expect(res.kind.value.results.map((r) => [r.interceptId, r.status])).toEqual([
        [seen[0]!.interceptId, pb.ReplyStatus.REPLY_STATUS_APPLIED],
        [seen[1]!.interceptId, pb.ReplyStatus.REPLY_STATUS_APPLIED],
        [999999n, pb.ReplyStatus.REPLY_STATUS_UNKNOWN_INTERCEPT],
      ]);
    s.close();
    const done: pb.RunGuestActionsResponse[] = [];
    for await (const r of s.results) done.push(r);
    expect(done.map((r) => r.result?.$case)).toEqual(['writeMemory', 'writeMemory']);
    expect(Buffer.from((await h.client.memory.readGpa({ name: P.name, gpa: VTL1_LAYOUT.secretGpa, length: 2 })).data).toString()).toBe('AB');
    m.cancel();
    await h.client.partitions.deletePartition({ name: P.name });
  });

  test('quiet replies: no reply_results when every reply was applied, only the refused ones otherwise, in order', async () => {
    const { P, m, events } = await batchMonitored('gas-q', 2);
    const ALLOW = pb.InterceptAction.INTERCEPT_ACTION_ALLOW;
    const s = h.client.guest.runGuestActions();
    const results = s.results[Symbol.asyncIterator]();
    /** VP i writes one byte into the protected page; resolves with its intercept. */
    const fault = async (i: number, byte: number): Promise<pb.InterceptEvent> => {
      s.send({
        sequence: BigInt(byte),
        action: { $case: 'writeMemory', value: { name: P.vps[i]!, gpa: VTL1_LAYOUT.secretGpa + BigInt(i), data: Buffer.from([byte]), gva: undefined } },
      });
      const ev = (await events.next()).value as pb.MonitorResponse;
      expect(ev.kind?.$case).toBe('intercepts');
      if (ev.kind?.$case !== 'intercepts') throw new Error('no intercepts message');
      expect(ev.kind.value.intercepts).toHaveLength(1);
      return ev.kind.value.intercepts[0]!;
    };
    /** The answer of the action with sequence `seq`: the write completed. */
    const completed = async (seq: number) => {
      const r = (await results.next()).value as pb.RunGuestActionsResponse;
      expect(r.sequence).toBe(BigInt(seq));
      expect(r.result?.$case === 'writeMemory' && !r.result.value.outcome?.exception).toBe(true);
    };
    // 1. Every reply applied: the writes complete, and the monitor gets nothing for the message.
    const a = await fault(0, 0x41);
    m.send({ kind: { $case: 'replies', value: { replies: [{ interceptId: a.interceptId, action: ALLOW, data: Buffer.alloc(0) }], quiet: true } } });
    await completed(0x41);
    // 2. A quiet message with an applied reply between two refused ones: one reply_results message
    //    with the two refused ones, in order. It is the next Monitor message: step 1 sent none.
    const b = await fault(1, 0x42);
    m.send({
      kind: {
        $case: 'replies',
        value: {
          replies: [
            { interceptId: a.interceptId, action: ALLOW, data: Buffer.alloc(0) }, // answered in step 1
            { interceptId: b.interceptId, action: ALLOW, data: Buffer.alloc(0) },
            { interceptId: 999999n, action: ALLOW, data: Buffer.alloc(0) },
          ],
          quiet: true,
        },
      },
    });
    const res = (await events.next()).value as pb.MonitorResponse;
    expect(res.kind?.$case).toBe('replyResults');
    if (res.kind?.$case === 'replyResults')
      expect(res.kind.value.results.map((r) => [r.interceptId, r.status])).toEqual([
        [a.interceptId, pb.ReplyStatus.REPLY_STATUS_DUPLICATE],
        [999999n, pb.ReplyStatus.REPLY_STATUS_UNKNOWN_INTERCEPT],
      ]);
    await completed(0x42);
    // 3. Without quiet, the same stream answers every reply again (the flag is per message).
    m.send({ kind: { $case: 'replies', value: { replies: [{ interceptId: b.interceptId, action: ALLOW, data: Buffer.alloc(0) }] } } });
    const again = (await events.next()).value as pb.MonitorResponse;
    expect(again.kind?.$case === 'replyResults' && again.kind.value.results.map((r) => r.status)).toEqual([pb.ReplyStatus.REPLY_STATUS_DUPLICATE]);
    expect(Buffer.from((await h.client.memory.readGpa({ name: P.name, gpa: VTL1_LAYOUT.secretGpa, length: 2 })).data).toString()).toBe('AB');
    s.close();
    m.cancel();
    await h.client.partitions.deletePartition({ name: P.name });
  });

  test('a turn in which every VP faults sends its intercepts in messages of at most half the VP count', async () => {
    const { P, m, events } = await batchMonitored('gas-h', 8);
    // All 8 VPs write into the protected page, in one batch: 8 intercepts raised in one turn.
    const s = h.client.guest.runGuestActions();
    s.send({
      sequence: 0n,
      action: {
        $case: 'batch',
        value: {
          actions: P.vps.map((vp, i) => ({
            sequence: BigInt(i + 1),
            action: {
              $case: 'writeMemory' as const,
              value: { name: vp, gpa: VTL1_LAYOUT.secretGpa + BigInt(i), data: Buffer.from([0x61 + i]), gva: undefined },
            },
          })),
        },
      },
    });
    const sizes: number[] = [];
    const seen: pb.InterceptEvent[] = [];
    while (seen.length < 8) {
      const ev = (await events.next()).value as pb.MonitorResponse;
      expect(ev.kind?.$case).toBe('intercepts');
      if (ev.kind?.$case === 'intercepts') {
        sizes.push(ev.kind.value.intercepts.length);
        seen.push(...ev.kind.value.intercepts);
      }
    }
    expect(sizes.every((n) => n >= 1 && n <= 4)).toBe(true);
    expect(seen.map((x) => x.vpIndex).sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    const ALLOW = pb.InterceptAction.INTERCEPT_ACTION_ALLOW;
    m.send({ kind: { $case: 'replies', value: { replies: seen.map((x) => ({ interceptId: x.interceptId, action: ALLOW, data: Buffer.alloc(0) })) } } });
    const res = (await events.next()).value as pb.MonitorResponse;
    expect(res.kind?.$case === 'replyResults' && res.kind.value.results.every((r) => r.status === pb.ReplyStatus.REPLY_STATUS_APPLIED)).toBe(true);
    s.close();
    let answered = 0;
    for await (const r of s.results) answered += r.result?.$case === 'results' ? r.result.value.results.length : 1;
    expect(answered).toBe(8);
    expect(Buffer.from((await h.client.memory.readGpa({ name: P.name, gpa: VTL1_LAYOUT.secretGpa, length: 8 })).data).toString()).toBe('abcdefgh');
    m.cancel();
    await h.client.partitions.deletePartition({ name: P.name });
  });
});
