// The core's state/rules split (issue #18): typed per-VTL state (VtlArray, VtlSet), no transport
// state on the VP (the hypercall-page call site travels with the stub's execution).
import { HvMsr, HvRegisterName as R, Partition, callHypercallPage, longModeContext, reg64 } from '@vsm/core';
import { VtlSet } from '../src/vtl-array';
import { HvVpAssistPage } from '../src/tlfs/vsm';

function twoVtls(): Partition {
  const p = new Partition({ id: 't', architecture: 'x64', vpCount: 2, memoryBytes: 1n << 24n, maximumVtl: 2, labels: {} });
  p.enablePartitionVtl('host', 1, 0);
  p.enableVpVtl('host', 0, 1, longModeContext());
  return p;
}

test('enabled-VTL sets are VtlSets: bit n = VTL n, per partition and per VP', () => {
  const p = twoVtls();
  expect(p.enabledVtlSet).toBe(VtlSet.of(0, 1));
  expect(VtlSet.has(p.enabledVtlSet, 1)).toBe(true);
  expect(VtlSet.has(p.enabledVtlSet, 2)).toBe(false);
  expect(p.vps[0]!.enabledVtlSet).toBe(VtlSet.of(0, 1));
  expect(p.vps[1]!.enabledVtlSet).toBe(VtlSet.of(0));
  expect(p.mbecEnabledVtlSet).toBe(VtlSet.EMPTY);
  expect(VtlSet.below(2)).toBe(VtlSet.of(0, 1));
});

test('HvRegisterVsmVpSecureConfigVtlN is kept per lower VTL', () => {
  const p = twoVtls();
  p.enablePartitionVtl('host', 2, 1);
  p.enableVpVtl('host', 0, 2, longModeContext());
  const vp = p.vps[0]!;
  p.setRegisters(vp, 2, [{ name: R.HvRegisterVsmVpSecureConfigVtl0 + 1, value: reg64(0b10n) }], 'host');
  expect(p.getRegister(vp, 2, R.HvRegisterVsmVpSecureConfigVtl0 + 1).low).toBe(0b10n);
  expect(p.getRegister(vp, 2, R.HvRegisterVsmVpSecureConfigVtl0).low).toBe(0n);
  expect(vp.vtls.get(2).secureConfig.get(1)).toBe(0b10n);
});

test("a VtlCall made by the hypercall page records the caller's RAX/RCX from before the page's code ran", () => {
  const p = twoVtls();
  const vp = p.vps[0]!;
  // VTL1's VP assist page at 0x9000 (set by the host in VTL1); VTL0's hypercall page at 0x10000.
  p.setRegisters(vp, 1, [{ name: R.HvRegisterVpAssistPage, value: reg64(0x9000n | 1n) }], 'host');
  p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, 1n);
  p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, 0x10001n);
  p.setReg(vp, R.HvX64RegisterRax, 0xa0a0n);
  p.setReg(vp, R.HvX64RegisterRcx, 0n); // the VTL call control input (the 64-bit stub moves it to RAX)
  // 64-bit VtlCall stub: mov rax, rcx; mov ecx, 0x11; vmcall; ret.
  const o = callHypercallPage(p, vp, 0x0f);
  expect(o.vtlSwitch?.toVtl).toBe(1);
  const assist = p.vpAssistPage(vp, 1)!;
  expect(assist.readBigUInt64LE(HvVpAssistPage.VtlReturnX64Rax)).toBe(0xa0a0n);
  expect(assist.readBigUInt64LE(HvVpAssistPage.VtlReturnX64Rcx)).toBe(0n);
  // The call site is not VP state: nothing of it is left on the VP.
  expect(Object.keys(vp)).not.toContain('callSiteRaxRcx');
});
