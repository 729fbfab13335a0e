// Test support: the process guard as seen from a test file. The guarded test environment
// (guarded-environment.js) owns the records; process-guard.ts (setupFilesAfterEnv of every
// project) throws new ones from afterEach/afterAll, so the test (or file) they happened in fails.
//
// Use `reportToGuard` for failures that happen outside any awaited call: a child process that
// exited unexpectedly, a background loop that died. `hostWarnings()` lists the host process's
// 'warning' events (a test's own `process.on('warning')` would listen on the sandbox's copy).

export interface GuardRecord {
  kind: string;
  error: Error;
  /** Already thrown from a hook (or by the environment's tear-down). */
  thrown: boolean;
  at: number;
}

export interface HostWarning {
  name: string;
  message: string;
  at: number;
}

export interface ProcessGuard {
  records: GuardRecord[];
  warnings: HostWarning[];
  report(kind: string, error: unknown): void;
}

const GUARD = Symbol.for('vsm.test.processGuard');

/** The guard of this test file, or undefined when the file runs without the guarded environment. */
export function processGuard(): ProcessGuard | undefined {
  return (globalThis as unknown as Record<symbol, ProcessGuard | undefined>)[GUARD];
}

/**
 * Records a failure that no awaited call will surface. The next afterEach (or afterAll, or the
 * environment's tear-down) of the guard fails with it. Without the guard the error is thrown
 * from a fresh task, which jest reports as an uncaught exception of the running test.
 */
export function reportToGuard(kind: string, error: unknown): void {
  const g = processGuard();
  if (g) g.report(kind, error);
  else
    setImmediate(() => {
      throw error instanceof Error ? error : new Error(`${kind}: ${String(error)}`);
    });
}

/** The host process's warnings since `since` (ms since epoch; default: all of this file). */
export function hostWarnings(since = 0): HostWarning[] {
  const g = processGuard();
  if (!g) throw new Error('hostWarnings needs the guarded test environment (test/support/guarded-environment.js)');
  return g.warnings.filter((w) => w.at >= since);
}

/** Guard records not yet thrown; marks them thrown. */
export function takeUnthrown(): GuardRecord[] {
  const g = processGuard();
  if (!g) return [];
  const fresh = g.records.filter((r) => !r.thrown);
  for (const r of fresh) r.thrown = true;
  return fresh;
}

export function guardError(records: GuardRecord[], where: string): Error {
  if (records.length === 1) {
    const e = records[0]!.error;
    const out = new Error(`process guard (${where}): [${records[0]!.kind}] ${e.message}`);
    out.stack = `${out.message}\n${(e.stack ?? '').split('\n').slice(1).join('\n')}`;
    return out;
  }
  return new Error(`process guard (${where}): ${records.length} errors:\n${records.map((r) => `[${r.kind}] ${r.error.stack ?? r.error.message}`).join('\n')}`);
}
