// Whole guests for the `guest` suite: kvm-unit-tests images built in the run from the pinned,
// unmodified upstream source beside the checkout (../shared/suites/kvm-unit-tests, as
// test/support/kvm-unit-tests.ts builds them for the tests), the real vsm-kvm-agent and vsm-service
// processes (their own main.js on an ephemeral loopback port), and timed child processes (vsmctl,
// QEMU) with their exit status and output judged as kvm-unit-tests' own run scripts judge them.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { trackChild } from './children';
import { BENCH_DIR } from './paths';

/** The repository (bench/..). */
export const ROOT = path.resolve(BENCH_DIR, '..');
export const AGENT_MAIN = path.join(ROOT, 'services/kvm-agent/dist/main.js');
export const SERVICE_MAIN = path.join(ROOT, 'services/vsm-service/dist/main.js');
/** The built CLI (npm links it as node_modules/.bin/vsmctl); spawned with this node, as its shebang would. */
export const VSMCTL = path.join(ROOT, 'clients/cli/dist/vsmctl.js');
/** The pinned suite's build script, beside the checkout (the repository's parent holds `shared/`). */
export const KVM_UNIT_TESTS_BUILD = path.resolve(ROOT, '../shared/suites/kvm-unit-tests/build.sh');
/** The QEMU binary: qemu-system-x86_64 from PATH, or VSM_BENCH_QEMU (another build, or a path that does not exist to skip the baseline). */
export const QEMU = process.env.VSM_BENCH_QEMU || 'qemu-system-x86_64';

/** This process's environment without VSM_* settings: a child sees only the flags it is given. */
export function envWithoutVsm(): NodeJS.ProcessEnv {
  const e = { ...process.env };
  for (const k of Object.keys(e)) if (k.startsWith('VSM_')) delete e[k];
  return e;
}

function commandExists(tool: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Why the images cannot be built here, or undefined when they can. */
export function kvmUnitTestsUnavailable(): string | undefined {
  if (!fs.existsSync(KVM_UNIT_TESTS_BUILD)) return `the pinned kvm-unit-tests source is not at ${KVM_UNIT_TESTS_BUILD}`;
  for (const tool of ['gcc', 'make', 'ld']) if (!commandExists(tool)) return `${tool} is not installed (the project's setup installs build-essential)`;
  return undefined;
}

/** Why the processes the suite runs are missing, or undefined. */
export function builtEntryPointsMissing(): string | undefined {
  for (const f of [AGENT_MAIN, SERVICE_MAIN, VSMCTL]) if (!fs.existsSync(f)) return `${path.relative(ROOT, f)} is not built (npm run build)`;
  return undefined;
}

/** QEMU's version line, or why it cannot be used (the bench's setup installs Debian's qemu-system-x86). */
export function qemuVersion(): { version: string } | { missing: string } {
  if (!commandExists(QEMU)) return { missing: `${QEMU} is not installed (npm run bench installs Debian's qemu-system-x86 when it can: root, apt-get)` };
  try {
    const out = execFileSync(QEMU, ['--version'], { encoding: 'utf8', timeout: 30_000 });
    return { version: out.split('\n')[0]?.trim() ?? out };
  } catch (e) {
    return { missing: `${QEMU} --version failed: ${(e as Error).message.split('\n')[0]}` };
  }
}

/** Builds `tests` (e.g. 'smptest') into `outDir` with the suite's build.sh; each image's path by name. */
export function buildKvmUnitTests(outDir: string, tests: readonly string[]): Record<string, string> {
  const out = execFileSync('bash', [KVM_UNIT_TESTS_BUILD, outDir, ...tests], { encoding: 'utf8', timeout: 600_000, stdio: ['ignore', 'pipe', 'pipe'] });
  const paths = out.trim().split('\n').filter(Boolean);
  const byName: Record<string, string> = {};
  for (const t of tests) {
    const p = paths.find((x) => path.basename(x) === `${t}.flat`);
    if (!p || !fs.existsSync(p)) throw new Error(`build.sh did not produce ${t}.flat (output: ${out})`);
    byName[t] = p;
  }
  return byName;
}

/**
 * QEMU as the issue asks (`-accel kvm -cpu kvm64 -smp 2 -kernel smptest.flat`), with what
 * kvm-unit-tests' run scripts add for an x86 test (isa-debug-exit on 0xf4, serial on stdio, no
 * display, no reboot, no default devices) and the same memory as our run (`-m`, MiB).
 * `-cpu kvm64`: `host` needs `-arch-capabilities` on this nested host (../shared/DESIGN.md).
 */
export function qemuArgs(image: string, vps: number, memoryMiB: number): string[] {
  return [
    '-accel',
    'kvm',
    '-cpu',
    'kvm64',
    '-smp',
    String(vps),
    '-m',
    String(memoryMiB),
    '-kernel',
    image,
    '-device',
    'isa-debug-exit,iobase=0xf4,iosize=0x4',
    '-display',
    'none',
    '-serial',
    'stdio',
    '-no-reboot',
    '-nodefaults',
  ];
}

/** `vsmctl --address ADDR run IMAGE --vps N --memory M [extra]` with a guest timeout (exit 124 when it passes). */
export function vsmctlRunArgs(address: string, image: string, o: { vps: number; memoryMiB: number; timeoutSec: number; extra?: readonly string[] }): string[] {
  return ['--address', address, 'run', image, '--vps', String(o.vps), '--memory', `${o.memoryMiB}MiB`, '--timeout', String(o.timeoutSec), ...(o.extra ?? [])];
}

export interface GuestVerdict {
  pass: boolean;
  /** Why it did not pass ('' when it did). */
  why: string;
  tests: number;
  failures: number;
  skipped: number;
  passLines: number;
}

/**
 * A kvm-unit-tests run judged from the VMM's exit status and the guest's console, as its run scripts
 * do (QEMU isa-debug-exit: status (code << 1) | 1, so 1 = exit(0) = pass, 3 = a test failed; `vsmctl
 * run` exits the same way), plus the rule that a SKIP counts as a failure: status 1, a SUMMARY
 * line, at least one PASS line, no FAIL or SKIP line, 0 unexpected failures and 0 skipped.
 */
export function judgeKvmUnitTest(status: number | null, signal: string | null, output: string): GuestVerdict {
  const lines = output.split(/\r?\n/);
  const summary = lines.find((l) => l.startsWith('SUMMARY:'));
  const num = (re: RegExp) => Number(re.exec(summary ?? '')?.[1] ?? 0);
  const v = {
    tests: num(/SUMMARY: (\d+) tests/),
    failures: num(/(\d+) unexpected failures/),
    skipped: num(/(\d+) skipped/),
    passLines: lines.filter((l) => l.startsWith('PASS:')).length,
  };
  const failLines = lines.filter((l) => l.startsWith('FAIL:'));
  const skipLines = lines.filter((l) => l.startsWith('SKIP:'));
  const problems: string[] = [];
  if (signal) problems.push(`killed by ${signal}`);
  else if (status !== 1) {
    const code = status !== null && (status & 1) === 1 ? ` (the guest's exit code ${status >> 1})` : '';
    problems.push(`exit status ${status}${code}, expected 1 (exit code 0: pass)`);
  }
  if (!summary) problems.push('no SUMMARY line');
  if (v.passLines === 0) problems.push('no PASS line');
  if (failLines.length > 0 || v.failures > 0) problems.push(`${Math.max(failLines.length, v.failures)} failed: ${failLines.slice(0, 3).join(' | ')}`);
  if (skipLines.length > 0 || v.skipped > 0) problems.push(`${Math.max(skipLines.length, v.skipped)} skipped: ${skipLines.slice(0, 3).join(' | ')}`);
  return { pass: problems.length === 0, why: problems.join('; '), ...v };
}

export interface TimedRun {
  /** Wall time from just before spawn to the process's exit, microseconds. */
  us: number;
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Killed because it ran past `timeoutMs`. */
  timedOut: boolean;
}

const TAIL = 64 * 1024;

/**
 * Runs a command to its end and times it (spawn to exit). It is SIGKILLed past `timeoutMs` or when
 * `signal` aborts (then the promise rejects), and with the runner's other children if the runner exits.
 */
export function runTimed(
  cmd: string,
  args: readonly string[],
  o: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs: number; signal: AbortSignal },
): Promise<TimedRun> {
  if (o.signal.aborted) return Promise.reject(new Error(`not started (${String(o.signal.reason)}): ${cmd}`));
  return new Promise<TimedRun>((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { cwd: o.cwd, env: o.env ?? envWithoutVsm(), stdio: ['ignore', 'pipe', 'pipe'] });
    trackChild(child);
    let exitAt = 0;
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (d: Buffer) => {
      stdout = (stdout + d.toString('latin1')).slice(-TAIL);
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString('latin1')).slice(-TAIL);
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, o.timeoutMs);
    const onAbort = () => child.kill('SIGKILL');
    o.signal.addEventListener('abort', onAbort, { once: true });
    child.once('exit', () => {
      exitAt = performance.now();
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      o.signal.removeEventListener('abort', onAbort);
      reject(new Error(`${cmd}: ${e.message}`));
    });
    child.once('close', (status, sig) => {
      clearTimeout(timer);
      o.signal.removeEventListener('abort', onAbort);
      if (o.signal.aborted) return reject(new Error(`${path.basename(cmd)} stopped: ${String(o.signal.reason)}`));
      resolve({ us: ((exitAt || performance.now()) - t0) * 1000, status, signal: sig as NodeJS.Signals | null, stdout, stderr, timedOut });
    });
  });
}

export interface Daemon {
  readonly name: string;
  readonly pid: number;
  /** host:port it listens on. */
  readonly address: string;
  /** The tail of its stdout/stderr (logs), for error messages. */
  tail(): string;
  /** SIGTERM, SIGKILL after 5 s; resolves when it has exited. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Starts a service's own main.js (vsm-kvm-agent, vsm-service) on `--listen 127.0.0.1:0` and waits for
 * its "vsm-service listening" log line (both log it with the bound address). Killed when `signal`
 * aborts (the suite's end) and when the runner exits.
 */
export function startDaemon(name: string, main: string, args: readonly string[], signal: AbortSignal, startTimeoutMs = 30_000): Promise<Daemon> {
  const child: ChildProcess = spawn(process.execPath, [main, '--listen', '127.0.0.1:0', '--log-level', 'info', ...args], {
    env: envWithoutVsm(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  trackChild(child);
  let log = '';
  const keep = (d: Buffer) => {
    log = (log + d.toString()).slice(-8000);
  };
  child.stderr?.on('data', keep);
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    })());
  const onAbort = () => void stop();
  signal.addEventListener('abort', onAbort, { once: true });
  void exited.then(() => signal.removeEventListener('abort', onAbort));
  return new Promise<Daemon>((resolve, reject) => {
    let buf = '';
    const fail = (why: string) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${name}: ${why}\n--- output (tail) ---\n${log.slice(-3000)}`));
    };
    const timer = setTimeout(() => fail(`not listening after ${startTimeoutMs} ms`), startTimeoutMs);
    let ready = false;
    const onExit = (code: number | null, sig: NodeJS.Signals | null) => fail(`exited while starting (code ${code}, signal ${sig})`);
    child.once('exit', onExit);
    child.once('error', (e) => {
      if (!ready) fail(e.message);
    });
    child.stdout?.on('data', (d: Buffer) => {
      keep(d);
      if (ready) return;
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let j: { msg?: string; listen?: string } | undefined;
        try {
          j = JSON.parse(line) as { msg?: string; listen?: string };
        } catch {
          continue; // not a log line
        }
        if (j.msg === 'vsm-service listening' && j.listen) {
          clearTimeout(timer);
          ready = true;
          child.off('exit', onExit);
          resolve({ name, pid: child.pid as number, address: j.listen, tail: () => log, stop });
          return;
        }
      }
    });
  });
}
