// Baselines: raw grpc-js (no protobuf, identity serializers) between two processes on loopback.
// The server is a forked child (servers/raw-echo-server.js); the client is the runner process.
// Each repeat measures every figure once, in an order rotated per repeat so slow drift of a noisy
// machine does not always hit the same figure.
import type { BenchContext, FigureSpec, Suite } from '../api';
import { RawEchoClient } from '../lib/raw-echo';

const SIZES = [
  { label: '64B', bytes: 64 },
  { label: '4KiB', bytes: 4096 },
] as const;

const figures: FigureSpec[] = [
  ...SIZES.map(
    (s): FigureSpec => ({
      id: `raw.unary.${s.label}`,
      kind: 'latency',
      unit: 'us',
      description: `unary echo of ${s.bytes} B, one call in flight, client-observed round trip`,
    }),
  ),
  ...SIZES.map(
    (s): FigureSpec => ({
      id: `raw.bidi.${s.label}`,
      kind: 'latency',
      unit: 'us',
      description: `bidi stream ping-pong of ${s.bytes} B on one open stream, write to echoed message`,
    }),
  ),
  ...SIZES.map(
    (s): FigureSpec => ({
      id: `raw.stream.${s.label}`,
      kind: 'rate',
      unit: 'msg/s',
      description: `server-streaming ${s.bytes} B messages as fast as flow control allows, received per second`,
    }),
  ),
  {
    id: 'raw.stream.4KiB.throughput',
    kind: 'rate',
    unit: 'MiB/s',
    description: 'payload bytes per second of the raw.stream.4KiB measurement',
  },
];

type Step = { name: string; run: () => Promise<void> };

async function run(ctx: BenchContext): Promise<void> {
  const samples = ctx.pick(1000, 10000);
  const warmup = ctx.pick(200, 1000);
  const streamWarmupMs = ctx.pick(300, 500);
  const streamWindowMs = ctx.pick(1000, 3000);

  const server = await ctx.forkServer('servers/raw-echo-server.js');
  ctx.log(`server pid ${server.pid} on ${server.address}`);
  const client = new RawEchoClient(server.address);
  try {
    await client.ready(10000);
    const steps: Step[] = [];
    for (const s of SIZES) {
      const payload = Buffer.alloc(s.bytes, 0xa5);
      steps.push({
        name: `raw.unary.${s.label}`,
        run: async () => {
          const op = async () => {
            const r = await client.unary(payload);
            if (r.length !== s.bytes) throw new Error(`unary echo returned ${r.length} B, sent ${s.bytes} B`);
          };
          ctx.recordLatency(`raw.unary.${s.label}`, await ctx.sampleLatency(op, { samples, warmup }));
        },
      });
      steps.push({
        name: `raw.bidi.${s.label}`,
        run: async () => {
          const pp = client.pingPong();
          try {
            const op = async () => {
              const r = await pp.roundTrip(payload);
              if (r.length !== s.bytes) throw new Error(`bidi echo returned ${r.length} B, sent ${s.bytes} B`);
            };
            ctx.recordLatency(`raw.bidi.${s.label}`, await ctx.sampleLatency(op, { samples, warmup }));
          } finally {
            pp.close();
          }
        },
      });
      steps.push({
        name: `raw.stream.${s.label}`,
        run: async () => {
          const meter = ctx.meter();
          const stream = client.stream(s.bytes, 0, (m) => meter.add(1, m.length));
          try {
            const ended = stream.done.then(() => {
              throw new Error('server stream ended before the measurement window closed');
            });
            ended.catch(() => undefined); // settles after cancel(); only the race below may observe it
            const w = await Promise.race([meter.measure({ warmupMs: streamWarmupMs, windowMs: streamWindowMs }), ended]);
            ctx.recordRate(`raw.stream.${s.label}`, w.perSec);
            if (s.label === '4KiB') ctx.recordRate('raw.stream.4KiB.throughput', w.bytesPerSec / (1024 * 1024));
          } finally {
            stream.cancel();
            await stream.done.catch(() => undefined);
          }
          await ctx.sleep(100); // let the server notice the cancel before the next step
        },
      });
    }
    for (let r = 0; r < ctx.repeats; r++) {
      const t0 = performance.now();
      for (let i = 0; i < steps.length; i++) await (steps[(i + r) % steps.length] as Step).run();
      ctx.log(`repeat ${r + 1}/${ctx.repeats} done (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    }
  } finally {
    client.close();
    await server.stop();
  }
}

export const suite: Suite = {
  name: 'raw-grpc',
  description: 'raw grpc-js echo baselines (unary, bidi ping-pong, server streaming) across two processes on 127.0.0.1',
  figures,
  ratios: [],
  budget: { quickSec: 60, fullSec: 240 },
  run,
};
