// Pure: renders figure records as a self-contained SVG (no dependencies). One panel for latency
// (log-scale µs: box = p25..p75 of all repeats pooled, bar = p50, orange tick = p90, whiskers =
// p1..p99, hollow dots = min and max) and one panel per rate unit (log scale: dot = median across
// repeats, line = min..max across repeats). Every figure is one <g class="series" data-figure="id">,
// including skipped ones, which show their reason instead of a mark.
import type { FigureResult } from './report';
import { fmtNum, truncate, unitLabel } from './format';

export interface SvgMeta {
  title: string;
  subtitle?: string;
  footer?: string;
}

const W = 1000;
const LABEL_X = 250; // right edge of labels
const X0 = 262;
const X1 = 742;
const VALUE_X = 754;
const ROW = 24;

export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c] as string);
}

function n(v: number): string {
  return (Math.round(v * 100) / 100).toString();
}

export interface LogScale {
  lo: number;
  hi: number;
  x(v: number): number;
  ticks: Array<{ v: number; major: boolean }>;
}

/** 1-2-5 step at or below v (floor) or at or above v (ceil). */
export function niceStep(v: number, dir: 'floor' | 'ceil'): number {
  const e = Math.floor(Math.log10(v));
  const steps = [1, 2, 5, 10].map((m) => Number((m * 10 ** e).toPrecision(6)));
  if (dir === 'floor') return [...steps].reverse().find((s) => s <= v * (1 + 1e-9)) ?? steps[0]!;
  return steps.find((s) => s >= v * (1 - 1e-9)) ?? steps[3]!;
}

/** Log scale over [1-2-5 step below min, 1-2-5 step above max], mapped onto [x0, x1]. */
export function logScale(minV: number, maxV: number, x0 = X0, x1 = X1): LogScale {
  const safeMin = minV > 0 && Number.isFinite(minV) ? minV : 1;
  const safeMax = maxV > 0 && Number.isFinite(maxV) ? Math.max(maxV, safeMin) : safeMin;
  const lo = niceStep(safeMin, 'floor');
  let hi = niceStep(safeMax, 'ceil');
  if (hi <= lo) hi = niceStep(lo * 1.5, 'ceil');
  const lLo = Math.log10(lo);
  const span = Math.log10(hi) - lLo;
  const x = (v: number) => {
    const c = Math.min(Math.max(v > 0 ? v : lo, lo), hi);
    return x0 + ((Math.log10(c) - lLo) / span) * (x1 - x0);
  };
  const ticks: Array<{ v: number; major: boolean }> = [];
  const labelMinor = span <= 3;
  for (let e = Math.floor(lLo); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const v = Number((m * 10 ** e).toPrecision(6));
      if (v < lo * 0.999 || v > hi * 1.001) continue;
      ticks.push({ v, major: m === 1 || labelMinor });
    }
  }
  return { lo, hi, x, ticks };
}

interface Panel {
  title: string;
  figures: FigureResult[];
  kind: 'latency' | 'rate';
  unit: string;
}

function panelsOf(figures: readonly FigureResult[]): Panel[] {
  const panels: Panel[] = [];
  const lat = figures.filter((f) => f.kind === 'latency');
  if (lat.length)
    panels.push({
      title: 'Latency (µs, log scale): box p25–p75 · bar p50 · orange p90 · whiskers p1–p99 · dots min/max',
      figures: lat,
      kind: 'latency',
      unit: 'us',
    });
  const units: string[] = [];
  for (const f of figures) if (f.kind === 'rate' && !units.includes(f.unit)) units.push(f.unit);
  for (const u of units) {
    panels.push({
      title: `Throughput (${unitLabel(u)}, log scale): dot median of repeats · line min–max`,
      figures: figures.filter((f) => f.kind === 'rate' && f.unit === u),
      kind: 'rate',
      unit: u,
    });
  }
  return panels;
}

function domain(p: Panel): [number, number] | null {
  let lo = Infinity;
  let hi = -Infinity;
  for (const f of p.figures) {
    if (f.status !== 'ok') continue;
    if (f.latency) {
      lo = Math.min(lo, f.latency.distribution.min);
      hi = Math.max(hi, f.latency.distribution.max);
    } else if (f.min !== null && f.max !== null) {
      lo = Math.min(lo, f.min);
      hi = Math.max(hi, f.max);
    }
  }
  return Number.isFinite(lo) && Number.isFinite(hi) ? [lo, hi] : null;
}

function seriesLatency(f: FigureResult, s: LogScale, yMid: number): string[] {
  const d = (f.latency as NonNullable<FigureResult['latency']>).distribution;
  const out: string[] = [];
  const h = 7;
  out.push(`<line class="whisker" x1="${n(s.x(d.p1))}" y1="${n(yMid)}" x2="${n(s.x(d.p99))}" y2="${n(yMid)}" stroke="#555" />`);
  for (const v of [d.p1, d.p99]) out.push(`<line x1="${n(s.x(v))}" y1="${n(yMid - 4)}" x2="${n(s.x(v))}" y2="${n(yMid + 4)}" stroke="#555" />`);
  const bx = s.x(d.p25);
  out.push(`<rect class="box" x="${n(bx)}" y="${n(yMid - h)}" width="${n(Math.max(1, s.x(d.p75) - bx))}" height="${2 * h}" fill="#9cc1ea" stroke="#2a5d9f" />`);
  out.push(`<line class="p50" x1="${n(s.x(d.p50))}" y1="${n(yMid - h)}" x2="${n(s.x(d.p50))}" y2="${n(yMid + h)}" stroke="#0b2e59" stroke-width="2.5" />`);
  out.push(`<line class="p90" x1="${n(s.x(d.p90))}" y1="${n(yMid - h)}" x2="${n(s.x(d.p90))}" y2="${n(yMid + h)}" stroke="#e07b00" stroke-width="2" />`);
  for (const v of [d.min, d.max]) out.push(`<circle cx="${n(s.x(v))}" cy="${n(yMid)}" r="2.5" fill="none" stroke="#555" />`);
  return out;
}

function seriesRate(f: FigureResult, s: LogScale, yMid: number): string[] {
  const lo = f.min as number;
  const hi = f.max as number;
  const md = f.median as number;
  return [
    `<line class="range" x1="${n(s.x(lo))}" y1="${n(yMid)}" x2="${n(s.x(hi))}" y2="${n(yMid)}" stroke="#2a5d9f" stroke-width="2" />`,
    `<line x1="${n(s.x(lo))}" y1="${n(yMid - 5)}" x2="${n(s.x(lo))}" y2="${n(yMid + 5)}" stroke="#2a5d9f" />`,
    `<line x1="${n(s.x(hi))}" y1="${n(yMid - 5)}" x2="${n(s.x(hi))}" y2="${n(yMid + 5)}" stroke="#2a5d9f" />`,
    `<circle class="median" cx="${n(s.x(md))}" cy="${n(yMid)}" r="4.5" fill="#0b2e59" />`,
  ];
}

function valueText(f: FigureResult): string {
  if (f.latency) {
    const l = f.latency;
    return `p50 ${fmtNum(l.p50.median)} · p90 ${fmtNum(l.p90.median)} · p99 ${fmtNum(l.p99.median)} µs`;
  }
  return `${fmtNum(f.median)} ${unitLabel(f.unit)} [${fmtNum(f.min)}–${fmtNum(f.max)}]`;
}

function tooltip(f: FigureResult): string {
  if (f.status !== 'ok') return `${f.id}: ${f.status}${f.reason ? `: ${f.reason}` : ''}`;
  if (f.latency) {
    const d = f.latency.distribution;
    return `${f.id} — ${f.description}\n${f.repeats} repeats, ${d.n} samples pooled\nmin ${fmtNum(d.min)} p25 ${fmtNum(d.p25)} p50 ${fmtNum(d.p50)} p75 ${fmtNum(d.p75)} p90 ${fmtNum(d.p90)} p99 ${fmtNum(d.p99)} max ${fmtNum(d.max)} µs`;
  }
  return `${f.id} — ${f.description}\n${f.repeats} repeats: ${(f.rate?.perRepeat ?? []).map((v) => fmtNum(v)).join(', ')} ${unitLabel(f.unit)}`;
}

export function renderSvg(figures: readonly FigureResult[], meta: SvgMeta): string {
  const body: string[] = [];
  let y = 28;
  body.push(`<text x="16" y="${y}" font-size="16" font-weight="bold">${escapeXml(meta.title)}</text>`);
  if (meta.subtitle) {
    y += 18;
    body.push(`<text x="16" y="${y}" font-size="11" fill="#444">${escapeXml(meta.subtitle)}</text>`);
  }
  y += 14;
  const panels = panelsOf(figures);
  if (panels.length === 0) {
    y += 24;
    body.push(`<text x="16" y="${y}" font-size="12" fill="#777">no figures declared</text>`);
  }
  for (const p of panels) {
    y += 22;
    body.push(`<g class="panel" data-kind="${p.kind}" data-unit="${escapeXml(p.unit)}">`);
    body.push(`<text x="16" y="${y}" font-size="12" font-weight="bold">${escapeXml(p.title)}</text>`);
    const top = y + 8;
    const bottom = top + p.figures.length * ROW;
    const dom = domain(p);
    const scale = dom ? logScale(dom[0], dom[1]) : null;
    if (scale) {
      for (const t of scale.ticks) {
        const tx = n(scale.x(t.v));
        body.push(`<line x1="${tx}" y1="${top}" x2="${tx}" y2="${bottom}" stroke="${t.major ? '#ccc' : '#eee'}" />`);
        if (t.major) body.push(`<text x="${tx}" y="${bottom + 13}" font-size="10" text-anchor="middle" fill="#444">${escapeXml(fmtNum(t.v))}</text>`);
      }
      body.push(`<line x1="${X0}" y1="${bottom}" x2="${X1}" y2="${bottom}" stroke="#888" />`);
      body.push(`<text x="${X1}" y="${bottom + 26}" font-size="10" text-anchor="end" fill="#444">${escapeXml(unitLabel(p.unit))}</text>`);
    }
    p.figures.forEach((f, i) => {
      const yMid = top + i * ROW + ROW / 2;
      body.push(`<g class="series" data-figure="${escapeXml(f.id)}" data-status="${f.status}">`);
      body.push(`<title>${escapeXml(tooltip(f))}</title>`);
      body.push(`<text x="${LABEL_X}" y="${n(yMid + 4)}" font-size="11" text-anchor="end">${escapeXml(truncate(f.id, 40))}</text>`);
      if (f.status === 'ok' && scale) {
        body.push(...(p.kind === 'latency' ? seriesLatency(f, scale, yMid) : seriesRate(f, scale, yMid)));
        body.push(`<text x="${VALUE_X}" y="${n(yMid + 4)}" font-size="10" fill="#222">${escapeXml(valueText(f))}</text>`);
      } else {
        const why = `${f.status}${f.reason ? `: ${f.reason}` : ''}`;
        body.push(`<text x="${X0}" y="${n(yMid + 4)}" font-size="11" font-style="italic" fill="#888">${escapeXml(truncate(why, 110))}</text>`);
      }
      body.push(`</g>`);
    });
    body.push(`</g>`);
    y = bottom + (scale ? 30 : 6);
  }
  if (meta.footer) {
    y += 20;
    body.push(`<text x="16" y="${y}" font-size="10" fill="#666">${escapeXml(meta.footer)}</text>`);
  }
  const height = y + 16;
  return [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}" viewBox="0 0 ${W} ${height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">`,
    `<rect x="0" y="0" width="${W}" height="${height}" fill="#fff" />`,
    ...body,
    `</svg>`,
    '',
  ].join('\n');
}
