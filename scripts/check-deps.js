#!/usr/bin/env node
// Dependency-graph check (issue #18): the import graph of every .ts file under api/, services/,
// clients/ and bench/ must have no run-time import cycle, and no package may depend on a "process" package.
//
//   node scripts/check-deps.js            check; exit 1 on a violation not in KNOWN_VIOLATIONS
//   node scripts/check-deps.js --map      also print the package map (package → packages it imports)
//   node scripts/check-deps.js --json     print the whole result as JSON (no exit-1 shortcut)
//   node scripts/check-deps.js --root DIR check another tree laid out the same way (tests use it)
//
// The graph. Every import of a file is an edge, classified as
//   runtime  `import {v} from`, `import x from`, `import * as`, `import 'x'`, `export * from`,
//            `export {v} from`, `import x = require()`, and require()/import() at module top level;
//   lazy     require()/import() inside a function (loaded when called: not a load-time cycle);
//   type     `import type`, `import {type A, type B}` (every name type-only), `export type {} from`,
//            `typeof import('x')` — erased by the compiler.
// A value import that is used only as a type is also erased by tsc, but telling that needs the type
// checker; it is counted as runtime here (conservative: it can only report a cycle too many).
// Specifiers resolved: relative paths (x.ts, x/index.ts, x.js → x.ts) and workspace packages by
// name, deep imports included (`@vsm/x/sub`, `@vsm/x/dist/sub` and `@vsm/x/src/sub` → <pkg>/src/sub).
//
// Failures: (1) a run-time cycle between files (strongly connected components of the runtime edges;
// each is listed with the shortest cycle through each of its files); (2) a run-time cycle between
// packages; (3) an edge from one package into a package whose layer is "process" (a composition
// root: nothing may import it). Cycles that need a type-only edge are reported, never failed.
//
// Layers are declared in LAYERS below; a package.json may declare its own (`"vsm": {"layer": "core"}`),
// which takes precedence. A package without a layer fails the check.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

/** Layer of each package of this repository (a package.json "vsm": {"layer": ...} takes precedence). */
const LAYERS = {
  '@vsm/core': 'core', //            pure VSM semantics and the emulated engine, no I/O
  '@vsm/api': 'api', //              the generated vsm.v1 code (messages, service definitions, descriptors)
  '@vsm/client': 'api-client', //    the thin client over it (connect, VsmError)
  '@vsm/platform-kvm': 'platform', // the KVM engine of the core
  '@vsm/vsm-v1': 'vsm-v1', //        the vsm.v1 implementation (backends, gRPC server, security)
  '@vsm/service': 'process', //      the vsm-service process
  '@vsm/kvm-agent': 'process', //    the vsm-kvm-agent process
  '@vsm/cli': 'client', //           vsmctl
  bench: 'bench', //                 the benchmark harness (not a workspace: bench/ has no package.json)
};
const KNOWN_LAYERS = ['core', 'api', 'api-client', 'platform', 'vsm-v1', 'client', 'bench', 'process'];
/**
 * Which layers each layer may import (the architecture: core ← platforms ← vsm.v1 implementation ←
 * processes; the generated API is used by the client library, the vsm.v1 implementation, clients and
 * processes; the client library by the vsm.v1 implementation (agent backend), clients and processes).
 * Nothing imports a process.
 */
const MAY_IMPORT = {
  core: ['core'],
  api: ['api'],
  'api-client': ['api', 'api-client'],
  platform: ['core', 'platform'],
  'vsm-v1': ['core', 'api', 'api-client', 'platform', 'vsm-v1'],
  client: ['core', 'api', 'api-client', 'client'],
  bench: ['core', 'api', 'api-client', 'platform', 'vsm-v1', 'client', 'bench'],
  process: ['core', 'api', 'api-client', 'platform', 'vsm-v1'],
};

/** Directories scanned, relative to the root. */
const SCAN_DIRS = ['api', 'services', 'clients', 'bench'];
/** Packages that are not npm workspaces: a directory with its sources, named here. */
const EXTRA_PACKAGES = [{ dir: 'bench', name: 'bench' }];
const SKIP_DIRS = new Set(['node_modules', 'dist', 'coverage', '.git']);

/**
 * Violations that exist today and are being removed under issue #18 ("Layers that read as the
 * architecture": no package depends on a process package, no import cycles). The check passes while a violation is listed here and fails on any other; an entry that no longer
 * matches anything is reported as stale (remove it then).
 * - process-dependency: { from, to } package names;
 * - cycle: { files } — a file cycle is known when all of its files are in `files` (a cycle that
 *   shrinks while it is being taken apart stays known; one that grows is new).
 */
const KNOWN_VIOLATIONS = [];

// ---------------------------------------------------------------------------------------------

function loadTypeScript(root) {
  try {
    return require(require.resolve('typescript', { paths: [root, __dirname] }));
  } catch {
    throw new Error('check-deps needs the typescript package (a devDependency): run npm ci first');
  }
}

function rel(root, f) {
  return path.relative(root, f).split(path.sep).join('/');
}

function listTsFiles(dir, out) {
  if (!fs.existsSync(dir)) return out;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) {
      if (!SKIP_DIRS.has(e.name)) listTsFiles(path.join(dir, e.name), out);
    } else if (e.isFile() && /\.tsx?$/.test(e.name) && !e.name.endsWith('.d.ts')) {
      out.push(path.join(dir, e.name));
    }
  }
  return out;
}

/** Workspace packages (root package.json) plus EXTRA_PACKAGES that exist, with their layers. */
function findPackages(root, layers) {
  const rootPkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  const pkgs = [];
  for (const ws of rootPkg.workspaces || []) {
    const dir = path.join(root, ws);
    const pj = path.join(dir, 'package.json');
    if (!fs.existsSync(pj)) continue;
    const j = JSON.parse(fs.readFileSync(pj, 'utf8'));
    pkgs.push({ name: j.name, dir, main: j.main, layer: j.vsm?.layer || layers[j.name] });
  }
  for (const x of EXTRA_PACKAGES) {
    const dir = path.join(root, x.dir);
    if (fs.existsSync(dir)) pkgs.push({ name: x.name, dir, main: undefined, layer: layers[x.name] });
  }
  // Longest directory first, so a file belongs to its innermost package.
  pkgs.sort((a, b) => b.dir.length - a.dir.length);
  return pkgs;
}

function ownerOf(pkgs, file) {
  return pkgs.find((p) => file === p.dir || file.startsWith(p.dir + path.sep));
}

function tryFile(base) {
  const candidates = [base, base + '.ts', base + '.tsx', path.join(base, 'index.ts'), path.join(base, 'index.tsx')];
  if (/\.(c|m)?js$/.test(base)) candidates.push(base.replace(/\.(c|m)?js$/, '.ts'), base.replace(/\.(c|m)?js$/, '.tsx'));
  for (const c of candidates) {
    if (/\.tsx?$/.test(c) && !c.endsWith('.d.ts') && fs.existsSync(c) && fs.statSync(c).isFile()) return c;
  }
  return undefined;
}

/** Resolve a specifier to { file?, pkg? } (pkg: the workspace package imported by name) or undefined (external). */
function resolveSpecifier(spec, fromFile, pkgs) {
  if (spec.startsWith('.') || spec.startsWith('/')) {
    const file = tryFile(path.resolve(path.dirname(fromFile), spec));
    return { file, pkg: file ? ownerOf(pkgs, file) : ownerOf(pkgs, path.resolve(path.dirname(fromFile), spec)), unresolved: !file };
  }
  const pkg = pkgs.find((p) => spec === p.name || spec.startsWith(p.name + '/'));
  if (!pkg) return undefined;
  let sub = spec === pkg.name ? undefined : spec.slice(pkg.name.length + 1);
  let file;
  if (sub === undefined) {
    const main = (pkg.main || 'dist/index.js').replace(/^\.\//, '');
    file = tryFile(path.join(pkg.dir, main.replace(/^dist\//, 'src/'))) || tryFile(path.join(pkg.dir, 'src', 'index'));
  } else {
    sub = sub.replace(/^(dist|src)\//, '');
    file = tryFile(path.join(pkg.dir, 'src', sub)) || tryFile(path.join(pkg.dir, sub));
  }
  return { file, pkg, unresolved: !file };
}

function insideFunction(ts, node) {
  for (let n = node.parent; n; n = n.parent) {
    if (ts.isFunctionLike(n) || ts.isClassStaticBlockDeclaration?.(n)) return true;
  }
  return false;
}

/** The import specifiers of one source file, each with its kind (runtime | lazy | type) and line. */
function importsOf(ts, file, text) {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, file.endsWith('.tsx') ? ts.ScriptKind.TSX : ts.ScriptKind.TS);
  const out = [];
  const add = (spec, kind, node) => out.push({ spec, kind, line: sf.getLineAndCharacterOfPosition(node.getStart(sf)).line + 1 });
  const visit = (node) => {
    if (ts.isImportDeclaration(node) && ts.isStringLiteral(node.moduleSpecifier)) {
      const c = node.importClause;
      let type = false;
      if (c) {
        if (c.isTypeOnly) type = true;
        else if (!c.name && c.namedBindings && ts.isNamedImports(c.namedBindings) && c.namedBindings.elements.length > 0) {
          type = c.namedBindings.elements.every((e) => e.isTypeOnly);
        }
      }
      add(node.moduleSpecifier.text, type ? 'type' : 'runtime', node);
    } else if (ts.isExportDeclaration(node) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      let type = node.isTypeOnly;
      const ec = node.exportClause;
      if (!type && ec && ts.isNamedExports(ec) && ec.elements.length > 0) type = ec.elements.every((e) => e.isTypeOnly);
      add(node.moduleSpecifier.text, type ? 'type' : 'runtime', node);
    } else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) {
      const e = node.moduleReference.expression;
      if (ts.isStringLiteral(e)) add(e.text, node.isTypeOnly ? 'type' : 'runtime', node);
    } else if (ts.isImportTypeNode(node)) {
      const a = node.argument;
      if (ts.isLiteralTypeNode(a) && ts.isStringLiteral(a.literal)) add(a.literal.text, 'type', node);
    } else if (ts.isCallExpression(node) && node.arguments.length >= 1 && ts.isStringLiteralLike(node.arguments[0])) {
      const callee = node.expression;
      const isRequire = ts.isIdentifier(callee) && callee.text === 'require';
      const isDynamic = callee.kind === ts.SyntaxKind.ImportKeyword;
      if (isRequire || isDynamic) add(node.arguments[0].text, insideFunction(ts, node) ? 'lazy' : 'runtime', node);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

/** Builds the file graph. */
function buildGraph(root, opts = {}) {
  const ts = loadTypeScript(root);
  const layers = { ...LAYERS, ...(opts.layers || {}) };
  const pkgs = findPackages(root, layers);
  const files = [];
  for (const d of SCAN_DIRS) listTsFiles(path.join(root, d), files);
  files.sort();
  const edges = []; // { from, to, kind, line, spec, fromPkg, toPkg }
  const unresolved = [];
  for (const f of files) {
    const fromPkg = ownerOf(pkgs, f);
    for (const imp of importsOf(ts, f, fs.readFileSync(f, 'utf8'))) {
      const r = resolveSpecifier(imp.spec, f, pkgs);
      if (!r) continue; // node builtin or external package
      if (r.unresolved) {
        unresolved.push({ from: rel(root, f), line: imp.line, spec: imp.spec });
        // still a package edge when the target package is known
      }
      edges.push({
        from: rel(root, f),
        to: r.file ? rel(root, r.file) : undefined,
        kind: imp.kind,
        line: imp.line,
        spec: imp.spec,
        fromPkg: fromPkg ? fromPkg.name : undefined,
        toPkg: r.pkg ? r.pkg.name : undefined,
      });
    }
  }
  return { root, pkgs, files: files.map((f) => rel(root, f)), edges, unresolved };
}

/** Tarjan's strongly connected components; returns the components with more than one node or a self-loop. */
function cyclicComponents(nodes, adj) {
  let index = 0;
  const idx = new Map();
  const low = new Map();
  const onStack = new Set();
  const stack = [];
  const out = [];
  const strong = (v) => {
    // iterative to survive deep graphs
    const work = [[v, 0]];
    idx.set(v, index);
    low.set(v, index);
    index++;
    stack.push(v);
    onStack.add(v);
    while (work.length) {
      const frame = work[work.length - 1];
      const [u, i] = frame;
      const next = adj.get(u) || [];
      if (i < next.length) {
        frame[1]++;
        const w = next[i];
        if (!idx.has(w)) {
          idx.set(w, index);
          low.set(w, index);
          index++;
          stack.push(w);
          onStack.add(w);
          work.push([w, 0]);
        } else if (onStack.has(w)) low.set(u, Math.min(low.get(u), idx.get(w)));
      } else {
        work.pop();
        if (work.length) {
          const p = work[work.length - 1][0];
          low.set(p, Math.min(low.get(p), low.get(u)));
        }
        if (low.get(u) === idx.get(u)) {
          const comp = [];
          let w;
          do {
            w = stack.pop();
            onStack.delete(w);
            comp.push(w);
          } while (w !== u);
          if (comp.length > 1 || (adj.get(u) || []).includes(u)) out.push(comp.sort());
        }
      }
    }
  };
  for (const n of nodes) if (!idx.has(n)) strong(n);
  return out;
}

/** Shortest cycle through `start` inside `comp` (BFS), as a list of nodes ending back at start. */
function shortestCycle(start, comp, adj) {
  const inComp = new Set(comp);
  const prev = new Map();
  const queue = [];
  for (const w of adj.get(start) || []) {
    if (!inComp.has(w)) continue;
    if (w === start) return [start, start];
    if (!prev.has(w)) {
      prev.set(w, start);
      queue.push(w);
    }
  }
  while (queue.length) {
    const u = queue.shift();
    for (const w of adj.get(u) || []) {
      if (!inComp.has(w)) continue;
      if (w === start) {
        const pathBack = [u];
        for (let x = u; prev.get(x) !== start; x = prev.get(x)) pathBack.push(prev.get(x));
        return [start, ...pathBack.reverse(), start];
      }
      if (!prev.has(w)) {
        prev.set(w, u);
        queue.push(w);
      }
    }
  }
  return undefined;
}

/** Distinct shortest cycles through each node of a component (deduplicated by rotation). */
function cyclesOf(comp, adj) {
  const seen = new Set();
  const cycles = [];
  for (const n of comp) {
    const c = shortestCycle(n, comp, adj);
    if (!c) continue;
    const ring = c.slice(0, -1);
    const m = ring.indexOf([...ring].sort()[0]);
    const key = [...ring.slice(m), ...ring.slice(0, m)].join('\0');
    if (seen.has(key)) continue;
    seen.add(key);
    cycles.push(c);
  }
  return cycles;
}

function adjacency(edges, kinds, key) {
  const adj = new Map();
  for (const e of edges) {
    if (!kinds.includes(e.kind)) continue;
    const a = e[key.from];
    const b = e[key.to];
    if (a === undefined || b === undefined) continue;
    if (key.from === 'fromPkg' && a === b) continue; // a package importing itself by name
    if (!adj.has(a)) adj.set(a, []);
    if (!adj.get(a).includes(b)) adj.get(a).push(b);
  }
  for (const v of adj.values()) v.sort();
  return adj;
}

/** Runs every check; `known` defaults to KNOWN_VIOLATIONS. */
function check(root, opts = {}) {
  const known = opts.known || KNOWN_VIOLATIONS;
  const g = buildGraph(root, opts);
  const violations = [];
  const fileKey = { from: 'from', to: 'to' };
  const pkgKey = { from: 'fromPkg', to: 'toPkg' };

  // Packages without a (valid) layer.
  for (const p of g.pkgs) {
    if (!KNOWN_LAYERS.includes(p.layer)) {
      violations.push({
        kind: 'no-layer',
        package: p.name,
        message: `package ${p.name} (${rel(root, p.dir)}) has no layer (one of ${KNOWN_LAYERS.join(', ')}): add it to LAYERS in scripts/check-deps.js or "vsm": {"layer": …} in its package.json`,
      });
    }
  }

  // (1) run-time file cycles; type-only cycles reported apart.
  const runtimeAdj = adjacency(g.edges, ['runtime'], fileKey);
  const fileCycles = cyclicComponents(g.files, runtimeAdj).map((files) => ({ files, cycles: cyclesOf(files, runtimeAdj) }));
  for (const c of fileCycles) violations.push({ kind: 'cycle', files: c.files, cycles: c.cycles });
  const allAdj = adjacency(g.edges, ['runtime', 'lazy', 'type'], fileKey);
  const runtimeSets = fileCycles.map((c) => new Set(c.files));
  const typeCycles = cyclicComponents(g.files, allAdj)
    .map((files) => ({ files, cycles: cyclesOf(files, allAdj).filter((cy) => !runtimeSets.some((s) => cy.every((f) => s.has(f)))) }))
    .filter((c) => c.cycles.length > 0);

  // (2) run-time package cycles.
  const pkgNames = g.pkgs.map((p) => p.name).sort();
  const pkgAdj = adjacency(g.edges, ['runtime'], pkgKey);
  for (const comp of cyclicComponents(pkgNames, pkgAdj)) violations.push({ kind: 'package-cycle', packages: comp, cycles: cyclesOf(comp, pkgAdj) });

  // (3) dependencies on process packages (any kind of import: a type import still ties the packages).
  const layerOf = new Map(g.pkgs.map((p) => [p.name, p.layer]));
  const procDeps = new Map();
  for (const e of g.edges) {
    if (!e.fromPkg || !e.toPkg || e.fromPkg === e.toPkg || layerOf.get(e.toPkg) !== 'process') continue;
    const k = `${e.fromPkg}\0${e.toPkg}`;
    if (!procDeps.has(k)) procDeps.set(k, { kind: 'process-dependency', from: e.fromPkg, to: e.toPkg, imports: [] });
    procDeps.get(k).imports.push(`${e.from}:${e.line} (${e.spec}${e.kind === 'runtime' ? '' : `, ${e.kind}`})`);
  }
  violations.push(...procDeps.values());

  // (4) imports against the layer order (MAY_IMPORT), other than into a process (reported above).
  const orderDeps = new Map();
  for (const e of g.edges) {
    if (!e.fromPkg || !e.toPkg || e.fromPkg === e.toPkg || layerOf.get(e.toPkg) === 'process') continue;
    const allowed = MAY_IMPORT[layerOf.get(e.fromPkg)] || [];
    if (allowed.includes(layerOf.get(e.toPkg))) continue;
    const k = `${e.fromPkg}\0${e.toPkg}`;
    if (!orderDeps.has(k))
      orderDeps.set(k, { kind: 'layer-order', from: e.fromPkg, to: e.toPkg, fromLayer: layerOf.get(e.fromPkg), toLayer: layerOf.get(e.toPkg), imports: [] });
    orderDeps.get(k).imports.push(`${e.from}:${e.line} (${e.spec}${e.kind === 'runtime' ? '' : `, ${e.kind}`})`);
  }
  violations.push(...orderDeps.values());

  // Known violations.
  const used = new Set();
  const isKnown = (v) => {
    const i = known.findIndex((k) => {
      if (k.kind !== v.kind) return false;
      if (v.kind === 'process-dependency' || v.kind === 'layer-order') return k.from === v.from && k.to === v.to;
      if (v.kind === 'cycle') return v.files.every((f) => k.files.includes(f));
      if (v.kind === 'package-cycle') return v.packages.every((p) => k.packages.includes(p));
      return false;
    });
    if (i >= 0) used.add(i);
    return i >= 0;
  };
  for (const v of violations) v.known = isKnown(v);
  const stale = known.filter((_, i) => !used.has(i));

  // The package map.
  const map = g.pkgs
    .slice()
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((p) => {
      const byKind = { runtime: new Set(), lazy: new Set(), type: new Set() };
      for (const e of g.edges) if (e.fromPkg === p.name && e.toPkg && e.toPkg !== p.name) byKind[e.kind].add(e.toPkg);
      const runtime = [...byKind.runtime].sort();
      return {
        package: p.name,
        layer: p.layer,
        dir: rel(root, p.dir),
        files: g.files.filter((f) => ownerOf(g.pkgs, path.join(root, f)) === p).length,
        runtime,
        lazy: [...byKind.lazy].filter((x) => !byKind.runtime.has(x)).sort(),
        type: [...byKind.type].filter((x) => !byKind.runtime.has(x) && !byKind.lazy.has(x)).sort(),
      };
    });

  const failed = violations.filter((v) => !v.known);
  return {
    ok: failed.length === 0,
    files: g.files.length,
    edges: {
      runtime: g.edges.filter((e) => e.kind === 'runtime').length,
      lazy: g.edges.filter((e) => e.kind === 'lazy').length,
      type: g.edges.filter((e) => e.kind === 'type').length,
    },
    violations,
    typeOnlyCycles: typeCycles,
    unresolved: g.unresolved,
    stale,
    map,
  };
}

// ---------------------------------------------------------------------------------------------

function formatMap(map) {
  const rows = map.map((m) => [
    m.package,
    m.layer || '?',
    String(m.files),
    m.runtime.join(', ') || '—',
    [...m.lazy.map((x) => `${x} (lazy)`), ...m.type.map((x) => `${x} (type)`)].join(', '),
  ]);
  const head = ['package', 'layer', 'files', 'imports (run time)', 'also (lazy / type only)'];
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r) =>
    r
      .map((c, i) => c.padEnd(w[i]))
      .join('  ')
      .trimEnd();
  return [line(head), line(w.map((n) => '-'.repeat(n))), ...rows.map(line)].join('\n');
}

function describe(v) {
  const tag = v.known ? 'known (issue #18)' : 'NEW';
  switch (v.kind) {
    case 'cycle':
      return [`  [${tag}] run-time import cycle among ${v.files.length} files:`, ...v.cycles.map((c) => `      ${c.join(' → ')}`)].join('\n');
    case 'package-cycle':
      return [`  [${tag}] run-time cycle between packages:`, ...v.cycles.map((c) => `      ${c.join(' → ')}`)].join('\n');
    case 'process-dependency': {
      const shown = v.imports.slice(0, 5).map((i) => `      ${i}`);
      if (v.imports.length > 5) shown.push(`      … ${v.imports.length - 5} more`);
      return [`  [${tag}] ${v.from} depends on the process package ${v.to} (${v.imports.length} imports):`, ...shown].join('\n');
    }
    case 'layer-order': {
      const shown = v.imports.slice(0, 5).map((i) => `      ${i}`);
      if (v.imports.length > 5) shown.push(`      … ${v.imports.length - 5} more`);
      return [`  [${tag}] ${v.from} (${v.fromLayer}) imports ${v.to} (${v.toLayer}), against the layer order (${v.imports.length} imports):`, ...shown].join(
        '\n',
      );
    }
    default:
      return `  [${tag}] ${v.message}`;
  }
}

function report(r) {
  const out = [];
  out.push(`check-deps: ${r.files} files; imports between them: ${r.edges.runtime} run time, ${r.edges.lazy} lazy, ${r.edges.type} type only`);
  const sections = [
    ['run-time import cycles between files', (v) => v.kind === 'cycle'],
    ['run-time cycles between packages', (v) => v.kind === 'package-cycle'],
    ['dependencies on process packages', (v) => v.kind === 'process-dependency'],
    ['imports against the layer order (core ← platform ← vsm-v1 ← process)', (v) => v.kind === 'layer-order'],
    ['packages without a layer', (v) => v.kind === 'no-layer'],
  ];
  for (const [title, pick] of sections) {
    const vs = r.violations.filter(pick);
    const known = vs.filter((v) => v.known).length;
    out.push(`${title}: ${vs.length === 0 ? 'none' : `${vs.length}${known ? ` (${known} known)` : ''}`}`);
    for (const v of vs) out.push(describe(v));
  }
  out.push(
    `cycles that need a type-only or lazy import (not a load-time cycle; reported, not failed): ${r.typeOnlyCycles.length === 0 ? 'none' : r.typeOnlyCycles.length}`,
  );
  for (const c of r.typeOnlyCycles) {
    out.push(`  among ${c.files.length} files (${c.cycles.length} distinct shortest cycles${c.cycles.length > 3 ? ', 3 shown' : ''}):`);
    for (const cy of c.cycles.slice(0, 3)) out.push(`      ${cy.join(' → ')}`);
  }
  if (r.unresolved.length) {
    out.push(`unresolved imports (not in the graph; generated code missing? run npm run setup): ${r.unresolved.length}`);
    for (const u of r.unresolved.slice(0, 10)) out.push(`      ${u.from}:${u.line} ${u.spec}`);
  }
  for (const s of r.stale) out.push(`note: KNOWN_VIOLATIONS entry no longer matches anything, remove it: ${JSON.stringify(s)}`);
  out.push(r.ok ? 'check-deps: OK' : 'check-deps: FAILED (a violation above is marked NEW)');
  return out.join('\n');
}

function main(argv) {
  let root = path.resolve(__dirname, '..');
  const flags = new Set();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--root') root = path.resolve(argv[++i] || '.');
    else if (a === '--map' || a === '--json') flags.add(a);
    else if (a === '--help' || a === '-h') {
      process.stdout.write('usage: node scripts/check-deps.js [--map] [--json] [--root DIR]\n');
      return 0;
    } else {
      process.stderr.write(`check-deps: unknown argument ${a}\nusage: node scripts/check-deps.js [--map] [--json] [--root DIR]\n`);
      return 2;
    }
  }
  const r = check(root);
  if (flags.has('--json')) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
  else {
    if (flags.has('--map')) process.stdout.write(formatMap(r.map) + '\n\n');
    process.stdout.write(report(r) + '\n');
  }
  return r.ok ? 0 : 1;
}

module.exports = { check, buildGraph, importsOf, formatMap, report, LAYERS, MAY_IMPORT, KNOWN_VIOLATIONS };

if (require.main === module) {
  try {
    process.exitCode = main(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`check-deps: ${e?.stack ? e.stack : e}\n`);
    process.exitCode = 2;
  }
}
