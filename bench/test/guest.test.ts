// The guest suite's pure logic (the kvm-unit-tests verdict, the command lines) and its process
// helpers on small node scripts (no KVM, no QEMU needed).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { liveChildren } from '../src/lib/children';
import { judgeKvmUnitTest, qemuArgs, runTimed, startDaemon, vsmctlRunArgs } from '../src/lib/guest';

const SMPTEST_OK = 'enabling apic\nsmp: waiting for 1 APs\nenabling apic\nsetup: CPU 1 online\nfound 2 cpus\nPASS: IPI to each CPU\nSUMMARY: 1 tests\n';

describe('judgeKvmUnitTest', () => {
  test('status 1 (exit code 0), a PASS line and a SUMMARY: pass', () => {
    expect(judgeKvmUnitTest(1, null, SMPTEST_OK)).toEqual({ pass: true, why: '', tests: 1, failures: 0, skipped: 0, passLines: 1 });
    // QEMU's serial on stdio may end lines with \r\n.
    expect(judgeKvmUnitTest(1, null, SMPTEST_OK.replace(/\n/g, '\r\n')).pass).toBe(true);
  });

  test('a failing exit status names the guest exit code', () => {
    const v = judgeKvmUnitTest(3, null, 'FAIL: x\nSUMMARY: 1 tests, 1 unexpected failures\n');
    expect(v.pass).toBe(false);
    expect(v.why).toContain("exit status 3 (the guest's exit code 1)");
    expect(v.why).toContain('1 failed: FAIL: x');
    expect(v.failures).toBe(1);
  });

  test('a SKIP counts as a failure, even with status 1', () => {
    const v = judgeKvmUnitTest(1, null, 'PASS: a\nSKIP: hyperv stimer not supported\nSUMMARY: 2 tests, 1 skipped\n');
    expect(v.pass).toBe(false);
    expect(v.why).toMatch(/1 skipped: SKIP: hyperv stimer/);
  });

  test('no SUMMARY, no PASS, a timeout (124), a crash (125) or a signal do not pass', () => {
    expect(judgeKvmUnitTest(1, null, 'PASS: a\n').why).toBe('no SUMMARY line');
    expect(judgeKvmUnitTest(1, null, 'SUMMARY: 0 tests\n').why).toBe('no PASS line');
    expect(judgeKvmUnitTest(124, null, SMPTEST_OK).why).toBe('exit status 124, expected 1 (exit code 0: pass)');
    expect(judgeKvmUnitTest(125, null, SMPTEST_OK).why).toMatch(/^exit status 125 \(the guest's exit code 62\)/);
    expect(judgeKvmUnitTest(null, 'SIGKILL', SMPTEST_OK).why).toBe('killed by SIGKILL');
  });
});

describe('command lines', () => {
  test('QEMU as the issue and kvm-unit-tests run it', () => {
    expect(qemuArgs('smptest.flat', 2, 128)).toEqual([
      '-accel',
      'kvm',
      '-cpu',
      'kvm64',
      '-smp',
      '2',
      '-m',
      '128',
      '-kernel',
      'smptest.flat',
      '-device',
      'isa-debug-exit,iobase=0xf4,iosize=0x4',
      '-display',
      'none',
      '-serial',
      'stdio',
      '-no-reboot',
      '-nodefaults',
    ]);
  });

  test('vsmctl run with the same VPs and memory, a guest timeout and extra flags after the image', () => {
    expect(
      vsmctlRunArgs('127.0.0.1:5', '/x/hyperv_stimer.flat', {
        vps: 2,
        memoryMiB: 128,
        timeoutSec: 120,
        extra: ['--device', 'hyperv-testdev', '--append', 'direct'],
      }),
    ).toEqual([
      '--address',
      '127.0.0.1:5',
      'run',
      '/x/hyperv_stimer.flat',
      '--vps',
      '2',
      '--memory',
      '128MiB',
      '--timeout',
      '120',
      '--device',
      'hyperv-testdev',
      '--append',
      'direct',
    ]);
  });
});

describe('process helpers', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-guest-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('runTimed: status, output, a positive wall time; the child is no longer tracked afterwards', async () => {
    const r = await runTimed(process.execPath, ['-e', 'process.stdout.write("PASS: x\\n"); process.stderr.write("warn\\n"); process.exit(1)'], {
      timeoutMs: 60_000,
      signal: new AbortController().signal,
    });
    expect(r).toMatchObject({ status: 1, signal: null, stdout: 'PASS: x\n', stderr: 'warn\n', timedOut: false });
    expect(r.us).toBeGreaterThan(0);
    expect(liveChildren()).toBe(0);
  });

  test('runTimed: an abort kills the child and rejects; a missing command rejects', async () => {
    const ac = new AbortController();
    const p = runTimed(process.execPath, ['-e', 'process.stdout.write("up\\n"); setInterval(() => {}, 1000)'], { timeoutMs: 600_000, signal: ac.signal });
    setImmediate(() => ac.abort('suite finished'));
    await expect(p).rejects.toThrow(/stopped: suite finished/);
    expect(liveChildren()).toBe(0);
    await expect(runTimed(path.join(dir, 'no-such-binary'), [], { timeoutMs: 1000, signal: new AbortController().signal })).rejects.toThrow(/ENOENT/);
  });

  test('startDaemon: the address from the "listening" log line; stop() ends it', async () => {
    const main = path.join(dir, 'daemon.js');
    fs.writeFileSync(
      main,
      [
        'const i = process.argv.indexOf("--listen");',
        'console.log("not json");',
        'console.log(JSON.stringify({ level: 30, msg: "vsm-service listening", listen: process.argv[i + 1].replace(/:0$/, ":4242"), extra: process.argv.slice(2).join(" ") }));',
        'setInterval(() => {}, 1000);',
      ].join('\n'),
    );
    const ac = new AbortController();
    const d = await startDaemon('fake', main, ['--backend', 'agent'], ac.signal);
    expect(d.address).toBe('127.0.0.1:4242');
    expect(d.tail()).toContain('--listen 127.0.0.1:0 --log-level info --backend agent');
    await d.stop();
    expect(() => process.kill(d.pid, 0)).toThrow();
    expect(liveChildren()).toBe(0);
  });

  test('startDaemon: a process that exits before listening rejects with its output', async () => {
    const main = path.join(dir, 'dies.js');
    fs.writeFileSync(main, 'console.error("KVM is not usable: no /dev/kvm"); process.exit(2);\n');
    await expect(startDaemon('vsm-kvm-agent', main, [], new AbortController().signal)).rejects.toThrow(
      /vsm-kvm-agent: exited while starting \(code 2[\s\S]*KVM is not usable/,
    );
    expect(liveChildren()).toBe(0);
  });
});
