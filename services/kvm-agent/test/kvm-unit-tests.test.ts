// The judge of "guests that run": kvm-unit-tests' own x86 images, built in this run from the pinned,
// unmodified upstream source (../shared/suites/kvm-unit-tests), run with `vsmctl run` through a real
// vsm-service (--backend agent) in front of a real vsm-kvm-agent on /dev/kvm, 2 VPs each, as upstream's
// x86/unittests.cfg runs them under QEMU (hyperv_synic with -device hyperv-testdev; hyperv_stimer also
// with `direct`). A test passes when the guest reports no failure and skips nothing, and exits through
// the debug-exit port with code 0 (vsmctl's status 1, QEMU isa-debug-exit's convention).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { AGENT_MAIN, type ChildService, envWithoutVsm, spawnService } from '../../../test/support/child-service';
import { describeKvm } from '../../../test/support/kvm-gate';
import { buildKvmUnitTests, kvmUnitTestsUnavailable, removeKvmUnitTestsBuild, summarize } from '../../../test/support/kvm-unit-tests';
import { vsmctl } from '../../../test/cli/support';

const unavailable = kvmUnitTestsUnavailable();

/** upstream x86/unittests.cfg: smp = 2 (smptest: smp = 2 too), hyperv-testdev for synic. */
const CASES: { test: string; image: string; devices: string[]; append?: string }[] = [
  { test: 'smptest', image: 'smptest', devices: [] },
  { test: 'hyperv_synic', image: 'hyperv_synic', devices: ['hyperv-testdev'] },
  { test: 'hyperv_stimer', image: 'hyperv_stimer', devices: [] },
  { test: 'hyperv_stimer_direct', image: 'hyperv_stimer', devices: [], append: 'direct' },
  { test: 'hyperv_clock', image: 'hyperv_clock', devices: [] },
];

/** The times and figures of this run, for the closing note (written next to the build). */
const REPORT = path.join(os.tmpdir(), `vsm-kvm-unit-tests-report-${process.pid}.json`);

(unavailable ? describe.skip : describeKvm)(`kvm-unit-tests through vsmctl run on the agent${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  let agent: ChildService;
  let service: ChildService;
  let images: Record<string, string>;
  const results: Record<string, unknown> = {};

  beforeAll(async () => {
    images = buildKvmUnitTests([...new Set(CASES.map((c) => c.image))]);
    agent = await spawnService([], { main: AGENT_MAIN, name: 'vsm-kvm-agent', env: envWithoutVsm() });
    service = await spawnService(['--backend', 'agent', '--agent', agent.address], { name: 'vsm-service', env: envWithoutVsm() });
  }, 180_000);

  afterAll(async () => {
    await service?.stop();
    await agent?.stop();
    fs.writeFileSync(REPORT, JSON.stringify(results, null, 2));
    removeKvmUnitTestsBuild();
  }, 60_000);

  test('a guest that never halts: vsmctl run --timeout stops it (exit 124) and deletes its partition', async () => {
    // 16-bit real mode at 0x1000: print "spin\n" on COM1, then `jmp $` for ever.
    const code = [0xba, 0xf8, 0x03, ...[...Buffer.from('spin\n')].flatMap((c) => [0xb0, c, 0xee]), 0xeb, 0xfe];
    const image = path.join(os.tmpdir(), `vsm-spin-${process.pid}.bin`);
    fs.writeFileSync(image, Buffer.from(code));
    try {
      const r = await vsmctl(['run', image, '--format', 'flat', '--load-gpa', '0x1000', '--entry-mode', 'real16', '--timeout', '3', '--name', 'spin-timeout'], {
        env: { VSM_ADDRESS: service.address },
        timeoutMs: 120_000,
      });
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 124, stdout: 'spin\n' });
      const list = await vsmctl(['partitions', 'list', '--json'], { env: { VSM_ADDRESS: service.address } });
      expect(list.stdout).not.toContain('spin-timeout');
    } finally {
      fs.rmSync(image, { force: true });
    }
  }, 180_000);

  for (const c of CASES) {
    test(`${c.test}: passes with 0 failures and nothing skipped`, async () => {
      const args = [
        'run',
        images[c.image]!,
        '--vps',
        '2',
        '--timeout',
        '240',
        ...c.devices.flatMap((d) => ['--device', d]),
        ...(c.append ? ['--append', c.append] : []),
      ];
      const t0 = process.hrtime.bigint();
      const r = await vsmctl(args, { env: { VSM_ADDRESS: service.address }, timeoutMs: 300_000 });
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const s = summarize(r.stdout);
      results[c.test] = { seconds, status: r.code, summary: s, stderr: r.stderr.slice(-2000) };
      const context = `vsmctl ${args.join(' ')} → status ${r.code}\n--- stdout ---\n${r.stdout.slice(-6000)}\n--- stderr ---\n${r.stderr.slice(-3000)}`;
      // isa-debug-exit convention: status (code << 1) | 1; kvm-unit-tests exits with code 0 when nothing failed.
      if (r.code !== 1) throw new Error(`expected status 1 (guest exit code 0)\n${context}`);
      expect(s.tests).toBeGreaterThan(0);
      expect(s.failures).toBe(0);
      expect(s.failLines).toEqual([]);
      // A SKIP for a feature we claim counts as a failure: nothing may be skipped.
      expect(s.skipped).toBe(0);
      expect(s.skipLines).toEqual([]);
      expect(s.passLines.length).toBe(s.tests);
    }, 320_000);
  }
});
