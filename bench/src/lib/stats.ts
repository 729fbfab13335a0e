// Pure statistics helpers. Quantiles use linear interpolation between closest ranks
// (Hyndman & Fan type 7, the numpy/R default): q(0) = min, q(1) = max, q(0.5) = median.

function assertNonEmpty(values: ArrayLike<number>, what: string): void {
  if (values.length === 0) throw new RangeError(`${what} of an empty set`);
}

/** Ascending copy as Float64Array (does not modify the input). NaN is rejected. */
export function sorted(values: ArrayLike<number>): Float64Array {
  const out = Float64Array.from(values as ArrayLike<number>);
  for (let i = 0; i < out.length; i++) if (Number.isNaN(out[i])) throw new RangeError('NaN in sample set');
  out.sort();
  return out;
}

/** Quantile q in [0, 1] of an ascending array. */
export function quantileSorted(asc: ArrayLike<number>, q: number): number {
  assertNonEmpty(asc, 'quantile');
  if (!(q >= 0 && q <= 1)) throw new RangeError(`quantile ${q} outside [0, 1]`);
  const pos = (asc.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  const a = asc[lo] as number;
  const b = asc[hi] as number;
  return lo === hi ? a : a + (b - a) * (pos - lo);
}

/** Percentile p in [0, 100] of unsorted values. */
export function percentile(values: ArrayLike<number>, p: number): number {
  return quantileSorted(sorted(values), p / 100);
}

export function median(values: ArrayLike<number>): number {
  return percentile(values, 50);
}

export function min(values: ArrayLike<number>): number {
  assertNonEmpty(values, 'min');
  let m = Infinity;
  for (let i = 0; i < values.length; i++) if ((values[i] as number) < m) m = values[i] as number;
  return m;
}

export function max(values: ArrayLike<number>): number {
  assertNonEmpty(values, 'max');
  let m = -Infinity;
  for (let i = 0; i < values.length; i++) if ((values[i] as number) > m) m = values[i] as number;
  return m;
}

export function mean(values: ArrayLike<number>): number {
  assertNonEmpty(values, 'mean');
  let s = 0;
  for (let i = 0; i < values.length; i++) s += values[i] as number;
  return s / values.length;
}

/** Summary of one statistic across repeats. */
export interface Summary {
  median: number;
  min: number;
  max: number;
  perRepeat: number[];
}

export function summarize(perRepeat: ArrayLike<number>): Summary {
  const list = Array.from(perRepeat);
  return { median: median(list), min: min(list), max: max(list), perRepeat: list };
}

/** Shape of a (pooled) latency distribution, for the chart. */
export interface Distribution {
  n: number;
  min: number;
  p1: number;
  p10: number;
  p25: number;
  p50: number;
  p75: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export function distribution(samples: ArrayLike<number>): Distribution {
  const s = sorted(samples);
  assertNonEmpty(s, 'distribution');
  const q = (x: number) => quantileSorted(s, x);
  return {
    n: s.length,
    min: s[0] as number,
    p1: q(0.01),
    p10: q(0.1),
    p25: q(0.25),
    p50: q(0.5),
    p75: q(0.75),
    p90: q(0.9),
    p99: q(0.99),
    max: s[s.length - 1] as number,
    mean: mean(s),
  };
}

/** Per-repeat statistics of one latency sample set. */
export interface RepeatStats {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  mean: number;
  min: number;
  max: number;
}

export function repeatStats(samples: ArrayLike<number>): RepeatStats {
  const s = sorted(samples);
  assertNonEmpty(s, 'repeat statistics');
  return {
    n: s.length,
    p50: quantileSorted(s, 0.5),
    p90: quantileSorted(s, 0.9),
    p99: quantileSorted(s, 0.99),
    mean: mean(s),
    min: s[0] as number,
    max: s[s.length - 1] as number,
  };
}
