// vsmctl end to end, protections and intercepts: memory protect/protections, intercepts
// route/pending/watch (a monitor that answers while the test's guest access waits), memory exec,
// intercept notices on guest accesses, resumed_access on VtlReturn, synic post/signal/state, and
// protections in the map. The compiled CLI runs as a child process against a server started here;
// set-up that is not under test goes through the client library.
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { pb } from '@vsm/client';
import { type Harness, startHarness } from '../support/server';
import { CLI, ROOT, type Run, assertBuilt, childEnv, vsmctl } from './support';
import { HvMsr } from '@vsm/core';

jest.setTimeout(60_000);

const MSR = {
  GUEST_OS_ID: HvMsr.HV_X64_MSR_GUEST_OS_ID,
  HYPERCALL: HvMsr.HV_X64_MSR_HYPERCALL,
  SCONTROL: HvMsr.HV_X64_MSR_SCONTROL,
  SIEFP: HvMsr.HV_X64_MSR_SIEFP,
  SIMP: HvMsr.HV_X64_MSR_SIMP,
  SINT0: HvMsr.HV_X64_MSR_SINT0,
};
const PROTECTED = 0x40000n; // page 0x40
const SIMP_GPA = 0x9000n;
const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });

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

/**
 * Partition `id` (64 MiB, VP0): VTL1 enabled with its own hypercall page at 0x2000, SIMP at 0x9000,
 * SIEFP at 0xa000, SCONTROL and SINT0 set, EnableVtlProtection (default mask RWX); VP0 back in VTL0.
 * RAM at PROTECTED holds "original".
 */
async function setup(id: string): Promise<{ name: string; vp0: string }> {
  const c = h.client;
  const p = await c.partitions.createPartition({
    partitionId: id,
    partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: 64n << 20n, maximumVtl: 1 }),
  });
  const vp0 = `${p.name}/vps/0`;
  await c.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
  await c.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
  await c.guest.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 1n });
  await c.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x1001n });
  await c.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n }); // VTL1 from here
  for (const [msr, value] of [
    [MSR.GUEST_OS_ID, 2n],
    [MSR.HYPERCALL, 0x2001n],
    [MSR.SIMP, SIMP_GPA | 1n],
    [MSR.SIEFP, 0xa001n],
    [MSR.SCONTROL, 1n],
    [MSR.SINT0, 0x30n],
  ] as const) {
    await c.guest.writeMsr({ name: vp0, msr, value });
  }
  await c.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] });
  await c.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 1n }); // back to VTL0
  await c.memory.writeGpa({ name: p.name, gpa: PROTECTED, data: Buffer.from('original') });
  return { name: p.name, vp0 };
}

const ram = async (name: string, gpa: bigint, length: number) => Buffer.from((await h.client.memory.readGpa({ name, gpa, length })).data);

/** A long-running vsmctl (watch) with its output collected as it comes. */
class Child {
  readonly proc: ChildProcessWithoutNullStreams;
  stdout = '';
  stderr = '';
  readonly exited: Promise<number | null>;
  constructor(args: string[]) {
    this.proc = spawn(process.execPath, [CLI, '--address', h.address, ...args], { cwd: ROOT, env: childEnv(), stdio: 'pipe' });
    this.proc.stdout.setEncoding('utf8').on('data', (d: string) => (this.stdout += d));
    this.proc.stderr.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
    this.exited = new Promise((res) => this.proc.on('close', (code) => res(code)));
  }
  async waitFor(re: RegExp, ms = 10_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!re.test(this.stdout)) {
      if (Date.now() > deadline)
        throw new Error(`timed out waiting for ${re} in stdout ${JSON.stringify(this.stdout)} (stderr ${JSON.stringify(this.stderr)})`);
      if (this.proc.exitCode !== null) throw new Error(`exited ${this.proc.exitCode} before ${re}: ${this.stderr}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  /** Exit code, killing the child if it has not exited within `ms`. */
  async code(ms = 10_000): Promise<number | null> {
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), ms);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

describe('protections', () => {
  test('memory protect by pages and by GPA range; memory protections lists them (table and --json)', async () => {
    const { name } = await setup('ci-prot');
    expect(await ok(['memory', 'protect', 'ci-prot', '--vtl', '1', '--flags', 'r', '--pages', '0x40:1', '0x50:4'])).toMatch(
      /^VTL 1 now allows lower VTLs r-- \(0x1\) on 5 pages \(2 ranges\) of partitions\/ci-prot; view generation \d+\n$/,
    );
    const byGpa = await json(['memory', 'protect', 'ci-prot', '--vtl', '1', '--flags', 'rw', '--gpa', '0x60000', '--size', '8KiB']);
    expect(byGpa).toMatchObject({
      name,
      protectingVtl: 1,
      mapFlags: 3,
      mask: 'rw-',
      ranges: [{ startPage: String(0x60), pageCount: '2' }],
      calls: 1,
      pagesChanged: '2',
    });
    expect(await ok(['memory', 'protect', 'ci-prot', '--vtl', '1', '--flags', '0xd', '--gpa', '0x70000', '--size', '4096'])).toMatch(
      /r-x \(0xd\) on 1 page \(0x0000000000070000-0x0000000000070fff\)/,
    );

    const table = await ok(['memory', 'protections', 'ci-prot', '--vtl', '1']);
    expect(table).toMatch(/^partitions\/ci-prot: VTL 1 protections enabled; default mask rwx \(0xf\) outside the ranges; view generation \d+$/m);
    expect(table).toMatch(/^START PAGE\s+PAGES\s+GPA RANGE\s+MASK$/m);
    expect(table).toMatch(/^0x40\s+1\s+0x0000000000040000-0x0000000000040fff\s+r-- \(0x1\)$/m);
    expect(table).toMatch(/^0x50\s+4\s+0x0000000000050000-0x0000000000053fff\s+r-- \(0x1\)$/m);
    expect(table).toMatch(/^0x60\s+2\s+0x0000000000060000-0x0000000000061fff\s+rw- \(0x3\)$/m);
    expect(table).toMatch(/^0x70\s+1\s+0x0000000000070000-0x0000000000070fff\s+r-x \(0xd\)$/m);
    const j = await json(['memory', 'protections', 'ci-prot', '--vtl', '1']);
    expect(j).toMatchObject({ name, protectingVtl: 1, protectionEnabled: true, defaultMapFlags: 15, defaultMask: 'rwx' });
    expect(j.ranges[0]).toEqual({ pages: { startPage: String(0x40), pageCount: '1' }, mapFlags: 1, mask: 'r--' });
    expect(BigInt(j.viewGeneration)).toBe(BigInt(byGpa.viewGeneration) + 1n);

    // A VTL without EnableVtlProtection restricts nothing, and refuses protections (server error, exit 3).
    await h.client.partitions.createPartition({
      partitionId: 'ci-noprot',
      partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: 16n << 20n, maximumVtl: 1 }),
    });
    await h.client.vtl.enablePartitionVtl({ name: 'partitions/ci-noprot', targetVtl: 1 });
    expect(await ok(['memory', 'protections', 'ci-noprot', '--vtl', '1'])).toMatch(
      /^partitions\/ci-noprot: VTL 1 has not set EnableVtlProtection, so it restricts nothing/,
    );
    const denied = await cli(['memory', 'protect', 'ci-noprot', '--vtl', '1', '--flags', 'r', '--pages', '1:1']);
    expect(denied.code).toBe(3);
    expect(denied.stderr).toMatch(/^error: PERMISSION_DENIED HV_STATUS_ACCESS_DENIED: .*EnableVtlProtection/);
    // Beyond RAM in a single call: the server refuses it (nothing applied).
    const beyond = await cli(['memory', 'protect', 'ci-prot', '--vtl', '1', '--flags', 'r', '--gpa', '0x4000000', '--size', '4KiB']);
    expect(beyond.code).toBe(3);
    expect(beyond.stderr).toMatch(/^error: INVALID_ARGUMENT HV_STATUS_INVALID_PARAMETER: /);
  });

  test('large requests go in 4 GiB calls; a range beyond RAM is refused before any call', async () => {
    const c = h.client;
    const p = await c.partitions.createPartition({
      partitionId: 'ci-big',
      partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: 16n << 30n, maximumVtl: 1 }),
    });
    await c.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    await c.vtl.enableVpVtl({ name: `${p.name}/vps/0`, targetVtl: 1 });
    await c.vps.setVpRegisters({
      name: `${p.name}/vps/0`,
      vtl: 1,
      registers: [r64(pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))],
    });
    const r = await json(['memory', 'protect', 'ci-big', '--vtl', '1', '--flags', 'r', '--gpa', '0', '--size', '10GiB']);
    expect(r).toMatchObject({ calls: 3, pagesChanged: String(10 * 262144) });
    // Progress is drawn only on a TTY: piped stderr stays empty.
    const human = await cli(['memory', 'protect', 'ci-big', '--vtl', '1', '--flags', 'rw', '--gpa', '0', '--size', '12GiB']);
    expect(human.stdout).toMatch(/on 3145728 pages .* in 3 calls; view generation/);
    expect(human.stderr).toBe('');
    const prot = await c.intercepts.getVtlProtections({ name: p.name, protectingVtl: 1 });
    expect(prot.ranges).toEqual([{ pages: { startPage: 0n, pageCount: 3145728n }, mapFlags: 3 }]);
    const beyond = await cli(['memory', 'protect', 'ci-big', '--vtl', '1', '--flags', 'none', '--gpa', '0x200000000', '--size', '16GiB']);
    expect(beyond.code).toBe(2);
    expect(beyond.stderr).toMatch(/beyond the partition's memory \(16 GiB/);
    expect((await c.intercepts.getVtlProtections({ name: p.name, protectingVtl: 1 })).ranges).toHaveLength(1);
  });
});

describe('monitors', () => {
  test('a write on a protected page waits for `intercepts watch --reply allow --count 1`, which answers it', async () => {
    const { name, vp0 } = await setup('ci-watch');
    await ok(['memory', 'protect', 'ci-watch', '--vtl', '1', '--flags', 'r', '--pages', '0x40:1']);
    expect(await ok(['intercepts', 'route', 'ci-watch', 'monitor'])).toBe(
      'partitions/ci-watch: intercepts go to external monitors (route MONITOR): the VP waits at the instruction for an answer; intercepts waiting for a monitor wait until one answers (no deadline)\n',
    );
    const watch = new Child(['intercepts', 'watch', 'ci-watch', '--reply', 'allow', '--count', '1']);
    try {
      await watch.waitFor(/^subscribed to intercepts of partitions\/ci-watch: /m);
      const w = await h.client.guest.writeMemory({ name: vp0, gpa: PROTECTED, data: Buffer.from('allowed!') });
      expect(w.outcome).toMatchObject({ exception: 0, activeVtl: 0, partitionCrashed: false });
      expect(w.outcome?.intercept).toBeUndefined();
    } finally {
      expect(await watch.code()).toBe(0);
    }
    expect(watch.stderr).toBe('');
    const lines = watch.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(
      /^subscribed to intercepts of partitions\/ci-watch: read,write,execute; any VP, any VTL, any GPA; answering ALLOW; view generation \d+$/,
    );
    expect(lines[1]).toMatch(/^intercept (\d+)  vp 0  VTL 0  write  gpa 0x0000000000040000  len 8  rip 0x[0-9a-f]{16}  by VTL 1  generation \d+  needs reply$/);
    const id = /^intercept (\d+)/.exec(lines[1]!)![1];
    expect(lines[2]).toMatch(new RegExp(`^  reply ALLOW to intercept ${id}: APPLIED \\(allow\\); view generation \\d+$`));
    expect((await ram(name, PROTECTED, 8)).toString()).toBe('allowed!');
    expect(await ok(['intercepts', 'pending', 'ci-watch'])).toBe('no intercepts of partitions/ci-watch wait for an answer\n');

    // --json: one object per line (subscription, intercept with the HV_MESSAGE in hex, reply result);
    // SKIP of a read returns --skip-data; filters narrow the subscription.
    const jw = new Child([
      'intercepts',
      'watch',
      'ci-watch',
      '--json',
      '--vp',
      '0',
      '--vtl',
      '0',
      '--gpa-start',
      '0x40000',
      '--gpa-end',
      '0x41000',
      '--access',
      'r',
      '--reply',
      'skip',
      '--skip-data',
      '66616b65',
      '--count',
      '1',
    ]);
    let read: pb.ReadMemoryResponse;
    try {
      await jw.waitFor(/"subscription"/);
      await h.client.intercepts.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: 0, ranges: [{ startPage: 0x40n, pageCount: 1n }] });
      read = await h.client.guest.readMemory({ name: vp0, gpa: PROTECTED, length: 4 });
    } finally {
      expect(await jw.code()).toBe(0);
    }
    expect(Buffer.from(read.data).toString()).toBe('fake');
    const objs = jw.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(objs).toHaveLength(3);
    expect(objs[0]).toEqual({ name, subscription: { accessMask: 1, viewGeneration: expect.any(String) } });
    expect(objs[1].name).toBe(name);
    expect(objs[1].intercept).toMatchObject({
      vpIndex: 0,
      vtl: 0,
      protectingVtl: 1,
      accessType: 'HV_INTERCEPT_ACCESS_TYPE_READ',
      gpa: String(PROTECTED),
      length: 4,
      messageType: 0x80000001,
      needsReply: true,
      redelivered: false,
    });
    expect(objs[1].intercept.hvMessage).toMatch(/^01000080f0[0-9a-f]{502}$/); // HvMessageTypeGpaIntercept, 240-byte payload, 256 bytes
    expect(objs[2]).toMatchObject({
      name,
      action: 'INTERCEPT_ACTION_SKIP',
      replyResult: { interceptId: objs[1].intercept.interceptId, status: 'REPLY_STATUS_APPLIED', detail: 'skip' },
    });
  });

  test('unanswered intercepts: the CLI says the VP waits, gives up at --timeout (exit 4), pending lists them, a watcher without --reply leaves them, a later one answers', async () => {
    const { name } = await setup('ci-pending');
    await ok(['memory', 'protect', 'ci-pending', '--vtl', '1', '--flags', 'r', '--pages', '0x40:1']);
    await ok(['intercepts', 'route', 'ci-pending', 'monitor']);
    const w = await cli(['--timeout', '2500', 'memory', 'write', 'ci-pending', '0x40000', '4142', '--guest', '0']);
    expect(w.code).toBe(4);
    expect(w.stdout).toBe('');
    expect(w.stderr).toMatch(
      /^waiting: partitions\/ci-pending\/vps\/0 is suspended on intercept \d+ until a monitor answers \(route MONITOR\); e\.g\. vsmctl intercepts watch ci-pending --reply allow$/m,
    );
    expect(w.stderr).toMatch(
      /^error: DEADLINE_EXCEEDED: partitions\/ci-pending\/vps\/0 is still suspended on intercept (\d+), waiting for a monitor's answer; .*the intercept stays pending/m,
    );
    expect(w.stderr).not.toMatch(/not reachable/);
    const id = /still suspended on intercept (\d+)/.exec(w.stderr)![1]!;

    const pending = await ok(['intercepts', 'pending', 'ci-pending']);
    expect(pending).toMatch(/^1 intercept of partitions\/ci-pending waits for a monitor's answer:$/m);
    expect(pending).toMatch(/^ID\s+VP\s+VTL\s+ACCESS\s+GPA\s+LEN\s+RIP\s+BY VTL\s+GENERATION$/m);
    expect(pending).toMatch(new RegExp(`^${id}\\s+0\\s+0\\s+write\\s+0x0000000000040000\\s+2\\s+0x[0-9a-f]{16}\\s+1\\s+\\d+$`, 'm'));
    const pj = await json(['intercepts', 'pending', 'ci-pending']);
    expect(pj.intercepts).toHaveLength(1);
    expect(pj.intercepts[0]).toMatchObject({ interceptId: id, writeData: '4142', needsReply: true, accessType: 'HV_INTERCEPT_ACCESS_TYPE_WRITE' });
    expect(await ok(['vp', 'get', 'ci-pending', '0'])).toMatch(
      new RegExp(`^intercept suspended:\\s+yes, on intercept ${id} \\(waiting for a monitor's answer\\)$`, 'm'),
    );

    // Watching only: the intercept is printed (delivered first to a new monitor) and stays pending.
    const look = await ok(['intercepts', 'watch', 'ci-pending', '--count', '1']);
    expect(look).toMatch(/watching only, not answering/);
    expect(look).toMatch(new RegExp(`^intercept ${id}  vp 0  VTL 0  write  .*  needs reply$`, 'm'));
    expect((await json(['intercepts', 'pending', 'ci-pending'])).intercepts).toHaveLength(1);

    // The next monitor gets it again, flagged redelivered, and skips the write.
    const lines = (await ok(['intercepts', 'watch', 'ci-pending', '--reply', 'skip', '--count', '1', '--json']))
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(lines[1].intercept).toMatchObject({ interceptId: id, redelivered: true });
    expect(lines[2].replyResult).toMatchObject({ interceptId: id, status: 'REPLY_STATUS_APPLIED' });
    expect((await json(['intercepts', 'pending', 'ci-pending'])).intercepts).toEqual([]);
    expect((await ram(name, PROTECTED, 8)).toString()).toBe('original');
  });

  test('--check-generation: an answer on a changed view is refused (STALE_GENERATION), without it the answer applies', async () => {
    const { name, vp0 } = await setup('ci-gen');
    await ok(['memory', 'protect', 'ci-gen', '--vtl', '1', '--flags', 'r', '--pages', '0x40:1']);
    await ok(['intercepts', 'route', 'ci-gen', 'monitor']);
    const write = h.client.guest.writeMemory({ name: vp0, gpa: PROTECTED, data: Buffer.from('x') }, { deadlineMs: 30_000 });
    while (!(await h.client.intercepts.listPendingIntercepts({ name })).intercepts.length) await new Promise((r) => setTimeout(r, 20));
    // The view changes after the fault (another protection change).
    await ok(['memory', 'protect', 'ci-gen', '--vtl', '1', '--flags', 'r', '--pages', '0x41:1']);
    const stale = await ok(['intercepts', 'watch', 'ci-gen', '--reply', 'retry', '--check-generation', '--count', '1']);
    expect(stale).toMatch(/^  reply RETRY to intercept \d+: STALE_GENERATION/m);
    expect((await h.client.intercepts.listPendingIntercepts({ name })).intercepts).toHaveLength(1);
    const allowed = await ok(['intercepts', 'watch', 'ci-gen', '--reply', 'allow', '--count', '1']);
    expect(allowed).toMatch(/^  reply ALLOW to intercept \d+: APPLIED/m);
    expect((await write).outcome?.exception).toBe(0);
    expect((await ram(name, PROTECTED, 1)).toString()).toBe('x');
  });

  test('Ctrl-C ends a watch with exit 0; route BOTH delivers observe-only copies that are not answered', async () => {
    const { vp0 } = await setup('ci-both');
    await ok(['memory', 'protect', 'ci-both', '--vtl', '1', '--flags', 'r', '--pages', '0x40:1']);
    const both = await json(['intercepts', 'route', 'ci-both', 'both']);
    expect(both).toEqual({ name: 'partitions/ci-both', route: 'INTERCEPT_ROUTE_BOTH', deadlineAction: 'INTERCEPT_ACTION_UNSPECIFIED' });
    const watch = new Child(['intercepts', 'watch', 'ci-both', '--reply', 'crash']);
    try {
      await watch.waitFor(/^subscribed/m);
      const w = await h.client.guest.writeMemory({ name: vp0, gpa: PROTECTED, data: Buffer.from('x') });
      expect(w.outcome?.intercept?.protectingVtl).toBe(1);
      await watch.waitFor(/observe only$/m);
    } finally {
      watch.proc.kill('SIGINT');
    }
    expect(await watch.code()).toBe(0);
    expect(watch.stdout).not.toMatch(/reply/);
    expect((await h.client.partitions.getPartition({ name: 'partitions/ci-both' })).state).toBe(pb.PartitionState.PARTITION_STATE_ACTIVE);
  });

  test('route: deadline policy in human and --json output', async () => {
    await setup('ci-route');
    const j = await json(['intercepts', 'route', 'ci-route', 'monitor', '--deadline-ms', '200', '--deadline-action', 'skip']);
    expect(j).toEqual({ name: 'partitions/ci-route', route: 'INTERCEPT_ROUTE_MONITOR', answerDeadlineMs: '200', deadlineAction: 'INTERCEPT_ACTION_SKIP' });
    expect(await ok(['intercepts', 'route', 'ci-route', 'monitor', '--deadline-ms', '1500', '--deadline-action', 'crash'])).toMatch(
      /route MONITOR.*; an intercept no monitor answered within 1500 ms gets CRASH\n$/,
    );
    expect(await ok(['intercepts', 'route', 'partitions/ci-route', 'higher-vtl'])).toMatch(
      /^partitions\/ci-route: intercepts go to the protecting VTL \(route HIGHER_VTL\): the message goes to its SINT0 and the VP enters it; /,
    );
  });
});

describe('guest accesses and VtlReturn', () => {
  test('memory exec; intercept notices on exec/write; vtl return reports resumed_access', async () => {
    const { name } = await setup('ci-exec');
    expect(await ok(['memory', 'exec', 'ci-exec', '0', '0x1000', '4'])).toMatch(
      /^fetched 4 bytes at 0x0000000000001000 as VP 0 \(VTL 0\): 0f 01 (d9|c1) c3\n$/,
    );
    const plain = await json(['memory', 'exec', 'ci-exec', '0', '0x40000']);
    expect(plain).toMatchObject({
      name: 'partitions/ci-exec/vps/0',
      gpa: String(PROTECTED),
      length: 16,
      data: Buffer.from('original').toString('hex') + '00'.repeat(8),
      outcome: { exception: 'X64_EXCEPTION_UNSPECIFIED', activeVtl: 0 },
    });

    // No execute on page 0x40 (route HIGHER_VTL, the default): the fetch intercepts and VP0 enters VTL1.
    await ok(['memory', 'protect', 'ci-exec', '--vtl', '1', '--flags', 'rw', '--pages', '0x40:1']);
    const ex = await ok(['memory', 'exec', 'ci-exec', '0', '0x40000', '2']);
    expect(ex).toMatch(/^instruction fetch at 0x0000000000040000 by VP 0: INTERCEPTED; nothing fetched$/m);
    expect(ex).toMatch(/^  intercept (\d+): execute at 0x0000000000040000 refused by VTL 1's protection$/m);
    expect(ex).toMatch(
      /^  VP 0 entered VTL 1 \(entry reason INTERRUPT\) with the intercept message in its SINT0; VTL 1's VtlReturn retries the access \(RIP unchanged\) or skips it \(RIP moved\)$/m,
    );
    const exId = /intercept (\d+): execute/.exec(ex)![1];
    // VTL1 lifts the protection and returns: the fetch is retried and completes.
    await ok(['memory', 'protect', 'ci-exec', '--vtl', '1', '--flags', 'rwx', '--pages', '0x40:1']);
    expect(await ok(['vtl', 'return', 'ci-exec', '0'])).toBe(
      `VtlReturn (hypercall page +0x26): switched VTL 1 -> VTL 0\nresumed access (intercept ${exId}): retried and completed; returned 2 bytes: 6f72\n`,
    );

    // A guest write on a read-only page: the notice says so; VtlReturn without a change intercepts again.
    await ok(['memory', 'protect', 'ci-exec', '--vtl', '1', '--flags', 'r', '--pages', '0x40:1']);
    const wr = await cli(['memory', 'write', 'ci-exec', '0x40004', 'aabb', '--guest', '0']);
    expect(wr.code).toBe(0);
    expect(wr.stdout).toMatch(
      /^guest write at 0x0000000000040004: INTERCEPTED; 0 of 2 bytes written before it\n  intercept \d+: write at 0x0000000000040004 refused by VTL 1's protection\n  VP 0 entered VTL 1 \(entry reason INTERRUPT\)/,
    );
    const again = await json(['vtl', 'return', 'ci-exec', '0']);
    expect(again.outcome.resumedAccess).toMatchObject({ completed: false, skipped: false, interceptedAgain: true });
    expect(again.outcome.intercept).toMatchObject({
      protectingVtl: 1,
      gpa: String(PROTECTED + 4n),
      accessType: 'HV_INTERCEPT_ACCESS_TYPE_WRITE',
      heldBack: false,
    });
    expect(again.outcome.intercept.hvMessage).toHaveLength(512);
    // Human form of the same situation.
    const text = await ok(['vtl', 'return', 'ci-exec', '0']);
    expect(text).toMatch(
      /^resumed access \(intercept \d+\): retried and intercepted again\n  intercept \d+: write at 0x0000000000040004 refused by VTL 1's protection\n  VP 0 entered VTL 1/m,
    );
    // A guest read through VTL1 (the VP is in VTL1 now) is not restricted by VTL1's own mask.
    expect((await json(['memory', 'read', 'ci-exec', '0x40000', '8', '--guest', '0'])).data).toBe(Buffer.from('original').toString('hex'));
    expect((await ram(name, PROTECTED, 8)).toString()).toBe('original');
  });
});

describe('SynIC', () => {
  test('post, state, signal; a full SINT0 refuses posts (exit 3) and holds back a faulting VP', async () => {
    const { name, vp0 } = await setup('ci-synic');
    expect(await ok(['synic', 'post', 'ci-synic', '0', '--vtl', '1', '--sint', '0', '--type', '0x100', '--payload', '0102'])).toBe(
      'posted message type 0x00000100 (2 bytes) to SINT0 of partitions/ci-synic/vps/0 VTL 1: delivered into the SIM slot\n',
    );
    const slot = Buffer.from((await h.client.memory.readGpa({ name, gpa: SIMP_GPA, length: 18, vtlView: 1 })).data);
    expect([slot.readUInt32LE(0), slot[4], slot[16], slot[17]]).toEqual([0x100, 2, 1, 2]);
    // The message raised VTL 1's SINT0 interrupt, a secure interrupt: VP 0 left VTL 0 for VTL 1 (TLFS VTL
    // interrupt management, #16). VTL 1 raises its TPR to block further interrupts and returns, so the
    // VP stays in VTL 0 while VTL 1's queue fills.
    expect((await json(['vp', 'get', 'ci-synic', '0'])).vtlStatus?.activeVtl ?? 0).toBe(1);
    await ok(['msr', 'write', 'ci-synic', '0', '0x40000072', '0xf']);
    await ok(['vtl', 'return', 'ci-synic', '0']);
    expect((await json(['vp', 'get', 'ci-synic', '0'])).vtlStatus?.activeVtl ?? 0).toBe(0);
    const queued = await json(['synic', 'post', 'ci-synic', '0', '--vtl', '1', '--sint', '0', '--type', '257']);
    expect(queued).toEqual({ name: vp0, vtl: 1, sint: 0, messageType: 257, payload: '', delivered: false });

    const st = await ok(['synic', 'state', 'ci-synic', '0', '--vtl', '1']);
    expect(st).toMatch(/^partitions\/ci-synic\/vps\/0 VTL 1: 1 message queued behind SIM slots \(at most 16 per SINT\)$/m);
    expect(st).toMatch(/^SINT\s+0\s+1\s+2\s+.*\s+15$/m);
    expect(st).toMatch(/^QUEUED\s+1\s+0\s+0\s/m);
    expect(await json(['synic', 'state', 'ci-synic', '0', '--vtl', '1'])).toEqual({ name: vp0, vtl: 1, queued: [1, ...Array(15).fill(0)] });

    expect(await ok(['synic', 'signal', 'ci-synic', '0', '--vtl', '1', '--sint', '0', '--flag', '13'])).toBe(
      'event flag 13 of SINT0 (partitions/ci-synic/vps/0 VTL 1): newly set (an interrupt would be raised)\n',
    );
    expect((await json(['synic', 'signal', 'ci-synic', '0', '--vtl', '1', '--sint', '0', '--flag', '13'])).newlySet).toBe(false);
    const masked = await cli(['synic', 'signal', 'ci-synic', '0', '--vtl', '1', '--sint', '3', '--flag', '1']);
    expect(masked.code).toBe(3);
    expect(masked.stderr).toMatch(/^error: FAILED_PRECONDITION HV_STATUS_INVALID_SYNIC_STATE: /);

    // Fill SINT0's queue (16), then one more is refused; a write on a protected page is held back.
    for (let i = 2; i <= 16; i++) await h.client.synic.postMessage({ name: vp0, vtl: 1, sint: 0, messageType: 0x100 + i, payload: Buffer.alloc(0) });
    const full = await cli(['synic', 'post', 'ci-synic', '0', '--vtl', '1', '--sint', '0', '--type', '0x200']);
    expect(full.code).toBe(3);
    expect(full.stderr).toMatch(/^error: RESOURCE_EXHAUSTED HV_STATUS_INSUFFICIENT_BUFFERS: /);
    expect((await json(['synic', 'state', 'ci-synic', '0', '--vtl', '1'])).queued[0]).toBe(16);
    await ok(['memory', 'protect', 'ci-synic', '--vtl', '1', '--flags', 'r', '--pages', '0x40:1']);
    const held = await ok(['memory', 'write', 'ci-synic', '0x40000', '09', '--guest', '0']);
    expect(held).toMatch(/^guest write at 0x0000000000040000: INTERCEPTED; 0 of 1 bytes written before it$/m);
    expect(held).toMatch(
      /^  held back: VTL 1's SINT0 queue is full; VP 0 stays at the instruction in VTL 0 \(nothing is lost\): repeat the access once VTL 1 has drained its SIM slot$/m,
    );
    expect((await ram(name, PROTECTED, 1)).toString()).toBe('o');
  });
});

describe('map', () => {
  test('protections per protecting VTL: grid letters, legend, ranges, --json, --vtl', async () => {
    await setup('ci-map');
    await ok(['memory', 'protect', 'ci-map', '--vtl', '1', '--flags', 'r', '--pages', '0x40:1']);
    await ok(['memory', 'protect', 'ci-map', '--vtl', '1', '--flags', 'rw', '--pages', '0x42:2']);
    await ok(['memory', 'protect', 'ci-map', '--vtl', '1', '--flags', 'rx', '--pages', '0x44:1']);
    await ok(['memory', 'protect', 'ci-map', '--vtl', '1', '--flags', 'none', '--pages', '0x45:1']);
    const text = await ok(['map', 'ci-map', '--from', '0x40000', '--pages', '8']);
    expect(text).toMatch(
      /^        protections: \. unrestricted  r read only  w read\/write, no execute  x read\/execute, no write  - no access  u user execute only \(MBEC\)$/m,
    );
    expect(text).toMatch(/^VTL 1 protections \(what VTL 1 allows lower VTLs\)\n  0x0000000000040000  r\.wwx-\.\.$/m);
    expect(text).toMatch(/^VTL 0 view\n  0x0000000000040000  #\.\.\.\.\.\.\.$/m);
    expect(text).toMatch(/^protected ranges in the window \(protecting VTL, GPAs, pages, mask\):$/m);
    expect(text).toMatch(/^  VTL 1  0x0000000000042000-0x0000000000043fff  2 pages  rw- \(0x3\)$/m);
    expect(text).toMatch(/^  VTL 1  0x0000000000045000-0x0000000000045fff  1 page  --- \(0x0\)$/m);
    expect(text).toMatch(/^5 of 8 pages restricted by VTL 1$/m);

    const j = await json(['map', 'ci-map', '--from', '0x40000', '--pages', '8']);
    expect(j.protections).toHaveLength(1);
    expect(j.protections[0]).toMatchObject({ protectingVtl: 1, protectionEnabled: true, defaultMapFlags: 15, defaultMask: 'rwx' });
    expect(j.protections[0].restrictedPages).toEqual([0x40000, 0x42000, 0x43000, 0x44000, 0x45000].map(String));
    expect(j.protections[0].ranges[0]).toEqual({ pages: { startPage: String(0x40), pageCount: '1' }, mapFlags: 1, mask: 'r--' });

    // --vtl 0: the protections that apply to VTL 0 (VTL 1's); --vtl 1: none restrict VTL 1.
    expect(await ok(['map', 'ci-map', '--vtl', '0', '--from', '0x40000', '--pages', '8'])).toMatch(/^VTL 1 protections/m);
    const v1 = await ok(['map', 'ci-map', '--vtl', '1', '--from', '0x40000', '--pages', '8']);
    expect(v1).not.toMatch(/protections/);
    expect((await json(['map', 'ci-map', '--vtl', '1', '--pages', '8'])).protections).toEqual([]);
  });
});

describe('usage errors exit 2', () => {
  test('new commands', async () => {
    await setup('ci-usage');
    const cases: [string[], RegExp][] = [
      [['intercepts', 'route', 'ci-usage', 'sideways'], /Allowed choices are higher-vtl, monitor, both/],
      [['intercepts', 'route', 'ci-usage'], /missing required argument 'route'/],
      [['intercepts', 'route', 'ci-usage', 'monitor', '--deadline-ms', '100'], /--deadline-ms and --deadline-action go together/],
      [['intercepts', 'route', 'ci-usage', 'monitor', '--deadline-ms', '100', '--deadline-action', 'later'], /Allowed choices are allow, skip, retry, crash/],
      [['intercepts', 'route', 'ci-usage', 'monitor', '--deadline-ms', '0', '--deadline-action', 'skip'], /--deadline-ms must be at least 1/],
      [['intercepts', 'watch', 'ci-usage', '--skip-data', '00'], /--skip-data goes with --reply skip/],
      [['intercepts', 'watch', 'ci-usage', '--check-generation'], /--check-generation goes with --reply/],
      [['intercepts', 'watch', 'ci-usage', '--access', 'q'], /--access "q"/],
      [['intercepts', 'watch', 'ci-usage', '--reply', 'maybe'], /Allowed choices are allow, skip, retry, crash/],
      [['intercepts', 'watch', 'ci-usage', '--gpa-start', '0x2000', '--gpa-end', '0x1000'], /--gpa-end must be above --gpa-start/],
      [['intercepts', 'watch', 'ci-usage', '--count', '0'], /--count must be at least 1/],
      [['memory', 'protect', 'ci-usage', '--vtl', '1', '--pages', '1:1'], /required option '--flags <flags>' not specified/],
      [['memory', 'protect', 'ci-usage', '--flags', 'r', '--pages', '1:1'], /required option '--vtl <n>' not specified/],
      [['memory', 'protect', 'ci-usage', '--vtl', '1', '--flags', 'rwz', '--pages', '1:1'], /--flags "rwz": use letters r, w, x/],
      [['memory', 'protect', 'ci-usage', '--vtl', '1', '--flags', 'r'], /give --gpa GPA --size SIZE, or --pages START:COUNT/],
      [['memory', 'protect', 'ci-usage', '--vtl', '1', '--flags', 'r', '--gpa', '0x1000'], /give --gpa GPA --size SIZE, or --pages START:COUNT/],
      [['memory', 'protect', 'ci-usage', '--vtl', '1', '--flags', 'r', '--pages', '0x40'], /--pages "0x40" is not START:COUNT/],
      [['memory', 'protect', 'ci-usage', '--vtl', '1', '--flags', 'r', '--pages', '0x40:0'], /the count must be at least 1/],
      [['memory', 'protect', 'ci-usage', '--vtl', '1', '--flags', 'r', '--gpa', '0x1001', '--size', '4KiB'], /--gpa 0x1001 is not page aligned/],
      [['memory', 'protect', 'ci-usage', '--vtl', '1', '--flags', 'r', '--gpa', '0x1000', '--size', '100'], /--size 100 is not a whole number of 4 KiB pages/],
      [
        ['memory', 'protect', 'ci-usage', '--vtl', '1', '--flags', 'r', '--gpa', '0x1000', '--size', '4KiB', '--pages', '1:1'],
        /--pages excludes --gpa\/--size/,
      ],
      [['memory', 'protect', 'ci-usage', '--vtl', '0', '--flags', 'r', '--pages', '1:1'], /--vtl must be 1 or higher/],
      [['memory', 'protections', 'ci-usage'], /required option '--vtl <n>' not specified/],
      [['memory', 'exec', 'ci-usage', '0', '0x1000', '17'], /length 17 is too large/],
      [['memory', 'exec', 'ci-usage', '0', '0x1000', '0'], /length must be 1\.\.16/],
      [['synic', 'post', 'ci-usage', '0', '--vtl', '1', '--sint', '0', '--type', '0x80000001'], /message types are non-zero with bit 31 clear/],
      [['synic', 'post', 'ci-usage', '0', '--vtl', '1', '--sint', '0', '--type', '1', '--payload', '00'.repeat(241)], /--payload has 241 bytes; at most 240/],
      [['synic', 'post', 'ci-usage', '0', '--vtl', '1', '--sint', '16', '--type', '1'], /--sint 16 is too large/],
      [['synic', 'post', 'ci-usage', '0', '--sint', '0', '--type', '1'], /required option '--vtl <n>' not specified/],
      [['synic', 'signal', 'ci-usage', '0', '--vtl', '1', '--sint', '0', '--flag', '2048'], /--flag 2048 is too large/],
      [['synic', 'state', 'ci-usage', '0'], /required option '--vtl <n>' not specified/],
    ];
    const runs = await Promise.all(cases.map(([args]) => cli(args)));
    cases.forEach(([args, msg], i) => {
      const r = runs[i]!;
      expect({ args, code: r.code }).toEqual({ args, code: 2 });
      expect({ args, stderr: r.stderr }).toEqual({ args, stderr: expect.stringMatching(msg) });
    });
  });

  test('server errors exit 3, an unreachable server exits 4', async () => {
    const missing = await Promise.all([
      cli(['intercepts', 'pending', 'ci-none']),
      cli(['intercepts', 'watch', 'ci-none']),
      cli(['memory', 'protections', 'ci-none', '--vtl', '1']),
      cli(['synic', 'state', 'ci-none', '0', '--vtl', '0']),
    ]);
    for (const r of missing) {
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(/^error: NOT_FOUND HV_STATUS_INVALID_PARTITION_ID: /);
    }
    const down = await Promise.all([
      vsmctl(['--address', '127.0.0.1:1', 'intercepts', 'watch', 'x']),
      vsmctl(['--address', '127.0.0.1:1', 'memory', 'protect', 'x', '--vtl', '1', '--flags', 'r', '--pages', '1:1']),
      vsmctl(['--address', '127.0.0.1:1', 'synic', 'state', 'x', '0', '--vtl', '1']),
    ]);
    for (const r of down) {
      expect(r.code).toBe(4);
      expect(r.stderr).toMatch(/not reachable/);
    }
  });
});
