// Pure: turns recorded repeats into the figure records of latest.json. Every declared figure
// yields exactly one record with the same keys whatever happened (null where not measured),
// so the structure of the output is deterministic.
import type { FigureKind, FigureSpec } from '../api';
import { distribution, repeatStats, summarize, type Distribution, type Summary } from './stats';

export type FigureStatus = 'ok' | 'skipped' | 'failed';

export interface LatencyDetail {
  samplesPerRepeat: number[];
  p50: Summary;
  p90: Summary;
  p99: Summary;
  mean: Summary;
  min: Summary;
  max: Summary;
  /** All repeats pooled; drives the chart. */
  distribution: Distribution;
}

export interface FigureResult {
  id: string;
  suite: string;
  kind: FigureKind;
  unit: string;
  better: 'lower' | 'higher';
  description: string;
  status: FigureStatus;
  reason: string | null;
  /** Number of repeats recorded. */
  repeats: number;
  /** The statistic that median/min/max describe: p50 for latency, the value for rates. */
  headline: 'p50' | 'value';
  median: number | null;
  min: number | null;
  max: number | null;
  latency: LatencyDetail | null;
  rate: { perRepeat: number[] } | null;
}

/** Recorded data for one figure: latency = sample arrays (µs) per repeat; rate = one value per repeat. */
export type Recorded = { kind: 'latency'; repeats: number[][] } | { kind: 'rate'; repeats: number[] };

export function defaultBetter(kind: FigureKind): 'lower' | 'higher' {
  return kind === 'latency' ? 'lower' : 'higher';
}

/**
 * Build one figure record. With at least one repeat recorded the figure is `ok` (a suite that
 * failed later still keeps what it measured; the suite's own status carries the error);
 * otherwise it takes `fallback` (the suite's skip/failure reason).
 */
export function buildFigure(
  spec: FigureSpec,
  suite: string,
  recorded: Recorded | undefined,
  fallback: { status: 'skipped' | 'failed'; reason: string },
): FigureResult {
  const base = {
    id: spec.id,
    suite,
    kind: spec.kind,
    unit: spec.unit,
    better: spec.better ?? defaultBetter(spec.kind),
    description: spec.description,
    headline: spec.kind === 'latency' ? ('p50' as const) : ('value' as const),
  };
  const n = recorded ? recorded.repeats.length : 0;
  if (!recorded || n === 0) {
    return { ...base, status: fallback.status, reason: fallback.reason, repeats: 0, median: null, min: null, max: null, latency: null, rate: null };
  }
  if (recorded.kind !== spec.kind) throw new Error(`figure ${spec.id}: recorded as ${recorded.kind}, declared ${spec.kind}`);
  if (recorded.kind === 'latency') {
    const per = recorded.repeats.map((s) => repeatStats(s));
    const pick = (k: 'p50' | 'p90' | 'p99' | 'mean' | 'min' | 'max') => summarize(per.map((r) => r[k]));
    const pooled: number[] = [];
    for (const r of recorded.repeats) for (const v of r) pooled.push(v);
    const latency: LatencyDetail = {
      samplesPerRepeat: per.map((r) => r.n),
      p50: pick('p50'),
      p90: pick('p90'),
      p99: pick('p99'),
      mean: pick('mean'),
      min: pick('min'),
      max: pick('max'),
      distribution: distribution(pooled),
    };
    return { ...base, status: 'ok', reason: null, repeats: n, median: latency.p50.median, min: latency.p50.min, max: latency.p50.max, latency, rate: null };
  }
  const s = summarize(recorded.repeats);
  return { ...base, status: 'ok', reason: null, repeats: n, median: s.median, min: s.min, max: s.max, latency: null, rate: { perRepeat: s.perRepeat } };
}
