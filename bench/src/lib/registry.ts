// Suite discovery (bench/dist/suites/*.js, sorted, `_*` ignored) and static validation of the
// declarations (unique names and ids, well-formed ratios) before anything runs.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LATENCY_STATS, type FigureSpec, type RatioSpec, type Suite } from '../api';
import { validateRatio } from './ratios';
import { BENCH_DIR, DIST_DIR } from './paths';

const SUITE_NAME = /^[a-z0-9][a-z0-9-]*$/;
const FIGURE_ID = /^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$/;

function isSuite(x: unknown): x is Suite {
  const s = x as Suite;
  return typeof s === 'object' && s !== null && typeof s.name === 'string' && typeof s.run === 'function' && Array.isArray(s.figures);
}

export interface LoadedSuites {
  suites: Suite[];
  warnings: string[];
}

/** Load every suite module. A compiled suite whose source file no longer exists is ignored (stale dist). */
export function discoverSuites(distDir = DIST_DIR, srcDir = path.join(BENCH_DIR, 'src')): LoadedSuites {
  const dir = path.join(distDir, 'suites');
  const warnings: string[] = [];
  const suites: Suite[] = [];
  if (!fs.existsSync(dir)) return { suites, warnings: [`no suites directory at ${dir}`] };
  const haveSrc = fs.existsSync(path.join(srcDir, 'suites'));
  const files = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.js') && !f.startsWith('_'))
    .sort();
  for (const f of files) {
    if (haveSrc && !fs.existsSync(path.join(srcDir, 'suites', f.replace(/\.js$/, '.ts')))) {
      warnings.push(`ignoring stale ${path.join('dist/suites', f)} (no src/suites/${f.replace(/\.js$/, '.ts')})`);
      continue;
    }
    const mod = require(path.join(dir, f)) as { suite?: unknown; default?: unknown };
    const s = mod.suite ?? mod.default;
    if (!isSuite(s)) throw new Error(`suites/${f}: exports no suite (expected \`export const suite: Suite = {...}\`)`);
    suites.push(s);
  }
  return { suites, warnings };
}

/** All problems with a set of suites; empty when the registry is valid. */
export function validateSuites(suites: readonly Suite[]): string[] {
  const errors: string[] = [];
  const names = new Set<string>();
  const figures = new Map<string, FigureSpec>();
  const owner = new Map<string, string>();
  for (const s of suites) {
    if (!SUITE_NAME.test(s.name)) errors.push(`suite "${s.name}": name must match ${SUITE_NAME}`);
    if (names.has(s.name)) errors.push(`suite "${s.name}": duplicate name`);
    names.add(s.name);
    for (const f of s.figures) {
      const where = `suite ${s.name}, figure "${f.id}"`;
      if (!FIGURE_ID.test(f.id)) errors.push(`${where}: id must be dotted [A-Za-z0-9_-] segments`);
      if ((LATENCY_STATS as readonly string[]).includes(f.id.slice(f.id.lastIndexOf('.') + 1))) {
        errors.push(`${where}: id must not end in a statistic name (${LATENCY_STATS.join(', ')})`);
      }
      if (figures.has(f.id)) errors.push(`${where}: duplicate id (also in suite ${owner.get(f.id)})`);
      if (f.kind !== 'latency' && f.kind !== 'rate') errors.push(`${where}: kind must be latency or rate`);
      if (f.kind === 'latency' && f.unit !== 'us') errors.push(`${where}: latency figures are recorded in us`);
      if (!f.unit) errors.push(`${where}: unit required`);
      figures.set(f.id, f);
      owner.set(f.id, s.name);
    }
    const b = s.budget;
    if (b && [b.quickSec, b.fullSec].some((v) => v !== undefined && !(v > 0))) errors.push(`suite ${s.name}: budget values must be > 0`);
  }
  for (const s of suites) for (const r of s.ratios ?? []) errors.push(...validateRatio(r, figures).map((e) => `suite ${s.name}: ${e}`));
  return errors;
}

export function allRatios(suites: readonly Suite[]): RatioSpec[] {
  return suites.flatMap((s) => s.ratios ?? []);
}
