// Secure register intercepts (issue #16; tlfs-vsm.md §3.8, TLFS vsm.md "Secure Register Intercepts"):
// HvX64RegisterCrInterceptControl and its masks, a lower VTL's locked MSR/register write that does not
// take effect and reaches the higher VTL's SINT0 as HV_X64_MSR_INTERCEPT_MESSAGE /
// HV_X64_REGISTER_INTERCEPT_MESSAGE; golden bytes of both messages and of the control register.
import { HvRegisterName as R, HvStatus, Partition, longModeContext, reg64 } from '@vsm/core';
import { HvMessageType, decodeHvMessageHeader } from '../src/tlfs/message';
import {
  HvX64MsrInterceptMessageLayout,
  HvX64RegisterInterceptMessageLayout,
  X64Msr,
  decodeMsrInterceptMessage,
  decodeRegisterInterceptMessage,
  encodeCrInterceptControl,
  encodeMsrInterceptMessage,
  encodeRegisterInterceptMessage,
} from '../src/tlfs/register-intercepts';
import { guestRegisterWrite } from '../src/rules/register-intercepts';
import { readMsr, writeMsr } from '../src/rules/msrs';

const SIMP = 0x30_0000n;
const RIP = 0x40_1000n;

function setup(top: 1 | 2 = 1) {
  const p = new Partition({ id: 'p-regint', architecture: 'x64', vpCount: 1, memoryBytes: 1n << 22n, maximumVtl: 2, labels: {} });
  const vp = p.vp(0);
  p.setReg(vp, R.HvX64RegisterRip, RIP);
  for (let v = 1; v <= top; v++) {
    p.enablePartitionVtl('host', v, 0);
    p.enableVpVtl('host', 0, v, longModeContext());
    p.setRegisters(
      vp,
      v,
      [
        { name: R.HvRegisterScontrol, value: reg64(1n) },
        { name: R.HvRegisterSipp, value: reg64((SIMP + BigInt(v) * 0x1000n) | 1n) },
        { name: R.HvRegisterSint0, value: reg64(0x40n) },
      ],
      'host',
    );
  }
  return { p, vp };
}
const slot = (p: Partition, vtl: 1 | 2) => p.readView(vtl, 0, SIMP + BigInt(vtl) * 0x1000n, 256);
const lock = (p: Partition, vtl: 1 | 2, ctl: bigint, extra: { name: number; value: bigint }[] = []) =>
  p.setRegisters(
    p.vp(0),
    vtl,
    [{ name: R.HvX64RegisterCrInterceptControl, value: reg64(ctl) }, ...extra.map((e) => ({ name: e.name, value: reg64(e.value) }))],
    'host',
  );

describe('golden bytes', () => {
  test('HV_REGISTER_CR_INTERCEPT_CONTROL bit positions (TLFS vsm.md)', () => {
    expect(encodeCrInterceptControl({ cr0Write: true })).toBe(1n);
    expect(encodeCrInterceptControl({ cr4Write: true })).toBe(2n);
    expect(encodeCrInterceptControl({ msrLstarWrite: true })).toBe(1n << 6n);
    expect(encodeCrInterceptControl({ msrEferWrite: true })).toBe(1n << 14n);
    expect(encodeCrInterceptControl({ gdtrWrite: true })).toBe(1n << 15n);
    expect(encodeCrInterceptControl({ msrSgxLaunchControlWrite: true })).toBe(1n << 24n);
  });
  test('HV_X64_MSR_INTERCEPT_MESSAGE, 64 bytes: MsrNumber +40, Rdx +48, Rax +56', () => {
    expect(HvX64MsrInterceptMessageLayout.size).toBe(64);
    const b = encodeMsrInterceptMessage({
      header: {
        vpIndex: 1,
        instructionLength: 2,
        interceptAccessType: 1,
        executionState: { cpl: 0, cr0Pe: true, cr0Am: false, eferLma: true, debugActive: false, interruptionPending: false, vtl: 0 },
        csSegment: { base: 0n, limit: 0, selector: 8, attributes: 0xa09b },
        rip: 0x1000n,
        rflags: 2n,
      },
      msrNumber: X64Msr.IA32_LSTAR,
      reserved: 0,
      rdx: 0x1122n,
      rax: 0x3344n,
    });
    expect(b.subarray(40).toString('hex')).toBe('820000c0000000002211000000000000' + '4433000000000000');
    expect(b.readUInt32LE(0)).toBe(1);
    expect(b[4]).toBe(2);
    expect(b[5]).toBe(1);
  });
  test('HV_X64_REGISTER_INTERCEPT_MESSAGE, 64 bytes: Flags +40, RegisterName +44, AccessInfo +48', () => {
    expect(HvX64RegisterInterceptMessageLayout.size).toBe(64);
    const b = encodeRegisterInterceptMessage({
      header: {
        vpIndex: 0,
        instructionLength: 0,
        interceptAccessType: 1,
        executionState: { cpl: 0, cr0Pe: true, cr0Am: false, eferLma: true, debugActive: false, interruptionPending: false, vtl: 0 },
        csSegment: { base: 0n, limit: 0, selector: 8, attributes: 0xa09b },
        rip: 0n,
        rflags: 2n,
      },
      flags: { isMemoryOp: false, rsvd: 0 },
      rsvd: 0,
      rsvd2: 0,
      registerName: R.HvX64RegisterCr0,
      accessInfo: { low: 0x8005_0033n, high: 0n },
    });
    expect(b.subarray(40).toString('hex')).toBe('00000000' + '00000400' + '3300058000000000' + '0000000000000000');
  });
});

describe('HvX64RegisterCrInterceptControl and masks', () => {
  test('per VTL > 0; reserved bits refused; masks read all ones until written', () => {
    const { p, vp } = setup();
    expect(() => lock(p, 1, 1n << 25n)).toThrow(expect.objectContaining({ status: HvStatus.HV_STATUS_INVALID_REGISTER_VALUE }));
    expect(() => p.setRegisters(vp, 0, [{ name: R.HvX64RegisterCrInterceptControl, value: reg64(1n) }], 'host')).toThrow(
      expect.objectContaining({ status: HvStatus.HV_STATUS_INVALID_PARAMETER }),
    );
    expect(p.getRegister(vp, 1, R.HvX64RegisterCrInterceptCr0Mask).low).toBe(0xffff_ffff_ffff_ffffn);
    lock(p, 1, 1n, [{ name: R.HvX64RegisterCrInterceptCr0Mask, value: 0x1_0000n }]);
    expect(p.getRegister(vp, 1, R.HvX64RegisterCrInterceptControl).low).toBe(1n);
    expect(p.getRegister(vp, 1, R.HvX64RegisterCrInterceptCr0Mask).low).toBe(0x1_0000n);
  });
});

describe('MSR intercepts through WRMSR/RDMSR', () => {
  test('a locked LSTAR write does not take effect; VTL1 gets HV_X64_MSR_INTERCEPT_MESSAGE and is entered', () => {
    const { p, vp } = setup();
    expect(writeMsr(p, vp, X64Msr.IA32_LSTAR, 0x1111n)).toEqual({});
    expect(readMsr(p, vp, X64Msr.IA32_LSTAR).value).toBe(0x1111n);
    lock(p, 1, encodeCrInterceptControl({ msrLstarWrite: true }));
    const o = writeMsr(p, vp, X64Msr.IA32_LSTAR, 0xdead_0000_beefn);
    expect(o.vtlSwitch).toMatchObject({ fromVtl: 0, toVtl: 1, entryReason: 2 });
    expect(vp.activeVtl).toBe(1);
    expect(p.getRegister(vp, 0, R.HvX64RegisterLstar).low).toBe(0x1111n);
    const m = slot(p, 1);
    expect(decodeHvMessageHeader(m)).toMatchObject({ messageType: HvMessageType.HvMessageTypeMsrIntercept, payloadSize: 64 });
    const msg = decodeMsrInterceptMessage(m, 16);
    expect(msg).toMatchObject({ msrNumber: X64Msr.IA32_LSTAR, rdx: 0xdeadn, rax: 0xbeefn });
    expect(msg.header).toMatchObject({ interceptAccessType: 1, rip: RIP });
    expect(msg.header.executionState.vtl).toBe(0);
    // VTL1 itself is not intercepted by its own control register.
    expect(writeMsr(p, vp, X64Msr.IA32_LSTAR, 0x2222n)).toEqual({});
    expect(p.getRegister(vp, 1, R.HvX64RegisterLstar).low).toBe(0x2222n);
  });
  test('reads are intercepted only when a read bit selects them; unlocked MSRs are the VTL’s own registers', () => {
    const { p, vp } = setup();
    lock(p, 1, encodeCrInterceptControl({ msrEferRead: true, msrStarWrite: true }));
    expect(writeMsr(p, vp, X64Msr.IA32_FMASK, 0x700n)).toEqual({});
    expect(p.getRegister(vp, 0, R.HvX64RegisterSfmask).low).toBe(0x700n);
    const r = readMsr(p, vp, X64Msr.IA32_EFER);
    expect(r.vtlSwitch).toMatchObject({ fromVtl: 0, toVtl: 1 });
    expect(decodeMsrInterceptMessage(slot(p, 1), 16)).toMatchObject({ msrNumber: X64Msr.IA32_EFER, header: { interceptAccessType: 0 } });
  });
  test('nested: VTL1 and VTL2 both lock LSTAR writes, VTL1 (the lower) receives it; only VTL2 locks: VTL2', () => {
    const { p, vp } = setup(2);
    lock(p, 1, encodeCrInterceptControl({ msrLstarWrite: true }));
    lock(p, 2, encodeCrInterceptControl({ msrLstarWrite: true, msrCstarWrite: true }));
    expect(writeMsr(p, vp, X64Msr.IA32_LSTAR, 1n).vtlSwitch).toMatchObject({ toVtl: 1 });
    expect(writeMsr(p, vp, X64Msr.IA32_CSTAR, 1n).vtlSwitch).toMatchObject({ fromVtl: 1, toVtl: 2 }); // VTL1's own write, VTL2 locks it
  });
  test('msrWrites/ReadsInterceptedFor: what a platform traps for a VTL (bits of enabled higher VTLs, ascending); writeMsr says intercepted', () => {
    const { p, vp } = setup(2);
    expect(p.msrWritesInterceptedFor(0)).toEqual([]);
    // Read bits and unmodelled MSRs (IA32_MISC_ENABLE, SGX launch control) are not write traps.
    lock(
      p,
      1,
      encodeCrInterceptControl({ msrLstarWrite: true, msrEferWrite: true, msrEferRead: true, ia32MiscEnableWrite: true, msrSgxLaunchControlWrite: true }),
    );
    lock(p, 2, encodeCrInterceptControl({ msrSysenterCsWrite: true }));
    expect(p.msrWritesInterceptedFor(0)).toEqual([X64Msr.IA32_SYSENTER_CS, X64Msr.IA32_EFER, X64Msr.IA32_LSTAR]);
    expect(p.msrWritesInterceptedFor(1)).toEqual([X64Msr.IA32_SYSENTER_CS]); // only VTL2's locks apply to VTL1
    expect(p.msrWritesInterceptedFor(2)).toEqual([]);
    expect(p.msrReadsInterceptedFor(0)).toEqual([X64Msr.IA32_EFER]); // read bits only (SYSENTER_CS has none)
    expect(p.msrReadsInterceptedFor(1)).toEqual([]);
    expect(p.readMsr(vp, X64Msr.IA32_LSTAR).intercepted).toBeUndefined(); // no read bit for LSTAR
    expect(p.writeMsr(vp, X64Msr.IA32_LSTAR, 5n).intercepted).toEqual({ heldBack: false });
    expect(vp.activeVtl).toBe(1);
    expect(p.writeMsr(vp, X64Msr.IA32_LSTAR, 5n).intercepted).toBeUndefined(); // VTL1's own write: performed
  });
  test('unmodelled architectural MSRs still #GP', () => {
    const { p, vp } = setup();
    expect(writeMsr(p, vp, X64Msr.IA32_MISC_ENABLE, 1n).exception).toBe(13);
  });
});

describe('register writes (MOV CR0 / LGDT ...)', () => {
  test('CR0.WP pinned with the CR0 mask: a write clearing WP intercepts, one changing other bits completes', () => {
    const { p, vp } = setup();
    lock(p, 1, encodeCrInterceptControl({ cr0Write: true, gdtrWrite: true }), [{ name: R.HvX64RegisterCrInterceptCr0Mask, value: 0x1_0000n }]);
    const cr0 = p.reg(vp, R.HvX64RegisterCr0);
    const write = (name: number, v: bigint) =>
      guestRegisterWrite(p, vp, name, reg64(v), () => p.setRegisters(vp, vp.activeVtl, [{ name, value: reg64(v) }], vp.activeVtl));
    expect(write(R.HvX64RegisterCr0, cr0 | 0x4n).status).toBe('completed'); // EM: not masked
    expect(p.reg(vp, R.HvX64RegisterCr0)).toBe(cr0 | 0x4n);
    const o = write(R.HvX64RegisterCr0, cr0 & ~0x1_0000n);
    expect(o.status).toBe('intercepted');
    expect(vp.activeVtl).toBe(1);
    expect(p.getRegister(vp, 0, R.HvX64RegisterCr0).low).toBe(cr0 | 0x4n);
    const m = decodeRegisterInterceptMessage(slot(p, 1), 16);
    expect(decodeHvMessageHeader(slot(p, 1))).toMatchObject({ messageType: HvMessageType.HvMessageTypeRegisterIntercept, payloadSize: 64 });
    expect(m).toMatchObject({ registerName: R.HvX64RegisterCr0, accessInfo: { low: cr0 & ~0x1_0000n, high: 0n } });
  });
});
