// Pure number/text formatting shared by the table and the chart.

/** Compact, 3 significant digits, k/M/G suffixes above 1000: 0.0123, 1.23, 123, 12.3k, 1.23M. */
export function fmtNum(v: number | null | undefined, digits = 3): string {
  if (v === null || v === undefined || Number.isNaN(v)) return '-';
  if (!Number.isFinite(v)) return v > 0 ? 'inf' : '-inf';
  const a = Math.abs(v);
  const units: Array<[number, string]> = [
    [1e9, 'G'],
    [1e6, 'M'],
    [1e3, 'k'],
  ];
  for (const [scale, suffix] of units) {
    if (a >= scale) return trimZeros((v / scale).toPrecision(digits)) + suffix;
  }
  if (a === 0) return '0';
  if (a < 1e-3) return v.toExponential(digits - 1);
  return trimZeros(v.toPrecision(digits));
}

function trimZeros(s: string): string {
  if (s.includes('e')) return String(Number(s));
  return s.includes('.') ? s.replace(/\.?0+$/, '') : s;
}

/** Display unit: `us` is shown as µs. */
export function unitLabel(unit: string): string {
  return unit === 'us' ? 'µs' : unit;
}

export function truncate(s: string, n: number): string {
  return s.length <= n ? s : s.slice(0, Math.max(0, n - 1)) + '…';
}
