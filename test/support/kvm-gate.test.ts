// The shared KVM gate (test/support/kvm-gate.ts, issue #18): jest is run as a child process on a
// fixture (test/support/fixtures/kvm-gate.fixture.ts) with the gate's device forced:
// - to a path that does not exist, without VSM_REQUIRE_KVM: every gated test is reported skipped
//   with the reason in its name, the run passes and the suite's hooks do not run;
// - to the same path with VSM_REQUIRE_KVM=1: every gated test FAILS naming the reason;
// - to a character device this process can open read/write (/dev/null) with VSM_REQUIRE_KVM=1:
//   the gated tests run and pass (the control).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { kvmUnavailableReason } from './kvm-gate';
import { runJestOnFixture } from './jest-child';

const FIXTURE = path.join(__dirname, 'fixtures/kvm-gate.fixture.ts');
const ABSENT = '/nonexistent-vsm-test/kvm';

jest.setTimeout(120_000);

function runFixture(env: Record<string, string | undefined>) {
  const childEnv: NodeJS.ProcessEnv = { ...process.env };
  delete childEnv.VSM_REQUIRE_KVM;
  delete childEnv.VSM_TEST_KVM_DEVICE;
  for (const [k, v] of Object.entries(env)) if (v !== undefined) childEnv[k] = v;
  return runJestOnFixture(FIXTURE, childEnv, { json: true });
}

describe('kvmUnavailableReason', () => {
  test('names a device that does not exist, one that is not a character device, and accepts /dev/null', () => {
    expect(kvmUnavailableReason({ device: ABSENT })).toMatch(/^\/nonexistent-vsm-test\/kvm does not exist/);
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kvm-gate-')), 'kvm');
    fs.writeFileSync(file, '');
    expect(kvmUnavailableReason({ device: file })).toBe(`${file} is not a character device`);
    expect(kvmUnavailableReason({ device: file, hostAccess: false })).toBe(`${file} is not a character device`);
    fs.rmSync(path.dirname(file), { recursive: true });
    expect(kvmUnavailableReason({ device: '/dev/null' })).toBeUndefined();
  });
});

describe('jest run on the gated fixture', () => {
  test('KVM unusable, not required: every gated test skipped with the reason in its name, run passes', async () => {
    const r = await runFixture({ VSM_TEST_KVM_DEVICE: ABSENT });
    if (r.code !== 0) throw new Error(`expected exit 0, got ${r.code}:\n${r.out}`);
    expect(r.out).toMatch(/Tests:\s+5 skipped, 5 total/);
    expect(r.tests.map((t) => t.status)).toEqual(['pending', 'pending', 'pending', 'pending', 'pending']);
    const why = `[skipped: ${ABSENT} does not exist (`;
    expect(r.tests.map((t) => t.name.slice(0, t.name.indexOf(why) + why.length))).toEqual(
      ['fixture suite', 'fixture test', 'fixture row 1', 'fixture row 2', 'fixture block 3'].map((n) => `${n} ${why}`),
    );
    expect(r.out).not.toContain('fixture: suite hook ran');
  });

  test('KVM unusable, VSM_REQUIRE_KVM=1: every gated test fails naming the reason', async () => {
    const r = await runFixture({ VSM_TEST_KVM_DEVICE: ABSENT, VSM_REQUIRE_KVM: '1' });
    if (r.code === 0) throw new Error(`expected a failed run, got exit 0:\n${r.out}`);
    expect(r.out).toMatch(/Tests:\s+5 failed, 5 total/);
    expect(r.tests.map((t) => t.status)).toEqual(['failed', 'failed', 'failed', 'failed', 'failed']);
    for (const t of r.tests) expect(t.failure).toContain(`KVM is required here (VSM_REQUIRE_KVM=1) but not usable: ${ABSENT} does not exist`);
    expect(r.tests.map((t) => t.name.replace(/ \[KVM required.*?\]| needs KVM: .*$/g, ''))).toEqual([
      'fixture suite',
      'fixture test',
      'fixture row 1',
      'fixture row 2',
      'fixture block 3',
    ]);
    expect(r.out).not.toContain('fixture: suite hook ran');
  });

  test('control: a usable character device with VSM_REQUIRE_KVM=1 runs the gated tests', async () => {
    const r = await runFixture({ VSM_TEST_KVM_DEVICE: '/dev/null', VSM_REQUIRE_KVM: '1' });
    if (r.code !== 0) throw new Error(`expected exit 0, got ${r.code}:\n${r.out}`);
    expect(r.out).toMatch(/Tests:\s+5 passed, 5 total/);
    expect(r.out).toContain('fixture: suite hook ran');
  });
});
