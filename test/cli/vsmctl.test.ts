// vsmctl end to end: the compiled CLI as a child process against a real server started here.
// Checks stdout (human and --json), stderr and exit codes (0 ok, 2 usage, 3 server error, 4 unreachable).
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type Harness, startHarness } from '../support/server';
import { CLI, ROOT, type Run, assertBuilt, childEnv, vsmctl } from './support';

// Every test spawns the CLI several times (~0.2 s per node start-up).
jest.setTimeout(60_000);

let h: Harness;
beforeAll(async () => {
  assertBuilt();
  h = await startHarness();
});
afterAll(async () => {
  await h?.stop();
});

const cli = (args: string[], env?: Record<string, string | undefined>): Promise<Run> => vsmctl(['--address', h.address, ...args], { env });
async function ok(args: string[]): Promise<string> {
  const r = await cli(args);
  if (r.code !== 0) throw new Error(`vsmctl ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}
// biome-ignore lint/suspicious/noExplicitAny: vsmctl --json output of many commands, walked by path in assertions
const json = async (args: string[]): Promise<any> => JSON.parse(await ok([...args, '--json']));

/** Partition with the hypercall page enabled in VTL0 at 0x1000 and VTL1 enabled on VP0. */
async function vtlPartition(id: string): Promise<void> {
  await ok(['partitions', 'create', '--id', id, '--vp-count', '2', '--memory', '64MiB', '--max-vtl', '2']);
  await ok(['msr', 'write', id, '0', 'HV_X64_MSR_GUEST_OS_ID', '0x8100000000000001']);
  await ok(['msr', 'write', id, '0', 'HV_X64_MSR_HYPERCALL', '0x1001']);
  await ok(['vtl', 'enable', id, '1']);
  await ok(['vtl', 'enable-vp', id, '0', '1']);
}

describe('partitions', () => {
  test('create, list, get, delete with --json and human output', async () => {
    const p = await json([
      'partitions',
      'create',
      '--id',
      'cli-p1',
      '--vp-count',
      '2',
      '--memory',
      '1GiB',
      '--max-vtl',
      '2',
      '--label',
      'team=vsm',
      'env=dev',
      '--request-id',
      'r-1',
    ]);
    expect(p).toMatchObject({
      name: 'partitions/cli-p1',
      vpCount: 2,
      memoryBytes: '1073741824',
      maximumVtl: 2,
      labels: { team: 'vsm', env: 'dev' },
      state: 'PARTITION_STATE_ACTIVE',
      architecture: 'ARCHITECTURE_X64',
      enabledVtlSet: 1,
    });
    // idempotent retry with the same request id
    expect(
      (
        await json([
          'partitions',
          'create',
          '--id',
          'cli-p1',
          '--vp-count',
          '2',
          '--memory',
          '1GiB',
          '--max-vtl',
          '2',
          '--label',
          'team=vsm',
          'env=dev',
          '--request-id',
          'r-1',
        ])
      ).name,
    ).toBe('partitions/cli-p1');

    const human = await ok(['partitions', 'create', '--vp-count', '1', '--memory', '0x100000']);
    expect(human).toMatch(/^created partitions\/\S+ \(1 VP, 1 MiB, maximum VTL 0\)\n$/);

    const list = await json(['partitions', 'list', '--all']);
    expect(list.nextPageToken).toBe('');
    expect(list.partitions.map((x: { name: string }) => x.name)).toContain('partitions/cli-p1');
    const page = await json(['partitions', 'list', '--page-size', '1']);
    expect(page.partitions).toHaveLength(1);
    expect(page.nextPageToken).not.toBe('');
    const table = await ok(['partitions', 'list']);
    expect(table).toMatch(/^NAME\s+VPS\s+MEMORY/);
    expect(table).toMatch(/partitions\/cli-p1\s+2\s+1 GiB\s+2\s+0\s+active/);

    expect((await json(['partitions', 'get', 'partitions/cli-p1'])).name).toBe('partitions/cli-p1');
    const got = await ok(['partitions', 'get', 'cli-p1']);
    expect(got).toMatch(/^name:\s+partitions\/cli-p1$/m);
    expect(got).toMatch(/^memory:\s+1 GiB \(1073741824 bytes\)$/m);
    expect(got).toMatch(/^labels:\s+team=vsm, env=dev$/m);

    expect(await json(['partitions', 'delete', 'cli-p1'])).toEqual({ name: 'partitions/cli-p1', deleted: true });
    const gone = await cli(['partitions', 'get', 'cli-p1']);
    expect(gone.code).toBe(3);
  });

  test('a missing partition exits 3 with NOT_FOUND HV_STATUS_INVALID_PARTITION_ID', async () => {
    const all = [
      ['partitions', 'get', 'no-such'],
      ['partitions', 'delete', 'partitions/no-such'],
      ['vp', 'get', 'no-such', '0'],
      ['map', 'no-such'],
      ['vtl', 'watch', 'no-such'],
      ['overlays', 'list', 'no-such'],
    ];
    const runs = await Promise.all(all.map((args) => cli(args)));
    all.forEach((args, i) => {
      const r = runs[i]!;
      expect({ args, code: r.code }).toEqual({ args, code: 3 });
      expect({ args, stderr: r.stderr }).toEqual({ args, stderr: expect.stringMatching(/^error: NOT_FOUND HV_STATUS_INVALID_PARTITION_ID: /) });
      expect(r.stdout).toBe('');
    });
  });

  test('capabilities', async () => {
    const c = await json(['capabilities']);
    expect(c.backend).toBe('emulator');
    expect(c.architectures).toContain('ARCHITECTURE_X64');
    expect(typeof c.maxMemoryBytes).toBe('string');
    const human = await ok(['capabilities']);
    expect(human).toMatch(/^backend:\s+emulator$/m);
    expect(human).toMatch(/0x0011\s+HvCallVtlCall/);
  });
});

describe('VPs and registers', () => {
  test('vp get, regs (TLFS and short names, hex), set-reg round trip', async () => {
    await ok(['partitions', 'create', '--id', 'cli-regs', '--vp-count', '2', '--memory', '16MiB']);
    const vp = await json(['vp', 'get', 'cli-regs', '1']);
    expect(vp).toMatchObject({
      name: 'partitions/cli-regs/vps/1',
      vpIndex: 1,
      vtlStatus: { activeVtl: 0, enabledVtlSet: 1, lastEntryReason: 'HV_VTL_ENTRY_REASON_RESERVED' },
    });

    expect(await ok(['vp', 'set-reg', 'cli-regs', '0', 'rip', '0x401000'])).toMatch(/HvX64RegisterRip = 0x0000000000401000/);
    await ok(['vp', 'set-reg', 'cli-regs', '0', 'HvX64RegisterRbx', '48879', '--vtl', '0']);
    await ok(['vp', 'set-reg', 'cli-regs', '0', 'gdtr', 'base=0x6000,limit=0x1f']);
    const regs = await ok(['vp', 'regs', 'cli-regs', '0', 'rip', 'HvX64RegisterRbx', 'HV_REGISTER_NAME_X64_GDTR', 'vsm-code-page-offsets']);
    expect(regs).toMatch(/^partitions\/cli-regs\/vps\/0  VTL 0$/m);
    expect(regs).toMatch(/^HvX64RegisterRip\s+0x0000000000401000$/m);
    expect(regs).toMatch(/^HvX64RegisterRbx\s+0x000000000000beef$/m);
    expect(regs).toMatch(/^HvX64RegisterGdtr\s+base=0x0000000000006000 limit=0x001f$/m);
    expect(regs).toMatch(/^HvRegisterVsmCodePageOffsets\s+0x000000000002600f/m);

    const j = await json(['vp', 'regs', 'cli-regs', '0', 'RIP', 'cs']);
    expect(j.name).toBe('partitions/cli-regs/vps/0');
    expect(j.registers[0]).toEqual({ name: 'HV_REGISTER_NAME_X64_RIP', tlfsName: 'HvX64RegisterRip', reg64: String(0x401000) });
    expect(j.registers[1].segment).toHaveProperty('selector');

    const all = await json(['vp', 'regs', 'cli-regs', '0']);
    expect(all.registers.length).toBeGreaterThan(40);
  });

  test('registers lists names offline', async () => {
    const r = await vsmctl(['registers', '--address', '127.0.0.1:1']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^HvX64RegisterRip\s+HV_REGISTER_NAME_X64_RIP\s+0x00020010$/m);
  });
});

describe('MSRs', () => {
  test('write/read round trip, #GP reported as an outcome', async () => {
    await ok(['partitions', 'create', '--id', 'cli-msr', '--vp-count', '1', '--memory', '16MiB']);
    expect(await ok(['msr', 'write', 'cli-msr', '0', '0x40000000', '0x8100000000000001'])).toBe(
      'HV_X64_MSR_GUEST_OS_ID (0x40000000) <- 0x8100000000000001  (VTL 0)\n',
    );
    expect(await ok(['msr', 'read', 'cli-msr', '0', 'HV_X64_MSR_GUEST_OS_ID'])).toBe('HV_X64_MSR_GUEST_OS_ID (0x40000000) = 0x8100000000000001  (VTL 0)\n');
    const r = await json(['msr', 'read', 'cli-msr', '0', '1073741824']);
    expect(r).toMatchObject({
      name: 'partitions/cli-msr/vps/0',
      msr: 0x40000000,
      value: 0x8100000000000001n.toString(),
      outcome: { exception: 'X64_EXCEPTION_UNSPECIFIED', activeVtl: 0 },
    });

    // HV_X64_MSR_VP_INDEX is read-only: WRMSR raises #GP, which is a result (exit 0), printed clearly.
    const gp = await cli(['msr', 'write', 'cli-msr', '0', 'vp-index', '5']);
    expect(gp.code).toBe(0);
    expect(gp.stdout).toMatch(/REFUSED, #GP \(general protection fault\) raised in VTL 0; nothing was written/);
    const gpj = await json(['msr', 'write', 'cli-msr', '0', 'vp-index', '5']);
    expect(gpj.outcome.exception).toBe('X64_EXCEPTION_GP');
    expect(await ok(['msr', 'read', 'cli-msr', '0', 'vp-index'])).toMatch(/= 0x0000000000000000/);
  });
});

describe('VTLs', () => {
  test('enable, enable-vp, status, call, return, watch', async () => {
    await ok(['partitions', 'create', '--id', 'cli-vtl', '--vp-count', '2', '--memory', '64MiB', '--max-vtl', '2']);
    await ok(['msr', 'write', 'cli-vtl', '0', 'guest-os-id', '0x8100000000000001']);
    await ok(['msr', 'write', 'cli-vtl', '0', 'hypercall', '0x1001']);
    // VtlCall before VTL1 is enabled: #UD, reported as an outcome.
    expect(await ok(['vtl', 'call', 'cli-vtl', '0'])).toMatch(/^VtlCall \(hypercall page \+0x0f\): #UD \(invalid opcode\) raised in VTL 0; no switch$/m);

    expect(await ok(['vtl', 'enable', 'cli-vtl', '1'])).toBe('enabled VTL 1 for partitions/cli-vtl; partition VTLs now 0,1\n');
    const ev = await json(['vtl', 'enable-vp', 'cli-vtl', '0', '1']);
    expect(ev).toMatchObject({ name: 'partitions/cli-vtl/vps/0', vtlStatus: { enabledVtlSet: 3, activeVtl: 0 } });
    const again = await cli(['vtl', 'enable-vp', 'cli-vtl', '0', '1']);
    expect(again.code).toBe(3);
    expect(again.stderr).toMatch(/^error: ALREADY_EXISTS HV_STATUS_VTL_ALREADY_ENABLED: /);

    const st = await ok(['vtl', 'status', 'cli-vtl']);
    expect(st).toMatch(/^partitions\/cli-vtl: maximum VTL 2, enabled VTLs 0,1$/m);
    expect(st).toMatch(/^0\s+0\s+0,1\s+RESERVED$/m);
    expect(st).toMatch(/^1\s+0\s+0\s+RESERVED$/m);

    // Watch the transitions (JSON lines) while calling and returning.
    const watch = spawn(process.execPath, [CLI, '--address', h.address, 'vtl', 'watch', 'cli-vtl', '--vp', '0', '--json'], {
      cwd: ROOT,
      env: childEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let wout = '';
    let werr = '';
    watch.stdout.setEncoding('utf8').on('data', (d: string) => (wout += d));
    watch.stderr.setEncoding('utf8').on('data', (d: string) => (werr += d));
    const exited = new Promise<number | null>((res) => watch.on('close', (code) => res(code)));
    try {
      // The stream's first line says it is registered: everything after it is seen.
      const subscribedBy = Date.now() + 20_000;
      while (!/"subscribed"/.test(wout) && Date.now() < subscribedBy) await new Promise((r) => setTimeout(r, 20));
      const call = await json(['vtl', 'call', 'cli-vtl', '0']);
      expect(call).toMatchObject({
        name: 'partitions/cli-vtl/vps/0',
        offset: 0x0f,
        outcome: { exception: 'X64_EXCEPTION_UNSPECIFIED', activeVtl: 1, vtlSwitch: { fromVtl: 0, toVtl: 1, entryReason: 'HV_VTL_ENTRY_REASON_VTL_CALL' } },
      });
      const st0 = await json(['vtl', 'status', 'cli-vtl', '0']);
      expect(st0.vtlStatus).toMatchObject({ activeVtl: 1, lastEntryReason: 'HV_VTL_ENTRY_REASON_VTL_CALL' });

      // VTL1 places its own hypercall page, then returns (normal, then a second call and a fast return).
      await ok(['msr', 'write', 'cli-vtl', '0', 'guest-os-id', '0x8100000000000002']);
      await ok(['msr', 'write', 'cli-vtl', '0', 'hypercall', '0x8001']);
      expect(await ok(['vtl', 'return', 'cli-vtl', '0'])).toBe('VtlReturn (hypercall page +0x26): switched VTL 1 -> VTL 0\n');
      expect(await ok(['vtl', 'call', 'cli-vtl', '0'])).toBe('VtlCall (hypercall page +0x0f): switched VTL 0 -> VTL 1, entry reason VTL_CALL\n');
      const fast = await json(['vtl', 'return', 'cli-vtl', '0', '--fast']);
      expect(fast).toMatchObject({ fast: true, outcome: { vtlSwitch: { fromVtl: 1, toVtl: 0 } } });

      // Wait until it printed the last return.
      const deadline = Date.now() + 5000;
      while (!/"fastReturn":true/.test(wout) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    } finally {
      watch.kill('SIGINT');
    }
    expect(await exited).toBe(0);
    expect(werr).toBe('');
    const all = wout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    for (const l of all) expect(l.name).toBe('partitions/cli-vtl');
    expect(all[0].subscribed).toBeDefined();
    const lines = all.slice(1);
    expect(lines.length).toBeGreaterThanOrEqual(3);
    const last = lines[lines.length - 1].transition;
    expect(last).toMatchObject({ vpIndex: 0, fromVtl: 1, toVtl: 0, isReturn: true, fastReturn: true });
    const seqs = lines.map((l) => BigInt(l.transition.sequence));
    expect(seqs[0]).toBe(BigInt(all[0].subscribed.nextSequence));
    for (let i = 1; i < seqs.length; i++) expect(seqs[i]).toBe(seqs[i - 1]! + 1n);
  });

  test('watch prints human lines', async () => {
    await vtlPartition('cli-watch');
    const watch = spawn(process.execPath, [CLI, '--address', h.address, 'vtl', 'watch', 'partitions/cli-watch'], {
      cwd: ROOT,
      env: childEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    watch.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    const exited = new Promise<number | null>((res) => watch.on('close', (code) => res(code)));
    try {
      // Repeat VtlCall (then the failing call from VTL1 is #UD, no transition) until the watcher saw one.
      const deadline = Date.now() + 5000;
      await ok(['vtl', 'call', 'cli-watch', '0']);
      await ok(['msr', 'write', 'cli-watch', '0', 'guest-os-id', '1']);
      await ok(['msr', 'write', 'cli-watch', '0', 'hypercall', '0x9001']);
      while (!/VTL 1 -> VTL 0/.test(out) && Date.now() < deadline) {
        await ok(['vtl', 'return', 'cli-watch', '0']);
        if (/VTL 1 -> VTL 0/.test(out)) break;
        await new Promise((r) => setTimeout(r, 100));
        await ok(['vtl', 'call', 'cli-watch', '0']);
      }
    } finally {
      watch.kill('SIGINT');
    }
    expect(await exited).toBe(0);
    expect(out).toMatch(/^#\d+  \d{4}-\d\d-\d\dT\S+Z  vp 0  VTL 1 -> VTL 0  return$/m);
  });
});

describe('overlays, memory and map', () => {
  test('overlays list', async () => {
    await vtlPartition('cli-ov');
    await ok(['vtl', 'call', 'cli-ov', '0']);
    await ok(['msr', 'write', 'cli-ov', '0', 'guest-os-id', '1']);
    await ok(['msr', 'write', 'cli-ov', '0', 'hypercall', '0x3001']);
    await ok(['msr', 'write', 'cli-ov', '0', 'vp-assist-page', '0x3001']);
    const human = await ok(['overlays', 'list', 'cli-ov']);
    expect(human).toMatch(/^GPA\s+KIND\s+VTL\s+VP\s+STACK\s+GUEST ACCESS$/m);
    expect(human).toMatch(/^0x0000000000001000\s+HYPERCALL\s+0\s+all\s+0 \(top\)\s+read-only$/m);
    expect(human).toMatch(/^0x0000000000003000\s+HYPERCALL\s+1\s+all\s+1\s+read-only$/m);
    expect(human).toMatch(/^0x0000000000003000\s+VP_ASSIST_PAGE\s+1\s+0\s+0 \(top\)\s+read-write$/m);
    const j = await json(['overlays', 'list', 'cli-ov', '--vtl', '1']);
    expect(j.name).toBe('partitions/cli-ov');
    expect(j.overlays).toEqual([
      { kind: 'OVERLAY_KIND_HYPERCALL', vtl: 1, gpa: '12288', stackPosition: 1, readOnly: true },
      { kind: 'OVERLAY_KIND_VP_ASSIST_PAGE', vtl: 1, vpIndex: 0, gpa: '12288', stackPosition: 0, readOnly: false },
    ]);
    expect(Number(j.viewGeneration)).toBeGreaterThan(0);
    expect(await ok(['overlays', 'list', 'cli-ov', '--vtl', '2'])).toMatch(/^no overlays in VTL 2/);
  });

  test('memory write/read: hex, @file in chunks, VTL view, guest access with #GP', async () => {
    await vtlPartition('cli-mem');
    expect(await ok(['memory', 'write', 'cli-mem', '0x5000', 'de ad be ef 01 02'])).toBe('wrote 6 bytes at 0x0000000000005000 into RAM\n');
    const dump = await ok(['memory', 'read', 'cli-mem', '0x5000', '32']);
    expect(dump).toBe(
      '0000000000005000  de ad be ef 01 02 00 00  00 00 00 00 00 00 00 00  |................|\n' +
        '0000000000005010  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|\n',
    );
    expect((await json(['memory', 'read', 'cli-mem', '20480', '4'])).data).toBe('deadbeef');

    // 2.5 MiB from a file: three WriteGpa chunks; read back in chunks into a file.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsmctl-'));
    try {
      const src = path.join(dir, 'in.bin');
      const data = Buffer.alloc(2.5 * 1024 * 1024);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 12)) & 0xff;
      fs.writeFileSync(src, data);
      const w = await json(['memory', 'write', 'cli-mem', '0x100000', `@${src}`]);
      expect(w).toMatchObject({ name: 'partitions/cli-mem', gpa: String(0x100000), bytesWritten: data.length });
      const outFile = path.join(dir, 'out.bin');
      await ok(['memory', 'read', 'cli-mem', '0x100000', '2.5MiB', '--output', outFile]);
      expect(fs.readFileSync(outFile).equals(data)).toBe(true);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }

    // RAM under the hypercall page is zero; VTL0's view shows the page (VMMCALL/VMCALL + RET at 0).
    expect((await json(['memory', 'read', 'cli-mem', '0x1000', '4'])).data).toBe('00000000');
    expect((await json(['memory', 'read', 'cli-mem', '0x1000', '4', '--vtl', '0'])).data).toMatch(/^0f01(d9|c1)c3$/);
    // Guest access by VP0: reading sees the page, writing it raises #GP and changes nothing.
    expect((await json(['memory', 'read', 'cli-mem', '0x1000', '4', '--guest', '0'])).data).toMatch(/^0f01(d9|c1)c3$/);
    const gp = await cli(['memory', 'write', 'cli-mem', '0x1000', 'cc', '--guest', '0']);
    expect(gp.code).toBe(0);
    expect(gp.stdout).toMatch(/REFUSED, #GP \(general protection fault\) raised in VTL 0; 0 of 1 bytes written before it/);
    expect(await ok(['memory', 'write', 'cli-mem', '0x6000', '0x4142', '--guest', '0'])).toBe('wrote 2 bytes at 0x0000000000006000 as VP 0 (VTL 0 view)\n');
    expect(await ok(['memory', 'read', 'cli-mem', '0x6000', '2'])).toMatch(/41 42 .*\|AB\|$/m);
  });

  test('map: plain when piped, overlays and non-zero pages, colors only when forced, NO_COLOR wins', async () => {
    await vtlPartition('cli-map');
    await ok(['memory', 'write', 'cli-map', '0x3000', 'ff']);
    const plain = await ok(['map', 'cli-map']);
    expect(plain).not.toMatch(/\x1b\[/);
    expect(plain).toMatch(/^partitions\/cli-map  memory 64 MiB  VTLs enabled 0,1  view generation \d+$/m);
    expect(plain).toMatch(/256 pages of 4 KiB/);
    const row = (section: string) => new RegExp(`^${section}\\n  0x0000000000000000  (\\S+) `, 'm').exec(plain)?.[1];
    expect(row('RAM \\(host view, under any overlay\\)')).toBe('...#............');
    expect(row('VTL 0 view')).toBe('.H.#............');
    expect(row('VTL 1 view')).toBe('...#............');
    expect(plain).toMatch(/^  VTL 0  0x0000000000001000  HYPERCALL > RAM \(zero\), read-only for the guest$/m);
    expect(plain).toMatch(/^1 of 256 RAM pages non-zero$/m);

    const one = await ok(['map', 'cli-map', '--vtl', '0', '--from', '0x1000', '--pages', '3']);
    expect(one).toMatch(/^  0x0000000000001000  H\.#$/m);
    expect(one).not.toMatch(/VTL 1 view/);

    const j = await json(['map', 'cli-map', '--pages', '8']);
    expect(j).toMatchObject({ name: 'partitions/cli-map', from: '0', pages: 8, pageSize: 4096, vtls: [0, 1], nonZeroPages: [String(0x3000)] });
    expect(j.overlays).toEqual([{ kind: 'OVERLAY_KIND_HYPERCALL', vtl: 0, gpa: '4096', stackPosition: 0, readOnly: true }]);

    const colored = await cli(['map', 'cli-map', '--pages', '4'], { FORCE_COLOR: '1' });
    expect(colored.stdout).toMatch(/\x1b\[/);
    const noColor = await cli(['map', 'cli-map', '--pages', '4'], { FORCE_COLOR: '1', NO_COLOR: '1' });
    expect(noColor.stdout).not.toMatch(/\x1b\[/);
  });
});

describe('errors and exit codes', () => {
  test('usage errors exit 2', async () => {
    await ok(['partitions', 'create', '--id', 'cli-usage', '--vp-count', '1', '--memory', '16MiB']);
    const cases: [string[], RegExp][] = [
      [[], /Usage: vsmctl/],
      [['partitions'], /Usage: vsmctl partitions/],
      [['partitions', 'get'], /missing required argument 'partition'/],
      [['partitions', 'create', '--memory', '1GiB'], /required option '--vp-count <n>' not specified/],
      [['partitions', 'create', '--vp-count', '1', '--memory', '1XB'], /--memory "1XB" has an unknown unit/],
      [['partitions', 'create', '--vp-count', '1', '--memory', 'lots'], /is not a size/],
      [['partitions', 'create', '--vp-count', 'two', '--memory', '1GiB'], /--vp-count "two" is not a number/],
      [['partitions', 'create', '--vp-count', '1', '--memory', '1GiB', '--id', 'Bad_Id'], /partition id "Bad_Id"/],
      [['partitions', 'get', 'a/b'], /is not a partition/],
      [['bogus'], /unknown command 'bogus'/],
      [['vp', 'regs', 'cli-usage', '0', 'nosuchreg'], /unknown register "nosuchreg"/],
      [['vp', 'get', 'cli-usage', '-1'], /unknown option '-1'|is not a number/],
      [['msr', 'read', 'cli-usage', '0', 'nosuchmsr'], /unknown MSR "nosuchmsr"/],
      [['msr', 'write', 'cli-usage', '0', '0x40000000', '0x1ffffffffffffffff'], /too large/],
      [['memory', 'write', 'cli-usage', '0x1000', 'xyz'], /is not hex bytes/],
      [['memory', 'write', 'cli-usage', '0x1000', 'abc'], /odd number of hex digits/],
      [['memory', 'write', 'cli-usage', '0x1000', '@/nonexistent/file'], /cannot read \/nonexistent\/file/],
      [['memory', 'read', 'cli-usage', '0', '16', '--vtl', '0', '--guest', '0'], /--vtl and --guest exclude each other/],
      [['map', 'cli-usage', '--pages', '0'], /--pages must be at least 1/],
      [['--timeout', '0', 'capabilities'], /--timeout must be at least 1/],
      [['--ca', '/nonexistent/ca.pem', 'capabilities'], /cannot read --ca/],
    ];
    const runs = await Promise.all(cases.map(([args]) => cli(args)));
    cases.forEach(([args, msg], i) => {
      const r = runs[i]!;
      expect({ args, code: r.code }).toEqual({ args, code: 2 });
      expect({ args, stderr: r.stderr }).toEqual({ args, stderr: expect.stringMatching(msg) });
    });
  });

  test('help and version exit 0', async () => {
    const help = await cli(['partitions', 'create', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--vp-count <n>/);
    const v = await cli(['--version']);
    expect(v.code).toBe(0);
    expect(v.stdout).toMatch(/^\d+\.\d+\.\d+\n$/);
  });

  test('server errors exit 3 with CODE REASON: message', async () => {
    await ok(['partitions', 'create', '--id', 'cli-err', '--vp-count', '1', '--memory', '16MiB']);
    const r = await cli(['vtl', 'enable', 'cli-err', '1']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^error: [A-Z_]+ HV_STATUS_[A-Z_]+: .+\n$/);
    const vp = await cli(['vp', 'get', 'cli-err', '7']);
    expect(vp.code).toBe(3);
    expect(vp.stderr).toMatch(/^error: NOT_FOUND HV_STATUS_INVALID_VP_INDEX: /);
    const big = await cli(['partitions', 'create', '--vp-count', '1', '--memory', '1TiB', '--id', 'cli-err']);
    expect(big.code).toBe(3);
  });

  test('an unreachable server exits 4', async () => {
    const all = [
      ['partitions', 'list'],
      ['partitions', 'create', '--vp-count', '1', '--memory', '1GiB'],
      ['vtl', 'watch', 'x'],
      ['memory', 'read', 'x', '0', '16'],
    ];
    const runs = await Promise.all(all.map((args) => vsmctl(['--address', '127.0.0.1:1', ...args])));
    all.forEach((args, i) => {
      const r = runs[i]!;
      expect({ args, code: r.code }).toEqual({ args, code: 4 });
      expect({ args, stderr: r.stderr }).toEqual({
        args,
        stderr: expect.stringMatching(/^error: UNAVAILABLE: .*\(server at 127\.0\.0\.1:1 not reachable\)\n$/),
      });
    });
    // VSM_ADDRESS is the default address.
    const env = await vsmctl(['capabilities'], { env: { VSM_ADDRESS: '127.0.0.1:1' } });
    expect(env.code).toBe(4);
    // TLS against a plaintext server does not get through either.
    const tls = await vsmctl(['--address', h.address, '--tls', '--timeout', '2000', 'capabilities']);
    expect(tls.code).toBe(4);
  });
});
