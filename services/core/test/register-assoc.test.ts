// HvCallSetVpRegisters rep elements: HV_REGISTER_ASSOC, 32 bytes: +0 Name (4), +4 RsvdZ (12),
// +16 Value (16) (tlfs-hypercalls.md §2.7). The element bytes below are written by hand.
import { HvRegisterName as R, HvStatus, Partition, executeVmcall } from '@vsm/core';
import { HvCallCode, decodeHypercallResult, encodeHypercallInput } from '../src/tlfs/hypercall';
import { HV_PARTITION_ID_SELF, HV_VP_INDEX_SELF, encodeVpRegistersHeader } from '../src/tlfs/vsm';

const INPUT_GPA = 0x2000n;

/** One HV_REGISTER_ASSOC, by hand: Name, 12 RsvdZ bytes (with `rsvd` patched in), Value low/high. */
function assoc(name: number, low: bigint, rsvd: { at: number; byte: number } | undefined = undefined, high = 0n): Buffer {
  const b = Buffer.alloc(32);
  b.writeUInt32LE(name, 0);
  if (rsvd) b[4 + rsvd.at] = rsvd.byte;
  b.writeBigUInt64LE(low, 16);
  b.writeBigUInt64LE(high, 24);
  return b;
}

function setRegisters(elements: Buffer[]) {
  const p = new Partition({ id: 'p-assoc', architecture: 'x64', vpCount: 1, memoryBytes: 1n << 20n, maximumVtl: 1, labels: {} });
  const vp = p.vps[0]!;
  const header = encodeVpRegistersHeader({ partitionId: HV_PARTITION_ID_SELF, vpIndex: HV_VP_INDEX_SELF, targetVtl: 0, rsvdZ: 0 });
  p.memory.write(INPUT_GPA, Buffer.concat([header, ...elements]));
  p.setReg(vp, R.HvX64RegisterRip, 0x1000n);
  p.setReg(vp, R.HvX64RegisterRcx, encodeHypercallInput({ callCode: HvCallCode.HvCallSetVpRegisters, repCount: elements.length }));
  p.setReg(vp, R.HvX64RegisterRdx, INPUT_GPA);
  p.setReg(vp, R.HvX64RegisterR8, 0n);
  const o = executeVmcall(p, vp);
  return { p, vp, result: decodeHypercallResult(o.resultValue!) };
}

test('each element sets its register from Value; all reps complete', () => {
  const { p, vp, result } = setRegisters([assoc(R.HvX64RegisterRbx, 0x1111n), assoc(R.HvX64RegisterR15, 0x2222_3333_4444_5555n)]);
  expect(result).toEqual({ status: HvStatus.HV_STATUS_SUCCESS, repsCompleted: 2 });
  expect(p.reg(vp, R.HvX64RegisterRbx)).toBe(0x1111n);
  expect(p.reg(vp, R.HvX64RegisterR15)).toBe(0x2222_3333_4444_5555n);
});

test.each([0, 3, 4, 11])('a non-zero RsvdZ byte at element +%d stops the call there with INVALID_PARAMETER; earlier reps stay', (at) => {
  const { p, vp, result } = setRegisters([assoc(R.HvX64RegisterRbx, 0x1111n), assoc(R.HvX64RegisterRsi, 0x2222n, { at, byte: 0x80 })]);
  expect(result).toEqual({ status: HvStatus.HV_STATUS_INVALID_PARAMETER, repsCompleted: 1 });
  expect(p.reg(vp, R.HvX64RegisterRbx)).toBe(0x1111n);
  expect(p.reg(vp, R.HvX64RegisterRsi)).toBe(0n);
});
