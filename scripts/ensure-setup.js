#!/usr/bin/env node
// Makes a fresh clone runnable: installs dependencies (npm ci) when node_modules is missing or
// older than package-lock.json, regenerates code when a .proto (or the generator script) changed,
// and builds (tsc -b) when a source is newer than its output. Cheap when nothing changed, so it runs before start and test.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
const mtime = (p) => {
  try {
    return fs.statSync(p).mtimeMs;
  } catch {
    return 0;
  }
};
function newest(dir, filter) {
  let t = 0;
  if (!fs.existsSync(dir)) return 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (e.name === 'node_modules' || e.name === 'dist' || e.name === 'gen') continue;
    const p = path.join(dir, e.name);
    if (e.isDirectory()) t = Math.max(t, newest(p, filter));
    else if (filter(e.name)) t = Math.max(t, mtime(p));
  }
  return t;
}

const has = (tool) => {
  try {
    execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

/**
 * Installs Debian `packages` when one of `tools` is missing (root and apt-get needed; `apt-get update`
 * when the first try finds no package lists). Their packaged services are not started (policy-rc.d
 * for the duration): the tests start their own on loopback. Never fails the setup: what cannot be
 * installed is said, and the tests that need it fail with that reason.
 */
function ensureDebian(tools, packages, why) {
  if (tools.every(has)) return;
  if (!(typeof process.getuid === 'function' && process.getuid() === 0 && has('apt-get'))) {
    console.error(
      `[setup] ${tools.join('/')} missing and ${packages.join(' ')} cannot be installed here (not root or no apt-get): ${why} will fail with that reason`,
    );
    return;
  }
  console.error(`[setup] installing ${packages.join(' ')} (${why})`);
  const policy = '/usr/sbin/policy-rc.d';
  const hadPolicy = fs.existsSync(policy);
  if (!hadPolicy)
    fs.writeFileSync(policy, '#!/bin/sh\n# written by vsm-service scripts/ensure-setup.js while installing test tools\nexit 101\n', { mode: 0o755 });
  const apt = (args) => execFileSync('apt-get', args, { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  const install = ['install', '-y', '--no-install-recommends', ...packages];
  try {
    apt(install);
  } catch {
    try {
      apt(['update']); // a fresh machine may have no package lists yet
      apt(install);
    } catch (e) {
      console.error(`[setup] could not install ${packages.join(' ')} (${String(e.message).split('\n')[0]}): ${why} will fail with that reason`);
    }
  } finally {
    if (!hadPolicy) fs.rmSync(policy, { force: true });
  }
}

// The KVM tests build their guests in the test run (kvm-unit-tests from ../shared/suites, the project's own VSM guest).
ensureDebian(['gcc', 'make', 'ld'], ['build-essential'], 'the guest-image tests');
// The fleet tests (test/fleet) start real etcd members on loopback ports.
ensureDebian(['etcd', 'etcdctl'], ['etcd-server', 'etcd-client'], 'the fleet tests');
// The fleet's etcd-over-TLS test (test/fleet/etcd-tls.test.ts) makes its certificates with the openssl CLI.
ensureDebian(['openssl'], ['openssl'], 'the TLS tests (certificates made by the tests)');
// The observability test (test/e2e/prometheus.test.ts) scrapes vsm-service and vsm-kvm-agent with a real Prometheus.
ensureDebian(['prometheus'], ['prometheus'], 'the Prometheus test');

const lock = path.join(root, 'package-lock.json');
const installed = path.join(root, 'node_modules/.package-lock.json');
if (!fs.existsSync(installed) || mtime(installed) < mtime(lock)) {
  // `npm install` honours the lock file's versions. `npm ci` is not used: the npm 11 on these
  // machines writes lock files without other platforms' optional packages (@swc/core-*, ...),
  // which `npm ci` then rejects as out of sync.
  console.error('[setup] installing dependencies (npm install, versions from package-lock.json)');
  run('npm', ['install', '--no-audit', '--no-fund']);
}
const stamp = path.join(root, 'api/src/gen/.stamp');
if (
  mtime(stamp) <
  Math.max(
    newest(path.join(root, 'proto'), (n) => n.endsWith('.proto')),
    mtime(path.join(root, 'buf.gen.yaml')),
    mtime(path.join(root, 'scripts/generate.js')),
  )
) {
  console.error('[setup] generating code from proto/');
  run('node', ['scripts/generate.js']);
}
const srcs = ['api', 'services', 'clients', 'bench'].map((d) => newest(path.join(root, d), (n) => n.endsWith('.ts') || n === 'tsconfig.json'));
const built = mtime(path.join(root, 'services/vsm-service/dist/main.js'));
if (built < Math.max(...srcs, mtime(stamp))) {
  console.error('[setup] building (tsc -b)');
  run(path.join(root, 'node_modules/.bin/tsc'), ['-b']);
}

// vsmctl is an npm bin of the @vsm/cli workspace: make it executable and make sure npm linked it
// (npm links bins only for packages whose files existed at install time).
const vsmctl = path.join(root, 'clients/cli/dist/vsmctl.js');
if (fs.existsSync(vsmctl)) {
  fs.chmodSync(vsmctl, 0o755);
  if (!fs.existsSync(path.join(root, 'node_modules/.bin/vsmctl'))) run('npm', ['rebuild', '@vsm/cli', '--no-audit', '--no-fund']);
}
