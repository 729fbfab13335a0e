import { distribution, max, mean, median, min, percentile, quantileSorted, repeatStats, sorted, summarize } from '../src/lib/stats';

describe('stats', () => {
  test('median of odd and even sets', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([7])).toBe(7);
  });

  test('percentiles interpolate linearly between ranks (type 7)', () => {
    const v = Array.from({ length: 101 }, (_, i) => i); // 0..100
    expect(percentile(v, 0)).toBe(0);
    expect(percentile(v, 50)).toBe(50);
    expect(percentile(v, 90)).toBe(90);
    expect(percentile(v, 99)).toBe(99);
    expect(percentile(v, 100)).toBe(100);
    expect(percentile([10, 20], 25)).toBeCloseTo(12.5);
    expect(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90)).toBeCloseTo(9.1);
    expect(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 99)).toBeCloseTo(9.91);
  });

  test('order of input does not matter and input is not modified', () => {
    const v = [5, 3, 9, 1, 7];
    const copy = [...v];
    expect(percentile(v, 75)).toBe(7);
    expect(v).toEqual(copy);
    expect(Array.from(sorted(v))).toEqual([1, 3, 5, 7, 9]);
  });

  test('min, max, mean', () => {
    expect(min([3, -1, 2])).toBe(-1);
    expect(max([3, -1, 2])).toBe(3);
    expect(mean([1, 2, 3, 4])).toBe(2.5);
    expect(max(new Float64Array([0.5, 1e9]))).toBe(1e9);
  });

  test('empty sets and bad inputs throw', () => {
    expect(() => median([])).toThrow(RangeError);
    expect(() => min([])).toThrow(RangeError);
    expect(() => max([])).toThrow(RangeError);
    expect(() => mean([])).toThrow(RangeError);
    expect(() => distribution([])).toThrow(RangeError);
    expect(() => percentile([1, NaN], 50)).toThrow(/NaN/);
    expect(() => quantileSorted([1, 2], 1.5)).toThrow(RangeError);
  });

  test('summarize reports median/min/max across repeats and keeps the per-repeat values', () => {
    expect(summarize([120, 100, 300])).toEqual({ median: 120, min: 100, max: 300, perRepeat: [120, 100, 300] });
  });

  test('distribution and per-repeat stats', () => {
    const v = Array.from({ length: 1000 }, (_, i) => i + 1); // 1..1000
    const d = distribution(v);
    expect(d.n).toBe(1000);
    expect(d.min).toBe(1);
    expect(d.max).toBe(1000);
    expect(d.p50).toBeCloseTo(500.5);
    expect(d.p99).toBeCloseTo(990.01);
    expect(d.p1).toBeLessThan(d.p10);
    expect(d.p25).toBeLessThan(d.p75);
    const r = repeatStats(v);
    expect(r).toMatchObject({ n: 1000, min: 1, max: 1000, mean: 500.5 });
    expect(r.p90).toBeCloseTo(900.1);
  });
});
