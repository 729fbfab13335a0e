#!/usr/bin/env node
// Build-time check of a runtime image: every bare module that the compiled workspaces require
// (`require("x")` in api/dist, services/*/dist, clients/*/dist) must resolve from where it is required.
// Catches a production dependency that a workspace forgot to declare (npm install --omit=dev
// leaves it out) at `docker build` time instead of at the first start. Loads nothing.
//
//   node deploy/verify-runtime.js [APP_DIR]        (default: the folder above this script)
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { builtinModules, createRequire } = require('node:module');

const app = path.resolve(process.argv[2] || path.join(__dirname, '..'));
const builtins = new Set(builtinModules);
const missing = [];
let files = 0;

function walk(dir) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p);
    else if (e.name.endsWith('.js')) check(p);
  }
}
function check(file) {
  files++;
  const src = fs.readFileSync(file, 'utf8');
  const req = createRequire(file);
  for (const m of src.matchAll(/\brequire\(\s*["']([^"'.][^"']*)["']\s*\)/g)) {
    const spec = m[1];
    if (spec.startsWith('node:') || builtins.has(spec) || builtins.has(spec.split('/')[0])) continue;
    try {
      req.resolve(spec);
    } catch {
      missing.push(`${path.relative(app, file)}: ${spec}`);
    }
  }
}

if (fs.existsSync(path.join(app, 'api/dist'))) walk(path.join(app, 'api/dist'));
for (const group of ['services', 'clients']) {
  const g = path.join(app, group);
  if (!fs.existsSync(g)) continue;
  for (const ws of fs.readdirSync(g)) {
    const dist = path.join(g, ws, 'dist');
    if (fs.existsSync(dist)) walk(dist);
  }
}
if (files === 0) {
  console.error(`verify-runtime: no compiled files under ${app}`);
  process.exit(1);
}
if (missing.length > 0) {
  console.error(`verify-runtime: ${missing.length} unresolved require(s) in ${app}:\n  ${missing.join('\n  ')}`);
  process.exit(1);
}
console.log(`verify-runtime: ${files} files, every require resolves`);
