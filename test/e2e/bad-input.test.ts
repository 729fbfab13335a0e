// Every RPC's bad input gives a clear gRPC code with ErrorInfo.reason = the HV_STATUS name, and
// changes nothing.
import { status } from '@grpc/grpc-js';
import { pb } from '@vsm/client';
import { GiB, type Harness, failure, startHarness } from '../support/server';
import { HvMsr } from '@vsm/core';

let h: Harness;
let part: string;
let vp0: string;
const R = pb.HvRegisterName;
const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });

beforeAll(async () => {
  h = await startHarness();
  part = (await h.client.partitions.createPartition({ partitionId: 'bad', partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition })).name;
  vp0 = `${part}/vps/0`;
});
afterAll(async () => {
  await h.stop();
});

const expectErr = async (p: Promise<unknown>, code: status, reason: string) => {
  const e = await failure(p);
  expect({ code: status[e.code], reason: e.reason }).toEqual({ code: status[code], reason });
  expect(e.message.length).toBeGreaterThan(10);
};
const INVALID = [status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER'] as const;

describe('VirtualProcessorService', () => {
  test('names and VP indexes', async () => {
    await expectErr(h.client.vps.getVirtualProcessor({ name: part }), ...INVALID);
    await expectErr(h.client.vps.getVirtualProcessor({ name: `${part}/vps/2` }), status.NOT_FOUND, 'HV_STATUS_INVALID_VP_INDEX');
    await expectErr(h.client.vps.getVirtualProcessor({ name: 'partitions/none/vps/0' }), status.NOT_FOUND, 'HV_STATUS_INVALID_PARTITION_ID');
    await expectErr(h.client.vps.getVpRegisters({ name: `${part}/vps/01` }), ...INVALID);
  });
  test('registers: unknown name, disabled VTL, wrong shape, read-only, all-or-nothing', async () => {
    await expectErr(h.client.vps.getVpRegisters({ name: vp0, names: [12345 as pb.HvRegisterName] }), ...INVALID);
    await expectErr(h.client.vps.getVpRegisters({ name: vp0, vtl: 1 }), status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_VTL_STATE');
    await expectErr(h.client.vps.getVpRegisters({ name: vp0, vtl: 9 }), status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_VTL_STATE');
    await expectErr(
      h.client.vps.setVpRegisters({ name: vp0, registers: [{ name: R.HV_REGISTER_NAME_X64_CS, value: { value: { $case: 'reg64', value: 1n } } }] }),
      ...INVALID,
    );
    await expectErr(h.client.vps.setVpRegisters({ name: vp0, registers: [{ name: R.HV_REGISTER_NAME_X64_RAX, value: undefined }] }), ...INVALID);
    await expectErr(h.client.vps.setVpRegisters({ name: vp0, registers: [r64(R.HV_REGISTER_NAME_VP_INDEX, 3n)] }), ...INVALID);
    await expectErr(
      h.client.vps.setVpRegisters({
        name: vp0,
        registers: [{ name: R.HV_REGISTER_NAME_X64_RAX, value: { value: { $case: 'reg128', value: { low: 1n, high: 1n } } } }],
      }),
      status.INVALID_ARGUMENT,
      'HV_STATUS_INVALID_REGISTER_VALUE',
    );
    // A batch with one bad entry writes nothing.
    await expectErr(
      h.client.vps.setVpRegisters({ name: vp0, registers: [r64(R.HV_REGISTER_NAME_X64_RBX, 0x77n), r64(R.HV_REGISTER_NAME_VSM_PARTITION_STATUS, 0n)] }),
      ...INVALID,
    );
    const got = await h.client.vps.getVpRegisters({ name: vp0, names: [R.HV_REGISTER_NAME_X64_RBX] });
    expect(got.registers[0]!.value?.value).toEqual({ $case: 'reg64', value: 0n });
    // Hypercall MSR GPFN beyond the GPA space.
    await expectErr(
      h.client.vps.setVpRegisters({ name: vp0, registers: [r64(R.HV_REGISTER_NAME_X64_HYPERCALL, (GiB << 1n) | 1n)] }),
      status.INVALID_ARGUMENT,
      'HV_STATUS_INVALID_REGISTER_VALUE',
    );
  });
});

describe('GuestService', () => {
  test('unknown and read-only MSRs raise #GP (an architectural outcome, not an RPC error)', async () => {
    expect((await h.client.guest.readMsr({ name: vp0, msr: 0x400000ff })).outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_GP);
    expect((await h.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_VP_INDEX, value: 1n })).outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_GP);
    expect((await h.client.guest.readMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_VP_INDEX })).value).toBe(0n);
    await expectErr(h.client.guest.readMsr({ name: 'x', msr: 1 }), ...INVALID);
  });
  test('hypercall input validation gives TLFS statuses in the result value', async () => {
    const call = (control: bigint, inputGpa = 0x10000n, outputGpa = 0x11000n) => h.client.guest.hypercall({ name: vp0, control, inputGpa, outputGpa });
    expect((await call(0x7777n)).status).toBe(pb.HvStatus.HV_STATUS_INVALID_HYPERCALL_CODE);
    expect((await call(0x50n)).status).toBe(pb.HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT); // rep call, rep count 0
    expect((await call(0x0dn | (1n << 32n))).status).toBe(pb.HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT); // simple call with reps
    expect((await call(0x0dn | (1n << 27n))).status).toBe(pb.HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT); // RsvdZ
    expect((await call(0x0dn | (1n << 17n))).status).toBe(pb.HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT); // variable header
    expect((await call(0x0dn, 0x10004n)).status).toBe(pb.HvStatus.HV_STATUS_INVALID_ALIGNMENT);
    expect((await call(0x0dn, 0x10ff8n)).status).toBe(pb.HvStatus.HV_STATUS_INVALID_ALIGNMENT); // crosses a page
    expect((await call(0x0dn, GiB)).status).toBe(pb.HvStatus.HV_STATUS_INVALID_ALIGNMENT); // outside
    const r = await call(0x50n | (2n << 32n) | (2n << 48n)); // rep start >= rep count
    expect(r.status).toBe(pb.HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
    expect(r.resultValue).toBe(3n);
    await expectErr(h.client.guest.hypercall({ name: vp0, control: 0x0dn, inputGpa: GiB, input: Buffer.alloc(16) }), ...INVALID);
    await expectErr(h.client.guest.hypercall({ name: vp0, control: 0x0dn, input: Buffer.alloc(5000) }), ...INVALID);
  });
  test('CallHypercallPage without an enabled page, and memory access bounds', async () => {
    await expectErr(h.client.guest.callHypercallPage({ name: vp0, offset: 0 }), status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_VP_STATE');
    await expectErr(h.client.guest.readMemory({ name: vp0, gpa: 0n, length: 0 }), ...INVALID);
    await expectErr(h.client.guest.readMemory({ name: vp0, gpa: GiB - 2n, length: 4 }), ...INVALID);
    await expectErr(h.client.guest.writeMemory({ name: vp0, gpa: 0n, data: Buffer.alloc(0) }), ...INVALID);
    await expectErr(h.client.guest.writeMemory({ name: vp0, gpa: GiB, data: Buffer.from([1]) }), ...INVALID);
  });
  test('a guest write to the hypercall page raises #GP and changes nothing', async () => {
    await h.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 1n });
    await h.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x3000n | 1n });
    const before = await h.client.guest.readMemory({ name: vp0, gpa: 0x3000n, length: 8 });
    const w = await h.client.guest.writeMemory({ name: vp0, gpa: 0x2ffcn, data: Buffer.alloc(8, 0x90) });
    expect(w.outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_GP);
    expect((await h.client.guest.readMemory({ name: vp0, gpa: 0x3000n, length: 8 })).data).toEqual(before.data);
    expect((await h.client.memory.readGpa({ name: part, gpa: 0x2ffcn, length: 4 })).data).toEqual(Buffer.alloc(4));
  });
});

describe('SynicService and ExecuteMemory', () => {
  test('bad input', async () => {
    await expectErr(h.client.synic.getSynicState({ name: vp0, vtl: 1 }), status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_VTL_STATE');
    await expectErr(
      h.client.synic.postMessage({ name: vp0, vtl: 0, sint: 0, messageType: 1, payload: Buffer.alloc(0) }),
      status.FAILED_PRECONDITION,
      'HV_STATUS_INVALID_SYNIC_STATE',
    );
    await expectErr(h.client.synic.postMessage({ name: vp0, vtl: 0, sint: 0, messageType: 1, payload: Buffer.alloc(241) }), ...INVALID);
    await expectErr(h.client.synic.postMessage({ name: vp0, vtl: 0, sint: 0, messageType: 0, payload: Buffer.alloc(1) }), ...INVALID);
    await expectErr(h.client.synic.signalEvent({ name: vp0, vtl: 0, sint: 0, flag: 2048 }), ...INVALID);
    await expectErr(
      h.client.synic.signalEvent({ name: 'partitions/none/vps/0', vtl: 0, sint: 0, flag: 1 }),
      status.NOT_FOUND,
      'HV_STATUS_INVALID_PARTITION_ID',
    );
    await expectErr(h.client.guest.executeMemory({ name: vp0, gpa: 0n, length: 17 }), ...INVALID);
    await expectErr(h.client.guest.executeMemory({ name: vp0, gpa: GiB, length: 1 }), ...INVALID);
  });
});

describe('MemoryService', () => {
  test('bounds, lengths and views', async () => {
    await expectErr(h.client.memory.readGpa({ name: part, gpa: 0n, length: 0 }), ...INVALID);
    await expectErr(h.client.memory.readGpa({ name: part, gpa: 0n, length: (1 << 20) + 1 }), ...INVALID);
    await expectErr(h.client.memory.readGpa({ name: part, gpa: GiB - 1n, length: 2 }), ...INVALID);
    await expectErr(h.client.memory.readGpa({ name: part, gpa: 0n, length: 1, vtlView: 1 }), status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_VTL_STATE');
    await expectErr(h.client.memory.writeGpa({ name: part, gpa: GiB - 1n, data: Buffer.from([1, 2]) }), ...INVALID);
    await expectErr(h.client.memory.writeGpa({ name: 'partitions/none', gpa: 0n, data: Buffer.from([1]) }), status.NOT_FOUND, 'HV_STATUS_INVALID_PARTITION_ID');
    await expectErr(h.client.memory.listOverlays({ name: 'partitions/none' }), status.NOT_FOUND, 'HV_STATUS_INVALID_PARTITION_ID');
    await expectErr(h.client.memory.listOverlays({ name: part, vtl: 7 }), ...INVALID);
    await expectErr(h.client.memory.listOverlays({ name: 'bad name' }), ...INVALID);
    const g = (await h.client.memory.readGpa({ name: part, gpa: 0n, length: 1 })).viewGeneration;
    await expectErr(
      h.client.memory.writeGpa({ name: part, gpa: 0n, data: Buffer.from([1]), expectedViewGeneration: g + 1n }),
      status.FAILED_PRECONDITION,
      'HV_STATUS_OPERATION_DENIED',
    );
    await h.client.memory.writeGpa({ name: part, gpa: 0xfffen, data: Buffer.from([1, 2, 3, 4]), expectedViewGeneration: g });
    expect([...(await h.client.memory.readGpa({ name: part, gpa: 0xfffen, length: 4 })).data]).toEqual([1, 2, 3, 4]);
  });
});

describe('VtlService', () => {
  test('enablement errors', async () => {
    await expectErr(h.client.vtl.enablePartitionVtl({ name: part, targetVtl: 2 }), status.PERMISSION_DENIED, 'HV_STATUS_ACCESS_DENIED');
    await expectErr(h.client.vtl.enablePartitionVtl({ name: part, targetVtl: 0 }), status.PERMISSION_DENIED, 'HV_STATUS_ACCESS_DENIED');
    await expectErr(h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 }), status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_VTL_STATE');
    await h.client.vtl.enablePartitionVtl({ name: part, targetVtl: 1 });
    await expectErr(h.client.vtl.enablePartitionVtl({ name: part, targetVtl: 1 }), status.FAILED_PRECONDITION, 'HV_STATUS_INVALID_VTL_STATE');
    await expectErr(h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1, initialContext: { rip: 0n } as pb.InitialVpContext }), ...INVALID);
    await expectErr(h.client.vtl.enableVpVtl({ name: `${part}/vps/9`, targetVtl: 1 }), status.NOT_FOUND, 'HV_STATUS_INVALID_VP_INDEX');
    await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
    await expectErr(h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 }), status.ALREADY_EXISTS, 'HV_STATUS_VTL_ALREADY_ENABLED');
  });
});
