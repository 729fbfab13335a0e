#!/usr/bin/env node
// Makes a fresh clone runnable: installs dependencies (npm ci) when node_modules is missing or
// older than package-lock.json, regenerates code when a .proto changed, and builds (tsc -b) when a
// source is newer than its output. Cheap when nothing changed, so it runs before start and test.
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

// The guests of the KVM tests (kvm-unit-tests from ../shared/suites, the project's own VSM guest) are
// built in the test run with gcc, make and binutils: Debian's build-essential, installed when missing.
const has = (tool) => {
  try {
    execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};
if (!['gcc', 'make', 'ld'].every(has)) {
  if (typeof process.getuid === 'function' && process.getuid() === 0 && has('apt-get')) {
    console.error('[setup] installing build-essential (gcc, make, binutils: the test guests are built in the test run)');
    try {
      run('apt-get', ['install', '-y', '--no-install-recommends', 'build-essential']);
    } catch {
      run('apt-get', ['update']); // a fresh machine may have no package lists yet
      run('apt-get', ['install', '-y', '--no-install-recommends', 'build-essential']);
    }
  } else {
    console.error(
      '[setup] gcc/make/ld missing and cannot install build-essential here (not root or no apt-get): the guest-image tests will fail with that reason',
    );
  }
}

// The fleet tests (test/fleet) start real etcd members on loopback ports: Debian's etcd-server (etcd and
// etcdctl), installed when missing. The package's own service is not wanted: the tests start their own.
if (!has('etcd')) {
  if (typeof process.getuid === 'function' && process.getuid() === 0 && has('apt-get')) {
    console.error('[setup] installing etcd-server (the fleet tests start real etcd members)');
    const apt = (args) =>
      execFileSync('apt-get', args, { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    const pkg = ['install', '-y', '--no-install-recommends', 'etcd-server', 'etcd-client'];
    try {
      apt(pkg);
    } catch {
      try {
        apt(['update']);
        apt(pkg);
      } catch (e) {
        console.error(`[setup] could not install etcd-server (${String(e.message).split('\n')[0]}): the fleet tests will fail with that reason`);
      }
    }
  } else {
    console.error('[setup] etcd missing and cannot install etcd-server here (not root or no apt-get): the fleet tests will fail with that reason');
  }
}

// The observability test (test/e2e/prometheus.test.ts) starts a real Prometheus on a loopback port that
// scrapes vsm-service and vsm-kvm-agent: Debian's prometheus, installed when missing. Its packaged service
// is not wanted (the test starts its own): policy-rc.d keeps the install from starting it.
if (!has('prometheus')) {
  if (typeof process.getuid === 'function' && process.getuid() === 0 && has('apt-get')) {
    console.error('[setup] installing prometheus (the observability test scrapes the service and the agent with a real Prometheus)');
    const policy = '/usr/sbin/policy-rc.d';
    const hadPolicy = fs.existsSync(policy);
    if (!hadPolicy)
      fs.writeFileSync(policy, '#!/bin/sh\n# written by vsm-service scripts/ensure-setup.js while installing prometheus\nexit 101\n', { mode: 0o755 });
    const apt = (args) =>
      execFileSync('apt-get', args, { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    const pkg = ['install', '-y', '--no-install-recommends', 'prometheus'];
    try {
      apt(pkg);
    } catch {
      try {
        apt(['update']);
        apt(pkg);
      } catch (e) {
        console.error(`[setup] could not install prometheus (${String(e.message).split('\n')[0]}): the Prometheus test will fail with that reason`);
      }
    } finally {
      if (!hadPolicy) fs.rmSync(policy, { force: true });
    }
  } else {
    console.error('[setup] prometheus missing and cannot install it here (not root or no apt-get): the Prometheus test will fail with that reason');
  }
}

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
