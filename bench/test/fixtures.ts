import type { FigureSpec } from '../src/api';
import { buildFigure, type FigureResult } from '../src/lib/report';

export const latSpec = (id: string): FigureSpec => ({ id, kind: 'latency', unit: 'us', description: `latency ${id}` });
export const rateSpec = (id: string, unit = 'msg/s'): FigureSpec => ({ id, kind: 'rate', unit, description: `rate ${id}` });

/** A latency figure whose repeats are constant-ish sample sets around the given p50s. */
export function latencyFigure(id: string, p50s: number[], suite = 'test'): FigureResult {
  const repeats = p50s.map((p) => Array.from({ length: 101 }, (_, i) => p * (0.5 + i / 100)));
  return buildFigure(latSpec(id), suite, { kind: 'latency', repeats }, { status: 'failed', reason: 'unused' });
}

export function rateFigure(id: string, values: number[], unit = 'msg/s'): FigureResult {
  return buildFigure(rateSpec(id, unit), 'test', { kind: 'rate', repeats: values }, { status: 'failed', reason: 'unused' });
}

export function skippedFigure(id: string, reason: string, kind: 'latency' | 'rate' = 'latency'): FigureResult {
  return buildFigure(kind === 'latency' ? latSpec(id) : rateSpec(id), 'test', undefined, { status: 'skipped', reason });
}
