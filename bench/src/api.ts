// Public API for benchmark suites. A suite is a module under bench/src/suites/ whose export
// `suite` (or `default`) is a `Suite`. The runner discovers every compiled bench/dist/suites/*.js
// (sorted by file name; files starting with `_` are ignored), validates the declarations, and
// runs the suites one after another. See bench/README.md, "Adding a suite".

/** `latency`: samples in microseconds, summarised by percentiles. `rate`: one scalar per repeat. */
export type FigureKind = 'latency' | 'rate';

/** The statistics of a latency figure that a ratio can refer to as `<figure id>.<stat>`. */
export const LATENCY_STATS = ['p50', 'p90', 'p99', 'mean', 'min', 'max'] as const;
export type LatencyStat = (typeof LATENCY_STATS)[number];

export interface FigureSpec {
  /** Globally unique, dotted, e.g. `raw.unary.64B`. Must not end in `.p50`, `.p99`, ... (reserved for ratio refs). */
  id: string;
  kind: FigureKind;
  /** Latency figures are always `us`. Rates: `msg/s`, `MiB/s`, `exits/s`, ... */
  unit: string;
  /** Default: `lower` for latency, `higher` for rate. Informational (table/chart). */
  better?: 'lower' | 'higher';
  /** One line: what exactly is timed. Shown by `--list` and written to latest.json. */
  description: string;
}

export type RatioOp = '<=' | '<' | '>=' | '>';

/**
 * A declarative target: ratio = value(figure) / value(baseline), both measured in the same run.
 * A reference is either a figure id (latency: its p50; rate: its value) or `<latency id>.<stat>`
 * with stat in LATENCY_STATS. The value used is the median of that statistic across repeats.
 * Example: `{ figure: 'emulator.rdmsr.unary.p50', baseline: 'raw.unary.64B.p50', target: { op: '<=', value: 1.3 } }`
 */
export interface RatioSpec {
  figure: string;
  baseline: string;
  target: { op: RatioOp; value: number };
  description?: string;
}

export interface Suite {
  /** Unique, `[a-z0-9-]+`. Used by `--filter`. */
  name: string;
  description: string;
  /** Every figure the suite may record. Figures not recorded show up as skipped/failed, never vanish. */
  figures: FigureSpec[];
  /** Ratios whose `figure` is owned by this suite (the baseline may belong to any suite). */
  ratios?: RatioSpec[];
  /** Wall-clock bound for the whole suite, seconds. Defaults: quick 60, full 240. */
  budget?: { quickSec?: number; fullSec?: number };
  /**
   * Optional precondition check, run before `run`. Return true to run, or a string: the reason the
   * suite is skipped (e.g. `'no /dev/kvm'`). The table then says "skipped: <reason>".
   */
  available?(): true | string | Promise<true | string>;
  /** Measure, recording results with ctx.recordLatency / ctx.recordRate. May call ctx.skip(reason). */
  run(ctx: BenchContext): Promise<void>;
}

export interface ForkServerOptions {
  args?: string[];
  env?: Record<string, string>;
  /** Extra node flags for the child (it does not inherit the runner's execArgv). */
  execArgv?: string[];
  /** How long to wait for the child's ready message. Default 15000 ms. */
  readyTimeoutMs?: number;
}

/** A server child process. The child reported its port through IPC (see lib/serve.ts announceReady). */
export interface ServerHandle {
  readonly pid: number;
  readonly host: '127.0.0.1';
  readonly port: number;
  /** `127.0.0.1:<port>`, ready for a grpc-js client. */
  readonly address: string;
  /** Extra fields the child sent with its ready message. */
  readonly info: Record<string, unknown>;
  /** SIGTERM, then SIGKILL after 2 s. Idempotent. The runner also stops it when the suite ends. */
  stop(): Promise<void>;
}

export interface SampleOptions {
  /** Samples kept. */
  samples: number;
  /** Operations run first and discarded. */
  warmup: number;
  /** Stop early (keeping what was collected, with a warning) after this long. Default: the suite's remaining time. */
  budgetMs?: number;
}

export interface RateWindow {
  events: number;
  bytes: number;
  seconds: number;
  perSec: number;
  bytesPerSec: number;
}

/** A counter fed by the code under test; `measure` reads it over a window after a warm-up. */
export interface RateMeter {
  add(events?: number, bytes?: number): void;
  readonly events: number;
  readonly bytes: number;
  measure(opts: { warmupMs: number; windowMs: number }): Promise<RateWindow>;
}

export interface BenchContext {
  readonly quick: boolean;
  /** How many times each figure should be measured (3 quick, 7 full, or --repeats). */
  readonly repeats: number;
  /** Aborted when the suite's time bound is reached or the run is interrupted. */
  readonly signal: AbortSignal;
  /** `quick ? quickValue : fullValue`. */
  pick<T>(quickValue: T, fullValue: T): T;
  /** Milliseconds left before the suite's time bound. */
  remainingMs(): number;
  /** Progress line on stderr, prefixed with the suite name. */
  log(message: string): void;
  /** Stop the suite; its unrecorded figures show "skipped: <reason>". */
  skip(reason: string): never;
  /**
   * One figure cannot be measured here (e.g. a baseline tool is missing); the suite goes on. If it
   * stays unrecorded, it shows "skipped: <reason>" (ratios on it are skipped with that reason).
   */
  skipFigure(figureId: string, reason: string): void;
  /** Abortable sleep. */
  sleep(ms: number): Promise<void>;
  /**
   * child_process.fork a compiled server script (path relative to bench/dist, e.g.
   * 'servers/raw-echo-server.js', or absolute) and wait for it to announce its loopback port.
   * The process is killed when the suite ends, whatever happens.
   */
  forkServer(script: string, options?: ForkServerOptions): Promise<ServerHandle>;
  /** Sequential latency sampler (one operation in flight), hrtime-based; returns microseconds. */
  sampleLatency(op: () => Promise<unknown>, options: SampleOptions): Promise<number[]>;
  /** A fresh event/byte counter for throughput measurements. */
  meter(): RateMeter;
  /** Record one repeat of a latency figure (samples in microseconds). */
  recordLatency(figureId: string, samplesUs: ArrayLike<number>): void;
  /** Record one repeat of a rate figure. */
  recordRate(figureId: string, value: number): void;
}

const SKIP_BRAND = Symbol.for('vsm-bench.skip');

/** Thrown by ctx.skip(); may also be thrown directly by suite code. */
export class SkipError extends Error {
  readonly [SKIP_BRAND] = true;
  constructor(readonly reason: string) {
    super(`skipped: ${reason}`);
    this.name = 'SkipError';
  }
  static is(e: unknown): e is SkipError {
    return typeof e === 'object' && e !== null && (e as Record<symbol, unknown>)[SKIP_BRAND] === true;
  }
}
