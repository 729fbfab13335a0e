// Parent side of the fork protocol, and the guarantee that no child outlives the runner:
// every forked process is tracked; a suite's children are stopped when the suite ends; all
// remaining ones are SIGKILLed on exit, on SIGINT/SIGTERM/SIGHUP and on uncaught errors.
import { fork, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import type { ForkServerOptions, ServerHandle } from '../api';
import { isReadyMessage } from './serve';
import { DIST_DIR } from './paths';

const live = new Set<ChildProcess>();
let handlersInstalled = false;

function killAllSync(): void {
  for (const c of live) {
    try {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
  live.clear();
}

/** Idempotent. Installed by the runner before anything is forked. */
export function installExitHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', killAllSync);
  const onSignal = (sig: NodeJS.Signals, code: number) => () => {
    process.stderr.write(`\nbench: ${sig}, stopping ${live.size} child process(es)\n`);
    killAllSync();
    process.exit(code);
  };
  process.on('SIGINT', onSignal('SIGINT', 130));
  process.on('SIGTERM', onSignal('SIGTERM', 143));
  process.on('SIGHUP', onSignal('SIGHUP', 129));
  process.on('uncaughtException', (e) => {
    process.stderr.write(`bench: uncaught exception: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    killAllSync();
    process.exit(1);
  });
}

/**
 * Tracks a child started without forkServer (child_process.spawn: a service's own main.js, a CLI, QEMU):
 * SIGKILLed with the others when the runner exits or is interrupted. Stopping it when the suite ends
 * is the suite's job (lib/guest.ts does it on the suite's abort signal).
 */
export function trackChild(c: ChildProcess): void {
  if (exited(c) || c.pid === undefined) return; // no pid: the spawn failed (ENOENT, ...), 'error' follows and no 'exit'
  live.add(c);
  c.once('exit', () => live.delete(c));
}

export function liveChildren(): number {
  return live.size;
}

function exited(c: ChildProcess): boolean {
  return c.exitCode !== null || c.signalCode !== null;
}

/** SIGTERM, then SIGKILL after graceMs. Resolves when the process has exited. */
export function stopChild(c: ChildProcess, graceMs = 2000): Promise<void> {
  if (exited(c)) {
    live.delete(c);
    return Promise.resolve();
  }
  return new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(t);
      live.delete(c);
      resolve();
    };
    c.once('exit', done);
    const t = setTimeout(() => {
      try {
        c.kill('SIGKILL');
      } catch {
        done();
      }
    }, graceMs);
    try {
      c.kill('SIGTERM');
    } catch {
      done();
    }
  });
}

/** A group of children owned by one suite, stopped together when the suite ends. */
export class ChildScope {
  private readonly children = new Set<ChildProcess>();

  async stopAll(): Promise<void> {
    const list = [...this.children];
    this.children.clear();
    await Promise.all(list.map((c) => stopChild(c)));
  }

  forkServer(script: string, opts: ForkServerOptions = {}, signal?: AbortSignal): Promise<ServerHandle> {
    const file = path.isAbsolute(script) ? script : path.join(DIST_DIR, script);
    const child = fork(file, opts.args ?? [], {
      env: { ...process.env, ...(opts.env ?? {}) },
      execArgv: opts.execArgv ?? [],
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    live.add(child);
    this.children.add(child);
    const name = path.basename(file);
    let tail = '';
    const keep = (chunk: Buffer) => {
      const s = chunk.toString('utf8');
      tail = (tail + s).slice(-2000);
      process.stderr.write(s.replace(/^(?=.)/gm, `  [${name}:${child.pid}] `));
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    child.once('exit', () => live.delete(child));

    return new Promise<ServerHandle>((resolve, reject) => {
      const timeoutMs = opts.readyTimeoutMs ?? 15000;
      const cleanup = () => {
        clearTimeout(timer);
        child.off('message', onMessage);
        child.off('exit', onExit);
        child.off('error', onError);
        signal?.removeEventListener('abort', onAbort);
      };
      const fail = (why: string) => {
        cleanup();
        void stopChild(child);
        reject(new Error(`${name}: ${why}${tail ? `\n--- child output (tail) ---\n${tail.trimEnd()}` : ''}`));
      };
      const onMessage = (m: unknown) => {
        if (!isReadyMessage(m)) return;
        cleanup();
        let stopping: Promise<void> | null = null;
        resolve({
          pid: child.pid as number,
          host: '127.0.0.1',
          port: m.port,
          address: `127.0.0.1:${m.port}`,
          info: m.info ?? {},
          stop: () => (stopping ??= stopChild(child).then(() => void this.children.delete(child))),
        });
      };
      const onExit = (code: number | null, sig: NodeJS.Signals | null) => fail(`exited before ready (code ${code}, signal ${sig})`);
      const onError = (e: Error) => fail(`fork failed: ${e.message}`);
      const onAbort = () => fail('aborted while waiting for ready');
      const timer = setTimeout(() => fail(`not ready after ${timeoutMs} ms`), timeoutMs);
      child.on('message', onMessage);
      child.once('exit', onExit);
      child.once('error', onError);
      if (signal?.aborted) onAbort();
      else signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}
