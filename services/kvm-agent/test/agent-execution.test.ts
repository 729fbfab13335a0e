// The ExecutionService on the KVM agent (KvmBackend + the platform's GuestSession), RPC by RPC, with
// tiny flat real-mode guests assembled here as bytes: LoadGuestImage's answer and errors, run states
// in GetPartition/GetVirtualProcessor, the console stream (output, then the end with the debug-exit
// code), WriteConsole input read back by the guest, pause/resume/stop of a guest that never halts,
// DeletePartition of a running guest, guest actions refused once a guest is loaded, and the agent
// serving other partitions while a guest runs. (kvm-unit-tests' images are the lead's suite.)
import { status } from '@grpc/grpc-js';
import pino from 'pino';
import { connect, pb } from '@vsm/client';
import { RemoteBackend, startServer } from '@vsm/vsm-v1';
import { waitFor } from '../../../test/support/wait';
import { type AgentHarness, describeKvm, failure, startAgent } from './agent-support';

const MiB = 1n << 20n;
// Real mode, below the boot data the planner places at 0x7000..0xb000 (boot-plan.ts BootLayout).
const LOAD = 0x1000n;

/** 16-bit real-mode code with rel8 jumps to labels. */
class Code16 {
  private readonly parts: (number[] | { jcc: number; to: string })[] = [];
  private readonly labels = new Map<string, number>();
  bytes(...b: number[]): this {
    this.parts.push(b);
    return this;
  }
  label(name: string): this {
    this.labels.set(name, this.size());
    return this;
  }
  /** A short jump (0xEB) or Jcc (0x74 jz, 0x75 jnz) to `to`. */
  jump(opcode: number, to: string): this {
    this.parts.push({ jcc: opcode, to });
    return this;
  }
  private size(): number {
    return this.parts.reduce((n, p) => n + (Array.isArray(p) ? p.length : 2), 0);
  }
  movDx(port: number) {
    return this.bytes(0xba, port & 0xff, port >> 8);
  }
  movAl(v: number) {
    return this.bytes(0xb0, v);
  }
  outDxAl() {
    return this.bytes(0xee);
  }
  inAlDx() {
    return this.bytes(0xec);
  }
  print(text: string) {
    this.movDx(0x3f8);
    for (const c of Buffer.from(text)) this.movAl(c).outDxAl();
    return this;
  }
  /** outl(code, 0xf4), then hlt forever. */
  debugExit(code: number) {
    return this.bytes(0x66, 0xb8, code & 0xff, (code >> 8) & 0xff, (code >> 16) & 0xff, code >>> 24)
      .movDx(0xf4)
      .bytes(0x66, 0xef)
      .label(`halt${code}`)
      .bytes(0xf4)
      .jump(0xeb, `halt${code}`);
  }
  build(): Buffer {
    const out: number[] = [];
    for (const p of this.parts) {
      if (Array.isArray(p)) out.push(...p);
      else {
        const rel = this.labels.get(p.to)! - (out.length + 2);
        if (rel < -128 || rel > 127) throw new Error('jump out of range');
        out.push(p.jcc, rel & 0xff);
      }
    }
    return Buffer.from(out);
  }
}

/** Prints `text`, then writes `code` to the debug-exit port. */
const printAndExit = (text: string, code: number) => new Code16().print(text).debugExit(code).build();
/** Prints "hi\n", then echoes COM1 input until it reads 'q', then exits with code 7. */
const echo = () =>
  new Code16()
    .print('hi\n')
    .label('poll')
    .movDx(0x3fd)
    .inAlDx()
    .bytes(0xa8, 0x01)
    .jump(0x74, 'poll') // LSR.DR?
    .movDx(0x3f8)
    .inAlDx()
    .outDxAl()
    .bytes(0x3c, 0x71)
    .jump(0x75, 'poll') //    echo; 'q'?
    .debugExit(7)
    .build();
/** Never halts: jmp $. */
const spin = () => new Code16().print('spinning\n').label('spin').jump(0xeb, 'spin').build();

const flat = (name: string, image: Buffer): Partial<pb.LoadGuestImageRequest> => ({
  name,
  image,
  format: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_FLAT,
  loadGpa: LOAD,
  entryMode: pb.GuestEntryMode.GUEST_ENTRY_MODE_REAL16,
});

describeKvm('ExecutionService on the KVM agent', () => {
  let h: AgentHarness;
  beforeAll(async () => {
    h = await startAgent();
  });
  afterAll(async () => {
    await h?.stop();
  });

  const create = async (id: string, vpCount = 1) =>
    (await h.client.partitions.createPartition({ partitionId: id, partition: pb.Partition.fromPartial({ vpCount, memoryBytes: 64n * MiB }) })).name;
  const expectCode = async (p: Promise<unknown>, code: status, reason?: string, message?: RegExp) => {
    const e = await failure(p);
    expect(status[e.code]).toBe(status[code]);
    if (reason) expect(e.reason).toBe(reason);
    if (message) expect(e.message).toMatch(message);
  };

  type Drained = { text: string; end?: pb.GuestRunEnd; offsets: bigint[] };
  /** Reads a console stream to its end: the text and the end message; `sofar` shows the text as it arrives. */
  async function drain(stream: AsyncIterable<pb.StreamConsoleResponse>, sofar: Drained = { text: '', offsets: [] }): Promise<Drained> {
    for await (const m of stream) {
      if (m.kind?.$case === 'chunk') {
        sofar.offsets.push(m.kind.value.offset);
        sofar.text += Buffer.from(m.kind.value.data).toString('latin1');
      } else if (m.kind?.$case === 'end') {
        sofar.end = m.kind.value;
        return sofar;
      }
    }
    return sofar;
  }

  test('capabilities: guest-execution supported', async () => {
    const f = (await h.client.partitions.getCapabilities({})).features.find((x) => x.name === 'guest-execution');
    expect(f?.supported).toBe(true);
  });

  test('load, console, start: output then the end with the debug-exit code; run states; a second load or start is refused', async () => {
    const name = await create('exec-exit');
    const image = printAndExit('hello, world\n', 5);
    const loaded = await h.client.execution.loadGuestImage(flat(name, image));
    expect(loaded).toEqual({
      format: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_FLAT,
      entryPoint: LOAD,
      entryMode: pb.GuestEntryMode.GUEST_ENTRY_MODE_REAL16,
      segments: [{ gpa: LOAD, size: BigInt(image.length) }],
      bootInfoGpa: undefined,
    });
    expect((await h.client.partitions.getPartition({ name })).runState).toBe(pb.RunState.RUN_STATE_LOADED);
    await expectCode(
      h.client.execution.loadGuestImage(flat(name, image)),
      status.FAILED_PRECONDITION,
      'HV_STATUS_INVALID_PARTITION_STATE',
      /already has a guest loaded/,
    );
    // Guest actions are refused on a partition with a loaded guest.
    await expectCode(
      h.client.guest.writeMsr({ name: `${name}/vps/0`, msr: 0x40000000, value: 1n }),
      status.FAILED_PRECONDITION,
      'HV_STATUS_INVALID_PARTITION_STATE',
      /guest actions/,
    );
    // Two watchers, both opened before the start: each gets every byte and the end.
    const watchers = [drain(h.client.execution.streamConsole({ name })), drain(h.client.execution.streamConsole({ name, fromOffset: 0n }))];
    const started = await h.client.execution.startPartition({ name });
    expect([pb.RunState.RUN_STATE_RUNNING, pb.RunState.RUN_STATE_STOPPED]).toContain(started.runState);
    for (const w of await Promise.all(watchers)) {
      expect(w.text).toBe('hello, world\n');
      expect(w.end).toMatchObject({ state: pb.RunState.RUN_STATE_STOPPED, exitCode: 5 });
      expect(w.end?.endTimeUnixMs).toBeGreaterThan(0n);
    }
    const p = await h.client.partitions.getPartition({ name });
    expect(p).toMatchObject({ runState: pb.RunState.RUN_STATE_STOPPED, exitCode: 5 });
    expect(p.endReason).toMatch(/debug-exit/);
    expect(p.endTimeUnixMs).toBeGreaterThan(0n);
    expect((await h.client.vps.getVirtualProcessor({ name: `${name}/vps/0` })).runState).toBe(pb.VpRunState.VP_RUN_STATE_STOPPED);
    // A watcher that comes later gets the kept output from an offset, then the end.
    const late = await drain(h.client.execution.streamConsole({ name, fromOffset: 7n }));
    expect(late).toMatchObject({ text: 'world\n', offsets: [7n] });
    expect(late.end?.exitCode).toBe(5);
    await expectCode(h.client.execution.startPartition({ name }), status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_PARTITION_STATE');
    await expectCode(h.client.execution.writeConsole({ name, data: Buffer.from('x') }), status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_PARTITION_STATE');
    // Stopping an ended guest returns it as it is.
    expect((await h.client.execution.stopPartition({ name })).exitCode).toBe(5);
    await h.client.partitions.deletePartition({ name });
  });

  test('GetVirtualProcessor asks KVM: a BSP in `cli; hlt` is HALTED, an AP never sent SIPI is WAITING_FOR_SIPI', async () => {
    const name = await create('exec-states', 2);
    const halt = new Code16().print('halting\n').bytes(0xfa).label('h').bytes(0xf4).jump(0xeb, 'h').build(); // cli; hlt; jmp h
    await h.client.execution.loadGuestImage(flat(name, halt));
    const sofar: Drained = { text: '', offsets: [] };
    const out = drain(h.client.execution.streamConsole({ name }), sofar);
    await h.client.execution.startPartition({ name });
    await waitFor('the guest printed before halting', () => sofar.text === 'halting\n');
    const vpState = async (i: number) => (await h.client.vps.getVirtualProcessor({ name: `${name}/vps/${i}` })).runState;
    // The BSP reaches HLT right after its last OUT; the AP waits for INIT/SIPI from the start.
    await waitFor('VP 0 halted', async () => (await vpState(0)) === pb.VpRunState.VP_RUN_STATE_HALTED);
    expect(await vpState(1)).toBe(pb.VpRunState.VP_RUN_STATE_WAITING_FOR_SIPI);
    // Asking did not disturb the guest: still running, and it still stops on request.
    expect((await h.client.partitions.getPartition({ name })).runState).toBe(pb.RunState.RUN_STATE_RUNNING);
    expect((await h.client.execution.stopPartition({ name })).runState).toBe(pb.RunState.RUN_STATE_STOPPED);
    expect((await out).end?.state).toBe(pb.RunState.RUN_STATE_STOPPED);
    await h.client.partitions.deletePartition({ name });
  });

  test('WriteConsole: input reaches the guest, which echoes it and exits on q', async () => {
    const name = await create('exec-echo');
    await h.client.execution.loadGuestImage(flat(name, echo()));
    const sofar: Drained = { text: '', offsets: [] };
    const out = drain(h.client.execution.streamConsole({ name }), sofar);
    await h.client.execution.startPartition({ name });
    await waitFor("the guest's prompt", () => sofar.text === 'hi\n');
    await h.client.execution.writeConsole({ name, data: Buffer.from('abc') });
    await h.client.execution.writeConsole({ name, data: Buffer.from('q') });
    const r = await out;
    expect(r.text).toBe('hi\nabcq');
    expect(r.end).toMatchObject({ state: pb.RunState.RUN_STATE_STOPPED, exitCode: 7 });
    await h.client.partitions.deletePartition({ name });
  });

  test('a guest that never halts: pause, resume, stop (waits for the VP threads); the agent serves others meanwhile', async () => {
    const name = await create('exec-spin', 2);
    await h.client.execution.loadGuestImage(flat(name, spin()));
    const sofar: Drained = { text: '', offsets: [] };
    const out = drain(h.client.execution.streamConsole({ name }), sofar);
    expect((await h.client.execution.startPartition({ name })).runState).toBe(pb.RunState.RUN_STATE_RUNNING);
    // The boot processor runs guest code (its VP threads take a moment to start on a busy machine).
    await waitFor("the guest's first output", () => sofar.text === 'spinning\n');
    // Another partition is created, used and deleted while the guest runs.
    const other = await create('exec-other');
    expect((await h.client.guest.readMsr({ name: `${other}/vps/0`, msr: 0x40000002 })).value).toBe(0n);
    await h.client.partitions.deletePartition({ name: other });
    await expectCode(h.client.execution.resumePartition({ name }), status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_PARTITION_STATE');
    expect((await h.client.execution.pausePartition({ name })).runState).toBe(pb.RunState.RUN_STATE_PAUSED);
    await expectCode(h.client.execution.pausePartition({ name }), status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_PARTITION_STATE');
    expect((await h.client.execution.resumePartition({ name })).runState).toBe(pb.RunState.RUN_STATE_RUNNING);
    const stopped = await h.client.execution.stopPartition({ name });
    expect(stopped).toMatchObject({ runState: pb.RunState.RUN_STATE_STOPPED, endReason: 'stopped by StopPartition' });
    expect(stopped.exitCode).toBeUndefined();
    for (const vp of [0, 1]) expect((await h.client.vps.getVirtualProcessor({ name: `${name}/vps/${vp}` })).runState).toBe(pb.VpRunState.VP_RUN_STATE_STOPPED);
    const r = await out;
    expect(r.text).toBe('spinning\n');
    expect(r.end).toMatchObject({ state: pb.RunState.RUN_STATE_STOPPED, reason: 'stopped by StopPartition' });
    await h.client.partitions.deletePartition({ name });
  });

  test('DeletePartition of a running guest stops it first; its console stream ends', async () => {
    const name = await create('exec-delete');
    await h.client.execution.loadGuestImage(flat(name, spin()));
    const out = drain(h.client.execution.streamConsole({ name }));
    await h.client.execution.startPartition({ name });
    await h.client.partitions.deletePartition({ name });
    const r = await out;
    expect(r.end?.state).toBe(pb.RunState.RUN_STATE_STOPPED);
    await expectCode(h.client.partitions.getPartition({ name }), status.NOT_FOUND, 'HV_STATUS_INVALID_PARTITION_ID');
  });

  test('through the service in front of the agent (RemoteBackend): every RPC forwarded, the console stream too', async () => {
    const front = await startServer({
      listen: '127.0.0.1:0',
      backend: new RemoteBackend([h.address]),
      logger: pino({ level: 'silent' }),
      shutdownGraceMs: 500,
    });
    const c = connect(front.address, { deadlineMs: 10_000 });
    try {
      const name = (
        await c.partitions.createPartition({ partitionId: 'exec-remote', partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: 64n * MiB }) })
      ).name;
      expect((await c.execution.loadGuestImage(flat(name, echo()))).entryPoint).toBe(LOAD);
      const sofar: Drained = { text: '', offsets: [] };
      const out = drain(c.execution.streamConsole({ name }), sofar);
      expect((await c.execution.startPartition({ name })).runState).toBe(pb.RunState.RUN_STATE_RUNNING);
      await waitFor("the guest's prompt through the service", () => sofar.text === 'hi\n');
      expect((await c.execution.pausePartition({ name })).runState).toBe(pb.RunState.RUN_STATE_PAUSED);
      expect((await c.execution.resumePartition({ name })).runState).toBe(pb.RunState.RUN_STATE_RUNNING);
      await c.execution.writeConsole({ name, data: Buffer.from('zq') });
      expect(await out).toMatchObject({ text: 'hi\nzq', end: { state: pb.RunState.RUN_STATE_STOPPED, exitCode: 7 } });
      expect((await c.execution.stopPartition({ name })).exitCode).toBe(7);
      await c.execution.createConnection({ name, connectionId: 1, kind: pb.ConnectionKind.CONNECTION_KIND_EVENT, vpIndex: 0, sint: 1 });
      expect((await c.execution.listConnections({ name })).connections.map((x) => x.connectionId)).toEqual([1]);
      await c.execution.deleteConnection({ name, connectionId: 1 });
      await c.partitions.deletePartition({ name });
      await expectCode(c.execution.startPartition({ name }), status.NOT_FOUND, 'HV_STATUS_INVALID_PARTITION_ID');
    } finally {
      c.close();
      await front.shutdown('test');
    }
  });

  test("bad images: INVALID_ARGUMENT with the loader's message, nothing loaded", async () => {
    const name = await create('exec-bad');
    // Not multiboot, not ELF64: AUTO cannot tell what it is.
    await expectCode(
      h.client.execution.loadGuestImage({ name, image: printAndExit('x', 0) }),
      status.INVALID_ARGUMENT,
      'HV_STATUS_INVALID_PARAMETER',
      /cannot detect the image format/,
    );
    // An ELF64 header cut short.
    await expectCode(
      h.client.execution.loadGuestImage({ name, image: Buffer.from('\x7fELF\x02\x01\x01', 'latin1'), format: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_ELF64 }),
      status.INVALID_ARGUMENT,
      'HV_STATUS_INVALID_PARAMETER',
    );
    // A flat image beyond the partition's 64 MiB.
    await expectCode(
      h.client.execution.loadGuestImage({ ...flat(name, spin()), loadGpa: 64n * MiB - 4n, entryMode: pb.GuestEntryMode.GUEST_ENTRY_MODE_LONG64 }),
      status.INVALID_ARGUMENT,
      'HV_STATUS_INVALID_PARAMETER',
      /does not fit/,
    );
    await expectCode(h.client.execution.loadGuestImage({ name, image: Buffer.alloc(0) }), status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER', /empty/);
    expect((await h.client.partitions.getPartition({ name })).runState).toBe(pb.RunState.RUN_STATE_NOT_LOADED);
    // No guest: the run RPCs say so.
    for (const call of [
      () => h.client.execution.startPartition({ name }),
      () => h.client.execution.stopPartition({ name }),
      () => h.client.execution.writeConsole({ name, data: Buffer.from('a') }),
    ]) {
      await expectCode(call(), status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_PARTITION_STATE', /no guest loaded/);
    }
    // And the partition still takes a good image.
    expect((await h.client.execution.loadGuestImage(flat(name, printAndExit('ok\n', 0)))).format).toBe(pb.GuestImageFormat.GUEST_IMAGE_FORMAT_FLAT);
    await h.client.partitions.deletePartition({ name });
  });
});
