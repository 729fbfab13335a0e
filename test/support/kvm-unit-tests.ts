// Test support: the external judge of "guests that run", kvm-unit-tests, built from the pinned,
// unmodified upstream source beside the checkout (../shared/suites/kvm-unit-tests) in the test run
// itself. Never patched, never committed: images land in a temporary directory of this run.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** The suite's build script, beside the checkout (the repository's parent holds `shared/`). */
export const KVM_UNIT_TESTS_BUILD = path.resolve(__dirname, '../../../shared/suites/kvm-unit-tests/build.sh');

/** Why the suite cannot be built here, or undefined when it can. */
export function kvmUnitTestsUnavailable(): string | undefined {
  if (!fs.existsSync(KVM_UNIT_TESTS_BUILD)) return `the pinned kvm-unit-tests source is not at ${KVM_UNIT_TESTS_BUILD}`;
  for (const tool of ['gcc', 'make', 'ld']) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    } catch {
      return `${tool} is not installed (the project's setup installs build-essential)`;
    }
  }
  return undefined;
}

/** One build directory per process: build.sh reuses it (idempotent), so several suites share a build. */
const outDir = path.join(os.tmpdir(), `vsm-kvm-unit-tests-${process.pid}`);

/**
 * Builds `tests` (e.g. 'smptest', 'hyperv_synic') with the suite's build.sh and returns each image's
 * path by name. About a second per image with gcc.
 */
export function buildKvmUnitTests(tests: string[]): Record<string, string> {
  const out = execFileSync('bash', [KVM_UNIT_TESTS_BUILD, outDir, ...tests], { encoding: 'utf8', timeout: 600_000 });
  const paths = out.trim().split('\n').filter(Boolean);
  const byName: Record<string, string> = {};
  for (const t of tests) {
    const p = paths.find((x) => path.basename(x) === `${t}.flat`);
    if (!p || !fs.existsSync(p)) throw new Error(`build.sh did not produce ${t}.flat (output: ${out})`);
    byName[t] = p;
  }
  return byName;
}

/** Removes this process's build directory. */
export function removeKvmUnitTestsBuild(): void {
  fs.rmSync(outDir, { recursive: true, force: true });
}

/**
 * What a kvm-unit-tests run printed, judged as its own scripts judge it: the SUMMARY line
 * ("SUMMARY: N tests, F unexpected failures, X expected failures, S skipped"), PASS/FAIL/SKIP lines.
 */
export function summarize(console: string): {
  tests: number;
  failures: number;
  skipped: number;
  passLines: string[];
  failLines: string[];
  skipLines: string[];
} {
  const lines = console.split(/\r?\n/);
  const summary = lines.find((l) => l.startsWith('SUMMARY:')) ?? '';
  const num = (re: RegExp) => Number(re.exec(summary)?.[1] ?? 0);
  return {
    tests: num(/SUMMARY: (\d+) tests/),
    failures: num(/(\d+) unexpected failures/),
    skipped: num(/(\d+) skipped/),
    passLines: lines.filter((l) => l.startsWith('PASS:')),
    failLines: lines.filter((l) => l.startsWith('FAIL:')),
    skipLines: lines.filter((l) => l.startsWith('SKIP:')),
  };
}
