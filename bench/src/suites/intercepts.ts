// Intercept figures through the real service (emulator backend, own process): a memory intercept
// round trip with an external monitor (guest write -> intercept on the Monitor stream -> ALLOW ->
// the write returns) against raw unary + raw bidi round trips measured in the same loop, and the
// intercept throughput with 8 VPs faulting concurrently.
import { connect, pb, type VsmClient } from '@vsm/client';
import type { Suite } from '../api';
import { RawEchoClient } from '../lib/raw-echo';

const PAGE = 0x40n;
/** Stream writes queued per VP in intercept.throughput.8vp (8 VPs: 128 of the stream's 256 in flight). */
const WINDOW_PER_VP = 16;

/**
 * A partition whose VPs fault on VTL1-protected pages (route MONITOR) and a monitor that answers
 * ALLOW to everything as fast as it can; `batch`: subscribe with batch (intercepts of one turn in one
 * message) and answer each such message with one `replies` message, `quiet` ones when `quiet` (the
 * service then reports only replies it did not apply). A reply the service did not apply fails the
 * measurement (`failed()`).
 */
export async function setup(client: VsmClient, vpCount: number, batch = false, quiet = false) {
  const p = await client.partitions.createPartition({ partition: pb.Partition.fromPartial({ vpCount, memoryBytes: 1n << 30n, maximumVtl: 1 }) });
  await client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
  for (let i = 0; i < vpCount; i++) await client.vtl.enableVpVtl({ name: `${p.name}/vps/${i}`, targetVtl: 1 });
  await client.vps.setVpRegisters({
    name: `${p.name}/vps/0`,
    vtl: 1,
    registers: [{ name: pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, value: { value: { $case: 'reg64', value: 1n | (0xfn << 1n) } } }],
  });
  await client.intercepts.modifyVtlProtectionMask({ name: p.name, protectingVtl: 1, mapFlags: 0x1, ranges: [{ startPage: PAGE, pageCount: 64n }] });
  await client.intercepts.setInterceptRoute({ name: p.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
  // A monitor that answers ALLOW to everything, as fast as it can.
  const m = client.intercepts.monitor();
  m.send({ kind: { $case: 'subscribe', value: pb.MonitorSubscribe.fromPartial({ name: p.name, batch }) } });
  let answered = 0;
  let failed: string | undefined;
  const check = (r: pb.ReplyResult) => {
    if (r.status !== pb.ReplyStatus.REPLY_STATUS_APPLIED)
      failed ??= `reply to intercept ${r.interceptId} not applied: ${pb.replyStatusToJSON(r.status)} ${r.detail}`;
  };
  const loop = (async () => {
    try {
      for await (const ev of m.events) {
        if (ev.kind?.$case === 'intercepts') {
          const replies = [];
          for (const x of ev.kind.value.intercepts)
            if (x.needsReply) replies.push({ interceptId: x.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) });
          m.send({ kind: { $case: 'replies', value: { replies, quiet } } });
          answered += replies.length;
        } else if (ev.kind?.$case === 'replyResults') {
          for (const r of ev.kind.value.results) check(r);
        } else if (ev.kind?.$case === 'replyResult') {
          check(ev.kind.value);
        } else if (ev.kind?.$case === 'intercept' && ev.kind.value.needsReply) {
          m.send({
            kind: {
              $case: 'reply',
              value: { interceptId: ev.kind.value.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) },
            },
          });
          answered++;
        }
      }
    } catch {
      // cancelled at the end
    }
  })();
  return { name: p.name, monitor: m, loop, answered: () => answered, failed: () => failed };
}

/**
 * Intercepts answered per second with 8 VPs faulting through one RunGuestActions stream for `ms`:
 * each VP keeps WINDOW_PER_VP writes queued (the service runs one VP's actions in order, the VPs
 * concurrently); every write intercepts and waits for the monitor's ALLOW; each answered write is
 * replaced by a new one on the same VP. `batchActions`: the actions go in `batch` messages (the
 * initial 8 x WINDOW_PER_VP in one, then one per `results` message with the replacements for the
 * answers it carried); otherwise (default) one action per message, answered one per message.
 * `warmupMs`: the first warmupMs of driving are not counted (the rate is over the `ms` after them).
 */
export async function streamRate(client: VsmClient, part: Awaited<ReturnType<typeof setup>>, ms: number, batchActions = false, warmupMs = 0): Promise<number> {
  const data = Buffer.from([1]);
  // Counted from the end of the warm-up (as raw.stream.* count after theirs) to the last answer.
  let start = part.answered();
  let t0 = process.hrtime.bigint();
  const warm =
    warmupMs > 0
      ? setTimeout(() => {
          start = part.answered();
          t0 = process.hrtime.bigint();
        }, warmupMs)
      : undefined;
  const session = client.guest.runGuestActions();
  const until = Date.now() + warmupMs + ms;
  let next = 0n;
  let owed = 0;
  /** Actions made but not sent yet (batchActions: sent together by flush). */
  let pending: pb.RunGuestActionsRequest[] = [];
  const send = (vp: number) => {
    owed++;
    const req: pb.RunGuestActionsRequest = {
      sequence: next++ * 8n + BigInt(vp),
      action: { $case: 'writeMemory', value: { name: `${part.name}/vps/${vp}`, gpa: (PAGE + BigInt(vp)) << 12n, data, gva: undefined } },
    };
    if (batchActions) pending.push(req);
    else session.send(req);
  };
  const flush = () => {
    if (pending.length === 0) return;
    session.send({ sequence: 0n, action: { $case: 'batch', value: { actions: pending } } });
    pending = [];
  };
  for (let i = 0; i < 8; i++) for (let k = 0; k < WINDOW_PER_VP; k++) send(i);
  flush();
  for await (const msg of session.results) {
    for (const res of msg.result?.$case === 'results' ? msg.result.value.results : [msg]) {
      owed--;
      if (res.result?.$case !== 'writeMemory' || res.result.value.outcome?.exception)
        throw new Error(`stream write did not complete: ${JSON.stringify(res.result?.$case === 'error' ? res.result.value : res.result?.$case)}`);
      if (Date.now() < until) send(Number(res.sequence % 8n));
    }
    flush();
    if (owed === 0) session.close();
  }
  clearTimeout(warm);
  const failed = part.failed();
  if (failed) throw new Error(failed);
  return (part.answered() - start) / (Number(process.hrtime.bigint() - t0) / 1e9);
}

export const suite: Suite = {
  name: 'intercepts',
  description: 'memory intercepts with an external monitor over gRPC (emulator backend)',
  figures: [
    {
      id: 'intercept.monitor.roundtrip',
      kind: 'latency',
      unit: 'us',
      description: 'guest WriteMemory on a protected page -> intercept on the Monitor stream -> ALLOW -> WriteMemory returns',
    },
    {
      id: 'intercept.baseline.unary_plus_bidi',
      kind: 'latency',
      unit: 'us',
      description: 'raw grpc-js unary echo + raw bidi ping-pong, sequentially, per sample (same loop)',
    },
    {
      id: 'intercept.throughput.8vp',
      kind: 'rate',
      unit: 'msg/s',
      description: `intercepts answered per second with 8 VPs faulting concurrently through one RunGuestActions stream (${WINDOW_PER_VP} WriteMemory actions in flight per VP) sending its actions in batch messages (one per results message received), one monitor (subscribed with batch, answering with quiet replies: only replies not applied are reported)`,
    },
    {
      id: 'intercept.throughput.8vp.acked',
      kind: 'rate',
      unit: 'msg/s',
      description: 'the same with replies that are not quiet (the service answers every replies message with a reply_results message)',
    },
    {
      id: 'intercept.throughput.8vp.single',
      kind: 'rate',
      unit: 'msg/s',
      description:
        'the same stream with one action per message (one answer per message) and a monitor taking one intercept message and sending one reply per intercept',
    },
    {
      id: 'intercept.throughput.8vp.unary',
      kind: 'rate',
      unit: 'msg/s',
      description: 'the same with one unary WriteMemory call per fault (8 concurrent callers, the way before RunGuestActions)',
    },
  ],
  ratios: [
    { figure: 'intercept.monitor.roundtrip.p50', baseline: 'intercept.baseline.unary_plus_bidi.p50', target: { op: '<=', value: 2.5 } },
    { figure: 'intercept.throughput.8vp', baseline: 'raw.stream.64B', target: { op: '>=', value: 0.3 } },
  ],
  // Four 8-VP rates per repeat (stream and monitor batched with quiet and with acknowledged replies,
  // stream and monitor single, unary), each 1.5 s / 4 s after a warm-up of 0.3 s / 0.5 s.
  budget: { quickSec: 100, fullSec: 360 },
  async run(ctx) {
    const server = await ctx.forkServer('servers/vsm-emulator-server.js');
    const raw = await ctx.forkServer('servers/raw-echo-server.js');
    const client = connect(server.address, { deadlineMs: 30_000 });
    const echo = new RawEchoClient(raw.address);
    await echo.ready();
    const pp = echo.pingPong();
    const payload = Buffer.alloc(64, 1);
    try {
      const one = await setup(client, 1);
      const vp = `${one.name}/vps/0`;
      const data = Buffer.from([1]);
      for (let r = 0; r < ctx.repeats; r++) {
        ctx.recordLatency(
          'intercept.monitor.roundtrip',
          await ctx.sampleLatency(
            async () => {
              const o = await client.guest.writeMemory({ name: vp, gpa: PAGE << 12n, data });
              if (o.outcome?.exception) throw new Error('write did not complete');
            },
            { warmup: ctx.pick(100, 500), samples: ctx.pick(500, 3000) },
          ),
        );
        ctx.recordLatency(
          'intercept.baseline.unary_plus_bidi',
          await ctx.sampleLatency(
            async () => {
              await echo.unary(payload);
              await pp.roundTrip(payload);
            },
            { warmup: ctx.pick(100, 500), samples: ctx.pick(500, 3000) },
          ),
        );
      }
      one.monitor.cancel();
      await one.loop;

      const eight = await setup(client, 8);
      const eightBatched = await setup(client, 8, true, true);
      const eightAcked = await setup(client, 8, true);
      for (let r = 0; r < ctx.repeats; r++) {
        // A warm-up per measurement, as raw.stream.* have (300 ms quick, 500 ms full).
        const warmupMs = ctx.pick(300, 500);
        ctx.recordRate('intercept.throughput.8vp', await streamRate(client, eightBatched, ctx.pick(1500, 4000), true, warmupMs));
        ctx.recordRate('intercept.throughput.8vp.acked', await streamRate(client, eightAcked, ctx.pick(1500, 4000), true, warmupMs));
        ctx.recordRate('intercept.throughput.8vp.single', await streamRate(client, eight, ctx.pick(1500, 4000), false, warmupMs));

        // The same with one unary call per fault (same-run comparison).
        const start = eight.answered();
        const t0 = process.hrtime.bigint();
        const untilUnary = Date.now() + ctx.pick(1500, 4000);
        await Promise.all(
          Array.from({ length: 8 }, async (_, i) => {
            while (Date.now() < untilUnary) await client.guest.writeMemory({ name: `${eight.name}/vps/${i}`, gpa: (PAGE + BigInt(i)) << 12n, data });
          }),
        );
        const secs = Number(process.hrtime.bigint() - t0) / 1e9;
        ctx.recordRate('intercept.throughput.8vp.unary', (eight.answered() - start) / secs);
      }
      for (const m of [eight, eightBatched, eightAcked]) {
        m.monitor.cancel();
        await m.loop;
      }
    } finally {
      pp.close();
      echo.close();
      client.close();
    }
  },
};
