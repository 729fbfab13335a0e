import { buildFigure } from '../src/lib/report';
import { latSpec, latencyFigure, rateFigure, skippedFigure } from './fixtures';

describe('figure records', () => {
  test('latency: median/min/max are of the per-repeat p50; percentiles summarised across repeats', () => {
    const f = latencyFigure('x.lat', [100, 120, 110]);
    expect(f.status).toBe('ok');
    expect(f.repeats).toBe(3);
    expect(f.headline).toBe('p50');
    expect(f.median).toBeCloseTo(110);
    expect(f.min).toBeCloseTo(100);
    expect(f.max).toBeCloseTo(120);
    expect(f.latency?.p50.perRepeat.map(Math.round)).toEqual([100, 120, 110]);
    expect(f.latency?.p99.median).toBeCloseTo(110 * 1.49);
    expect(f.latency?.samplesPerRepeat).toEqual([101, 101, 101]);
    expect(f.latency?.distribution.n).toBe(303);
    expect(f.rate).toBeNull();
  });

  test('rate: median/min/max across repeats', () => {
    const f = rateFigure('x.rate', [10, 30, 20]);
    expect(f).toMatchObject({ status: 'ok', repeats: 3, median: 20, min: 10, max: 30, headline: 'value', latency: null, rate: { perRepeat: [10, 30, 20] } });
  });

  test('unmeasured figures keep the same keys, with nulls and the reason', () => {
    const ok = latencyFigure('a', [1]);
    const skipped = skippedFigure('b', 'no /dev/kvm');
    expect(Object.keys(skipped).sort()).toEqual(Object.keys(ok).sort());
    expect(skipped).toMatchObject({ status: 'skipped', reason: 'no /dev/kvm', repeats: 0, median: null, min: null, max: null, latency: null, rate: null });
    const rateOk = rateFigure('c', [1]);
    expect(Object.keys(rateOk).sort()).toEqual(Object.keys(ok).sort());
  });

  test('kind mismatch is a programming error', () => {
    expect(() => buildFigure(latSpec('a'), 's', { kind: 'rate', repeats: [1] }, { status: 'failed', reason: '' })).toThrow(/declared latency/);
  });
});
