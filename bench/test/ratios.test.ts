import { compare, evaluateRatio, evaluateRatios, parseRef, validateRatio } from '../src/lib/ratios';
import type { FigureResult } from '../src/lib/report';
import { latSpec, latencyFigure, rateFigure, rateSpec, skippedFigure } from './fixtures';

const specs = new Map([
  ['raw.unary.64B', latSpec('raw.unary.64B')],
  ['ours.unary', latSpec('ours.unary')],
  ['raw.stream.64B', rateSpec('raw.stream.64B')],
]);

const asMap = (...f: FigureResult[]) => new Map(f.map((x) => [x.id, x] as const));

describe('ratio references', () => {
  test('plain ids and latency statistics', () => {
    expect(parseRef('raw.unary.64B', specs)).toEqual({ id: 'raw.unary.64B', stat: null });
    expect(parseRef('raw.unary.64B.p99', specs)).toEqual({ id: 'raw.unary.64B', stat: 'p99' });
    expect(parseRef('raw.stream.64B', specs)).toEqual({ id: 'raw.stream.64B', stat: null });
  });

  test('unknown ids, unknown stats and stats on rates are rejected', () => {
    expect(() => parseRef('raw.unary.1MiB.p50', specs)).toThrow(/names no declared figure/);
    expect(() => parseRef('raw.unary.64B.p95', specs)).toThrow(/names no declared figure/);
    expect(() => parseRef('raw.stream.64B.p50', specs)).toThrow(/rate figure/);
  });

  test('validateRatio checks refs, operator and target value', () => {
    expect(validateRatio({ figure: 'ours.unary.p50', baseline: 'raw.unary.64B.p50', target: { op: '<=', value: 1.3 } }, specs)).toEqual([]);
    expect(validateRatio({ figure: 'nope', baseline: 'raw.unary.64B', target: { op: '<=', value: 1.3 } }, specs)).toHaveLength(1);
    expect(validateRatio({ figure: 'ours.unary', baseline: 'raw.unary.64B', target: { op: '=<' as never, value: 0 } }, specs)).toHaveLength(2);
  });

  test('compare operators', () => {
    expect(compare(1.3, '<=', 1.3)).toBe(true);
    expect(compare(1.3, '<', 1.3)).toBe(false);
    expect(compare(0.9, '>=', 0.9)).toBe(true);
    expect(compare(0.9, '>', 0.9)).toBe(false);
  });
});

describe('ratio evaluation', () => {
  const base = latencyFigure('raw.unary.64B', [100, 100, 100]);

  test('met and missed use medians across repeats, ours / baseline', () => {
    const ours = latencyFigure('ours.unary', [125, 120, 130]);
    const met = evaluateRatio({ figure: 'ours.unary.p50', baseline: 'raw.unary.64B.p50', target: { op: '<=', value: 1.3 } }, asMap(base, ours));
    expect(met.status).toBe('met');
    expect(met.ratio).toBeCloseTo(1.25);
    expect(met.ours).toBeCloseTo(125);
    expect(met.base).toBeCloseTo(100);
    const missed = evaluateRatio({ figure: 'ours.unary', baseline: 'raw.unary.64B', target: { op: '<=', value: 1.2 } }, asMap(base, ours));
    expect(missed.status).toBe('missed');
    expect(missed.reason).toBeNull();
  });

  test('p99 references use the p99 statistic', () => {
    const ours = latencyFigure('ours.unary', [200]);
    const r = evaluateRatio({ figure: 'ours.unary.p99', baseline: 'raw.unary.64B.p99', target: { op: '<=', value: 3 } }, asMap(base, ours));
    expect(r.ratio).toBeCloseTo(2);
    expect(r.ours).toBeCloseTo(200 * 1.49);
  });

  test('rates: higher-is-better targets', () => {
    const r = evaluateRatio(
      { figure: 'ours.stream', baseline: 'raw.stream.64B', target: { op: '>=', value: 0.5 } },
      asMap(rateFigure('raw.stream.64B', [1000, 1100, 900]), rateFigure('ours.stream', [600, 400, 500])),
    );
    expect(r).toMatchObject({ status: 'met', ours: 500, base: 1000, ratio: 0.5 });
  });

  test('a skipped figure skips the ratio with its reason', () => {
    const r = evaluateRatio(
      { figure: 'kvm.exit', baseline: 'raw.unary.64B', target: { op: '<=', value: 2 } },
      asMap(base, skippedFigure('kvm.exit', 'no /dev/kvm')),
    );
    expect(r.status).toBe('skipped');
    expect(r.reason).toBe('kvm.exit skipped: no /dev/kvm');
    expect(r.ratio).toBeNull();
    expect(r.base).toBeCloseTo(100);
    const r2 = evaluateRatio(
      { figure: 'raw.unary.64B', baseline: 'kvm.exit', target: { op: '<=', value: 2 } },
      asMap(base, skippedFigure('kvm.exit', 'no /dev/kvm')),
    );
    expect(r2.reason).toMatch(/^baseline kvm.exit skipped/);
  });

  test('zero baseline cannot divide', () => {
    const r = evaluateRatio(
      { figure: 'ours.stream', baseline: 'raw.stream.64B', target: { op: '>=', value: 1 } },
      asMap(rateFigure('raw.stream.64B', [0]), rateFigure('ours.stream', [5])),
    );
    expect(r.status).toBe('skipped');
    expect(r.reason).toMatch(/cannot divide/);
  });

  test('evaluateRatios keeps declaration order', () => {
    const ours = latencyFigure('ours.unary', [110]);
    const out = evaluateRatios(
      [
        { figure: 'ours.unary', baseline: 'raw.unary.64B', target: { op: '<=', value: 1 } },
        { figure: 'ours.unary', baseline: 'raw.unary.64B', target: { op: '<=', value: 2 } },
      ],
      [base, ours],
    );
    expect(out.map((r) => r.status)).toEqual(['missed', 'met']);
  });
});
