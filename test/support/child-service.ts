// Test support: child processes that must not die on their own. `watchChild` reports an exit the
// test did not ask for to the process guard (test/support/guard.ts), with the tail of the child's
// stderr/stdout, so the test during which it happened fails with the reason. `spawnService` starts
// the real vsm-service (services/vsm-service/dist/main.js; `npm test` builds it) on an ephemeral
// loopback port under that watch.
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { reportToGuard } from './guard';

export const SERVICE_MAIN = path.resolve(__dirname, '../../services/vsm-service/dist/main.js');
/** The KVM host agent's process (it serves vsm.v1 too and logs the same "listening" line). */
export const AGENT_MAIN = path.resolve(__dirname, '../../services/kvm-agent/dist/main.js');

const TAIL = 64 * 1024;

/** Fails clearly when the service was not built (npm test builds it; `npx tsc -b` otherwise). */
export function assertServiceBuilt(): void {
  if (!fs.existsSync(SERVICE_MAIN)) throw new Error(`${SERVICE_MAIN} is missing: build first (npx tsc -b, or npm test which runs setup)`);
}

/** This process's environment without any VSM_* setting (a child service sees only its flags). */
export function envWithoutVsm(): NodeJS.ProcessEnv {
  const e = { ...process.env };
  for (const k of Object.keys(e)) if (k.startsWith('VSM_')) delete e[k];
  return e;
}

export interface WatchedChild {
  child: ChildProcess;
  name: string;
  stdout(): string;
  stderr(): string;
  /** Resolves when the child has exited (expectedly or not). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Whether the child exited without being asked to (reported to the guard). */
  unexpectedExit(): { code: number | null; signal: NodeJS.Signals | null } | undefined;
  /** From now on an exit is expected (not reported). */
  expectExit(): void;
  /** From now on an exit is unexpected again (reported). */
  arm(): void;
  /** Sends `signal` (default SIGTERM), expecting the exit; SIGKILL after `killAfterMs`. */
  stop(signal?: NodeJS.Signals, killAfterMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Watches `child` (spawned with stdout/stderr piped, or not): an exit before expectExit()/stop() is reported to the guard. */
export function watchChild(
  child: ChildProcess,
  name: string,
  opts: { armed?: boolean; onStdoutLine?: (line: string) => void; onStderrLine?: (line: string) => void } = {},
): WatchedChild {
  let out = '';
  let err = '';
  const keep = (s: string, d: Buffer) => (s + d.toString()).slice(-TAIL);
  const lines = (fn: ((line: string) => void) | undefined) => {
    let partial = '';
    return (d: Buffer) => {
      if (!fn) return;
      partial += d.toString();
      let nl: number;
      while ((nl = partial.indexOf('\n')) >= 0) {
        fn(partial.slice(0, nl));
        partial = partial.slice(nl + 1);
      }
    };
  };
  const outLines = lines(opts.onStdoutLine);
  const errLines = lines(opts.onStderrLine);
  child.stdout?.on('data', (d: Buffer) => {
    out = keep(out, d);
    outLines(d);
  });
  child.stderr?.on('data', (d: Buffer) => {
    err = keep(err, d);
    errLines(d);
  });
  let expected = opts.armed === false;
  let unexpected: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    const done = (code: number | null, signal: NodeJS.Signals | null) => {
      if (!expected) {
        unexpected = { code, signal };
        reportToGuard(
          'child-exit',
          new Error(
            `${name} (pid ${child.pid}) exited unexpectedly (code ${code}, signal ${signal})\n--- stderr (tail) ---\n${err.slice(-8000)}\n--- stdout (tail) ---\n${out.slice(-4000)}`,
          ),
        );
      }
      resolve({ code, signal });
    };
    if (child.exitCode !== null || child.signalCode !== null) done(child.exitCode, child.signalCode);
    // 'close' after 'exit': the stdio tails are complete by then.
    else child.once('close', (code, signal) => done(code, signal as NodeJS.Signals | null));
    child.once('error', (e) => {
      if (!expected) reportToGuard('child-error', new Error(`${name}: ${e.message}`));
    });
  });
  const w: WatchedChild = {
    child,
    name,
    stdout: () => out,
    stderr: () => err,
    exited,
    unexpectedExit: () => unexpected,
    expectExit: () => {
      expected = true;
    },
    arm: () => {
      expected = false;
    },
    async stop(signal: NodeJS.Signals = 'SIGTERM', killAfterMs = 10_000) {
      expected = true;
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const t = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
      try {
        return await exited;
      } finally {
        clearTimeout(t);
      }
    },
  };
  return w;
}

export interface ChildService extends WatchedChild {
  /** host:port the service listens on. */
  address: string;
}

/**
 * Starts main.js (vsm-service's, or `opts.main`: the agent's) with `--listen 127.0.0.1:0` (plus `args`)
 * and waits for its "listening" log line.
 * Fails if it exits first; afterwards an exit before stop() is reported to the guard.
 */
export async function spawnService(
  args: string[] = [],
  opts: {
    name?: string;
    main?: string;
    env?: NodeJS.ProcessEnv;
    startTimeoutMs?: number;
    logLevel?: string;
    onStdoutLine?: (line: string) => void;
    onStderrLine?: (line: string) => void;
  } = {},
): Promise<ChildService> {
  assertServiceBuilt();
  const child = spawn(process.execPath, [opts.main ?? SERVICE_MAIN, '--listen', '127.0.0.1:0', '--log-level', opts.logLevel ?? 'info', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
  });
  // Not armed until it is up: a failed start is this function's error, not the guard's.
  const w = watchChild(child, opts.name ?? 'vsm-service', { armed: false, onStdoutLine: opts.onStdoutLine, onStderrLine: opts.onStderrLine });
  const address = await new Promise<string>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(
      () => reject(new Error(`vsm-service did not start within ${opts.startTimeoutMs ?? 30_000} ms\n${w.stderr()}\n${w.stdout()}`)),
      opts.startTimeoutMs ?? 30_000,
    );
    const onData = (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          const j = JSON.parse(line) as { msg?: string; listen?: string };
          if (j.msg === 'vsm-service listening' && j.listen) {
            clearTimeout(timer);
            child.stdout!.off('data', onData);
            resolve(j.listen);
            return;
          }
        } catch {
          // not a log line
        }
      }
    };
    child.stdout!.on('data', onData);
    void w.exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`vsm-service exited while starting (code ${code}, signal ${signal})\n${w.stderr()}\n${w.stdout()}`));
    });
  }).catch((e: unknown) => {
    child.kill('SIGKILL');
    throw e;
  });
  w.arm();
  return { ...w, address };
}
