// vsmctl run / console / load / start|stop|pause|resume / connections, the compiled CLI as a child
// process. Against the emulator: the guest commands fail with the server's reason (exit 3) and leave
// no partition behind; connections work. Against a scripted guest backend (the emulator with the
// ExecutionService answered by a tiny fake guest whose behaviour the image names): run copies the
// console, exits with QEMU's debug-exit status, 124 on --timeout, 125 on a crash, 130 on Ctrl-C, and
// deletes its partition in every case. (Real guests on KVM are the agent's tests.)
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { HvError, HvStatus, type Partition } from '@vsm/core';
import { connect, pb, type VsmClient } from '@vsm/client';
import { CoreBackend, type RunningServer, type StreamSink, startServer } from '@vsm/vsm-v1';
import { type ConsoleSource, type GuestRunEnd, type GuestRunState, checkLoadRequest, followConsole, runFields } from '@vsm/vsm-v1/backends/execution';
import { type Harness, startHarness } from '../support/server';
import { waitFor } from '../support/wait';
import { CLI, ROOT, type Run, assertBuilt, childEnv, vsmctl } from './support';
import { debugExitStatus, runArguments } from '../../clients/cli/src/commands/execution';

jest.setTimeout(60_000);

/** A console hub as the platform's (offsets, history, watchers, end). */
class Hub implements ConsoleSource {
  private readonly chunks: { offset: bigint; data: Uint8Array }[] = [];
  private readonly watchers = new Set<{ onData: (c: { offset: bigint; data: Uint8Array }) => void; onEnd: () => void }>();
  written = 0n;
  ended = false;
  get oldestKept(): bigint {
    return 0n;
  }
  push(text: string): void {
    const chunk = { offset: this.written, data: Buffer.from(text) };
    this.chunks.push(chunk);
    this.written += BigInt(chunk.data.length);
    for (const w of [...this.watchers]) w.onData(chunk);
  }
  end(): void {
    this.ended = true;
    for (const w of [...this.watchers]) w.onEnd();
    this.watchers.clear();
  }
  history(offset = 0n) {
    return this.chunks
      .filter((c) => c.offset + BigInt(c.data.length) > offset)
      .map((c) => (c.offset >= offset ? c : { offset, data: c.data.subarray(Number(offset - c.offset)) }));
  }
  subscribe(onData: (c: { offset: bigint; data: Uint8Array }) => void, onEnd: () => void): () => void {
    if (this.ended) {
      onEnd();
      return () => {};
    }
    const w = { onData, onEnd };
    this.watchers.add(w);
    return () => this.watchers.delete(w);
  }
}

/**
 * The scripted guest: the image's text says what it does when started — `exit N` (prints a line,
 * then writes N to the debug-exit port), `crash` (prints, then triple-faults), `hang` (prints, then
 * runs until stopped).
 */
class FakeGuest {
  state: GuestRunState = 'loaded';
  endInfo: GuestRunEnd | undefined;
  readonly hub = new Hub();
  constructor(readonly script: string) {}
  start(): void {
    this.state = 'running';
    this.hub.push(`hello from ${this.script}\n`);
    const exit = /^exit (\d+)$/.exec(this.script);
    if (exit)
      setImmediate(() =>
        this.finish({
          state: 'stopped',
          exitCode: Number(exit[1]),
          reason: `the guest wrote ${exit[1]} to the debug-exit port 0xf4`,
          vpIndex: 0,
          at: new Date(),
        }),
      );
    else if (this.script === 'crash') setImmediate(() => this.finish({ state: 'crashed', reason: 'triple fault', vpIndex: 1, at: new Date() }));
  }
  finish(e: GuestRunEnd): void {
    if (this.endInfo) return;
    this.endInfo = e;
    this.state = e.state;
    this.hub.end();
  }
}

class ScriptedGuestBackend extends CoreBackend {
  readonly guests = new Map<string, FakeGuest>();
  readonly stopped: string[] = [];
  private guest(name: string): FakeGuest {
    this.partition(name);
    const g = this.guests.get(name);
    if (!g) throw new HvError(HvStatus.HV_STATUS_INVALID_PARTITION_STATE, `${name} has no guest loaded`);
    return g;
  }
  override async loadGuestImage(r: pb.LoadGuestImageRequest): Promise<pb.LoadGuestImageResponse> {
    this.partition(r.name);
    const l = checkLoadRequest(r);
    this.guests.set(r.name, new FakeGuest(Buffer.from(l.image).toString().trim()));
    return {
      format: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_ELF64,
      entryPoint: 0x100000n,
      entryMode: pb.GuestEntryMode.GUEST_ENTRY_MODE_LONG64,
      segments: [{ gpa: 0x100000n, size: BigInt(l.image.length) }],
      bootInfoGpa: undefined,
    };
  }
  override async startPartition(r: pb.StartPartitionRequest): Promise<pb.Partition> {
    this.guest(r.name).start();
    return this.getPartition(r);
  }
  override async stopPartition(r: pb.StopPartitionRequest): Promise<pb.Partition> {
    this.stopped.push(r.name);
    this.guest(r.name).finish({ state: 'stopped', reason: 'stopped by StopPartition', at: new Date() });
    return this.getPartition(r);
  }
  override async streamConsole(r: pb.StreamConsoleRequest, sink: StreamSink<pb.StreamConsoleResponse>, signal: AbortSignal): Promise<void> {
    const g = this.guest(r.name);
    await followConsole(g.hub, r.fromOffset, () => g.endInfo, sink, signal);
  }
  override async deletePartition(r: pb.DeletePartitionRequest): Promise<pb.DeletePartitionResponse> {
    const res = await super.deletePartition(r);
    this.guests.get(r.name)?.finish({ state: 'stopped', reason: 'the partition was deleted', at: new Date() });
    this.guests.delete(r.name);
    return res;
  }
  protected override runFieldsOf(p: Partition) {
    const g = this.guests.get(`partitions/${p.id}`);
    return g ? runFields(g.state, g.endInfo) : super.runFieldsOf(p);
  }
}

let emu: Harness;
let scripted: { server: RunningServer; backend: ScriptedGuestBackend; client: VsmClient };
let dir: string;
beforeAll(async () => {
  assertBuilt();
  emu = await startHarness();
  const backend = new ScriptedGuestBackend();
  const server = await startServer({ listen: '127.0.0.1:0', backend, logger: pino({ level: 'silent' }), shutdownGraceMs: 500 });
  scripted = { server, backend, client: connect(server.address) };
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsmctl-run-'));
});
afterAll(async () => {
  scripted?.client.close();
  await scripted?.server.shutdown('test');
  await emu?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** An image file whose text is the scripted guest's behaviour. */
function image(script: string): string {
  const f = path.join(dir, `${script.replace(/\W+/g, '-')}.img`);
  fs.writeFileSync(f, script);
  return f;
}
const onScripted = (args: string[]): Promise<Run> => vsmctl(['--address', scripted.server.address, ...args]);
const onEmulator = (args: string[]): Promise<Run> => vsmctl(['--address', emu.address, ...args]);
const partitionsOf = async (c: VsmClient) => (await c.partitions.listPartitions({})).partitions.map((p) => p.name);

describe('in process', () => {
  test("run's --timeout (seconds) is its own; the global --timeout before the command word stays the per-call deadline", () => {
    expect(runArguments(['run', 'img', '--timeout', '5'])).toEqual(['run', 'img', '--guest-timeout', '5']);
    expect(runArguments(['--timeout', '3000', '--address', 'h:1', 'run', 'img', '--timeout=2.5'])).toEqual([
      '--timeout',
      '3000',
      '--address',
      'h:1',
      'run',
      'img',
      '--guest-timeout=2.5',
    ]);
    expect(runArguments(['--json', 'console', 'x', '--timeout', '5'])).toEqual(['--json', 'console', 'x', '--timeout', '5']);
    expect(runArguments(['--address', 'run', 'partitions', 'list', '--timeout', '5'])).toEqual(['--address', 'run', 'partitions', 'list', '--timeout', '5']);
    expect(runArguments(['run', 'img', '--', '--timeout'])).toEqual(['run', 'img', '--', '--timeout']);
  });
  test('debug-exit status as QEMU isa-debug-exit: (code << 1) | 1, low 8 bits', () => {
    expect([0, 1, 2, 63, 127, 128, 0xffffffff].map(debugExitStatus)).toEqual([1, 3, 5, 127, 255, 1, 255]);
  });
});

describe('vsmctl run (scripted guest)', () => {
  test.each([
    [0, 1],
    [1, 3],
    [63, 127],
    [0x80, 1],
  ])('a guest that writes %i to the debug-exit port: exit status %i, console on stdout, partition deleted', async (code, status) => {
    const r = await onScripted(['run', image(`exit ${code}`), '--name', `exit-${code}`, '--vps', '2', '--memory', '64MiB']);
    expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({ code: status, stdout: `hello from exit ${code}\n`, stderr: '' });
    expect(await partitionsOf(scripted.client)).toEqual([]);
  });

  test('a crash: exit 125 with the reason on stderr', async () => {
    const r = await onScripted(['run', image('crash')]);
    expect(r.code).toBe(125);
    expect(r.stdout).toBe('hello from crash\n');
    expect(r.stderr).toMatch(/the guest crashed: triple fault \(VP 1\)/);
    expect(await partitionsOf(scripted.client)).toEqual([]);
  });

  test('--timeout: the guest is stopped, exit 124, partition deleted', async () => {
    const r = await onScripted(['run', image('hang'), '--name', 'hangs', '--timeout', '0.5']);
    expect(r.code).toBe(124);
    expect(r.stdout).toBe('hello from hang\n');
    expect(r.stderr).toMatch(/timeout: the guest ran for 0.5 s \(--timeout\) and was stopped/);
    expect(scripted.backend.stopped).toContain('partitions/hangs');
    expect(await partitionsOf(scripted.client)).toEqual([]);
  });

  test('Ctrl-C: exit 130, partition deleted', async () => {
    const child = spawn(process.execPath, [CLI, '--address', scripted.server.address, 'run', image('hang'), '--name', 'interrupted'], {
      cwd: ROOT,
      env: childEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    await waitFor('the guest console on stdout', () => stdout.includes('hello from hang'));
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(stderr).toMatch(/interrupted/);
    expect(await partitionsOf(scripted.client)).toEqual([]);
  });

  test('bad input: unknown device (server), missing or empty image, flat options (usage); nothing left behind', async () => {
    const dev = await onScripted(['run', image('exit 0'), '--device', 'virtio-gpu']);
    expect(dev.code).toBe(3);
    expect(dev.stderr).toMatch(/INVALID_ARGUMENT HV_STATUS_INVALID_PARAMETER: unknown device "virtio-gpu"/);
    const missing = await onScripted(['run', path.join(dir, 'nope.img')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/cannot read image/);
    fs.writeFileSync(path.join(dir, 'empty.img'), '');
    expect((await onScripted(['run', path.join(dir, 'empty.img')])).code).toBe(2);
    const flat = await onScripted(['run', image('exit 0'), '--load-gpa', '0x1000']);
    expect(flat.code).toBe(2);
    expect(flat.stderr).toMatch(/--format flat/);
    expect((await onScripted(['run', image('exit 0'), '--timeout', '-1'])).code).toBe(2);
    expect(await partitionsOf(scripted.client)).toEqual([]);
  });
});

describe('vsmctl console, load, start, stop (scripted guest)', () => {
  test('load + start + console follows the output to the end; stop of an ended guest is not an error', async () => {
    await scripted.client.partitions.createPartition({ partitionId: 'follow', partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: 64n << 20n }) });
    const loaded = await onScripted(['load', 'follow', image('exit 5'), '--json']);
    expect(loaded.code).toBe(0);
    expect(JSON.parse(loaded.stdout)).toMatchObject({ name: 'partitions/follow', format: 'elf64', entryPoint: '1048576', entryMode: 'long64' });
    const started = await onScripted(['start', 'follow', '--json']);
    expect(started.code).toBe(0);
    expect(JSON.parse(started.stdout)).toMatchObject({ name: 'partitions/follow' });
    const con = await onScripted(['console', 'follow']);
    expect(con).toMatchObject({ code: 0, stdout: 'hello from exit 5\n' });
    expect(con.stderr).toMatch(/the guest stopped with exit code 0x5/);
    const jsonCon = await onScripted(['console', 'follow', '--json']);
    expect(
      jsonCon.stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l)),
    ).toEqual([{ offset: '0', text: 'hello from exit 5\n' }, { end: expect.objectContaining({ state: 'stopped', exitCode: 5, vpIndex: 0 }) }]);
    const stopped = await onScripted(['stop', 'follow']);
    expect(stopped).toMatchObject({ code: 0 });
    expect(stopped.stdout).toMatch(/^partitions\/follow: stopped \(exit code 0x5: the guest wrote 5 to the debug-exit port 0xf4\)/);
    await scripted.client.partitions.deletePartition({ name: 'partitions/follow' });
  });
});

describe('against the emulator', () => {
  test('run: FAILED_PRECONDITION with the reason (exit 3), the partition it created is deleted', async () => {
    const r = await onEmulator(['run', image('exit 0'), '--name', 'on-emu', '--vps', '2']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/FAILED_PRECONDITION GUEST_EXECUTION_UNSUPPORTED: the emulator does not execute guest code/);
    expect(await partitionsOf(emu.client)).not.toContain('partitions/on-emu');
  });

  test('start, stop, pause, resume, console, load: the reason, exit 3; no such partition: exit 3 NOT_FOUND', async () => {
    await emu.client.partitions.createPartition({ partitionId: 'ctl', partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: 64n << 20n }) });
    for (const verb of ['start', 'stop', 'pause', 'resume', 'console']) {
      const r = await onEmulator([verb, 'ctl']);
      expect({ verb, code: r.code }).toEqual({ verb, code: 3 });
      expect(r.stderr).toMatch(/FAILED_PRECONDITION GUEST_EXECUTION_UNSUPPORTED/);
    }
    const load = await onEmulator(['load', 'ctl', image('exit 0')]);
    expect(load.code).toBe(3);
    const none = await onEmulator(['start', 'nope']);
    expect(none.code).toBe(3);
    expect(none.stderr).toMatch(/NOT_FOUND HV_STATUS_INVALID_PARTITION_ID/);
    await emu.client.partitions.deletePartition({ name: 'partitions/ctl' });
  });

  test('connections create, list, delete (human and --json); duplicates and bad ids', async () => {
    await emu.client.partitions.createPartition({
      partitionId: 'conns',
      partition: pb.Partition.fromPartial({ vpCount: 2, memoryBytes: 64n << 20n, maximumVtl: 1 }),
    });
    const c1 = await onEmulator(['connections', 'create', 'conns', '0x10', '--kind', 'message', '--vp', '1', '--sint', '2']);
    expect(c1).toMatchObject({ code: 0, stdout: 'created message connection 0x10 -> VP 1 VTL 0 SINT2 in partitions/conns\n' });
    const c2 = await onEmulator([
      'connections',
      'create',
      'conns',
      '17',
      '--kind',
      'event',
      '--vp',
      '0',
      '--sint',
      '3',
      '--vtl',
      '1',
      '--flag-number',
      '4',
      '--flag-count',
      '2',
      '--json',
    ]);
    expect(JSON.parse(c2.stdout)).toEqual({ connectionId: 17, kind: 'event', vpIndex: 0, sint: 3, vtl: 1, flagNumber: 4, flagCount: 2 });
    const dup = await onEmulator(['connections', 'create', 'conns', '16', '--kind', 'event', '--vp', '0', '--sint', '3']);
    expect(dup.code).toBe(3);
    expect(dup.stderr).toMatch(/ALREADY_EXISTS HV_STATUS_OBJECT_IN_USE/);
    expect((await onEmulator(['connections', 'create', 'conns', '0x1000000', '--kind', 'event', '--vp', '0', '--sint', '3'])).code).toBe(2);
    expect((await onEmulator(['connections', 'create', 'conns', '5', '--kind', 'port', '--vp', '0', '--sint', '3'])).code).toBe(2);
    const list = await onEmulator(['connections', 'list', 'conns']);
    expect(list.stdout.split('\n')[0]).toMatch(/^ID\s+KIND\s+VP\s+VTL\s+SINT\s+FLAGS$/);
    expect(list.stdout).toMatch(/0x10\s+message\s+1\s+0\s+2\s+-/);
    expect(list.stdout).toMatch(/0x11\s+event\s+0\s+1\s+3\s+4\.\.5/);
    expect((await onEmulator(['connections', 'delete', 'conns', '16'])).code).toBe(0);
    const gone = await onEmulator(['connections', 'delete', 'conns', '16']);
    expect(gone.code).toBe(3);
    expect(gone.stderr).toMatch(/NOT_FOUND HV_STATUS_INVALID_CONNECTION_ID/);
    expect(
      JSON.parse((await onEmulator(['connections', 'list', 'conns', '--json'])).stdout).connections.map((c: { connectionId: number }) => c.connectionId),
    ).toEqual([17]);
    await emu.client.partitions.deletePartition({ name: 'partitions/conns' });
  });
});
