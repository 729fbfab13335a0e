// The hypercall dispatcher driven through the VMCALL path: executeVmcall(partition, vp) with the
// 64-bit register convention RCX = input value, RDX = input GPA, R8 = output GPA (tlfs-hypercalls.md
// §1.1, §1.4, §1.5, §2.4, §2.7).
import {
  HV_PARTITION_ID_SELF,
  HvRegisterName as R,
  HvStatus,
  Partition,
  X64Exception,
  encodeHypercallInput,
  executeVmcall,
  longModeContext,
  reg64,
  segmentToReg128,
} from '@vsm/core';
import { HvCallCode, encodeHypercallResult } from '../src/tlfs/hypercall';
import { HV_VP_INDEX_SELF, encodeEnablePartitionVtlInput, encodeInputVtl, encodeVpRegistersHeader } from '../src/tlfs/vsm';

const INPUT_GPA = 0x2000n;
const OUTPUT_GPA = 0x3000n;
const START_RIP = 0x0040_1000n;

function newPartition(): Partition {
  return new Partition({ id: 'p-dispatch', architecture: 'x64', vpCount: 2, memoryBytes: 1n << 20n, maximumVtl: 2, labels: {} });
}

function setup() {
  const p = newPartition();
  const vp = p.vps[0]!;
  p.setReg(vp, R.HvX64RegisterRip, START_RIP);
  p.setReg(vp, R.HvX64RegisterRax, 0xdead_beefn);
  return { p, vp };
}

function vmcall(p: Partition, vp = p.vps[0]!, control: bigint, inputGpa = INPUT_GPA, outputGpa = OUTPUT_GPA) {
  p.setReg(vp, R.HvX64RegisterRcx, control);
  p.setReg(vp, R.HvX64RegisterRdx, inputGpa);
  p.setReg(vp, R.HvX64RegisterR8, outputGpa);
  return executeVmcall(p, vp);
}

function getRegsInput(names: number[]): Buffer {
  const header = encodeVpRegistersHeader({ partitionId: HV_PARTITION_ID_SELF, vpIndex: HV_VP_INDEX_SELF, targetVtl: encodeInputVtl({}), rsvdZ: 0 });
  const elems = Buffer.alloc(Math.ceil((names.length * 4) / 8) * 8);
  names.forEach((n, i) => {
    elems.writeUInt32LE(n, 4 * i);
  });
  return Buffer.concat([header, elems]);
}

describe('executeVmcall: status paths', () => {
  test('unknown call code -> HV_STATUS_INVALID_HYPERCALL_CODE (2), RIP advanced, RAX = result', () => {
    const { p, vp } = setup();
    const o = vmcall(p, vp, 0x7777n);
    expect(o.exception).toBeUndefined();
    expect(o.resultValue).toBe(2n);
    expect(p.reg(vp, R.HvX64RegisterRax)).toBe(2n);
    expect(p.reg(vp, R.HvX64RegisterRip)).toBe(START_RIP + 3n);
  });

  test('memory-based input GPA misaligned -> HV_STATUS_INVALID_ALIGNMENT (4)', () => {
    const { p, vp } = setup();
    p.memory.write(0x2004n, encodeEnablePartitionVtlInput({ targetPartitionId: HV_PARTITION_ID_SELF, targetVtl: 1, flags: 0, rsvdZ: 0n }));
    const o = vmcall(p, vp, BigInt(HvCallCode.HvCallEnablePartitionVtl), 0x2004n);
    expect(o.resultValue).toBe(4n);
    expect(p.reg(vp, R.HvX64RegisterRax)).toBe(4n);
    expect(p.vtls.get(1).enabled).toBe(false); // the call did nothing
  });

  test('memory-based input crossing a page -> 4; output outside the GPA space -> 4; overlapping blocks -> 4', () => {
    const { p, vp } = setup();
    const get1 = encodeHypercallInput({ callCode: HvCallCode.HvCallGetVpRegisters, repCount: 1 });
    expect(vmcall(p, vp, get1, 0x2ff8n).resultValue).toBe(4n); // 20-byte input starting 8 bytes before the page end
    expect(vmcall(p, vp, get1, INPUT_GPA, 1n << 20n).resultValue).toBe(4n);
    expect(vmcall(p, vp, get1, INPUT_GPA, INPUT_GPA + 8n).resultValue).toBe(4n);
  });

  test('invalid hypercall input value (rep count on a simple call) -> 3', () => {
    const { p, vp } = setup();
    const o = vmcall(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallEnablePartitionVtl, repCount: 1 }));
    expect(o.resultValue).toBe(3n);
  });

  test('successful call advances RIP by 3 and writes RAX = result value (GetVpRegisters, 1 rep)', () => {
    const { p, vp } = setup();
    p.setReg(vp, R.HvX64RegisterRsp, 0x0000_7fff_0000_1230n);
    p.memory.write(INPUT_GPA, getRegsInput([R.HvX64RegisterRsp]));
    const o = vmcall(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallGetVpRegisters, repCount: 1 }));
    expect(o.exception).toBeUndefined();
    expect(o.resultValue).toBe(encodeHypercallResult(HvStatus.HV_STATUS_SUCCESS, 1));
    expect(o.resultValue).toBe(0x0000_0001_0000_0000n);
    expect(p.reg(vp, R.HvX64RegisterRax)).toBe(0x0000_0001_0000_0000n);
    expect(p.reg(vp, R.HvX64RegisterRip)).toBe(START_RIP + 3n);
    expect(p.memory.read(OUTPUT_GPA, 16).toString('hex')).toBe('30120000ff7f0000' + '0000000000000000');
  });

  test('successful simple call (EnablePartitionVtl, memory-based) returns 0 and has its effect', () => {
    const { p, vp } = setup();
    p.memory.write(INPUT_GPA, encodeEnablePartitionVtlInput({ targetPartitionId: HV_PARTITION_ID_SELF, targetVtl: 1, flags: 0, rsvdZ: 0n }));
    const o = vmcall(p, vp, BigInt(HvCallCode.HvCallEnablePartitionVtl));
    expect(o.resultValue).toBe(0n);
    expect(p.reg(vp, R.HvX64RegisterRax)).toBe(0n);
    expect(p.reg(vp, R.HvX64RegisterRip)).toBe(START_RIP + 3n);
    expect(p.vtls.get(1).enabled).toBe(true);
  });

  test('a failing call still completes: RIP advanced, RAX = status', () => {
    const { p, vp } = setup();
    // Partition id other than SELF -> HV_STATUS_INVALID_PARTITION_ID (0x0D).
    p.memory.write(INPUT_GPA, encodeEnablePartitionVtlInput({ targetPartitionId: 5n, targetVtl: 1, flags: 0, rsvdZ: 0n }));
    const o = vmcall(p, vp, BigInt(HvCallCode.HvCallEnablePartitionVtl));
    expect(o.resultValue).toBe(0x0dn);
    expect(p.reg(vp, R.HvX64RegisterRip)).toBe(START_RIP + 3n);
  });
});

describe('executeVmcall: HvCallGetVpRegisters rep semantics (§1.3, §2.7)', () => {
  test('rep count 2, start index 1: only element 1 is processed, reps completed = 2 (absolute)', () => {
    const { p, vp } = setup();
    p.setReg(vp, R.HvX64RegisterRsp, 0x1122_3344_5566_7788n);
    // Element 0 is an unknown register name: processing it would fail with INVALID_PARAMETER.
    p.memory.write(INPUT_GPA, getRegsInput([0xdead_beef, R.HvX64RegisterRsp]));
    const o = vmcall(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallGetVpRegisters, repCount: 2, repStartIndex: 1 }));
    expect(o.resultValue).toBe(0x0000_0002_0000_0000n);
    expect(p.reg(vp, R.HvX64RegisterRax)).toBe(0x0000_0002_0000_0000n);
    // Output element 1 (bytes 16..31) holds RSP, zero-extended to 128 bits.
    expect(p.memory.read(OUTPUT_GPA + 16n, 16).toString('hex')).toBe('8877665544332211' + '0000000000000000');
  });

  test('a failing element stops the call: status of that element, reps completed = its index', () => {
    const { p, vp } = setup();
    p.memory.write(INPUT_GPA, getRegsInput([R.HvX64RegisterRsp, R.HvX64RegisterRip, 0xdead_beef]));
    const o = vmcall(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallGetVpRegisters, repCount: 3 }));
    expect(o.resultValue).toBe(encodeHypercallResult(HvStatus.HV_STATUS_INVALID_PARAMETER, 2));
    expect(o.resultValue).toBe(0x0000_0002_0000_0005n);
  });

  test('rep count 0 on the rep call -> 3; start >= count -> 3', () => {
    const { p, vp } = setup();
    p.memory.write(INPUT_GPA, getRegsInput([R.HvX64RegisterRsp]));
    expect(vmcall(p, vp, BigInt(HvCallCode.HvCallGetVpRegisters)).resultValue).toBe(3n);
    expect(vmcall(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallGetVpRegisters, repCount: 1, repStartIndex: 1 })).resultValue).toBe(3n);
  });

  test('targeting a higher VTL than the caller -> ACCESS_DENIED (6)', () => {
    const { p, vp } = setup();
    const header = encodeVpRegistersHeader({
      partitionId: HV_PARTITION_ID_SELF,
      vpIndex: HV_VP_INDEX_SELF,
      targetVtl: encodeInputVtl({ targetVtl: 1, useTargetVtl: true }),
      rsvdZ: 0,
    });
    const elems = Buffer.alloc(8);
    elems.writeUInt32LE(R.HvX64RegisterRip, 0);
    p.memory.write(INPUT_GPA, Buffer.concat([header, elems]));
    expect(vmcall(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallGetVpRegisters, repCount: 1 })).resultValue).toBe(6n);
  });
});

describe('executeVmcall: fast (register-based) calls (§1.4)', () => {
  test('fast EnablePartitionVtl: RDX = bytes 0..7, R8 = bytes 8..15 of the input block', () => {
    const { p, vp } = setup();
    const control = encodeHypercallInput({ callCode: HvCallCode.HvCallEnablePartitionVtl, fast: true });
    const o = vmcall(p, vp, control, HV_PARTITION_ID_SELF, 0x02n /* TargetVtl = 2 at byte 8, Flags = 0 */);
    expect(o.resultValue).toBe(0n);
    expect(p.vtls.get(2).enabled).toBe(true);
    expect(p.vtls.get(1).enabled).toBe(false);
    // Fast input registers are preserved.
    expect(p.reg(vp, R.HvX64RegisterRdx)).toBe(HV_PARTITION_ID_SELF);
    expect(p.reg(vp, R.HvX64RegisterR8)).toBe(2n);
  });

  test('fast call whose input does not fit 16 bytes -> 3 (EnableVpVtl, 240-byte input)', () => {
    const { p, vp } = setup();
    const o = vmcall(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallEnableVpVtl, fast: true }), HV_PARTITION_ID_SELF, 0n);
    expect(o.resultValue).toBe(3n);
    expect(p.reg(vp, R.HvX64RegisterRax)).toBe(3n);
    expect(p.reg(vp, R.HvX64RegisterRip)).toBe(START_RIP + 3n);
  });

  test('fast call of a rep call with output is XMM fast (GetVpRegisters): 7 registers do not fit -> 3', () => {
    const { p, vp } = setup();
    // 16-byte header + 7 names (28 bytes) = 44 input bytes -> output from byte 48: 64 bytes left, 112 needed.
    const o = vmcall(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallGetVpRegisters, fast: true, repCount: 7 }), HV_PARTITION_ID_SELF, 0n);
    expect(o.resultValue).toBe(3n);
  });
});

describe('executeVmcall: illegal environments inject #UD (§1.1)', () => {
  test('CPL3 (CS.DPL = 3) -> #UD, RIP and RAX unchanged, nothing executed', () => {
    const { p, vp } = setup();
    const cs = longModeContext().cs;
    p.setRegisters(vp, 0, [{ name: R.HvX64RegisterCs, value: segmentToReg128({ ...cs, attributes: cs.attributes | (3 << 5) }) }], 'host');
    expect(p.cpl(vp)).toBe(3);
    p.memory.write(INPUT_GPA, encodeEnablePartitionVtlInput({ targetPartitionId: HV_PARTITION_ID_SELF, targetVtl: 1, flags: 0, rsvdZ: 0n }));
    const o = vmcall(p, vp, BigInt(HvCallCode.HvCallEnablePartitionVtl));
    expect(o.exception).toBe(X64Exception.UD);
    expect(o.exception).toBe(6);
    expect(p.reg(vp, R.HvX64RegisterRip)).toBe(START_RIP);
    expect(p.reg(vp, R.HvX64RegisterRax)).toBe(0xdead_beefn);
    expect(p.vtls.get(1).enabled).toBe(false);
  });

  test('CPL1 is not CPL0 either -> #UD', () => {
    const { p, vp } = setup();
    const cs = longModeContext().cs;
    p.setRegisters(vp, 0, [{ name: R.HvX64RegisterCs, value: segmentToReg128({ ...cs, attributes: cs.attributes | (1 << 5) }) }], 'host');
    expect(vmcall(p, vp, 0x7777n).exception).toBe(6);
    expect(p.reg(vp, R.HvX64RegisterRip)).toBe(START_RIP);
  });

  test('real mode (CR0.PE = 0) -> #UD, RIP unchanged', () => {
    const { p, vp } = setup();
    p.setRegisters(vp, 0, [{ name: R.HvX64RegisterCr0, value: reg64(0x0000_0010n) }], 'host');
    expect(p.inRealMode(vp)).toBe(true);
    const o = vmcall(p, vp, 0x7777n);
    expect(o.exception).toBe(X64Exception.UD);
    expect(p.reg(vp, R.HvX64RegisterRip)).toBe(START_RIP);
    expect(p.reg(vp, R.HvX64RegisterRax)).toBe(0xdead_beefn);
  });

  test('VtlCall with no higher VTL enabled -> #UD, no switch', () => {
    const { p, vp } = setup();
    p.setReg(vp, R.HvX64RegisterRax, 0n);
    const o = vmcall(p, vp, BigInt(HvCallCode.HvCallVtlCall));
    expect(o.exception).toBe(6);
    expect(vp.activeVtl).toBe(0);
    expect(p.reg(vp, R.HvX64RegisterRip)).toBe(START_RIP);
  });
});

describe('executeVmcall: 32-bit calling convention (EFER.LMA = 0)', () => {
  test('EDX:EAX = input value, result in EDX:EAX', () => {
    const { p, vp } = setup();
    p.setRegisters(vp, 0, [{ name: R.HvX64RegisterEfer, value: reg64(0n) }], 'host');
    expect(p.is64Bit(vp)).toBe(false);
    p.setReg(vp, R.HvX64RegisterRdx, 0n);
    p.setReg(vp, R.HvX64RegisterRax, 0x7777n); // unknown call code
    const o = executeVmcall(p, vp);
    expect(o.resultValue).toBe(2n);
    expect(p.reg(vp, R.HvX64RegisterRax)).toBe(2n);
    expect(p.reg(vp, R.HvX64RegisterRdx)).toBe(0n);
  });
});
