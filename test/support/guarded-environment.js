// Jest test environment of every project (jest.config.js): Node's, plus the host side of the
// process guard (test/support/process-guard.ts, guard.ts).
//
// Why an environment: a test file runs in a vm sandbox whose `process` is a copy of the host's with
// its own event listeners, so `process.on('uncaughtException', ...)` in a test or setup file never
// fires (test/support/process-guard.test.ts shows it). jest-circus puts its own handlers on the
// host process while the tests of a file run (an uncaught exception or unhandled rejection then
// fails the running test, or the file when no test owns it) and takes them off again at the end.
// This environment covers the rest of the file's life: it listens on the host process from set-up
// to tear-down, and a file during which anything was thrown or rejected unhandled outside jest's
// window (or reported by test/support/guard.ts, e.g. an unexpected child-process exit, that no
// hook has thrown yet) fails with that error at tear-down. It also keeps the host's 'warning'
// events (MaxListenersExceededWarning and the like) for tests that assert on them.
'use strict';
const { TestEnvironment } = require('jest-environment-node');

const GUARD = Symbol.for('vsm.test.processGuard');

class GuardedEnvironment extends TestEnvironment {
  constructor(config, context) {
    super(config, context);
    const records = [];
    const warnings = [];
    const report = (kind, error) => {
      records.push({ kind, error: error instanceof Error ? error : new Error(`${kind}: ${String(error)}`), thrown: false, at: Date.now() });
    };
    this.guard = { records, warnings, report };
    this.onUncaught = (error) => report('uncaughtException', error);
    this.onRejection = (reason) => report('unhandledRejection', reason);
    this.onWarning = (w) => warnings.push({ name: w.name, message: w.message, at: Date.now() });
    // The sandbox reaches the guard through a registered symbol (test/support/guard.ts).
    Object.defineProperty(this.global, GUARD, { value: this.guard, enumerable: false, configurable: true });
  }

  async setup() {
    await super.setup();
    process.on('uncaughtException', this.onUncaught);
    process.on('unhandledRejection', this.onRejection);
    process.on('warning', this.onWarning);
  }

  async teardown() {
    process.off('uncaughtException', this.onUncaught);
    process.off('unhandledRejection', this.onRejection);
    process.off('warning', this.onWarning);
    await super.teardown();
    const left = this.guard.records.filter((r) => !r.thrown);
    for (const r of left) r.thrown = true;
    if (left.length) {
      const e = new Error(
        `process guard: ${left.length} error(s) outside any test of this file:\n${left.map((r) => `[${r.kind}] ${r.error.stack ?? r.error.message}`).join('\n')}`,
      );
      throw e;
    }
  }
}

module.exports = GuardedEnvironment;
