// Hardening (issue #19, finding 11): the service binary ends on SIGTERM even when the reader of
// its stdout/stderr has gone away (a log collector that died, `| head`): its log writes then fail
// with EPIPE, and that must neither loop nor keep the process alive.
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { SERVICE_MAIN, assertServiceBuilt, envWithoutVsm } from '../support/child-service';

const ROOT = path.resolve(__dirname, '../..');
const MAIN = SERVICE_MAIN;
const env = envWithoutVsm;

beforeAll(assertServiceBuilt);

/**
 * Starts main.js with piped stdout/stderr, waits for "listening", closes both pipes (the reader is
 * gone), sends SIGTERM and resolves with how the process ended, or 'alive' if it was still running
 * after `limitMs` (then it is killed).
 */
function runAndOrphanLogs(args: string[], limitMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null } | 'alive'> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, '--listen', '127.0.0.1:0', ...args], { cwd: ROOT, env: env(), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let killTimer: NodeJS.Timeout | undefined;
    let startTimer: NodeJS.Timeout | undefined = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the service did not start: ${out}`));
    }, 30_000);
    child.on('error', reject);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (startTimer && /vsm-service listening/.test(out)) {
        clearTimeout(startTimer);
        startTimer = undefined;
        child.stdout!.destroy();
        child.stderr!.destroy();
        // Give the pipes a moment to be closed on our side before the signal.
        setTimeout(() => {
          child.kill('SIGTERM');
          killTimer = setTimeout(() => {
            resolve('alive');
            child.kill('SIGKILL');
          }, limitMs);
        }, 100);
      }
    });
    child.on('exit', (code, signal) => {
      if (killTimer) clearTimeout(killTimer);
      resolve({ code, signal });
    });
  });
}

test('SIGTERM ends the process when its stdout/stderr reader is gone (5 runs)', async () => {
  for (let i = 0; i < 5; i++) {
    // The graceful shutdown takes well under a second here; 15 s is only a bound for a slow machine.
    const r = await runAndOrphanLogs(['--log-level', i % 2 ? 'debug' : 'info'], 15_000);
    expect(r).not.toBe('alive');
    expect(r).toEqual({ code: 0, signal: null });
  }
}, 180_000);
