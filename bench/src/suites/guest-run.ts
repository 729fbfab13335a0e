// Figures measured inside running guests (issue #13, "Running guests"): whole guests loaded and run
// by the platform's GuestSession on a KvmBackend in the runner's process, against the same run's raw
// exit loops (kvm-raw.ts: a one-vCPU VM whose host side only re-enters KVM_RUN). Each rate counts the
// operations the guest did over the window from the first to the last exit of the operation's kind
// (KvmBackend's KvmObserver, told of every exit the main thread is handed), so the guest's boot, its
// set-up and the session start stay out; every run is also checked (exit code, console, counts).
//
// - guest-run.wrmsr: a flat long64 image (lib/guest-images.ts, built with the agent's Asm) writing
//   HV_X64_MSR_GUEST_OS_ID n times in a `wrmsr; dec; jnz` loop, then debug-exit 0.
// - guest-run.vtl_roundtrip: a flat long64 image that enables VTL1 itself and loops VtlCall →
//   VTL1 code → fast VtlReturn (2 port exits per pair).
// - guest-run.intercept.*: the project's C VSM guest (test/guests/vsm-scenario, built with gcc by its
//   build.sh, WRITES_PER_VP stores per VP) on 2 VPs storing concurrently into VTL1-protected pages
//   (one MMIO exit each); route HIGHER_VTL (VTL1 handles each from SINT0 and VtlReturns) and route
//   MONITOR (a Monitor stream on an in-process vsm.v1 server answers ALLOW).
// The run figures (GuestRunStats: exits handed to the main thread vs finished on the VP threads) and
// the main thread's handling time per exit are logged for bench/README.md.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { captureConsole, connect, pb, type VsmClient } from '@vsm/client';
import type { GuestRunStats, GuestSession } from '@vsm/platform-kvm';
import type { RunningServer } from '@vsm/vsm-v1';
import pino from 'pino';
import type { BenchContext, Suite } from '../api';
import { FLAT_GPA, vtlImage, wrmsrImage } from '../lib/guest-images';
import { loadKvmAgent } from '../lib/kvm-guest';
import { kvmAvailability, loadKvmLayer, openRawLoop } from '../lib/kvm-raw';

const MiB = 1n << 20n;
/** vsm-scenario stores per VP. */
const WRITES = 256;
const SCENARIO_DIR = path.resolve(__dirname, '../../../test/guests/vsm-scenario');
const VPS = 2;
const RAW_BATCH = 20_000;

/** Times the exits of one kind the main thread is handed (a KvmObserver), and its handling time of all exits. */
class ExitClock {
  private kind = '';
  count = 0;
  first = 0;
  last = 0;
  handled = 0;
  handledSeconds = 0;
  watch(kind: string): void {
    this.kind = kind;
    this.count = 0;
    this.handled = 0;
    this.handledSeconds = 0;
  }
  // Arrow properties: the runner calls them detached from the observer.
  exit = (kind: string, count: number): void => {
    if (kind !== this.kind) return;
    const t = performance.now();
    if (this.count === 0) this.first = t;
    this.last = t;
    this.count += count;
  };
  exitHandled = (seconds: number): void => {
    this.handled++;
    this.handledSeconds += seconds;
  };
  /** Exits of the watched kind per second between the first and the last. */
  perSec(): number {
    if (this.count < 2 || this.last <= this.first) throw new Error(`too few ${this.kind} exits to time (${this.count})`);
    return (this.count - 1) / ((this.last - this.first) / 1000);
  }
  /** Mean main-thread handling time per exit handed over (µs). */
  handledUs(): number {
    return this.handled ? (this.handledSeconds * 1e6) / this.handled : 0;
  }
}

type KvmBackendType = InstanceType<ReturnType<typeof loadKvmAgent>['KvmBackend']>;

const exitSum = (s: GuestRunStats) => Object.values(s.exits).reduce((a, b) => a + b, 0);
const statsLine = (s: GuestRunStats) =>
  `exits to the main thread ${JSON.stringify(s.exits)} (${exitSum(s)}), finished on VP threads ${s.localExits} (overlay ${s.overlayExits}), KVM_RUNs ${s.runs}, VP switches ${s.vpSwitches}, interrupts ${s.interrupts}, quiesces ${s.quiesces} (${(s.quiesceMicros / 1000).toFixed(1)} ms)`;

/** The backend's session of a partition (read-only peek at its run figures; vsm.v1 has no RPC for them). */
function sessionOf(backend: KvmBackendType, name: string): GuestSession | undefined {
  const b = backend as unknown as { sessions: Map<unknown, GuestSession>; partition(name: string): unknown };
  return b.sessions.get(b.partition(name));
}

async function runWrmsr(backend: KvmBackendType, n: number, id: string): Promise<{ us: number; stats: GuestRunStats }> {
  const { GuestSession: Session } = require('@vsm/platform-kvm') as typeof import('@vsm/platform-kvm');
  const p = await backend.createPartition(pb.CreatePartitionRequest.fromPartial({ partitionId: id, partition: { vpCount: 1, memoryBytes: 64n * MiB } }));
  try {
    const s = Session.load(backend.platformOf(p.name), wrmsrImage(n), {
      format: 'flat',
      loadGpa: FLAT_GPA,
      entryMode: 'long64',
      devices: { hypervTestdev: false },
    });
    const t0 = performance.now();
    s.start();
    const end = await s.whenEnded();
    const us = (performance.now() - t0) * 1000;
    const stats = s.stats();
    await s.close();
    if (end.exitCode !== 0) throw new Error(`wrmsr guest ended with ${end.reason} (exit code ${end.exitCode}), expected debug-exit 0`);
    const wr = stats.exits.wrmsr ?? 0;
    if (wr + stats.localExits < n) throw new Error(`wrmsr guest: ${statsLine(stats)}; expected at least ${n} MSR exits`);
    return { us, stats };
  } finally {
    await backend.deletePartition(pb.DeletePartitionRequest.fromPartial({ name: p.name })).catch(() => undefined);
  }
}

async function runVtl(backend: KvmBackendType, n: number, id: string): Promise<{ us: number; stats: GuestRunStats }> {
  const { GuestSession: Session } = require('@vsm/platform-kvm') as typeof import('@vsm/platform-kvm');
  const p = await backend.createPartition(
    pb.CreatePartitionRequest.fromPartial({ partitionId: id, partition: { vpCount: 1, memoryBytes: 64n * MiB, maximumVtl: 1 } }),
  );
  try {
    const s = Session.load(backend.platformOf(p.name), vtlImage(n, 64n * MiB), {
      format: 'flat',
      loadGpa: FLAT_GPA,
      entryMode: 'long64',
      devices: { hypervTestdev: false },
    });
    const t0 = performance.now();
    s.start();
    const end = await s.whenEnded();
    const us = (performance.now() - t0) * 1000;
    const stats = s.stats();
    await s.close();
    if (end.exitCode !== 0) throw new Error(`VTL guest ended with ${end.reason} (exit code ${end.exitCode}), expected debug-exit 0; ${statsLine(stats)}`);
    if ((stats.exits.io ?? 0) < 2 * n) throw new Error(`VTL guest: ${statsLine(stats)}; expected at least ${2 * n} hypercall port exits`);
    return { us, stats };
  } finally {
    await backend.deletePartition(pb.DeletePartitionRequest.fromPartial({ name: p.name })).catch(() => undefined);
  }
}

type Route = 'higher' | 'monitor';

/** A guest run with no KVM_RUN return for this long has stalled. */
const STALL_MS = 5000;

class StalledRun extends Error {}

interface ScenarioRun {
  us: number;
  stats: GuestRunStats | undefined;
  answered: number;
}

/** One vsm-scenario run through the in-process server: create, route, (monitor), load, start → end, checked. */
async function runScenario(client: VsmClient, backend: KvmBackendType, image: Buffer, writes: number, route: Route, id: string): Promise<ScenarioRun> {
  const p = await client.partitions.createPartition({
    partitionId: id,
    partition: pb.Partition.fromPartial({ vpCount: VPS, memoryBytes: 64n * MiB, maximumVtl: 1 }),
  });
  const name = p.name;
  let mon: ReturnType<VsmClient['intercepts']['monitor']> | undefined;
  let answered = 0;
  let watching: Promise<void> | undefined;
  try {
    await client.intercepts.setInterceptRoute({
      name,
      route: route === 'higher' ? pb.InterceptRoute.INTERCEPT_ROUTE_HIGHER_VTL : pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR,
    });
    if (route === 'monitor') {
      const m = client.intercepts.monitor();
      mon = m;
      const it = m.events[Symbol.asyncIterator]();
      m.send({ kind: { $case: 'subscribe', value: pb.MonitorSubscribe.fromPartial({ name }) } });
      const first = await it.next();
      if (first.value?.kind?.$case !== 'subscription') throw new Error(`monitor: expected a subscription, got ${first.value?.kind?.$case}`);
      watching = (async () => {
        for (;;) {
          const r = await it.next();
          if (r.done) return;
          const k = r.value.kind;
          if (k?.$case === 'intercept' && k.value.needsReply) {
            m.send({
              kind: { $case: 'reply', value: { interceptId: k.value.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } },
            });
            answered++;
          }
        }
      })().catch(() => undefined);
    }
    await client.execution.loadGuestImage({ name, image, format: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_ELF64 });
    const output = captureConsole(client.execution.streamConsole({ name }));
    const t0 = performance.now();
    await client.execution.startPartition({ name });
    // A run that stops making progress (no KVM_RUN return for STALL_MS) is stopped and reported.
    let ended = false;
    const stall = (async () => {
      let last = -1;
      let since = performance.now();
      while (!ended) {
        await new Promise((r) => setTimeout(r, 250));
        const runs = sessionOf(backend, name)?.stats().runs ?? 0;
        if (runs !== last) {
          last = runs;
          since = performance.now();
        } else if (performance.now() - since > STALL_MS) {
          const states = await Promise.all([0, 1].map((i) => sessionOf(backend, name)?.queryVpState(i)));
          throw new StalledRun(
            `no KVM_RUN return for ${STALL_MS / 1000} s after ${runs} (monitor answers ${answered}, VP states ${states.join('/')}; console: ${JSON.stringify(output.text.slice(-200))})`,
          );
        }
      }
    })();
    try {
      await Promise.race([output.done, stall]);
    } catch (e) {
      if (e instanceof StalledRun) await client.execution.stopPartition({ name }).catch(() => undefined);
      throw e;
    } finally {
      ended = true;
    }
    await stall.catch(() => undefined);
    const us = (performance.now() - t0) * 1000;
    const total = VPS * writes;
    // HIGHER_VTL: VTL1 handled and logged every store (PASS). MONITOR: VTL1 saw none (its log is
    // empty, so the guest's own verdict is FAIL, exit code 2), the monitor's ALLOW performed each.
    const want =
      route === 'higher'
        ? { code: 0, line: `${total} intercepts handled in VTL1, ${total} values in place, 0 stray, 0 bad messages, 0 mismatches` }
        : { code: 2, line: `0 intercepts handled in VTL1, ${total} values in place, 0 stray, 0 bad messages, 0 mismatches` };
    const { text, end } = output;
    if (end?.exitCode !== want.code || !text.includes(want.line))
      throw new Error(
        `vsm-scenario (${route}, ${writes} writes/VP): exit code ${end?.exitCode}, expected ${want.code} and "${want.line}"\n${text.slice(-1500)}`,
      );
    if (route === 'monitor' && answered !== total) throw new Error(`vsm-scenario (monitor): the monitor answered ${answered} intercepts, expected ${total}`);
    const stats = sessionOf(backend, name)?.stats();
    return { us, stats, answered };
  } finally {
    mon?.cancel();
    await watching;
    await client.partitions.deletePartition({ name }).catch(() => undefined);
  }
}

function buildScenario(dir: string, writes: number): Buffer {
  const out = path.join(dir, `w${writes}`);
  const elf = execFileSync('sh', [path.join(SCENARIO_DIR, 'build.sh'), out], {
    encoding: 'utf8',
    env: { ...process.env, WRITES_PER_VP: String(writes), PROT_PAGES: '4', SINT0_AUTO_EOI: '0' },
  }).trim();
  return fs.readFileSync(elf);
}

function rawRate(loop: { exits(n: number): void }, n: number): number {
  loop.exits(Math.min(1000, n)); // warm
  const t0 = performance.now();
  loop.exits(n);
  return n / ((performance.now() - t0) / 1000);
}

async function run(ctx: BenchContext): Promise<void> {
  const k = loadKvmLayer();
  const { KvmBackend, startServer } = loadKvmAgent();
  const system = k.KvmSystem.open();
  const rawWrmsr = openRawLoop(k, system, 'wrmsr');
  const rawPio = openRawLoop(k, system, 'pio');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-bench-guest-run-'));
  const clock = new ExitClock();
  const backend = new KvmBackend({ observer: clock });
  let server: RunningServer | undefined;
  let client: VsmClient | undefined;
  try {
    let image: Buffer | undefined;
    try {
      image = buildScenario(dir, WRITES);
    } catch (e) {
      const why = `vsm-scenario does not build here (gcc): ${(e as Error).message.split('\n')[0]}`;
      for (const id of ['guest-run.intercept.higher_vtl', 'guest-run.intercept.monitor']) ctx.skipFigure(id, why);
    }
    server = await startServer({ listen: '127.0.0.1:0', backend, logger: pino({ level: 'silent' }), shutdownGraceMs: 100 });
    client = connect(`127.0.0.1:${server.port}`, { deadlineMs: 120_000 });
    const n = ctx.pick(20_000, 50_000);
    const nVtl = ctx.pick(3000, 8000);
    await runWrmsr(backend, 1000, 'guest-run-warm'); // threads, JIT
    const stalled = new Set<Route>();
    for (let r = 0; r < ctx.repeats; r++) {
      const line: string[] = [];
      const rw = rawRate(rawWrmsr, RAW_BATCH);
      const rp = rawRate(rawPio, RAW_BATCH);
      ctx.recordRate('guest-run.raw.wrmsr.rate', rw);
      ctx.recordRate('guest-run.raw.pio.rate', rp);
      line.push(`raw wrmsr ${rw.toFixed(0)}/s, raw pio ${rp.toFixed(0)}/s`);

      clock.watch('wrmsr');
      const w = await runWrmsr(backend, n, `guest-run-wrmsr-${r}`);
      const wRate = clock.perSec();
      ctx.recordRate('guest-run.wrmsr', wRate);
      line.push(`guest wrmsr ${wRate.toFixed(0)}/s (start→end ${(n / (w.us / 1e6)).toFixed(0)}/s, handling ${clock.handledUs().toFixed(1)} µs/exit)`);
      if (r === 0) ctx.log(`wrmsr guest (${n} writes): ${statsLine(w.stats)}`);

      clock.watch('io');
      const v = await runVtl(backend, nVtl, `guest-run-vtl-${r}`);
      const vRate = clock.perSec() / 2;
      ctx.recordRate('guest-run.vtl_roundtrip', vRate);
      line.push(
        `guest VtlCall+VtlReturn ${vRate.toFixed(0)}/s (start→end ${(nVtl / (v.us / 1e6)).toFixed(0)}/s, handling ${clock.handledUs().toFixed(1)} µs/exit)`,
      );
      if (r === 0) ctx.log(`VTL guest (${nVtl} pairs): ${statsLine(v.stats)}`);

      if (image && client) {
        for (const route of ['higher', 'monitor'] as const) {
          const id = route === 'higher' ? 'guest-run.intercept.higher_vtl' : 'guest-run.intercept.monitor';
          if (stalled.has(route)) continue;
          let run: ScenarioRun;
          clock.watch('mmio');
          try {
            run = await runScenario(client, backend, image, WRITES, route, `guest-run-${route}-${r}`);
          } catch (e) {
            if (!(e instanceof StalledRun)) throw e;
            stalled.add(route);
            ctx.skipFigure(id, `the guest stalled: ${e.message}`);
            ctx.log(`${id}: the guest stalled, figure skipped: ${e.message}`);
            continue;
          }
          if (clock.count !== VPS * WRITES) throw new Error(`${id}: ${clock.count} MMIO exits handed over, expected ${VPS * WRITES}`);
          const rate = clock.perSec();
          ctx.recordRate(id, rate);
          line.push(`${route} ${rate.toFixed(0)}/s (run ${(run.us / 1000).toFixed(0)} ms, handling ${clock.handledUs().toFixed(1)} µs/exit)`);
          if (r === 0 && run.stats) ctx.log(`vsm-scenario ${route}, ${VPS}×${WRITES} stores: ${statsLine(run.stats)}`);
        }
      }
      ctx.log(`repeat ${r + 1}/${ctx.repeats}: ${line.join('; ')}`);
    }
  } finally {
    client?.close();
    await server?.shutdown('bench done').catch(() => undefined);
    await backend.close().catch(() => undefined);
    rawWrmsr.close();
    rawPio.close();
    system.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export const suite: Suite = {
  name: 'guest-run',
  description:
    'inside running guests (GuestSession on KvmBackend, in process): MSR-write loop exits/s and concurrent intercept round trips/s (2 VPs, route HIGHER_VTL and MONITOR) against the same-run raw exit loops',
  figures: [
    {
      id: 'guest-run.raw.wrmsr.rate',
      kind: 'rate',
      unit: 'exits/s',
      description: `raw WRMSR exit loop (as kvm.raw.wrmsr: one-vCPU VM, MSR filter, host only re-enters KVM_RUN), ${RAW_BATCH} exits timed per repeat, same run`,
    },
    {
      id: 'guest-run.raw.pio.rate',
      kind: 'rate',
      unit: 'exits/s',
      description: `raw port-I/O exit loop (as kvm.raw.pio), ${RAW_BATCH} exits timed per repeat, same run`,
    },
    {
      id: 'guest-run.wrmsr',
      kind: 'rate',
      unit: 'exits/s',
      description:
        'a flat long64 guest on GuestSession (1 VP) writing HV_X64_MSR_GUEST_OS_ID in a `wrmsr; dec; jnz` loop (20k quick, 50k full), then debug-exit 0; MSR exits per second from the first to the last handed to the main thread',
    },
    {
      id: 'guest-run.vtl_roundtrip',
      kind: 'rate',
      unit: 'pairs/s',
      description:
        'a flat long64 guest on GuestSession (1 VP) that enables VTL1 itself (HvCallEnablePartitionVtl, HvCallEnableVpVtl), then loops VtlCall from VTL0 code → VTL1 code → fast VtlReturn (3k quick, 8k full), then debug-exit 0; port exits per second from the first to the last, halved',
    },
    {
      id: 'guest-run.intercept.higher_vtl',
      kind: 'rate',
      unit: 'intercepts/s',
      description: `test/guests/vsm-scenario on 2 VPs storing concurrently into VTL1-protected pages, route HIGHER_VTL: VTL1 handles each from SINT0 (SetVpRegisters past the store, EOM, EOI, VtlReturn); ${WRITES} stores per VP; intercepted stores (MMIO exits) per second from the first to the last; run over an in-process vsm.v1 server; PASS checked`,
    },
    {
      id: 'guest-run.intercept.monitor',
      kind: 'rate',
      unit: 'intercepts/s',
      description: `the same guest and method, route MONITOR: a Monitor stream (gRPC, loopback, same process) answers ALLOW to each; every value in place, VTL1 saw none, the monitor answered each once`,
    },
  ],
  ratios: [
    {
      figure: 'guest-run.wrmsr',
      baseline: 'guest-run.raw.wrmsr.rate',
      target: { op: '>=', value: 0.5 },
      description: "informational: a running guest's Hyper-V MSR writes vs the raw WRMSR exit loop (at most 2× the raw cost per exit)",
    },
    {
      figure: 'guest-run.vtl_roundtrip',
      baseline: 'guest-run.raw.pio.rate',
      target: { op: '>=', value: 0.2 },
      description:
        'informational: a VtlCall + VtlReturn pair in a running guest (2 port exits, 2 VTL switches) vs one raw exit; issue #13 aims at ≤ 5× for kvm.agent.vtl_roundtrip',
    },
    {
      figure: 'guest-run.intercept.higher_vtl',
      baseline: 'guest-run.raw.pio.rate',
      target: { op: '>=', value: 0.125 },
      description:
        'informational: an intercept handled by VTL1 in a running guest (several exits and 2 VTL switches) vs one raw exit; issue #13 aims at ≤ 8× for the protection round trip',
    },
    {
      figure: 'guest-run.intercept.monitor',
      baseline: 'guest-run.raw.pio.rate',
      target: { op: '>=', value: 0.05 },
      description: 'informational: an intercept answered by a Monitor stream in a running guest vs one raw exit',
    },
  ],
  budget: { quickSec: 40, fullSec: 120 },
  available: kvmAvailability,
  run,
};
