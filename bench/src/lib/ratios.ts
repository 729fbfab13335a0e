// Pure: resolution and evaluation of declarative ratio targets (ours / baseline, same run).
import { LATENCY_STATS, type FigureSpec, type LatencyStat, type RatioOp, type RatioSpec } from '../api';
import type { FigureResult } from './report';

export type RatioStatus = 'met' | 'missed' | 'skipped';

export interface RatioResult {
  figure: string;
  baseline: string;
  description: string | null;
  target: { op: RatioOp; value: number };
  /** Median across repeats of the referenced statistic; null when not measured. */
  ours: number | null;
  base: number | null;
  ratio: number | null;
  status: RatioStatus;
  reason: string | null;
}

export interface FigureRef {
  id: string;
  /** null = the figure's headline (p50 for latency, value for rate). */
  stat: LatencyStat | null;
}

const OPS: readonly RatioOp[] = ['<=', '<', '>=', '>'];

/** Resolve `<id>` or `<latency id>.<stat>` against the declared figures; throws a readable error. */
export function parseRef(ref: string, figures: ReadonlyMap<string, Pick<FigureSpec, 'kind'>>): FigureRef {
  if (figures.has(ref)) return { id: ref, stat: null };
  const dot = ref.lastIndexOf('.');
  if (dot > 0) {
    const id = ref.slice(0, dot);
    const stat = ref.slice(dot + 1);
    const spec = figures.get(id);
    if (spec && (LATENCY_STATS as readonly string[]).includes(stat)) {
      if (spec.kind !== 'latency') throw new Error(`ratio reference "${ref}": ${id} is a ${spec.kind} figure, only latency figures have .${stat}`);
      return { id, stat: stat as LatencyStat };
    }
  }
  throw new Error(`ratio reference "${ref}" names no declared figure (use "<id>" or "<latency id>.{${LATENCY_STATS.join(',')}}")`);
}

/** Static checks of one ratio declaration; returns error messages (empty = valid). */
export function validateRatio(spec: RatioSpec, figures: ReadonlyMap<string, Pick<FigureSpec, 'kind'>>): string[] {
  const errors: string[] = [];
  const label = `ratio ${spec.figure} / ${spec.baseline}`;
  for (const ref of [spec.figure, spec.baseline]) {
    try {
      parseRef(ref, figures);
    } catch (e) {
      errors.push(`${label}: ${(e as Error).message}`);
    }
  }
  if (!spec.target || !OPS.includes(spec.target.op)) errors.push(`${label}: target.op must be one of ${OPS.join(' ')}`);
  if (!spec.target || !(typeof spec.target.value === 'number' && Number.isFinite(spec.target.value) && spec.target.value > 0)) {
    errors.push(`${label}: target.value must be a positive finite number`);
  }
  return errors;
}

/** Median-across-repeats value of a reference, or why there is none. */
export function resolveValue(ref: string, results: ReadonlyMap<string, FigureResult>): { value: number } | { reason: string } {
  const kinds = new Map<string, Pick<FigureSpec, 'kind'>>();
  for (const [id, r] of results) kinds.set(id, { kind: r.kind });
  let parsed: FigureRef;
  try {
    parsed = parseRef(ref, kinds);
  } catch (e) {
    return { reason: (e as Error).message };
  }
  const fig = results.get(parsed.id) as FigureResult;
  if (fig.status !== 'ok') return { reason: `${parsed.id} ${fig.status}${fig.reason ? `: ${fig.reason}` : ''}` };
  if (parsed.stat === null) return fig.median === null ? { reason: `${parsed.id} has no value` } : { value: fig.median };
  const detail = fig.latency;
  if (!detail) return { reason: `${parsed.id} has no latency detail` };
  return { value: detail[parsed.stat].median };
}

export function compare(ratio: number, op: RatioOp, value: number): boolean {
  switch (op) {
    case '<=':
      return ratio <= value;
    case '<':
      return ratio < value;
    case '>=':
      return ratio >= value;
    case '>':
      return ratio > value;
  }
}

export function evaluateRatio(spec: RatioSpec, results: ReadonlyMap<string, FigureResult>): RatioResult {
  const out: RatioResult = {
    figure: spec.figure,
    baseline: spec.baseline,
    description: spec.description ?? null,
    target: { op: spec.target.op, value: spec.target.value },
    ours: null,
    base: null,
    ratio: null,
    status: 'skipped',
    reason: null,
  };
  const ours = resolveValue(spec.figure, results);
  const base = resolveValue(spec.baseline, results);
  if ('value' in ours) out.ours = ours.value;
  if ('value' in base) out.base = base.value;
  if ('reason' in ours) return { ...out, reason: ours.reason };
  if ('reason' in base) return { ...out, reason: `baseline ${base.reason}` };
  if (!(base.value > 0) || !Number.isFinite(ours.value)) return { ...out, reason: `baseline value ${base.value} cannot divide` };
  const ratio = ours.value / base.value;
  return { ...out, ratio, status: compare(ratio, spec.target.op, spec.target.value) ? 'met' : 'missed' };
}

export function evaluateRatios(specs: readonly RatioSpec[], results: readonly FigureResult[]): RatioResult[] {
  const map = new Map(results.map((r) => [r.id, r] as const));
  return specs.map((s) => evaluateRatio(s, map));
}
