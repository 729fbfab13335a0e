// Entry point: `npm run bench [-- --quick] [--filter RE] [--repeats N] [--out DIR] [--list] [--strict]`.
// Runs every registered suite (bench/dist/suites/*.js), prints a table on stdout (progress goes
// to stderr) and writes <out>/latest.json and <out>/latest.svg.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Suite } from './api';
import { installExitHandlers, liveChildren } from './lib/children';
import { unitLabel } from './lib/format';
import { machineInfo } from './lib/machine';
import { RESULTS_DIR } from './lib/paths';
import { evaluateRatios } from './lib/ratios';
import { allRatios, discoverSuites, validateSuites } from './lib/registry';
import type { FigureResult } from './lib/report';
import { DEFAULT_BUDGET, runSuite, skippedSuite } from './lib/runner';
import { renderSvg } from './lib/svg';
import { figureTable, ratioTable, suiteLines, type SuiteOutcome } from './lib/table';

export const SCHEMA = 'vsm-bench/1';
/** Whole-run bounds: --quick must finish in under 3 minutes; the full run is designed for ~10. */
export const GLOBAL_BUDGET_SEC = { quick: 170, full: 600 };
const MIN_SUITE_SEC = 5;

export interface Args {
  quick: boolean;
  repeats: number | null;
  filter: RegExp | null;
  out: string;
  list: boolean;
  strict: boolean;
  help: boolean;
}

const USAGE = `usage: node bench/dist/run.js [--quick] [--repeats N] [--filter REGEX] [--out DIR] [--list] [--strict]
  --quick        short run (3 repeats, fewer samples; whole run bounded to ${GLOBAL_BUDGET_SEC.quick} s)
  --repeats N    measure every figure N times (default 3 quick, 7 full)
  --filter RE    run only suites whose name matches RE (others are reported as skipped)
  --out DIR      where latest.json / latest.svg go (default bench/results)
  --list         print suites, figures and ratios, run nothing
  --strict       exit 1 when a ratio target is missed (default: only failures exit non-zero)`;

export function parseArgs(argv: readonly string[]): Args {
  const a: Args = { quick: false, repeats: null, filter: null, out: RESULTS_DIR, list: false, strict: false, help: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const [flag, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--quick':
        a.quick = true;
        break;
      case '--repeats': {
        const n = Number(value());
        if (!(Number.isInteger(n) && n >= 1 && n <= 100)) throw new Error('--repeats must be an integer in 1..100');
        a.repeats = n;
        break;
      }
      case '--filter':
        a.filter = new RegExp(value());
        break;
      case '--out':
        a.out = path.resolve(value());
        break;
      case '--list':
        a.list = true;
        break;
      case '--strict':
        a.strict = true;
        break;
      case '--help':
      case '-h':
        a.help = true;
        break;
      default:
        throw new Error(`unknown argument ${arg}`);
    }
  }
  return a;
}

function listing(suites: readonly Suite[]): string {
  const lines: string[] = [];
  for (const s of suites) {
    const b = { ...DEFAULT_BUDGET, ...s.budget };
    lines.push(`${s.name}  (bound: quick ${b.quickSec} s, full ${b.fullSec} s)${s.available ? '  [has availability check]' : ''}`);
    lines.push(`  ${s.description}`);
    for (const f of s.figures) lines.push(`  - ${f.id} [${f.kind}, ${unitLabel(f.unit)}] ${f.description}`);
    for (const r of s.ratios ?? []) lines.push(`  ratio ${r.figure} / ${r.baseline} ${r.target.op} ${r.target.value}`);
  }
  return lines.join('\n') || 'no suites registered';
}

function shown(file: string): string {
  const rel = path.relative(process.cwd(), file);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : file;
}

function writeAtomic(file: string, content: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, content);
  fs.renameSync(tmp, file);
}

async function main(argv: readonly string[]): Promise<number> {
  let args: Args;
  try {
    args = parseArgs(argv);
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const { suites, warnings } = discoverSuites();
  for (const w of warnings) process.stderr.write(`bench: warning: ${w}\n`);
  const errors = validateSuites(suites);
  if (errors.length) {
    process.stderr.write(`bench: invalid suite declarations:\n${errors.map((e) => `  ${e}`).join('\n')}\n`);
    return 2;
  }
  if (args.list) {
    process.stdout.write(`${listing(suites)}\n`);
    return 0;
  }

  installExitHandlers();
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const startedAt = new Date();
  const t0 = performance.now();
  const globalSec = args.quick ? GLOBAL_BUDGET_SEC.quick : GLOBAL_BUDGET_SEC.full;
  const globalDeadline = t0 + globalSec * 1000;
  const repeats = args.repeats ?? (args.quick ? 3 : 7);
  const machine = machineInfo();
  log(
    `bench: ${args.quick ? 'quick' : 'full'} run, ${suites.length} suite(s), ${repeats} repeats, bound ${globalSec} s; ${machine.cpus}x ${machine.cpuModel}, node ${machine.node}, load ${machine.loadavg.join(' ')}`,
  );

  const outcomes: SuiteOutcome[] = [];
  const figures: FigureResult[] = [];
  for (const s of suites) {
    let r: { outcome: SuiteOutcome; figures: FigureResult[] };
    if (args.filter && !args.filter.test(s.name)) r = skippedSuite(s, `not selected (--filter ${args.filter.source})`);
    else if (globalDeadline - performance.now() < MIN_SUITE_SEC * 1000) r = skippedSuite(s, `run time bound of ${globalSec} s exhausted`);
    else r = await runSuite(s, { quick: args.quick, repeats, globalDeadline, log });
    outcomes.push(r.outcome);
    figures.push(...r.figures);
  }
  const ratios = evaluateRatios(allRatios(suites), figures);
  const finishedAt = new Date();
  const durationSec = (performance.now() - t0) / 1000;

  const report = {
    schema: SCHEMA,
    mode: args.quick ? 'quick' : 'full',
    startedAt: startedAt.toISOString(),
    finishedAt: finishedAt.toISOString(),
    durationSec: Math.round(durationSec * 10) / 10,
    argv: [...argv],
    settings: { repeats, runBoundSec: globalSec, filter: args.filter?.source ?? null },
    machine: { ...machine, loadavgEnd: machineInfo().loadavg },
    suites: outcomes,
    figures,
    ratios,
  };
  fs.mkdirSync(args.out, { recursive: true });
  const jsonFile = path.join(args.out, 'latest.json');
  const svgFile = path.join(args.out, 'latest.svg');
  writeAtomic(jsonFile, `${JSON.stringify(report, null, 2)}\n`);
  writeAtomic(
    svgFile,
    renderSvg(figures, {
      title: `vsm-service benchmarks — ${report.mode} run, ${startedAt.toISOString()}`,
      subtitle: `${machine.cpus}× ${machine.cpuModel} · ${(machine.memoryTotalBytes / 2 ** 30).toFixed(1)} GiB · node ${machine.node} · ${machine.platform} ${machine.kernel} · grpc-js ${machine.grpcJs ?? '?'} · ${repeats} repeats · load ${machine.loadavg.join(' ')}`,
      footer: `loopback 127.0.0.1, client and server in separate processes; latency distributions pool all repeats${machine.gitCommit ? ` · commit ${machine.gitCommit}` : ''}`,
    }),
  );

  const out = [
    '',
    suiteLines(outcomes),
    '',
    figureTable(figures),
    '',
    ratioTable(ratios),
    '',
    `wrote ${shown(jsonFile)} and ${shown(svgFile)} (${durationSec.toFixed(1)} s)`,
    '',
  ];
  process.stdout.write(out.join('\n'));
  if (liveChildren() > 0) log(`bench: warning: ${liveChildren()} child process(es) still alive at exit; killing`);
  const failed = outcomes.some((o) => o.status === 'failed');
  const missed = ratios.some((r) => r.status === 'missed');
  return failed || (args.strict && missed) ? 1 : 0;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code), // explicit: a hung suite may still hold handles open
    (e: unknown) => {
      process.stderr.write(`bench: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exit(1);
    },
  );
}
