#!/usr/bin/env node
// The bench's own setup, run by `npm run bench` before the runner: installs what the suites compare
// against and the project does not ship. Today: Debian's QEMU (qemu-system-x86), the baseline of the
// `guest` suite (kvm-unit-tests' smptest through `vsmctl run` and through `qemu-system-x86_64 -accel
// kvm`), installed with apt-get when `qemu-system-x86_64` is missing and /dev/kvm is usable (a QEMU
// without KVM would measure nothing comparable). Never fails the bench: when QEMU cannot be installed
// (not root, no apt-get, no network) it says so, and the suite skips that figure with the reason.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');

const log = (m) => process.stderr.write(`[bench setup] ${m}\n`);
const has = (tool) => {
  try {
    execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};
const apt = (args) => execFileSync('apt-get', args, { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });

function kvmUsable() {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function ensureQemu() {
  if (has('qemu-system-x86_64')) return;
  if (!kvmUsable()) {
    log('qemu-system-x86_64 not installed, and /dev/kvm is not usable here: not installing it (the guest suite is skipped without KVM)');
    return;
  }
  if (!(typeof process.getuid === 'function' && process.getuid() === 0 && has('apt-get'))) {
    log('qemu-system-x86_64 is missing and cannot be installed here (not root or no apt-get): guest.smptest.qemu will be skipped');
    return;
  }
  log('installing Debian\'s qemu-system-x86 (the QEMU baseline of the guest suite)');
  const pkg = ['install', '-y', '--no-install-recommends', 'qemu-system-x86'];
  try {
    apt(pkg);
  } catch {
    try {
      apt(['update']); // a fresh machine may have no (or stale) package lists
      apt(pkg);
    } catch (e) {
      log(`could not install qemu-system-x86 (${e.message.split('\n')[0]}): guest.smptest.qemu will be skipped`);
    }
  }
}

ensureQemu();
