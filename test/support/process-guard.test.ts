// The process guard works (issue #19): jest is run as a child process on fixture files
// (test/support/fixtures/*.fixture.ts, with the e2e project's environment and setup files from
// jest.config.js) and must fail them, naming the error, when
// - an exception is thrown, or a promise rejected, in a timer callback the in-process service
//   scheduled (the shape of finding 1), while every call of the test itself succeeds;
// - such an exception comes after the file's last test;
// - a child process the test relies on exits on its own (a helper, or the real vsm-service
//   SIGKILLed from outside), with the child's stderr in the report;
// and must pass the controls (no failure; a child the test stops itself).
// (A test file's own process.on('uncaughtException') listens on jest's sandbox copy of `process`
// and never fires, which is why the guard's host side lives in the test environment.)
import * as path from 'node:path';
import { runJestOnFixture } from './jest-child';
import { hostWarnings, processGuard } from './guard';

jest.setTimeout(120_000);

function runFixture(file: string, mode: string) {
  return runJestOnFixture(path.join(__dirname, 'fixtures', file), { ...process.env, FIXTURE_MODE: mode });
}

describe('jest run on a fixture fails when', () => {
  test.each([
    ['server-timer.fixture.ts', 'throw', 'fixture: thrown in a server-side timer'],
    ['server-timer.fixture.ts', 'reject', 'fixture: rejected in a server-side timer'],
    ['server-timer.fixture.ts', 'late-throw', 'fixture: thrown in a server-side timer after the last test'],
    ['child-exit.fixture.ts', 'crash', 'fixture child: dying on purpose'],
    ['child-exit.fixture.ts', 'service-killed', 'fixture vsm-service'],
  ])('%s with FIXTURE_MODE=%s', async (file, mode, message) => {
    const r = await runFixture(file, mode);
    if (r.code === 0 || !r.out.includes(message)) throw new Error(`expected a failed run naming "${message}", got exit ${r.code}:\n${r.out}`);
    if (file === 'child-exit.fixture.ts') expect(r.out).toContain('exited unexpectedly');
    if (mode === 'service-killed') expect(r.out).toContain('signal SIGKILL');
  });
});

describe('jest run on a fixture passes (controls)', () => {
  test.each([
    ['server-timer.fixture.ts', 'none'],
    ['child-exit.fixture.ts', 'stopped'],
  ])('%s with FIXTURE_MODE=%s', async (file, mode) => {
    const r = await runFixture(file, mode);
    if (r.code !== 0) throw new Error(`expected exit 0, got ${r.code}:\n${r.out}`);
    expect(r.out).toMatch(/Tests:\s+1 passed, 1 total/);
  });
});

test('this file runs under the guard (environment and setup file of jest.config.js)', () => {
  const g = processGuard();
  expect(g).toBeDefined();
  expect(g!.records.filter((r) => !r.thrown)).toEqual([]);
});

test('host warnings reach the guard', () => {
  const t = Date.now();
  // process.emitWarning of the sandbox copy is the host's function: it emits on the host process.
  process.emitWarning('guard self-test warning', 'VsmGuardSelfTestWarning');
  return new Promise<void>((resolve, reject) => {
    setImmediate(() => {
      try {
        expect(hostWarnings(t).map((w) => [w.name, w.message])).toContainEqual(['VsmGuardSelfTestWarning', 'guard self-test warning']);
        resolve();
      } catch (e) {
        reject(e);
      }
    });
  });
});
