// Regressions for bugs found by the core test pass (each was reproduced before the fix).
import {
  HvMsr,
  HvRegisterName as R,
  Partition,
  callHypercallPage,
  encodeHypercallInput,
  executeVmcall,
  longModeContext,
  reg64,
  HV_PARTITION_ID_SELF,
} from '@vsm/core';
import { encodeVpRegistersHeader, HV_VP_INDEX_SELF } from '../src/tlfs/vsm';

function partition(): Partition {
  const p = new Partition({ id: 't', architecture: 'x64', vpCount: 1, memoryBytes: 1n << 24n, maximumVtl: 1, labels: {} });
  p.enablePartitionVtl('host', 1, 0);
  p.enableVpVtl('host', 0, 1, longModeContext());
  return p;
}

test('A: a rep call resumed at a start index leaves the output elements before it untouched', () => {
  const p = partition();
  const vp = p.vps[0]!;
  const input = Buffer.concat([
    encodeVpRegistersHeader({ partitionId: HV_PARTITION_ID_SELF, vpIndex: HV_VP_INDEX_SELF, targetVtl: 0, rsvdZ: 0 }),
    Buffer.from([0x10, 0, 2, 0, 0x04, 0, 2, 0]),
  ]);
  p.memory.write(0x2000n, input);
  p.memory.write(0x3000n, Buffer.alloc(32, 0xaa));
  p.setReg(vp, R.HvX64RegisterRsp, 0x1122334455667788n);
  p.setReg(vp, R.HvX64RegisterRcx, encodeHypercallInput({ callCode: 0x50, repCount: 2, repStartIndex: 1 }));
  p.setReg(vp, R.HvX64RegisterRdx, 0x2000n);
  p.setReg(vp, R.HvX64RegisterR8, 0x3000n);
  expect(executeVmcall(p, vp).resultValue).toBe(0x2_0000_0000n);
  const out = p.memory.read(0x3000n, 32);
  expect(out.subarray(0, 16).equals(Buffer.alloc(16, 0xaa))).toBe(true);
  expect(out.readBigUInt64LE(16)).toBe(0x1122334455667788n);
});

test('B: a RIP written to a VTL parked in a stub is the RIP it resumes at', () => {
  const p = partition();
  const vp = p.vps[0]!;
  p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, 1n);
  p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, 0x10001n);
  p.setReg(vp, R.HvX64RegisterRip, 0x1000n);
  p.setReg(vp, R.HvX64RegisterRcx, 0n);
  expect(callHypercallPage(p, vp, 0x0f).vtlSwitch?.toVtl).toBe(1);
  p.setRegisters(vp, 0, [{ name: R.HvX64RegisterRip, value: reg64(0x5000n) }], 'host');
  p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, 1n);
  p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, 0x20001n);
  p.setReg(vp, R.HvX64RegisterRcx, 0n);
  expect(callHypercallPage(p, vp, 0x26).vtlSwitch?.toVtl).toBe(0);
  expect(p.reg(vp, R.HvX64RegisterRip)).toBe(0x5000n);
});

test('C: a 32-bit caller VtlCalls through the 32-bit stub (control input in ECX)', () => {
  const p = partition();
  const vp = p.vps[0]!;
  p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, 1n);
  p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, 0x10001n);
  p.setRegisters(vp, 0, [{ name: R.HvX64RegisterEfer, value: reg64(0n) }], 'host');
  expect(p.is64Bit(vp)).toBe(false);
  p.setReg(vp, R.HvX64RegisterRax, 0n);
  p.setReg(vp, R.HvX64RegisterRdx, 0n);
  const o = callHypercallPage(p, vp, 0x04);
  expect(o.exception).toBeUndefined();
  expect(o.vtlSwitch).toMatchObject({ fromVtl: 0, toVtl: 1 });
});
