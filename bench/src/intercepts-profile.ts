// Where the time of an intercept goes (issue #13, bench/README.md "Intercept throughput"): for each
// way of driving 8 faulting VPs (unary WriteMemory calls; one RunGuestActions stream with a monitor
// taking one message per intercept; the stream with its actions in `batch` messages and a batched monitor), the emulator service runs as
// its own process under `node --cpu-prof`, the suite's driver runs for --seconds, and the service's
// profile over the driven window is summed by where the code lives, per intercept answered. The
// client's CPU (this process, all threads) is reported per intercept too.
//
//   node bench/dist/intercepts-profile.js [--seconds 4]
import { fork } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { connect } from '@vsm/client';
import { isReadyMessage } from './lib/serve';
import { setup, streamRate } from './suites/intercepts';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

const CATEGORIES: [string, RegExp][] = [
  ['idle', /^\(idle\)/],
  ['gc', /^\(garbage collector\)/],
  ['native (syscalls, nghttp2)', /^\(program\)/],
  ['core', /services\/core\//],
  ['service (vsm-v1)', /services\/vsm-v1\//],
  ['protobuf', /bufbuild|protobufjs|api\/dist\/gen/],
  ['grpc-js', /grpc-js/],
  ['HTTP/2 + Node streams JS', /node:internal\/http2|node:net|stream_base|node:internal\/streams|node:events|buffer/],
  ['microtasks / timers', /runMicrotasks|task_queues|node:internal\/timers|processImmediate/],
];

/** Self time per category (µs) over the samples taken in [from, to] (profile clock, µs). */
function categorize(p: Profile, from: number, to: number): Map<string, number> {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const out = new Map<string, number>();
  let t = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    t += p.timeDeltas[i]!;
    if (t < from || t > to) continue;
    const n = byId.get(p.samples[i]!)!;
    const key = `${n.callFrame.functionName} ${n.callFrame.url}`;
    const cat = CATEGORIES.find(([, re]) => re.test(key))?.[0] ?? 'other';
    out.set(cat, (out.get(cat) ?? 0) + p.timeDeltas[i]!);
  }
  return out;
}

async function measure(mode: 'unary' | 'single' | 'batched', seconds: number) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-intercepts-profile-'));
  const child = fork(path.join(__dirname, 'servers/vsm-emulator-server.js'), [], { execArgv: ['--cpu-prof', `--cpu-prof-dir=${dir}`], stdio: 'inherit' });
  const port = await new Promise<number>((resolve, reject) => {
    child.on('message', (m) => isReadyMessage(m) && resolve(m.port));
    child.on('exit', (code) => reject(new Error(`the service exited (${code}) before it was ready`)));
  });
  const client = connect(`127.0.0.1:${port}`, { deadlineMs: 30_000 });
  try {
    const part = await setup(client, 8, mode === 'batched');
    const cpu0 = process.cpuUsage();
    const a0 = part.answered();
    const t0 = Date.now();
    if (mode === 'unary') {
      const data = Buffer.from([1]);
      await Promise.all(
        Array.from({ length: 8 }, async (_, i) => {
          while (Date.now() < t0 + seconds * 1000) await client.guest.writeMemory({ name: `${part.name}/vps/${i}`, gpa: (0x40n + BigInt(i)) << 12n, data });
        }),
      );
    } else await streamRate(client, part, seconds * 1000, mode === 'batched');
    const t1 = Date.now();
    const n = part.answered() - a0;
    const cpu = process.cpuUsage(cpu0);
    part.monitor.cancel();
    await part.loop;
    // The profile's clock is not wall time: its driven window is taken back from its end, less the
    // tear-down (the last 300 ms) and the first half second of the run.
    const exited = new Promise((r) => child.on('exit', r));
    child.kill('SIGTERM');
    await exited;
    const file = fs.readdirSync(dir).find((f) => f.endsWith('.cpuprofile'));
    if (!file) throw new Error('the service wrote no CPU profile');
    const prof = JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8')) as Profile;
    const end = prof.startTime + prof.timeDeltas.reduce((a, b) => a + b, 0) - 300_000;
    const windowUs = (t1 - t0 - 500) * 1000;
    const cats = categorize(prof, end - windowUs, end);
    const perIntercept = n * (windowUs / ((t1 - t0) * 1000));
    const total = [...cats.values()].reduce((a, b) => a + b, 0);
    const idle = cats.get('idle') ?? 0;
    return { mode, rate: n / ((t1 - t0) / 1000), cats, perIntercept, total, idle, clientUs: (cpu.user + cpu.system) / n };
  } finally {
    client.close();
    if (child.exitCode === null) child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main() {
  const i = process.argv.indexOf('--seconds');
  const seconds = i > 0 ? Number(process.argv[i + 1]) : 4;
  if (!(seconds >= 1)) throw new Error('--seconds must be at least 1');
  const results: Awaited<ReturnType<typeof measure>>[] = [];
  for (const mode of ['unary', 'single', 'batched'] as const) results.push(await measure(mode, seconds));
  const row = (label: string, f: (r: (typeof results)[number]) => string) => console.log(`| ${label} | ${results.map(f).join(' | ')} |`);
  console.log(
    `load average ${os
      .loadavg()
      .map((l) => l.toFixed(1))
      .join(' ')}; µs per intercept answered (service main thread, CPU profile)\n`,
  );
  console.log('| | unary WriteMemory | RunGuestActions, monitor one message per intercept | RunGuestActions, batched monitor |');
  console.log('| --- | --- | --- | --- |');
  row('intercepts/s', (r) => r.rate.toFixed(0));
  row('service main thread idle', (r) => `${((100 * r.idle) / r.total).toFixed(0)} %`);
  row('service busy, total', (r) => ((r.total - r.idle) / r.perIntercept).toFixed(0));
  for (const [cat] of [...CATEGORIES.slice(1), ['other', /./] as const]) row(cat, (r) => ((r.cats.get(cat) ?? 0) / r.perIntercept).toFixed(1));
  row('client process CPU (all threads)', (r) => r.clientUs.toFixed(0));
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
