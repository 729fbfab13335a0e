#!/usr/bin/env node
// Generates the TypeScript for vsm.v1 (and google.rpc error details) with buf + ts-proto into
// clients/typescript/src/gen. Generated code is not committed; `npm run setup` (run before start
// and test) calls this whenever a .proto is newer than the generated tree.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const out = path.join(root, 'clients/typescript/src/gen');
fs.rmSync(out, { recursive: true, force: true });
const buf = path.join(root, 'node_modules/.bin/buf');
execFileSync(buf, ['generate'], { cwd: root, stdio: 'inherit' });
fs.writeFileSync(path.join(out, '.stamp'), new Date().toISOString() + '\n');
console.log('generated', path.relative(root, out));
