// ExecutionService on the emulator (proto/vsm/v1/execution.proto): every RPC's bad input gets a clear
// status and changes nothing; the guest RPCs answer FAILED_PRECONDITION (the emulator runs no guest
// code) after their input checks, and GetCapabilities says so; host-made SynIC connections work
// (they are core semantics): a guest's HvCallPostMessage / HvCallSignalEvent reaches the SINT they
// name, and stops reaching it once deleted.
import { status } from '@grpc/grpc-js';
import { HvMsr, HvStatus, encodePostMessageInput, encodeSignalEventInput } from '@vsm/core';
import { pb } from '@vsm/client';
import { GiB, type Harness, failure, startHarness } from '../support/server';

let h: Harness;
let part: string;
const MiB = 1n << 20n;

beforeAll(async () => {
  h = await startHarness();
  part = (await h.client.partitions.createPartition({ partitionId: 'exec', partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition })).name;
});
afterAll(async () => {
  await h.stop();
});

const expectErr = async (p: Promise<unknown>, code: status, reason: string, message?: RegExp) => {
  const e = await failure(p);
  expect({ code: status[e.code], reason: e.reason }).toEqual({ code: status[code], reason });
  expect(e.message.length).toBeGreaterThan(10);
  if (message) expect(e.message).toMatch(message);
};
const INVALID = [status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER'] as const;
const NO_PARTITION = [status.NOT_FOUND, 'HV_STATUS_INVALID_PARTITION_ID'] as const;
const UNSUPPORTED = [
  status.FAILED_PRECONDITION,
  'GUEST_EXECUTION_UNSUPPORTED',
  /the emulator does not execute guest code; guest-execution is unsupported here, use the KVM agent/,
] as const;
/** A flat real-mode image that is well formed (its content is never run here). */
const FLAT = {
  image: Buffer.from([0xf4]),
  format: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_FLAT,
  loadGpa: 0x7c00n,
  entryMode: pb.GuestEntryMode.GUEST_ENTRY_MODE_REAL16,
};

/** The first failure of a console stream (it must fail before any message). */
async function streamFailure(req: Partial<pb.StreamConsoleRequest>) {
  return failure(
    (async () => {
      for await (const m of h.client.execution.streamConsole(req)) throw new Error(`unexpected message ${JSON.stringify(m)}`);
    })(),
  );
}

describe('partitions', () => {
  test('capabilities report guest-execution unsupported, with the reason', async () => {
    const caps = await h.client.partitions.getCapabilities({});
    const f = caps.features.find((x) => x.name === 'guest-execution');
    expect(f).toEqual({
      name: 'guest-execution',
      supported: false,
      reason: 'the emulator does not execute guest code; guest-execution is unsupported here, use the KVM agent',
    });
  });

  test('a new partition is NOT_LOADED, its VPs have no run state, devices are echoed', async () => {
    const p = await h.client.partitions.createPartition({
      partitionId: 'with-dev',
      partition: { vpCount: 1, memoryBytes: 64n * MiB, devices: ['hyperv-testdev'] } as pb.Partition,
    });
    expect(p).toMatchObject({ devices: ['hyperv-testdev'], runState: pb.RunState.RUN_STATE_NOT_LOADED, endReason: '' });
    expect(p.exitCode).toBeUndefined();
    expect(p.endTimeUnixMs).toBeUndefined();
    expect((await h.client.partitions.getPartition({ name: p.name })).devices).toEqual(['hyperv-testdev']);
    expect((await h.client.vps.getVirtualProcessor({ name: `${p.name}/vps/0` })).runState).toBe(pb.VpRunState.VP_RUN_STATE_UNSPECIFIED);
    expect((await h.client.partitions.getPartition({ name: part })).runState).toBe(pb.RunState.RUN_STATE_NOT_LOADED);
    await h.client.partitions.deletePartition({ name: p.name });
  });

  test('unknown or repeated devices and output-only run fields are refused; nothing is created', async () => {
    const create = (partition: Partial<pb.Partition>) =>
      h.client.partitions.createPartition({ partitionId: 'dev-bad', partition: { vpCount: 1, memoryBytes: 64n * MiB, ...partition } as pb.Partition });
    await expectErr(create({ devices: ['virtio-net'] }), ...INVALID, /unknown device "virtio-net"/);
    await expectErr(create({ devices: ['hyperv-testdev', 'hyperv-testdev'] }), ...INVALID, /listed twice/);
    await expectErr(create({ runState: pb.RunState.RUN_STATE_RUNNING }), ...INVALID, /output only/);
    await expectErr(create({ exitCode: 0 }), ...INVALID, /output only/);
    await expectErr(h.client.partitions.getPartition({ name: 'partitions/dev-bad' }), ...NO_PARTITION);
  });
});

describe('LoadGuestImage', () => {
  const load = (r: Partial<pb.LoadGuestImageRequest>) => h.client.execution.loadGuestImage({ name: part, ...FLAT, ...r });
  test('names', async () => {
    await expectErr(load({ name: 'exec' }), ...INVALID);
    await expectErr(load({ name: `${part}/vps/0` }), ...INVALID);
    await expectErr(load({ name: 'partitions/none' }), ...NO_PARTITION);
  });
  test('request fields', async () => {
    await expectErr(load({ image: Buffer.alloc(0) }), ...INVALID, /image is empty/);
    await expectErr(load({ format: 99 as pb.GuestImageFormat }), ...INVALID, /format 99 is not a GuestImageFormat/);
    await expectErr(load({ entryMode: 7 as pb.GuestEntryMode }), ...INVALID, /entry_mode 7 is not a GuestEntryMode/);
    await expectErr(load({ loadGpa: undefined }), ...INVALID, /needs load_gpa/);
    await expectErr(load({ format: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_ELF64, entryMode: 0 as pb.GuestEntryMode }), ...INVALID, /apply to format FLAT only/);
    await expectErr(
      load({ format: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_UNSPECIFIED, loadGpa: undefined, entryPoint: 0x1000n, entryMode: 0 as pb.GuestEntryMode }),
      ...INVALID,
      /apply to format FLAT only/,
    );
    await expectErr(load({ commandLine: 'x'.repeat(4097) }), ...INVALID, /command_line/);
  });
  test('a well-formed request: FAILED_PRECONDITION, the partition unchanged', async () => {
    await expectErr(load({}), ...UNSUPPORTED);
    await expectErr(
      load({ format: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_AUTO, loadGpa: undefined, entryMode: 0 as pb.GuestEntryMode, commandLine: 'a b c' }),
      ...UNSUPPORTED,
    );
    expect((await h.client.partitions.getPartition({ name: part })).runState).toBe(pb.RunState.RUN_STATE_NOT_LOADED);
  });
});

describe('run control and console', () => {
  const control = [
    ['StartPartition', (name: string) => h.client.execution.startPartition({ name })],
    ['PausePartition', (name: string) => h.client.execution.pausePartition({ name })],
    ['ResumePartition', (name: string) => h.client.execution.resumePartition({ name })],
    ['StopPartition', (name: string) => h.client.execution.stopPartition({ name })],
  ] as const;
  test.each(control)('%s: bad name, no such partition, then FAILED_PRECONDITION', async (_rpc, call) => {
    await expectErr(call('partitions/Bad_Name'), ...INVALID);
    await expectErr(call(''), ...INVALID);
    await expectErr(call('partitions/none'), ...NO_PARTITION);
    await expectErr(call(part), ...UNSUPPORTED);
  });
  test('StreamConsole: bad name, no such partition, then FAILED_PRECONDITION (before any message)', async () => {
    const e1 = await streamFailure({ name: 'nope' });
    expect([status[e1.code], e1.reason]).toEqual([status[INVALID[0]], INVALID[1]]);
    const e2 = await streamFailure({ name: 'partitions/none' });
    expect([status[e2.code], e2.reason]).toEqual([status[NO_PARTITION[0]], NO_PARTITION[1]]);
    const e3 = await streamFailure({ name: part, fromOffset: 0n });
    expect([status[e3.code], e3.reason]).toEqual(['FAILED_PRECONDITION', 'GUEST_EXECUTION_UNSUPPORTED']);
    expect(e3.message).toMatch(/emulator does not execute guest code/);
  });
  test('WriteConsole: bad name, data size, then FAILED_PRECONDITION', async () => {
    await expectErr(h.client.execution.writeConsole({ name: 'x', data: Buffer.from('a') }), ...INVALID);
    await expectErr(h.client.execution.writeConsole({ name: 'partitions/none', data: Buffer.from('a') }), ...NO_PARTITION);
    await expectErr(h.client.execution.writeConsole({ name: part, data: Buffer.alloc(0) }), ...INVALID, /data must be 1\.\.65536 bytes/);
    await expectErr(h.client.execution.writeConsole({ name: part, data: Buffer.alloc(65537) }), ...INVALID, /data must be 1\.\.65536 bytes/);
    await expectErr(h.client.execution.writeConsole({ name: part, data: Buffer.from('hello\n') }), ...UNSUPPORTED);
  });
});

describe('connections (core semantics, served by the emulator)', () => {
  const MSG = pb.ConnectionKind.CONNECTION_KIND_MESSAGE;
  const EVT = pb.ConnectionKind.CONNECTION_KIND_EVENT;
  const create = (r: Partial<pb.CreateConnectionRequest>) =>
    h.client.execution.createConnection({ name: part, connectionId: 7, kind: MSG, vpIndex: 1, sint: 2, ...r });
  const list = async () => (await h.client.execution.listConnections({ name: part })).connections;

  test('bad input: names, kinds, ids, VP, SINT, VTL, flags; nothing is created', async () => {
    await expectErr(create({ name: 'partitions/' }), ...INVALID);
    await expectErr(create({ name: 'partitions/none' }), ...NO_PARTITION);
    await expectErr(create({ kind: pb.ConnectionKind.CONNECTION_KIND_UNSPECIFIED }), ...INVALID, /kind 0 is not MESSAGE or EVENT/);
    await expectErr(create({ kind: 9 as pb.ConnectionKind }), ...INVALID, /kind 9/);
    await expectErr(create({ connectionId: 0x1000000 }), ...INVALID, /24-bit/);
    await expectErr(create({ vpIndex: 2 }), status.NOT_FOUND, 'HV_STATUS_INVALID_VP_INDEX');
    await expectErr(create({ sint: 16 }), ...INVALID, /SINT 16/);
    await expectErr(create({ vtl: 2 }), ...INVALID, /VTL 2/);
    await expectErr(create({ vtl: 3 }), ...INVALID, /vtl 3/);
    await expectErr(create({ flagNumber: 1 }), ...INVALID, /EVENT connections only/);
    await expectErr(create({ kind: EVT, flagNumber: 2040, flagCount: 9 }), ...INVALID, /2048/);
    await expectErr(create({ kind: EVT, flagCount: 0 }), ...INVALID);
    expect(await list()).toEqual([]);
    await expectErr(h.client.execution.listConnections({ name: 'partitions/none' }), ...NO_PARTITION);
    await expectErr(h.client.execution.deleteConnection({ name: part, connectionId: 7 }), status.NOT_FOUND, 'HV_STATUS_INVALID_CONNECTION_ID');
  });

  test('create, list, duplicate, delete', async () => {
    expect(await create({})).toEqual({ connectionId: 7, kind: MSG, vpIndex: 1, sint: 2, vtl: 0, flagNumber: 0, flagCount: 1 });
    expect(await create({ connectionId: 3, kind: EVT, vpIndex: 0, sint: 5, vtl: 1, flagNumber: 10, flagCount: 4 })).toEqual({
      connectionId: 3,
      kind: EVT,
      vpIndex: 0,
      sint: 5,
      vtl: 1,
      flagNumber: 10,
      flagCount: 4,
    });
    await expectErr(create({ sint: 3 }), status.ALREADY_EXISTS, 'HV_STATUS_OBJECT_IN_USE', /already exists/);
    expect((await list()).map((c) => c.connectionId)).toEqual([3, 7]);
    await h.client.execution.deleteConnection({ name: part, connectionId: 3 });
    await expectErr(h.client.execution.deleteConnection({ name: part, connectionId: 3 }), status.NOT_FOUND, 'HV_STATUS_INVALID_CONNECTION_ID');
    expect((await list()).map((c) => c.connectionId)).toEqual([7]);
    await h.client.execution.deleteConnection({ name: part, connectionId: 7 });
    expect(await list()).toEqual([]);
  });

  test("a guest's HvCallPostMessage and HvCallSignalEvent reach the connection's SINT; a deleted connection is INVALID_CONNECTION_ID", async () => {
    const p = (await h.client.partitions.createPartition({ partitionId: 'conn-guest', partition: { vpCount: 2, memoryBytes: 64n * MiB } as pb.Partition }))
      .name;
    const vp0 = `${p}/vps/0`;
    const vp1 = `${p}/vps/1`;
    const SIMP = 0x100000n;
    const SIEFP = 0x101000n;
    // VP 1 enables its SynIC, message and event-flag pages and SINT2 (vector 0x40, unmasked).
    for (const [msr, value] of [
      [HvMsr.HV_X64_MSR_SCONTROL, 1n],
      [HvMsr.HV_X64_MSR_SIMP, SIMP | 1n],
      [HvMsr.HV_X64_MSR_SIEFP, SIEFP | 1n],
      [HvMsr.HV_X64_MSR_SINT0 + 2, 0x40n],
    ] as const) {
      expect((await h.client.guest.writeMsr({ name: vp1, msr, value })).outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_UNSPECIFIED);
    }
    await h.client.execution.createConnection({ name: p, connectionId: 0x123, kind: MSG, vpIndex: 1, sint: 2 });
    await h.client.execution.createConnection({ name: p, connectionId: 0x124, kind: EVT, vpIndex: 1, sint: 2, flagNumber: 8, flagCount: 2 });
    const post = (connectionId: number) =>
      h.client.guest.hypercall({
        name: vp0,
        control: 0x5cn,
        inputGpa: 0x10000n,
        outputGpa: 0n,
        input: encodePostMessageInput({
          connectionId,
          rsvdZ: 0,
          messageType: 0x42,
          payloadSize: 3,
          payload: Buffer.concat([Buffer.from('abc'), Buffer.alloc(237)]),
        }),
      });
    const signal = (connectionId: number, flagNumber: number) =>
      h.client.guest.hypercall({
        name: vp0,
        control: 0x5dn | (1n << 16n),
        input: Buffer.from(encodeSignalEventInput({ connectionId, flagNumber, rsvdZ: 0 }).subarray(0, 16)),
      });
    expect((await post(0x123)).status).toBe(HvStatus.HV_STATUS_SUCCESS);
    // VP 1 reads its own SIM page (a per-VP overlay: only it sees it).
    const slot = await h.client.guest.readMemory({ name: vp1, gpa: SIMP + 2n * 256n, length: 19 });
    expect(Buffer.from(slot.data).readUInt32LE(0)).toBe(0x42);
    expect(Buffer.from(slot.data).readUInt8(4)).toBe(3);
    expect(Buffer.from(slot.data).readBigUInt64LE(8)).toBe(0x123n);
    expect(Buffer.from(slot.data).subarray(16, 19).toString()).toBe('abc');
    // An event connection is not a message port; a flag beyond the port's count is refused.
    expect((await post(0x124)).status).toBe(HvStatus.HV_STATUS_INVALID_PORT_ID);
    expect((await signal(0x124, 2)).status).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
    expect((await signal(0x124, 1)).status).toBe(HvStatus.HV_STATUS_SUCCESS);
    // Flag 8 + 1 = 9 of SINT2: bit 9 of SINT2's 256-byte flag block.
    const flags = await h.client.guest.readMemory({ name: vp1, gpa: SIEFP + 2n * 256n, length: 2 });
    expect(Buffer.from(flags.data).readUInt16LE(0)).toBe(1 << 9);
    await h.client.execution.deleteConnection({ name: p, connectionId: 0x123 });
    expect((await post(0x123)).status).toBe(HvStatus.HV_STATUS_INVALID_CONNECTION_ID);
    await h.client.partitions.deletePartition({ name: p });
  });
});
