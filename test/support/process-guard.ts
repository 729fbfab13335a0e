// setupFilesAfterEnv of every jest project (jest.config.js): the test-file side of the process
// guard. Anything recorded by the guard (test/support/guard.ts: an unexpected exit of a child
// process, a background failure, an uncaught exception or unhandled rejection outside jest's own
// window) fails the test during which it was recorded (afterEach) or else the file (afterAll; the
// guarded environment's tear-down catches whatever comes later). Uncaught exceptions and
// unhandled rejections while tests run are failed by jest-circus itself, attributed to the test
// (or hook) whose async context threw; process-guard.test.ts proves both paths on fixtures.
import { guardError, processGuard, takeUnthrown } from './guard';

if (!processGuard()) {
  throw new Error('test/support/process-guard.ts needs testEnvironment test/support/guarded-environment.js (see jest.config.js)');
}

afterEach(() => {
  const fresh = takeUnthrown();
  if (fresh.length) throw guardError(fresh, 'during this test');
});

afterAll(() => {
  const fresh = takeUnthrown();
  if (fresh.length) throw guardError(fresh, 'in this file, outside a test');
});
