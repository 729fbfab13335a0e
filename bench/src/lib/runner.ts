// Runs one suite under its time bound, with its own abort signal and child-process scope.
import type { BenchContext, FigureSpec, Suite } from '../api';
import { SkipError } from '../api';
import { ChildScope } from './children';
import { buildFigure, type FigureResult, type Recorded } from './report';
import type { SuiteOutcome } from './table';
import { AbortedError, Meter, sampleLatency, sleep } from './timing';

export const DEFAULT_BUDGET = { quickSec: 60, fullSec: 240 };

export interface RunOptions {
  quick: boolean;
  repeats: number;
  /** Absolute deadline (performance.now() ms) for the whole run. */
  globalDeadline: number;
  log(line: string): void;
}

/** Per-suite store of recorded repeats; rejects undeclared ids and wrong kinds; sealed after the suite ends. */
export class Recorder {
  private readonly specs: Map<string, FigureSpec>;
  private readonly data = new Map<string, Recorded>();
  private readonly skipped = new Map<string, string>();
  private sealed = false;

  constructor(private readonly suite: Suite) {
    this.specs = new Map(suite.figures.map((f) => [f.id, f] as const));
  }

  private spec(id: string, kind: 'latency' | 'rate'): FigureSpec | null {
    const s = this.specs.get(id);
    if (!s) throw new Error(`suite ${this.suite.name}: figure "${id}" is not declared in its figures`);
    if (s.kind !== kind) throw new Error(`suite ${this.suite.name}: figure "${id}" is declared ${s.kind}, recorded as ${kind}`);
    return this.sealed ? null : s;
  }

  latency(id: string, samples: ArrayLike<number>): void {
    if (!this.spec(id, 'latency')) return;
    if (samples.length === 0) throw new Error(`figure ${id}: empty sample set`);
    const copy = Array.from(samples);
    if (copy.some((v) => !(Number.isFinite(v) && v >= 0))) throw new Error(`figure ${id}: samples must be finite and >= 0`);
    const r = this.data.get(id) ?? { kind: 'latency', repeats: [] };
    (r.repeats as number[][]).push(copy);
    this.data.set(id, r);
  }

  rate(id: string, value: number): void {
    if (!this.spec(id, 'rate')) return;
    if (!(Number.isFinite(value) && value >= 0)) throw new Error(`figure ${id}: value must be finite and >= 0`);
    const r = this.data.get(id) ?? { kind: 'rate', repeats: [] };
    (r.repeats as number[]).push(value);
    this.data.set(id, r);
  }

  /** `id` could not be measured: unless recorded anyway, it reads "skipped: reason" whatever the suite's outcome. */
  skip(id: string, reason: string): void {
    if (!this.specs.has(id)) throw new Error(`suite ${this.suite.name}: figure "${id}" is not declared in its figures`);
    if (!this.sealed) this.skipped.set(id, reason);
  }

  seal(): void {
    this.sealed = true;
  }

  results(fallback: { status: 'skipped' | 'failed'; reason: string }): FigureResult[] {
    return this.suite.figures.map((f) => {
      const why = this.skipped.get(f.id);
      return buildFigure(f, this.suite.name, this.data.get(f.id), why === undefined ? fallback : { status: 'skipped', reason: why });
    });
  }
}

export function skippedSuite(suite: Suite, reason: string): { outcome: SuiteOutcome; figures: FigureResult[] } {
  return {
    outcome: { name: suite.name, status: 'skipped', reason, durationSec: 0 },
    figures: new Recorder(suite).results({ status: 'skipped', reason }),
  };
}

function errText(e: unknown): string {
  return e instanceof Error ? (e.message.split('\n')[0] ?? e.message) : String(e);
}

export async function runSuite(suite: Suite, opts: RunOptions): Promise<{ outcome: SuiteOutcome; figures: FigureResult[] }> {
  const started = performance.now();
  const budgetSec = opts.quick ? (suite.budget?.quickSec ?? DEFAULT_BUDGET.quickSec) : (suite.budget?.fullSec ?? DEFAULT_BUDGET.fullSec);
  const deadline = Math.min(started + budgetSec * 1000, opts.globalDeadline);
  const boundSec = Math.max(0, (deadline - started) / 1000);
  const ac = new AbortController();
  const scope = new ChildScope();
  const recorder = new Recorder(suite);
  const log = (m: string) => opts.log(`[${suite.name}] ${m}`);
  const remainingMs = () => Math.max(0, deadline - performance.now());

  const ctx: BenchContext = {
    quick: opts.quick,
    repeats: opts.repeats,
    signal: ac.signal,
    pick: (q, f) => (opts.quick ? q : f),
    remainingMs,
    log,
    skip: (reason: string): never => {
      throw new SkipError(reason);
    },
    sleep: (ms) => sleep(ms, ac.signal),
    forkServer: (script, o) => scope.forkServer(script, o, ac.signal),
    sampleLatency: async (op, o) => {
      const r = await sampleLatency(op, { ...o, budgetMs: Math.min(o.budgetMs ?? Infinity, remainingMs()), signal: ac.signal });
      if (r.truncated) log(`warning: sampler budget exhausted, kept ${r.samples.length}/${o.samples} samples`);
      return r.samples;
    },
    meter: () => new Meter(ac.signal),
    recordLatency: (id, s) => recorder.latency(id, s),
    recordRate: (id, v) => recorder.rate(id, v),
    skipFigure: (id, reason) => recorder.skip(id, reason),
  };

  let status: SuiteOutcome['status'] = 'ok';
  let reason: string | null = null;
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), Math.max(0, deadline - performance.now()));
  });
  try {
    const avail = suite.available ? await Promise.race([Promise.resolve(suite.available()), timedOut]) : true;
    if (avail === 'timeout') throw new Error('availability check timed out');
    if (avail !== true) throw new SkipError(String(avail));
    log(`running (bound ${+boundSec.toFixed(1)} s)`);
    const running = suite.run(ctx);
    running.catch(() => undefined); // a late rejection after a timeout must not become unhandled
    const r = await Promise.race([running.then(() => 'done' as const), timedOut]);
    if (r === 'timeout') {
      status = 'failed';
      reason = `timed out after ${+boundSec.toFixed(1)} s`;
      ac.abort(new AbortedError(reason));
    }
  } catch (e) {
    if (SkipError.is(e)) {
      status = 'skipped';
      reason = e.reason;
    } else {
      status = 'failed';
      reason = ac.signal.aborted ? `aborted: ${errText(ac.signal.reason)}` : errText(e);
      if (e instanceof Error && e.stack) log(e.stack);
    }
  } finally {
    clearTimeout(timer);
    recorder.seal();
    if (!ac.signal.aborted) ac.abort(new AbortedError('suite finished'));
    await scope.stopAll();
  }
  const durationSec = (performance.now() - started) / 1000;
  log(`${status}${reason ? `: ${reason}` : ''} (${durationSec.toFixed(1)} s)`);
  const fallback =
    status === 'skipped'
      ? { status: 'skipped' as const, reason: reason ?? 'skipped' }
      : status === 'failed'
        ? { status: 'failed' as const, reason: `suite ${suite.name} ${reason ?? 'failed'}` }
        : { status: 'failed' as const, reason: 'suite completed without recording this figure' };
  return { outcome: { name: suite.name, status, reason, durationSec }, figures: recorder.results(fallback) };
}
