// scripts/check-deps.js on small fixture trees written to a temporary directory: a clean tree
// passes; a run-time cycle between files, a cycle between packages, a dependency on a process
// package and a package without a layer fail (through the API and through the CLI's exit status);
// KNOWN_VIOLATIONS allow-lists exactly what they name; type-only and lazy imports do not make a
// run-time cycle but are reported.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ts from 'typescript';

interface Violation {
  kind: 'cycle' | 'package-cycle' | 'process-dependency' | 'no-layer';
  known: boolean;
  files?: string[];
  packages?: string[];
  cycles?: string[][];
  from?: string;
  to?: string;
  imports?: string[];
  package?: string;
}
interface MapRow {
  package: string;
  layer: string;
  files: number;
  runtime: string[];
  lazy: string[];
  type: string[];
}
interface Result {
  ok: boolean;
  violations: Violation[];
  typeOnlyCycles: { files: string[]; cycles: string[][] }[];
  unresolved: { from: string; spec: string }[];
  stale: unknown[];
  map: MapRow[];
}
interface CheckDeps {
  check(root: string, opts?: { known?: unknown[] }): Result;
  importsOf(typescript: typeof ts, file: string, text: string): { spec: string; kind: string; line: number }[];
  formatMap(map: MapRow[]): string;
}
// check-deps.js is a plain CommonJS script (no typings): required, and typed by CheckDeps above.
const deps = require('../check-deps.js') as CheckDeps;
const SCRIPT = path.join(__dirname, '..', 'check-deps.js');

const roots: string[] = [];
afterAll(() => {
  for (const r of roots) fs.rmSync(r, { recursive: true, force: true });
});

type Pkg = { name: string; layer?: string; files: Record<string, string> };

/** Writes a repository-shaped tree: a root package.json whose workspaces are the given package dirs. */
function tree(pkgs: Record<string, Pkg>): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'check-deps-'));
  roots.push(root);
  const write = (rel: string, text: string) => {
    fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    fs.writeFileSync(path.join(root, rel), text);
  };
  write('package.json', JSON.stringify({ name: 'fixture', private: true, workspaces: Object.keys(pkgs) }));
  for (const [dir, p] of Object.entries(pkgs)) {
    write(`${dir}/package.json`, JSON.stringify({ name: p.name, main: 'dist/index.js', ...(p.layer ? { vsm: { layer: p.layer } } : {}) }));
    for (const [f, text] of Object.entries(p.files)) write(`${dir}/${f}`, text);
  }
  return root;
}

function cli(root: string, ...args: string[]) {
  return spawnSync(process.execPath, [SCRIPT, '--root', root, ...args], { encoding: 'utf8', timeout: 60_000 });
}

const CORE = 'services/core';
const SERVICE = 'services/service';
const ENGINE = 'services/engine';
const APP = 'clients/app';

/** Core (a → b, b type-imports a back), an engine on the core, a process on both, a client on the core. */
function cleanTree(): string {
  return tree({
    [CORE]: {
      name: '@fx/core',
      layer: 'core',
      files: {
        'src/index.ts': "export * from './a';\nexport { sub } from './deep/sub';\n",
        'src/a.ts': "import { b } from './b';\nexport const a = () => b + 1;\nexport interface A { n: number }\n",
        'src/b.ts': "import type { A } from './a';\nexport const b = 1;\nexport type B = A;\n",
        'src/deep/sub.ts': 'export const sub = 2;\n',
        'test/a.test.ts': "import { a } from '../src/a';\nimport * as fs from 'node:fs';\nimport * as x from 'external-lib';\nvoid a; void fs; void x;\n",
      },
    },
    [ENGINE]: {
      name: '@fx/engine',
      layer: 'platform',
      files: {
        'src/index.ts':
          "import { a } from '@fx/core';\nimport { sub } from '@fx/core/deep/sub';\nimport type { B } from '@fx/core/dist/b';\nexport const run = (x: B) => a() + sub + x;\n",
      },
    },
    [SERVICE]: {
      name: '@fx/service',
      layer: 'process',
      files: {
        'src/index.ts': "import { run } from '@fx/engine';\nimport '@fx/core';\nexport const main = () => run(0);\n",
      },
    },
    [APP]: {
      name: '@fx/app',
      layer: 'client',
      files: {
        'src/index.ts': "export { a as coreA } from '@fx/core';\n",
      },
    },
  });
}

describe('check-deps on a clean tree', () => {
  test('passes, with the package map and the type-only cycle reported', () => {
    const root = cleanTree();
    const r = deps.check(root, { known: [] });
    expect(r.violations).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.unresolved).toEqual([]);
    const row = (n: string) => r.map.find((m) => m.package === n);
    expect(row('@fx/core')).toMatchObject({ layer: 'core', files: 5, runtime: [], type: [] });
    expect(row('@fx/engine')).toMatchObject({ layer: 'platform', runtime: ['@fx/core'] });
    expect(row('@fx/service')).toMatchObject({ layer: 'process', runtime: ['@fx/core', '@fx/engine'] });
    expect(row('@fx/app')).toMatchObject({ layer: 'client', runtime: ['@fx/core'] });
    // a.ts → b.ts at run time, b.ts → a.ts type only: a cycle, but not one that loads.
    expect(r.typeOnlyCycles).toEqual([
      { files: [`${CORE}/src/a.ts`, `${CORE}/src/b.ts`], cycles: [[`${CORE}/src/a.ts`, `${CORE}/src/b.ts`, `${CORE}/src/a.ts`]] },
    ]);

    const out = cli(root, '--map');
    expect(out.status).toBe(0);
    expect(out.stdout).toMatch(/^package\s+layer\s+files\s+imports \(run time\)/);
    expect(out.stdout).toMatch(/@fx\/service\s+process\s+1\s+@fx\/core, @fx\/engine/);
    expect(out.stdout).toContain(`${CORE}/src/a.ts → ${CORE}/src/b.ts → ${CORE}/src/a.ts`);
    expect(out.stdout).toContain('check-deps: OK');
  });
});

describe('check-deps fails', () => {
  test('on a run-time cycle between files, listing it (a lazy require does not count)', () => {
    const root = tree({
      [CORE]: {
        name: '@fx/core',
        layer: 'core',
        files: {
          'src/index.ts': "export * from './a';\n",
          'src/a.ts': "import { b } from './b';\nexport const a = () => b;\n",
          'src/b.ts': "import { c } from './c.js';\nexport const b = c;\n",
          'src/c.ts': "export * from './a';\nexport const c = 3;\n",
          // d ↔ e only through a require inside a function: loaded on call, not a load-time cycle
          'src/d.ts': "import { e } from './e';\nexport const d = () => e;\n",
          'src/e.ts': "export const e = 1;\nexport function late() { return require('./d'); }\n",
        },
      },
    });
    const r = deps.check(root, { known: [] });
    expect(r.ok).toBe(false);
    expect(r.violations).toHaveLength(1);
    const [v] = r.violations;
    expect(v).toMatchObject({ kind: 'cycle', known: false, files: [`${CORE}/src/a.ts`, `${CORE}/src/b.ts`, `${CORE}/src/c.ts`] });
    expect(v.cycles).toEqual([[`${CORE}/src/a.ts`, `${CORE}/src/b.ts`, `${CORE}/src/c.ts`, `${CORE}/src/a.ts`]]);
    expect(r.typeOnlyCycles.map((c) => c.files)).toEqual([[`${CORE}/src/d.ts`, `${CORE}/src/e.ts`]]);

    const out = cli(root);
    expect(out.status).toBe(1);
    expect(out.stdout).toContain(`[NEW] run-time import cycle among 3 files:`);
    expect(out.stdout).toContain(`${CORE}/src/a.ts → ${CORE}/src/b.ts → ${CORE}/src/c.ts → ${CORE}/src/a.ts`);
    expect(out.stdout).toContain('check-deps: FAILED');
  });

  test('on a dependency on a process package (deep import included), unless it is a known violation', () => {
    const root = tree({
      [CORE]: { name: '@fx/core', layer: 'core', files: { 'src/index.ts': 'export const x = 1;\n' } },
      [SERVICE]: {
        name: '@fx/service',
        layer: 'process',
        files: {
          'src/index.ts': "export * from './server';\n",
          'src/server.ts': "import { x } from '@fx/core';\nexport class Server { v = x; }\n",
        },
      },
      [ENGINE]: {
        name: '@fx/engine',
        layer: 'platform',
        files: {
          'src/index.ts': "import { Server } from '@fx/service/dist/server';\nexport class Engine extends Server {}\n",
          'src/types.ts': "import type { Server } from '@fx/service';\nexport type S = Server;\n",
        },
      },
    });
    const r = deps.check(root, { known: [] });
    expect(r.ok).toBe(false);
    expect(r.violations).toEqual([
      {
        kind: 'process-dependency',
        known: false,
        from: '@fx/engine',
        to: '@fx/service',
        imports: [`${ENGINE}/src/index.ts:1 (@fx/service/dist/server)`, `${ENGINE}/src/types.ts:1 (@fx/service, type)`],
      },
    ]);
    const out = cli(root);
    expect(out.status).toBe(1);
    expect(out.stdout).toContain('[NEW] @fx/engine depends on the process package @fx/service (2 imports):');

    // Allow-listed: passes, and an entry that matches nothing is reported as stale.
    const stale = { kind: 'process-dependency', from: '@fx/core', to: '@fx/service' };
    const known = deps.check(root, { known: [{ kind: 'process-dependency', from: '@fx/engine', to: '@fx/service' }, stale] });
    expect(known.ok).toBe(true);
    expect(known.violations.map((v) => v.known)).toEqual([true]);
    expect(known.stale).toEqual([stale]);
  });

  test('on a run-time cycle between packages that is not a cycle between files', () => {
    const root = tree({
      [CORE]: {
        name: '@fx/core',
        layer: 'platform',
        files: {
          'src/index.ts': "export const x = 1;\nexport { useY } from './uses-engine';\n",
          'src/uses-engine.ts': "import { y } from '@fx/engine';\nexport const useY = () => y;\n",
        },
      },
      [ENGINE]: { name: '@fx/engine', layer: 'platform', files: { 'src/index.ts': "import { x } from '@fx/core';\nexport const y = x;\n" } },
    });
    const r = deps.check(root, { known: [] });
    expect(r.ok).toBe(false);
    // index.ts ↔ index.ts through uses-engine.ts is also a file cycle; both are reported.
    expect(r.violations.map((v) => v.kind).sort()).toEqual(['cycle', 'package-cycle']);
    const pc = r.violations.find((v) => v.kind === 'package-cycle')!;
    expect(pc.packages).toEqual(['@fx/core', '@fx/engine']);
    expect(pc.cycles).toEqual([['@fx/core', '@fx/engine', '@fx/core']]);
  });

  test('on a package cycle alone (files acyclic)', () => {
    const root = tree({
      [CORE]: {
        name: '@fx/core',
        layer: 'platform',
        files: {
          'src/index.ts': 'export const x = 1;\n',
          'src/extra.ts': "import { y } from '@fx/engine';\nexport const z = y;\n",
        },
      },
      [ENGINE]: { name: '@fx/engine', layer: 'platform', files: { 'src/index.ts': "import { x } from '@fx/core';\nexport const y = x;\n" } },
    });
    const r = deps.check(root, { known: [] });
    expect(r.violations).toEqual([
      { kind: 'package-cycle', known: false, packages: ['@fx/core', '@fx/engine'], cycles: [['@fx/core', '@fx/engine', '@fx/core']] },
    ]);
    expect(cli(root).status).toBe(1);
  });

  test('on an import against the layer order (a core package importing a platform package)', () => {
    const root = tree({
      [CORE]: { name: '@fx/core', layer: 'core', files: { 'src/index.ts': "import { y } from '@fx/engine';\nexport const z = y;\n" } },
      [ENGINE]: { name: '@fx/engine', layer: 'platform', files: { 'src/index.ts': 'export const y = 1;\n' } },
    });
    const r = deps.check(root, { known: [] });
    expect(r.ok).toBe(false);
    expect(r.violations).toEqual([
      expect.objectContaining({ kind: 'layer-order', from: '@fx/core', to: '@fx/engine', fromLayer: 'core', toLayer: 'platform', known: false }),
    ]);
    expect(cli(root).status).toBe(1);
  });

  test('on a package without a layer', () => {
    const root = tree({ [APP]: { name: '@fx/nolayer', files: { 'src/index.ts': 'export {};\n' } } });
    const r = deps.check(root, { known: [] });
    expect(r.ok).toBe(false);
    expect(r.violations).toEqual([expect.objectContaining({ kind: 'no-layer', package: '@fx/nolayer', known: false })]);
  });
});

describe('import classification', () => {
  test('run time, lazy and type-only forms', () => {
    const src = [
      "import { a } from './a';", // 1 runtime
      "import type { B } from './b';", // 2 type
      "import { type C, type D } from './c';", // 3 type (every name type-only)
      "import { type E, f } from './e';", // 4 runtime (f is a value)
      "import './side-effect';", // 5 runtime
      "export * from './star';", // 6 runtime
      "export type { G } from './g';", // 7 type
      "export { h } from './h';", // 8 runtime
      "import i = require('./i');", // 9 runtime
      "type J = typeof import('./j');", // 10 type
      "const k = require('./k');", // 11 runtime (top level)
      "export function later() { return require('./l'); }", // 12 lazy
      "export const dyn = async () => import('./m');", // 13 lazy
      "export * as ns from './n';", // 14 runtime
      "import * as O from './o';", // 15 runtime
    ].join('\n');
    const got = deps.importsOf(ts, 'x.ts', src).map((i) => `${i.line} ${i.spec} ${i.kind}`);
    expect(got).toEqual([
      '1 ./a runtime',
      '2 ./b type',
      '3 ./c type',
      '4 ./e runtime',
      '5 ./side-effect runtime',
      '6 ./star runtime',
      '7 ./g type',
      '8 ./h runtime',
      '9 ./i runtime',
      '10 ./j type',
      '11 ./k runtime',
      '12 ./l lazy',
      '13 ./m lazy',
      '14 ./n runtime',
      '15 ./o runtime',
    ]);
  });

  test('bad arguments exit 2 with the usage', () => {
    const out = spawnSync(process.execPath, [SCRIPT, '--bogus'], { encoding: 'utf8', timeout: 60_000 });
    expect(out.status).toBe(2);
    expect(out.stderr).toContain('usage: node scripts/check-deps.js');
  });
});
