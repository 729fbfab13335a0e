// Pure: the plain-text report printed on stdout.
import type { FigureResult } from './report';
import type { RatioResult } from './ratios';
import { fmtNum, unitLabel } from './format';

export interface SuiteOutcome {
  name: string;
  status: 'ok' | 'skipped' | 'failed';
  reason: string | null;
  durationSec: number;
}

function grid(rows: string[][], rightAlign: ReadonlySet<number> = new Set()): string {
  const widths: number[] = [];
  for (const r of rows) {
    r.forEach((c, i) => {
      widths[i] = Math.max(widths[i] ?? 0, [...c].length);
    });
  }
  return rows
    .map((r) =>
      r
        .map((c, i) => {
          if (i === r.length - 1 && !rightAlign.has(i)) return c;
          const pad = (widths[i] as number) - [...c].length;
          return rightAlign.has(i) ? ' '.repeat(pad) + c : c + ' '.repeat(pad);
        })
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

function range(med: number | null, lo: number | null, hi: number | null): string {
  return `${fmtNum(med)} [${fmtNum(lo)}–${fmtNum(hi)}]`;
}

export function figureTable(figures: readonly FigureResult[]): string {
  const rows: string[][] = [['figure', 'unit', 'p50 | value: median [min–max] of repeats', 'p90', 'p99', 'repeats×samples', 'status']];
  for (const f of figures) {
    if (f.status !== 'ok') {
      rows.push([f.id, unitLabel(f.unit), '', '', '', '', `${f.status}: ${f.reason ?? ''}`]);
      continue;
    }
    if (f.latency) {
      const per = f.latency.samplesPerRepeat;
      const nMin = Math.min(...per);
      const nMax = Math.max(...per);
      rows.push([
        f.id,
        unitLabel(f.unit),
        range(f.median, f.min, f.max),
        fmtNum(f.latency.p90.median),
        fmtNum(f.latency.p99.median),
        `${f.repeats}×${nMin === nMax ? nMin : `${nMin}-${nMax}`}`,
        'ok',
      ]);
    } else {
      rows.push([f.id, unitLabel(f.unit), range(f.median, f.min, f.max), '', '', `${f.repeats}`, 'ok']);
    }
  }
  return grid(rows);
}

export function ratioTable(ratios: readonly RatioResult[]): string {
  if (ratios.length === 0) return 'ratios: none declared';
  const rows: string[][] = [['ratio (ours / baseline)', 'ours', 'baseline', 'ratio', 'target', 'status']];
  for (const r of ratios) {
    rows.push([
      `${r.figure} / ${r.baseline}`,
      fmtNum(r.ours),
      fmtNum(r.base),
      r.ratio === null ? '-' : r.ratio.toFixed(3),
      `${r.target.op} ${r.target.value}`,
      r.status === 'skipped' ? `skipped: ${r.reason ?? ''}` : r.status,
    ]);
  }
  return grid(rows);
}

export function suiteLines(suites: readonly SuiteOutcome[]): string {
  return suites.map((s) => `suite ${s.name}: ${s.status}${s.reason ? `: ${s.reason}` : ''} (${s.durationSec.toFixed(1)} s)`).join('\n');
}
