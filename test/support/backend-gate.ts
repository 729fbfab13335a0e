// Loaded before every conformance test file (jest setupFilesAfterEnv): when the chosen backend
// cannot run on this machine (VSM_BACKEND=agent without a usable /dev/kvm), the global `test`/`it`
// become the shared KVM gate's (test/support/kvm-gate.ts): every scenario is reported as skipped
// with the reason in its name — or fails naming it when VSM_REQUIRE_KVM=1 — instead of failing on
// the harness or silently passing.
import { gateTests } from './kvm-gate';
import { backendUnavailable } from './server';

const why = backendUnavailable();
if (why) {
  process.stderr.write(`conformance: every scenario gated: ${why}\n`);
  const g = globalThis as unknown as { test: jest.It; it: jest.It };
  g.test = gateTests(g.test, why);
  g.it = g.test;
}
