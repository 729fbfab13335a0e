// Partition-level VSM rules on the core (no service): VTL enablement order and caller rules
// (tlfs-vsm.md §4, tlfs-hypercalls.md §2.4-2.5), HvRegisterVsmPartitionConfig (tlfs-vsm.md §3.4),
// HV_X64_MSR_HYPERCALL / GUEST_OS_ID / VP_INDEX (tlfs-hypercalls.md §1.7, tlfs-intercepts.md §7.1).
import {
  HV_MAX_SUPPORTED_VTL,
  HvError,
  HvMsr,
  HvRegisterName as R,
  HvStatus,
  Partition,
  type PartitionSpec,
  type Reg128,
  X64Exception,
  longModeContext,
  reg64,
} from '@vsm/core';
import { HvVtlEntryReason, VSM_CODE_PAGE_OFFSETS_64 } from '../src/tlfs/vsm';

function statusOf(fn: () => unknown): number {
  try {
    fn();
  } catch (e) {
    if (e instanceof HvError) return e.status;
    throw e;
  }
  throw new Error('expected an HvError, nothing was thrown');
}

function newPartition(over: Partial<PartitionSpec> = {}): Partition {
  return new Partition({ id: 'p-rules', architecture: 'x64', vpCount: 2, memoryBytes: 1n << 20n, maximumVtl: 2, labels: {}, ...over });
}

const ctx1 = { ...longModeContext(), rip: 0xffff_f800_0000_1000n, rsp: 0xffff_f800_0010_0000n, cr3: 0x5000n };

describe('status values used here', () => {
  test('numeric values', () => {
    expect(HvStatus.HV_STATUS_INVALID_PARAMETER).toBe(0x05);
    expect(HvStatus.HV_STATUS_ACCESS_DENIED).toBe(0x06);
    expect(HvStatus.HV_STATUS_INVALID_VP_INDEX).toBe(0x0e);
    expect(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE).toBe(0x50);
    expect(HvStatus.HV_STATUS_INVALID_VTL_STATE).toBe(0x51);
    expect(HvStatus.HV_STATUS_VTL_ALREADY_ENABLED).toBe(0x86);
    expect(X64Exception).toEqual({ BP: 3, UD: 6, GP: 13, PF: 14 });
    expect(HV_MAX_SUPPORTED_VTL).toBe(2);
  });
});

describe('VTL enablement order (host caller)', () => {
  test('a new partition has only VTL0, on the partition and on every VP', () => {
    const p = newPartition();
    expect(p.enabledVtlSet).toBe(0b001);
    expect(p.vps.map((vp) => vp.enabledVtlSet)).toEqual([0b001, 0b001]);
    expect(p.vps.map((vp) => vp.activeVtl)).toEqual([0, 0]);
  });

  test('EnableVpVtl before EnablePartitionVtl -> INVALID_VTL_STATE (0x51)', () => {
    const p = newPartition();
    expect(statusOf(() => p.enableVpVtl('host', 0, 1, ctx1))).toBe(0x51);
    expect(p.vps[0]!.enabledVtlSet).toBe(0b001);
  });

  test('partition then VP: succeeds, loads the initial context, does not switch VTL', () => {
    const p = newPartition();
    p.enablePartitionVtl('host', 1, 0);
    expect(p.enabledVtlSet).toBe(0b011);
    p.enableVpVtl('host', 0, 1, ctx1);
    const vp = p.vps[0]!;
    expect(vp.enabledVtlSet).toBe(0b011);
    expect(p.vps[1]!.enabledVtlSet).toBe(0b001);
    expect(vp.activeVtl).toBe(0);
    expect(p.getRegister(vp, 1, R.HvX64RegisterRip)).toEqual(reg64(ctx1.rip));
    expect(p.getRegister(vp, 1, R.HvX64RegisterRsp)).toEqual(reg64(ctx1.rsp));
    expect(p.getRegister(vp, 1, R.HvX64RegisterCr3)).toEqual(reg64(0x5000n));
    // VTL0 private state untouched
    expect(p.getRegister(vp, 0, R.HvX64RegisterRip)).toEqual(reg64(0n));
    expect(p.getRegister(vp, 0, R.HvX64RegisterCr3)).toEqual(reg64(0n));
  });

  test('EnableVpVtl twice -> VTL_ALREADY_ENABLED (0x86)', () => {
    const p = newPartition();
    p.enablePartitionVtl('host', 1, 0);
    p.enableVpVtl('host', 0, 1, ctx1);
    expect(statusOf(() => p.enableVpVtl('host', 0, 1, ctx1))).toBe(0x86);
  });

  test('EnableVpVtl on a VP that does not exist -> INVALID_VP_INDEX (0x0E)', () => {
    const p = newPartition();
    p.enablePartitionVtl('host', 1, 0);
    expect(statusOf(() => p.enableVpVtl('host', 2, 1, ctx1))).toBe(0x0e);
    expect(statusOf(() => p.enableVpVtl('host', 99, 1, ctx1))).toBe(0x0e);
    expect(statusOf(() => p.enableVpVtl('host', -1, 1, ctx1))).toBe(0x0e);
  });

  test('EnableVpVtl for VTL0 or above the partition maximum -> INVALID_PARAMETER', () => {
    const p = newPartition({ maximumVtl: 1 });
    expect(statusOf(() => p.enableVpVtl('host', 0, 0, ctx1))).toBe(0x05);
    expect(statusOf(() => p.enableVpVtl('host', 0, 2, ctx1))).toBe(0x05);
  });

  test('EnableVpVtl with a real-mode initial context -> INVALID_REGISTER_VALUE, nothing enabled', () => {
    const p = newPartition();
    p.enablePartitionVtl('host', 1, 0);
    expect(statusOf(() => p.enableVpVtl('host', 0, 1, { ...ctx1, cr0: 0x10n }))).toBe(0x50);
    expect(p.vps[0]!.enabledVtlSet).toBe(0b001);
  });

  test('EnablePartitionVtl: already enabled -> INVALID_VTL_STATE; above the maximum -> ACCESS_DENIED; bad flag -> INVALID_PARAMETER', () => {
    const p = newPartition({ maximumVtl: 1 });
    p.enablePartitionVtl('host', 1, 0);
    expect(statusOf(() => p.enablePartitionVtl('host', 1, 0))).toBe(0x51);
    expect(statusOf(() => p.enablePartitionVtl('host', 2, 0))).toBe(0x06);
    expect(statusOf(() => p.enablePartitionVtl('host', 0, 0))).toBe(0x06);
    expect(statusOf(() => newPartition().enablePartitionVtl('host', 1, 0x2))).toBe(0x05);
  });

  test('EnableMbec flag is recorded in HvRegisterVsmPartitionStatus', () => {
    const p = newPartition();
    p.enablePartitionVtl('host', 1, 1);
    const vp = p.vps[0]!;
    // EnabledVtlSet 0b011, MaximumVtl 2, MbecEnabledVtlSet 0b010
    expect(p.getRegister(vp, 0, R.HvRegisterVsmPartitionStatus)).toEqual(reg64(0x0_0022_0003n));
  });

  test('the host may enable VTL2 directly (caller rules do not apply)', () => {
    const p = newPartition();
    p.enablePartitionVtl('host', 2, 0);
    p.enableVpVtl('host', 1, 2, ctx1);
    expect(p.enabledVtlSet).toBe(0b101);
    expect(p.vps[1]!.enabledVtlSet).toBe(0b101);
  });
});

describe('VTL enablement by guest callers (tlfs-vsm.md §4)', () => {
  test('VTL0 may enable VTL1 for the partition (highest enabled VTL below the target)', () => {
    const p = newPartition();
    p.enablePartitionVtl(0, 1, 0);
    expect(p.enabledVtlSet).toBe(0b011);
  });

  test('a VTL0 caller enabling VTL2 when VTL1 is enabled -> ACCESS_DENIED; VTL1 may', () => {
    const p = newPartition();
    p.enablePartitionVtl('host', 1, 0);
    expect(statusOf(() => p.enablePartitionVtl(0, 2, 0))).toBe(0x06);
    expect(p.enabledVtlSet).toBe(0b011);
    p.enablePartitionVtl(1, 2, 0);
    expect(p.enabledVtlSet).toBe(0b111);
  });

  test('VP level: a VTL0 caller enabling VTL2 when VTL1 is enabled -> ACCESS_DENIED', () => {
    const p = newPartition();
    p.enablePartitionVtl('host', 1, 0);
    p.enablePartitionVtl('host', 2, 0);
    expect(statusOf(() => p.enableVpVtl(0, 0, 2, ctx1, 0))).toBe(0x06);
    expect(p.vps[0]!.enabledVtlSet).toBe(0b001);
  });

  test('VP level: VTL0 enables VTL1 only on its own VP, and only before VTL1 runs on any VP', () => {
    const p = newPartition();
    p.enablePartitionVtl(0, 1, 0);
    expect(statusOf(() => p.enableVpVtl(0, 1, 1, ctx1, 0))).toBe(0x06); // other VP
    p.enableVpVtl(0, 0, 1, ctx1, 0); // own VP
    expect(p.vps[0]!.enabledVtlSet).toBe(0b011);
    expect(statusOf(() => p.enableVpVtl(0, 1, 1, ctx1, 1))).toBe(0x06); // VTL1 already exists on VP0
    p.enableVpVtl(1, 1, 1, ctx1, 0); // VTL1 enables the other VP itself
    expect(p.vps[1]!.enabledVtlSet).toBe(0b011);
  });

  test('a higher VTL may enable a lower VTL', () => {
    const p = newPartition();
    p.enablePartitionVtl('host', 2, 0);
    p.enablePartitionVtl(2, 1, 0);
    expect(p.enabledVtlSet).toBe(0b111);
  });
});

describe('HvRegisterVsmPartitionConfig (tlfs-vsm.md §3.4)', () => {
  function withVtl1() {
    const p = newPartition();
    p.enablePartitionVtl('host', 1, 0);
    p.enableVpVtl('host', 0, 1, ctx1);
    const vp = p.vps[0]!;
    const set = (v: bigint, vtl = 1) => p.setRegisters(vp, vtl, [{ name: R.HvRegisterVsmPartitionConfig, value: reg64(v) }], 'host');
    const get = (vtl = 1) => p.getRegister(vp, vtl, R.HvRegisterVsmPartitionConfig).low;
    return { p, vp, set, get };
  }

  test('default: DefaultVtlProtectionMask = 0xF (RWX + UMX) and ZeroMemoryOnReset = 1', () => {
    const { get } = withVtl1();
    expect(get()).toBe(0x3en);
  });

  test('EnableVtlProtection is write-once: setting works, clearing -> INVALID_REGISTER_VALUE', () => {
    const { set, get } = withVtl1();
    set(0x3fn);
    expect(get()).toBe(0x3fn);
    expect(statusOf(() => set(0x3en))).toBe(0x50);
    expect(get()).toBe(0x3fn);
    // other defined bits may still change while EnableVtlProtection stays set
    set(0x27fn);
    expect(get()).toBe(0x27fn);
  });

  test('DefaultVtlProtectionMask cannot change once protection is enabled', () => {
    const { set, get } = withVtl1();
    set(0x2fn); // EnableVtlProtection, mask 0x7 (RWX, no UMX)
    expect(statusOf(() => set(0x3fn))).toBe(0x50);
    expect(get()).toBe(0x2fn);
  });

  test('DefaultVtlProtectionMask must include R and W', () => {
    const { set, get } = withVtl1();
    expect(statusOf(() => set(0x2an))).toBe(0x50); // mask 0x5: R, KX
    expect(statusOf(() => set(0x24n))).toBe(0x50); // mask 0x2: W only
    expect(get()).toBe(0x3en);
  });

  test.each([7, 8, 10, 12, 63])('reserved bit %i -> INVALID_REGISTER_VALUE', (bit) => {
    const { set, get } = withVtl1();
    expect(statusOf(() => set(0x3en | (1n << BigInt(bit))))).toBe(0x50);
    expect(get()).toBe(0x3en);
  });

  test('VTL0 has no instance: write -> INVALID_PARAMETER, read -> 0', () => {
    const { set, get } = withVtl1();
    expect(statusOf(() => set(0x3fn, 0))).toBe(0x05);
    expect(get(0)).toBe(0n);
  });

  test('a 64-bit register with bits 127:64 set -> INVALID_REGISTER_VALUE', () => {
    const { p, vp } = withVtl1();
    expect(statusOf(() => p.setRegisters(vp, 1, [{ name: R.HvRegisterVsmPartitionConfig, value: { low: 0x3fn, high: 1n } }], 'host'))).toBe(0x50);
  });

  test('a batch is all-or-nothing', () => {
    const { p, vp, get } = withVtl1();
    const batch: { name: number; value: Reg128 }[] = [
      { name: R.HvX64RegisterRsp, value: reg64(0x1234n) },
      { name: R.HvRegisterVsmPartitionConfig, value: reg64(0x3en | (1n << 8n)) },
    ];
    expect(statusOf(() => p.setRegisters(vp, 1, batch, 'host'))).toBe(0x50);
    expect(p.getRegister(vp, 1, R.HvX64RegisterRsp)).toEqual(reg64(ctx1.rsp));
    expect(get()).toBe(0x3en);
  });

  test('registers of a VTL not enabled on the VP -> INVALID_VTL_STATE', () => {
    const { p } = withVtl1();
    expect(statusOf(() => p.getRegister(p.vps[1]!, 1, R.HvX64RegisterRip))).toBe(0x51);
    expect(statusOf(() => p.setRegisters(p.vps[0]!, 2, [{ name: R.HvX64RegisterRip, value: reg64(1n) }], 'host'))).toBe(0x51);
  });
});

describe('read-only VSM registers', () => {
  test('VsmVpStatus, VsmCodePageOffsets; writes -> INVALID_PARAMETER', () => {
    const p = newPartition();
    p.enablePartitionVtl('host', 1, 0);
    p.enableVpVtl('host', 0, 1, ctx1);
    const vp = p.vps[0]!;
    // ActiveVtl 0, EnabledVtlSet 0b011 at 31:16
    expect(p.getRegister(vp, 0, R.HvRegisterVsmVpStatus)).toEqual(reg64(0x0003_0000n));
    p.switchVtl(vp, 1, HvVtlEntryReason.HvVtlEntryVtlCall, false);
    expect(p.getRegister(vp, 1, R.HvRegisterVsmVpStatus)).toEqual(reg64(0x0003_0001n));
    expect(p.getRegister(vp, 0, R.HvRegisterVsmCodePageOffsets)).toEqual(reg64(VSM_CODE_PAGE_OFFSETS_64));
    for (const name of [
      R.HvRegisterVsmVpStatus,
      R.HvRegisterVsmPartitionStatus,
      R.HvRegisterVsmCapabilities,
      R.HvRegisterVsmCodePageOffsets,
      R.HvRegisterVpIndex,
    ]) {
      expect(statusOf(() => p.setRegisters(vp, 1, [{ name, value: reg64(0n) }], 'host'))).toBe(0x05);
    }
  });
});

describe('synthetic MSRs (tlfs-hypercalls.md §1.7, tlfs-intercepts.md §7.1)', () => {
  const GUEST_OS_ID = 0x8100_0000_0000_0001n;
  const HC_GPFN = 0x10n;

  function x64() {
    const p = newPartition();
    return { p, vp: p.vps[0]! };
  }

  test('HV_X64_MSR_HYPERCALL: Enable is ignored while GUEST_OS_ID is 0', () => {
    const { p, vp } = x64();
    expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, (HC_GPFN << 12n) | 1n)).toEqual({});
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL)).toEqual({ value: 0x1_0000n });
    expect(p.overlays.find('hypercall', 0, null)).toBeUndefined();
    // The RAM page at the GPFN shows through.
    expect(p.readView(0, 0, HC_GPFN << 12n, 4).toString('hex')).toBe('00000000');
  });

  test('with a guest OS id, Enable places the hypercall page overlay at the GPFN', () => {
    const { p, vp } = x64();
    expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, GUEST_OS_ID)).toEqual({});
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID)).toEqual({ value: GUEST_OS_ID });
    expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, (HC_GPFN << 12n) | 1n)).toEqual({});
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL)).toEqual({ value: 0x1_0001n });
    expect(p.overlays.find('hypercall', 0, null)?.gpfn).toBe(HC_GPFN);
    expect(p.readView(0, 0, HC_GPFN << 12n, 4).toString('hex')).toBe('0f01d9c3'); // AMD is the default vendor
    // The overlay is read-only for the guest.
    expect(p.writeView(0, 0, HC_GPFN << 12n, Buffer.from([0x90]))).toBe(false);
    expect(p.readView(0, 0, HC_GPFN << 12n, 1)[0]).toBe(0x0f);
  });

  test('an Intel partition gets VMCALL in its page', () => {
    const p = newPartition({ vendor: 'intel' });
    const vp = p.vps[0]!;
    p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, GUEST_OS_ID);
    p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, (HC_GPFN << 12n) | 1n);
    expect(p.readView(0, 0, HC_GPFN << 12n, 4).toString('hex')).toBe('0f01c1c3');
  });

  test('RsvdP bits 11:2 are preserved (written ones are not taken)', () => {
    const { p, vp } = x64();
    p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, GUEST_OS_ID);
    expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, (HC_GPFN << 12n) | 0xffdn)).toEqual({});
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL)).toEqual({ value: 0x1_0001n });
  });

  test('Locked: once set, later writes #GP and change nothing', () => {
    const { p, vp } = x64();
    p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, GUEST_OS_ID);
    expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, (HC_GPFN << 12n) | 0x3n)).toEqual({});
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL).value).toBe(0x1_0003n);
    expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, (0x20n << 12n) | 0x1n)).toEqual({ exception: 13 });
    expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, 0n)).toEqual({ exception: X64Exception.GP });
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL).value).toBe(0x1_0003n);
    expect(p.overlays.find('hypercall', 0, null)?.gpfn).toBe(HC_GPFN);
    // the host register path refuses too
    expect(statusOf(() => p.setRegisters(vp, 0, [{ name: R.HvX64RegisterHypercall, value: reg64(0n) }], 'host'))).toBe(0x05);
  });

  test('a GPFN beyond the GPA space -> #GP', () => {
    const { p, vp } = x64();
    p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, GUEST_OS_ID);
    expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, (0x100n << 12n) | 1n)).toEqual({ exception: 13 }); // 1 MiB = GPFN 0x100
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL).value).toBe(0n);
    expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, (0xffn << 12n) | 1n)).toEqual({}); // last page is fine
  });

  test('writing 0 to GUEST_OS_ID disables the hypercall page (overlay gone, RAM visible again)', () => {
    const { p, vp } = x64();
    p.memory.write(HC_GPFN << 12n, Buffer.from('deadbeef', 'hex'));
    p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, GUEST_OS_ID);
    p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, (HC_GPFN << 12n) | 1n);
    expect(p.readView(0, 0, HC_GPFN << 12n, 4).toString('hex')).toBe('0f01d9c3');
    expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, 0n)).toEqual({});
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL)).toEqual({ value: 0x1_0000n });
    expect(p.overlays.find('hypercall', 0, null)).toBeUndefined();
    expect(p.readView(0, 0, HC_GPFN << 12n, 4).toString('hex')).toBe('deadbeef');
  });

  test('GUEST_OS_ID and HYPERCALL are per VTL', () => {
    const { p, vp } = x64();
    p.enablePartitionVtl('host', 1, 0);
    p.enableVpVtl('host', 0, 1, ctx1);
    p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, GUEST_OS_ID);
    p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, (HC_GPFN << 12n) | 1n);
    p.switchVtl(vp, 1, HvVtlEntryReason.HvVtlEntryVtlCall, false);
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID)).toEqual({ value: 0n });
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL)).toEqual({ value: 0n });
    expect(p.overlays.find('hypercall', 1, null)).toBeUndefined();
    expect(p.readView(1, 0, HC_GPFN << 12n, 4).toString('hex')).toBe('00000000'); // VTL1 does not see VTL0's page
  });

  test('VP_INDEX reads the VP index and is read-only (#GP on write)', () => {
    const p = newPartition();
    expect(p.readMsr(p.vps[0]!, HvMsr.HV_X64_MSR_VP_INDEX)).toEqual({ value: 0n });
    expect(p.readMsr(p.vps[1]!, HvMsr.HV_X64_MSR_VP_INDEX)).toEqual({ value: 1n });
    expect(p.writeMsr(p.vps[1]!, HvMsr.HV_X64_MSR_VP_INDEX, 5n)).toEqual({ exception: 13 });
    expect(p.readMsr(p.vps[1]!, HvMsr.HV_X64_MSR_VP_INDEX)).toEqual({ value: 1n });
  });

  test('unknown synthetic MSRs -> #GP on read and write', () => {
    const { p, vp } = x64();
    for (const msr of [0x4000_0005, 0x4000_00ff, 0x4000_0100]) {
      expect(p.readMsr(vp, msr)).toEqual({ value: 0n, exception: 13 });
      expect(p.writeMsr(vp, msr, 1n)).toEqual({ exception: 13 });
    }
  });

  test('EOM is write-only: a read returns 0 (tlfs-overlays-synic.md §5.1; KVM; kvm-unit-tests hyperv_synic)', () => {
    const { p, vp } = x64();
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_EOM)).toEqual({ value: 0n });
  });

  test('constant frequency MSRs read, SVERSION = 1', () => {
    const { p, vp } = x64();
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_TSC_FREQUENCY)).toEqual({ value: 1_000_000_000n });
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_APIC_FREQUENCY)).toEqual({ value: 200_000_000n });
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_SVERSION)).toEqual({ value: 1n });
    expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_SVERSION, 2n)).toEqual({ exception: 13 });
  });

  test('arm64 partition: MSR access -> #UD', () => {
    const p = newPartition({ architecture: 'arm64' });
    const vp = p.vps[0]!;
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID)).toEqual({ value: 0n, exception: X64Exception.UD });
    expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, GUEST_OS_ID)).toEqual({ exception: 6 });
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_VP_INDEX).exception).toBe(6);
    expect(p.getRegister(vp, 0, R.HvRegisterGuestOsId)).toEqual(reg64(0n)); // the write had no effect
  });
});
