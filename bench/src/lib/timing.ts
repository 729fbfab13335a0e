// Timing helpers: hrtime-based sequential latency sampler, event/byte rate meter, abortable sleep.
import type { RateMeter, RateWindow, SampleOptions } from '../api';

export class AbortedError extends Error {
  constructor(reason?: unknown) {
    super(reason instanceof Error ? reason.message : typeof reason === 'string' ? reason : 'aborted');
    this.name = 'AbortedError';
  }
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AbortedError(signal.reason);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(new AbortedError(signal.reason));
    const onAbort = () => {
      clearTimeout(t);
      reject(new AbortedError(signal?.reason));
    };
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export interface SamplerResult {
  samples: number[];
  /** True when the budget ran out before `samples` were collected. */
  truncated: boolean;
}

/**
 * Run `op` sequentially (exactly one in flight): `warmup` times untimed, then `samples` times,
 * timing each with process.hrtime.bigint(). Returns microseconds. Stops early at budgetMs
 * (truncated = true); throws AbortedError if the signal fires; throws if no sample was taken.
 */
export async function sampleLatency(op: () => Promise<unknown>, opts: SampleOptions & { signal?: AbortSignal }): Promise<SamplerResult> {
  if (!(Number.isInteger(opts.samples) && opts.samples > 0)) throw new RangeError('samples must be a positive integer');
  if (!(Number.isInteger(opts.warmup) && opts.warmup >= 0)) throw new RangeError('warmup must be a non-negative integer');
  const budget = opts.budgetMs ?? Infinity;
  const start = performance.now();
  const over = () => performance.now() - start > budget;
  for (let i = 0; i < opts.warmup; i++) {
    await op();
    if ((i & 31) === 31) {
      throwIfAborted(opts.signal);
      if (over()) break;
    }
  }
  const buf = new Float64Array(opts.samples);
  let n = 0;
  let truncated = false;
  while (n < opts.samples) {
    const t0 = process.hrtime.bigint();
    await op();
    const t1 = process.hrtime.bigint();
    buf[n++] = Number(t1 - t0) / 1000;
    if ((n & 31) === 0) {
      throwIfAborted(opts.signal);
      if (over()) {
        truncated = n < opts.samples;
        break;
      }
    }
  }
  throwIfAborted(opts.signal);
  if (n === 0) throw new Error('latency sampler: no sample collected within budget');
  return { samples: Array.from(buf.subarray(0, n)), truncated };
}

export class Meter implements RateMeter {
  events = 0;
  bytes = 0;
  constructor(private readonly signal?: AbortSignal) {}

  add(events = 1, bytes = 0): void {
    this.events += events;
    this.bytes += bytes;
  }

  async measure(opts: { warmupMs: number; windowMs: number }): Promise<RateWindow> {
    if (!(opts.windowMs > 0)) throw new RangeError('windowMs must be > 0');
    await sleep(opts.warmupMs, this.signal);
    const e0 = this.events;
    const b0 = this.bytes;
    const t0 = process.hrtime.bigint();
    await sleep(opts.windowMs, this.signal);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const events = this.events - e0;
    const bytes = this.bytes - b0;
    return { events, bytes, seconds, perSec: events / seconds, bytesPerSec: bytes / seconds };
  }
}
