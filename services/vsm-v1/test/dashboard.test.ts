// Observability (#15): the Grafana dashboard (deploy/grafana/vsm-dashboard.json) asks only for metrics
// that exist: every metric name in every panel's PromQL is one VsmMetrics registers (a histogram's
// _bucket/_sum/_count series included) or one of prom-client's process defaults it collects. Also:
// the panels the issue asks for are there (RPC rate, latency, errors, intercepts, VTL transitions,
// KVM exits), and every vsm_ metric of the README's table exists and is shown somewhere.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VSM_METRIC_NAMES, VsmMetrics } from '../src/observability';

const ROOT = path.resolve(__dirname, '../../..');
const DASHBOARD = path.join(ROOT, 'deploy/grafana/vsm-dashboard.json');

interface Panel {
  type: string;
  title: string;
  targets?: { expr: string }[];
  panels?: Panel[];
}

const exprs = (): { panel: string; expr: string }[] => {
  const d = JSON.parse(fs.readFileSync(DASHBOARD, 'utf8')) as { panels: Panel[] };
  const all: Panel[] = [];
  const walk = (ps: Panel[]) => {
    for (const p of ps) {
      all.push(p);
      if (p.panels) walk(p.panels);
    }
  };
  walk(d.panels);
  return all.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })));
};

/** Metric names in a PromQL expression: identifiers that are not functions, keywords, label names or strings. */
export function metricNames(expr: string): string[] {
  const noStrings = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, '{}')
    .replace(/\$[A-Za-z_]\w*/g, '');
  const keywords = new Set([
    'sum',
    'max',
    'min',
    'avg',
    'by',
    'without',
    'rate',
    'irate',
    'increase',
    'histogram_quantile',
    'on',
    'ignoring',
    'bool',
    'and',
    'or',
    'unless',
  ]);
  const out = new Set<string>();
  for (const m of noStrings.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const w = m[0];
    const after = noStrings.slice(m.index! + w.length).trimStart();
    if (keywords.has(w) || after.startsWith('(')) continue;
    // Identifiers inside by (...) are label names.
    const before = noStrings.slice(0, m.index!);
    const open = before.lastIndexOf('(');
    if (open >= 0 && /\b(by|without)\s*$/.test(before.slice(0, open)) && before.indexOf(')', open) < 0) continue;
    out.add(w);
  }
  return [...out];
}

test('metricNames reads metric names out of PromQL', () => {
  expect(metricNames('sum by (le, job) (rate(vsm_x_bucket{job=~"$job",a="b c"}[$__rate_interval])) / sum by (job) (vsm_y)').sort()).toEqual([
    'vsm_x_bucket',
    'vsm_y',
  ]);
});

test('every metric the dashboard queries exists', async () => {
  const metrics = new VsmMetrics();
  const registered = new Set<string>();
  for (const m of await metrics.registry.getMetricsAsJSON()) {
    registered.add(m.name);
    if (m.type === ('histogram' as unknown as typeof m.type)) for (const s of ['_bucket', '_sum', '_count']) registered.add(m.name + s);
  }
  const missing: string[] = [];
  const used = new Set<string>();
  for (const { panel, expr } of exprs()) {
    const names = metricNames(expr);
    expect(names.length).toBeGreaterThan(0);
    for (const n of names) {
      used.add(n.replace(/_(bucket|sum|count)$/, ''));
      if (!registered.has(n)) missing.push(`${panel}: ${n}`);
    }
  }
  expect(missing).toEqual([]);
  // Every vsm_ metric is on the dashboard.
  expect(VSM_METRIC_NAMES.filter((n) => !used.has(n))).toEqual([]);
});

test('the panels the issue asks for', () => {
  const titles = new Set(exprs().map((e) => e.panel));
  for (const t of [
    'Request rate by method',
    'Errors by code',
    'Latency p50 / p99 by method',
    'Intercepts by route and access',
    'VTL transitions',
    'KVM exits by reason',
  ])
    expect(titles).toContain(t);
});

test('the README table lists every vsm_ metric', () => {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  for (const n of VSM_METRIC_NAMES) expect(readme).toContain(`\`${n}\``);
});
