// Loaded before every conformance test file (jest setupFilesAfterEach): when the chosen backend
// cannot run on this machine (VSM_BACKEND=agent without /dev/kvm), every scenario is reported as
// skipped with the reason in its name, instead of failing or silently passing.
import { backendUnavailable } from './server';

const why = backendUnavailable();
if (why) {
  process.stderr.write(`conformance: skipping every scenario: ${why}\n`);
  const g = globalThis as unknown as Record<string, unknown>;
  const wrap = (orig: { skip: (name: string, ...rest: unknown[]) => unknown }) =>
    Object.assign((name: string, ...rest: unknown[]) => orig.skip(`${name} [skipped: ${why}]`, ...rest), orig, {
      each: () => (name: string, ...rest: unknown[]) => orig.skip(`${name} [skipped: ${why}]`, ...rest),
    });
  g.test = wrap(g.test as never);
  g.it = g.test;
}
