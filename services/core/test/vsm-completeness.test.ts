// Issue #16 (this half): address translation (HvCallTranslateVirtualAddress(Ex), the page walk, GVAs of
// memory actions in intercept messages), XMM fast hypercalls, what guests call early (TLB flushes,
// synthetic cluster IPIs, long spin wait), MBEC and the caller-first deviation. Golden bytes are
// written by hand from the TLFS tables cited in src/tlfs/translate.ts and src/tlfs/flush-ipi.ts.
import { HvStatus, Partition, encodeHypercallInput, executeVmcall, guestAccess, implementedHypercalls, longModeContext, resolveActionAddress } from '@vsm/core';
import { HvCallCode, decodeHypercallInput, decodeHypercallResult } from '../src/tlfs/hypercall';
import { HvRegisterName as R, reg64 } from '../src/tlfs/registers';
import {
  HvTranslateGvaControlFlagsLayout,
  HvTranslateGvaResultCode as C,
  HvTranslateVirtualAddressExOutputLayout,
  HvTranslateVirtualAddressInputLayout,
  HvTranslateVirtualAddressOutputLayout,
} from '../src/tlfs/translate';
import {
  HvFlushVirtualAddressSpaceExInputLayout,
  HvFlushVirtualAddressSpaceInputLayout,
  HvNotifyLongSpinWaitInputLayout,
  HvSendSyntheticClusterIpiExInputLayout,
  HvSendSyntheticClusterIpiInputLayout,
  decodeVpSet,
} from '../src/tlfs/flush-ipi';
import { HV_PARTITION_ID_SELF, decodeMemoryInterceptMessage } from '@vsm/core';
import { HV_VP_INDEX_SELF } from '../src/tlfs/vsm';
import { translateGva } from '../src/rules/paging';
import { HvMsr } from '../src/tlfs/msr';

const hex = (...parts: string[]): Buffer => Buffer.from(parts.join('').replace(/[\s_]/g, ''), 'hex');
const SELF = HV_PARTITION_ID_SELF;

type Raised = { vp: number; vtl: number; vector: number };
function partition(opts: { vpCount?: number; raised?: Raised[] } = {}) {
  const raised = opts.raised;
  const p = new Partition({
    id: 'c16',
    architecture: 'x64',
    vpCount: opts.vpCount ?? 2,
    memoryBytes: 16n << 20n,
    maximumVtl: 1,
    labels: {},
    platform: raised ? { raiseInterrupt: (vp, vtl, vector) => void raised.push({ vp, vtl, vector }) } : undefined,
  });
  return p;
}

/** VTL1 enabled on every VP; VP0 switched into VTL1 (the caller). */
function withVtl1(p: Partition) {
  p.enablePartitionVtl('host', 1, 1 /* EnableMbec */);
  for (const vp of p.vps) p.enableVpVtl('host', vp.index, 1, longModeContext());
  const vp = p.vp(0);
  p.switchVtl(vp, 1, 0, false);
  return vp;
}

function call(p: Partition, vp: ReturnType<Partition['vp']>, control: bigint, rdx: bigint, r8: bigint) {
  p.setReg(vp, R.HvX64RegisterRcx, control);
  p.setReg(vp, R.HvX64RegisterRdx, rdx);
  p.setReg(vp, R.HvX64RegisterR8, r8);
  const o = executeVmcall(p, vp);
  return { o, ...decodeHypercallResult(o.resultValue) };
}

const IN = 0x10000n;
const OUT = 0x11000n;

/** 4-level page tables in VTL `vtl` of `vp`: CR3 at 0x100000, tables allocated from 0x101000. */
function paging(p: Partition, vp: ReturnType<Partition['vp']>, vtl: 0 | 1, cr4Extra = 0n, cr0Extra = 0n) {
  let next = 0x101000n;
  const cr3 = 0x100000n;
  p.memory.write(cr3, Buffer.alloc(4096));
  const rd = (a: bigint) => p.memory.read(a, 8).readBigUInt64LE(0);
  const wr = (a: bigint, v: bigint) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(v);
    p.memory.write(a, b);
  };
  p.setRegisters(
    vp,
    vtl,
    [
      { name: R.HvX64RegisterCr3, value: reg64(cr3) },
      { name: R.HvX64RegisterCr4, value: reg64(0x20n | cr4Extra) }, // PAE
      { name: R.HvX64RegisterCr0, value: reg64(0x80000011n | cr0Extra) }, // PG | ET | PE
      { name: R.HvX64RegisterEfer, value: reg64(0xd01n) }, // SCE | LME | LMA | NXE
    ],
    'host',
  );
  /** Maps `gva` -> `gpa` with leaf `flags` (upper levels P|RW|US), at `level` (1 = 4 KiB, 2 = 2 MiB). */
  const map = (gva: bigint, gpa: bigint, flags: bigint, level = 1, upper = 0x7n) => {
    let table = cr3;
    for (let l = 4; l > level; l--) {
      const at = table + ((gva >> BigInt(12 + 9 * (l - 1))) & 0x1ffn) * 8n;
      let e = rd(at);
      if ((e & 1n) === 0n) {
        e = next | upper;
        p.memory.write(next, Buffer.alloc(4096));
        next += 0x1000n;
        wr(at, e);
      }
      table = e & 0xffff_ffff_f000n;
    }
    const at = table + ((gva >> BigInt(12 + 9 * (level - 1))) & 0x1ffn) * 8n;
    wr(at, gpa | flags | (level > 1 ? 0x80n : 0n));
    return at;
  };
  return { map, rd };
}

describe('golden bytes of the new layouts', () => {
  test('HvCallTranslateVirtualAddress input/output, HV_TRANSLATE_GVA_CONTROL_FLAGS, the Ex output (OpenVMM layout)', () => {
    const flags = HvTranslateGvaControlFlagsLayout.pack({ validateRead: true, validateWrite: true, setPageTableBits: true, userAccess: true, inputVtl: 0x10 });
    expect(flags).toBe(0x1000_0000_0000_0093n);
    const input = HvTranslateVirtualAddressInputLayout.encode({
      partitionId: SELF,
      vpIndex: HV_VP_INDEX_SELF,
      rsvdZ: 0,
      controlFlags: HvTranslateGvaControlFlagsLayout.unpack(flags),
      gvaPage: 0x7f_0000_0201n,
    });
    expect(input).toEqual(
      hex(
        'ffffffffffffffff', // +0  PartitionId = HV_PARTITION_ID_SELF
        'feffffff', //          +8  VpIndex = HV_VP_INDEX_SELF
        '00000000', //          +12 Reserved
        '9300000000000010', //  +16 ControlFlags: read|write|set bits|user, InputVtl 0x10 (use VTL0) in 63:56
        '010200007f000000', //  +24 GvaPage
      ),
    );
    const out = HvTranslateVirtualAddressOutputLayout.encode({ translationResult: { resultCode: 0, cacheType: 6, overlayPage: true }, gpaPage: 0x1234n });
    expect(out).toEqual(hex('00000000', '06', '01', '0000', '3412000000000000')); // ResultCode, CacheType, OverlayPage bit 40, GpaPage
    const ex = HvTranslateVirtualAddressExOutputLayout.encode({
      translationResult: { resultCode: 1, cacheType: 0, overlayPage: false },
      eventInfo: Buffer.alloc(32),
      gpaPage: 0x55n,
    });
    expect(ex.length).toBe(64);
    expect(ex).toEqual(Buffer.concat([hex('0100000000000000'), Buffer.alloc(8 + 32), hex('5500000000000000'), Buffer.alloc(8)]));
  });

  test('flush, IPI and spin-wait inputs; HV_VP_SET', () => {
    expect(HvFlushVirtualAddressSpaceInputLayout.encode({ addressSpace: 0x100000n, flags: 3n, processorMask: 0x51n })).toEqual(
      hex('0000100000000000', '0300000000000000', '5100000000000000'),
    );
    expect(HvFlushVirtualAddressSpaceExInputLayout.encode({ addressSpace: 1n, flags: 0n, format: 0n, validBanksMask: 5n })).toEqual(
      hex('0100000000000000', '0000000000000000', '0000000000000000', '0500000000000000'),
    );
    expect(HvSendSyntheticClusterIpiInputLayout.encode({ vector: 0xfe, targetVtl: 0x10, rsvdZ: 0n, processorMask: 3n })).toEqual(
      hex('fe000000', '10', '000000', '0300000000000000'),
    );
    expect(HvSendSyntheticClusterIpiExInputLayout.encode({ vector: 0x30, targetVtl: 0, rsvdZ: 0n, format: 1n, validBanksMask: 0n })).toEqual(
      hex('30000000', '00', '000000', '0100000000000000', '0000000000000000'),
    );
    expect(HvNotifyLongSpinWaitInputLayout.encode({ spinCount: 0x1000, rsvdZ: 0 })).toEqual(hex('00100000', '00000000'));
    // TLFS example: VPs {0, 5, 130} = ValidBanksMask 0x5, BankContents {0x21, 0x4}.
    expect(decodeVpSet(0n, 5n, [0x21n, 0x4n])).toEqual({ vps: [0, 5, 130] });
    expect(decodeVpSet(1n, 0n, [])).toEqual({ vps: 'all' });
    expect(decodeVpSet(0n, 5n, [0x21n])).toHaveProperty('error');
    expect(decodeVpSet(2n, 0n, [])).toHaveProperty('error');
  });
});

describe('the page walk (rules/paging.ts)', () => {
  test('4 KiB and 2 MiB pages, accessed/dirty bits, PAT cache type, not present, non-canonical, table outside RAM', () => {
    const p = partition();
    const vp = p.vp(0);
    const { map, rd } = paging(p, vp, 0);
    const leaf = map(0x7f_0020_1000n, 0x30_0000n, 0x7n); // P|RW|US
    expect(translateGva(p, vp, 0, 0x7f_0020_1234n, { access: ['read'] })).toMatchObject({ code: C.HvTranslateGvaSuccess, gpa: 0x30_0234n, cacheType: 6 });
    translateGva(p, vp, 0, 0x7f_0020_1234n, { access: ['write'], setPageTableBits: true });
    expect(rd(leaf) & 0x60n).toBe(0x60n); // accessed and dirty
    map(0x40_0000n, 0x60_0000n, 0x3n | 0x10n, 2); // 2 MiB, P|RW, PCD -> PAT index 2 (UC- in the reset PAT)
    expect(translateGva(p, vp, 0, 0x40_1234n, { access: [] })).toMatchObject({ code: 0, gpa: 0x60_1234n, cacheType: 7 });
    expect(translateGva(p, vp, 0, 0x7f_0020_3000n, { access: [] }).code).toBe(C.HvTranslateGvaPageNotPresent);
    expect(translateGva(p, vp, 0, 0x8000_0000_0000n, { access: [] }).code).toBe(C.HvTranslateGvaInvalidPageTableFlags);
    map(0x9000_0000n, 0x50_0000n, 0x1n);
    // A leaf beyond RAM translates (the GPA check is the caller's); a table beyond RAM is GpaUnmapped.
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(0x2_0000_0000n | 7n);
    p.memory.write(0x100000n + 8n * 0x1ffn, b); // PML4[511] -> a table outside RAM
    expect(translateGva(p, vp, 0, 0xffff_ff80_0000_0000n, { access: [] }).code).toBe(C.HvTranslateGvaGpaUnmapped);
    // Paging off: the GVA is the GPA.
    p.setRegisters(vp, 0, [{ name: R.HvX64RegisterCr0, value: reg64(0x11n) }], 'host');
    expect(translateGva(p, vp, 0, 0x1234_5678n, { access: ['write'] })).toMatchObject({ code: 0, gpa: 0x1234_5678n, paging: false });
  });

  test('rights: user/supervisor, CR0.WP, NX, SMEP, SMAP with RFLAGS.AC, privilege exempt, reserved bits', () => {
    const p = partition();
    const vp = p.vp(0);
    const { map } = paging(p, vp, 0, 0x30_0000n /* SMEP | SMAP */, 0x1_0000n /* WP */);
    map(0x1000n, 0x20_0000n, 0x1n); // P only: supervisor, read-only
    map(0x2000n, 0x20_1000n, 0x5n | (1n << 63n)); // P|US, NX
    map(0x3000n, 0x20_2000n, 0x7n); // user RW
    const t = (gva: bigint, access: ('read' | 'write' | 'execute')[], extra: object = {}) => translateGva(p, vp, 0, gva, { access, ...extra }).code;
    expect(t(0x1000n, ['read'], { mode: 'user' })).toBe(C.HvTranslateGvaPrivilegeViolation);
    expect(t(0x1000n, ['read'], { mode: 'supervisor' })).toBe(0);
    expect(t(0x1000n, ['write'], { mode: 'supervisor' })).toBe(C.HvTranslateGvaPrivilegeViolation); // CR0.WP
    expect(t(0x1000n, ['write'], { privilegeExempt: true })).toBe(C.HvTranslateGvaPrivilegeViolation); // WP still applies
    expect(t(0x2000n, ['execute'], { mode: 'user' })).toBe(C.HvTranslateGvaPrivilegeViolation); // NX
    expect(t(0x3000n, ['execute'], { mode: 'supervisor' })).toBe(C.HvTranslateGvaPrivilegeViolation); // SMEP
    expect(t(0x3000n, ['read'], { mode: 'supervisor' })).toBe(C.HvTranslateGvaPrivilegeViolation); // SMAP, AC = 0
    expect(t(0x3000n, ['read'], { mode: 'supervisor', smap: 'override' })).toBe(0);
    p.setRegisters(vp, 0, [{ name: R.HvX64RegisterRflags, value: reg64(0x4_0002n) }], 'host'); // AC
    expect(t(0x3000n, ['read'], { mode: 'supervisor' })).toBe(0);
    expect(t(0x3000n, ['read'], { mode: 'supervisor', smap: 'enforce' })).toBe(C.HvTranslateGvaPrivilegeViolation);
    expect(t(0x3000n, ['write', 'execute'], { privilegeExempt: true })).toBe(0);
    // NX without EFER.NXE is a reserved bit.
    p.setRegisters(vp, 0, [{ name: R.HvX64RegisterEfer, value: reg64(0x501n) }], 'host');
    expect(t(0x2000n, [])).toBe(C.HvTranslateGvaInvalidPageTableFlags);
  });

  test('PAE and 32-bit paging', () => {
    const p = partition();
    const vp = p.vp(0);
    const w = (a: bigint, v: bigint, n: 4 | 8 = 8) => {
      const b = Buffer.alloc(n);
      if (n === 8) b.writeBigUInt64LE(v);
      else b.writeUInt32LE(Number(v));
      p.memory.write(a, b);
    };
    // PAE: CR3 0x5000 -> PDPTE[1] 0x6000 -> PDE[2] 0x7000 -> PTE[3] -> 0x9000.
    w(0x5000n + 8n, 0x6001n);
    w(0x6000n + 16n, 0x7003n);
    w(0x7000n + 24n, 0x9003n);
    p.setRegisters(
      vp,
      0,
      [
        { name: R.HvX64RegisterEfer, value: reg64(0n) },
        { name: R.HvX64RegisterCr3, value: reg64(0x5000n) },
        { name: R.HvX64RegisterCr4, value: reg64(0x20n) },
        { name: R.HvX64RegisterCr0, value: reg64(0x80000011n) },
      ],
      'host',
    );
    const gva = (1n << 30n) | (2n << 21n) | (3n << 12n) | 0x45n;
    expect(translateGva(p, vp, 0, gva, { access: ['write'], mode: 'supervisor' })).toMatchObject({ code: 0, gpa: 0x9045n });
    // 32-bit: CR3 0xa000 -> PDE[1] 4 MiB page (PSE) at 0x800000; PDE[2] -> PT 0xb000 -> PTE[5] -> 0xc000.
    w(0xa000n + 4n, 0x80_0083n, 4);
    w(0xa000n + 8n, 0xb007n, 4);
    w(0xb000n + 20n, 0xc007n, 4);
    p.setRegisters(
      vp,
      0,
      [
        { name: R.HvX64RegisterCr3, value: reg64(0xa000n) },
        { name: R.HvX64RegisterCr4, value: reg64(0x10n) },
      ],
      'host',
    );
    expect(translateGva(p, vp, 0, (1n << 22n) | 0x1234n, { access: [] })).toMatchObject({ code: 0, gpa: 0x80_1234n });
    expect(translateGva(p, vp, 0, (2n << 22n) | (5n << 12n) | 0x10n, { access: ['write'], mode: 'user' })).toMatchObject({ code: 0, gpa: 0xc010n });
  });
});

describe('HvCallTranslateVirtualAddress(Ex) (0x0052, 0x00AC) from VTL1 on VTL0 GVAs', () => {
  const ctl = (f: Partial<ReturnType<typeof HvTranslateGvaControlFlagsLayout.unpack>>) =>
    HvTranslateGvaControlFlagsLayout.unpack(HvTranslateGvaControlFlagsLayout.pack(f));
  const input = (gvaPage: bigint, flags: object, extra: object = {}) =>
    HvTranslateVirtualAddressInputLayout.encode({ partitionId: SELF, vpIndex: HV_VP_INDEX_SELF, rsvdZ: 0, controlFlags: ctl(flags), gvaPage, ...extra });

  function setup() {
    const p = partition();
    const vp0 = p.vp(0);
    const { map } = paging(p, vp0, 0);
    map(0x7f_0000_1000n, 0x40_0000n, 0x7n);
    map(0x7f_0000_2000n, 0x40_1000n, 0x5n); // read-only user page
    const vp = withVtl1(p);
    return { p, vp };
  }
  const translate = (p: Partition, vp: ReturnType<Partition['vp']>, inp: Buffer, code: number = HvCallCode.HvCallTranslateVirtualAddress) => {
    p.memory.write(IN, inp);
    const r = call(p, vp, encodeHypercallInput({ callCode: code }), IN, OUT);
    const size = code === HvCallCode.HvCallTranslateVirtualAddress ? 16 : 64;
    const out = p.memory.read(OUT, size);
    return {
      ...r,
      out:
        code === HvCallCode.HvCallTranslateVirtualAddress
          ? HvTranslateVirtualAddressOutputLayout.decode(out)
          : HvTranslateVirtualAddressExOutputLayout.decode(out),
    };
  };

  test('success with GpaPage and cache type; failures are result codes with status SUCCESS; the Ex output', () => {
    const { p, vp } = setup();
    const ok = translate(p, vp, input(0x7f_0000_1n, { validateRead: true, validateWrite: true, inputVtl: 0x10 }));
    expect(ok.status).toBe(HvStatus.HV_STATUS_SUCCESS);
    expect(ok.out).toMatchObject({ translationResult: { resultCode: 0, cacheType: 6, overlayPage: false }, gpaPage: 0x400n });
    // Supervisor write to a read-only page with CR0.WP clear passes; as a user access it is a privilege violation.
    expect(translate(p, vp, input(0x7f_0000_2n, { validateWrite: true, userAccess: true, inputVtl: 0x10 })).out.translationResult.resultCode).toBe(
      C.HvTranslateGvaPrivilegeViolation,
    );
    const np = translate(p, vp, input(0x7f_0000_3n, { validateRead: true, inputVtl: 0x10 }));
    expect([np.status, np.out.translationResult.resultCode, np.out.gpaPage]).toEqual([0, C.HvTranslateGvaPageNotPresent, 0n]);
    const ex = translate(p, vp, input(0x7f_0000_1n, { validateRead: true, inputVtl: 0x10 }), HvCallCode.HvCallTranslateVirtualAddressEx);
    expect(ex.status).toBe(0);
    expect(ex.out.gpaPage).toBe(0x400n);
    // UseTargetVtl clear: the caller's own VTL, which OpenHCL refuses.
    expect(translate(p, vp, input(0x7f_0000_1n, { validateRead: true })).status).toBe(HvStatus.HV_STATUS_ACCESS_DENIED);
  });

  test('a higher VTL protection is HvTranslateGvaIntercept; an overlay is OverlayPage; a write to the hypercall page is IllegalOverlayAccess', () => {
    const { p, vp } = setup();
    // VTL1 protects 0x400000 no-write (R | KMX | UMX).
    p.setRegisters(vp, 1, [{ name: R.HvRegisterVsmPartitionConfig, value: reg64(1n | (0xfn << 1n)) }], 'host');
    p.modifyVtlProtectionMask('host', 1, 0xd, [{ start: 0x400n, count: 1n }]);
    expect(translate(p, vp, input(0x7f_0000_1n, { validateRead: true, inputVtl: 0x10 })).out.translationResult.resultCode).toBe(0);
    expect(translate(p, vp, input(0x7f_0000_1n, { validateWrite: true, inputVtl: 0x10 })).out.translationResult.resultCode).toBe(C.HvTranslateGvaIntercept);
    // VTL0's hypercall page at 0x401000.
    p.switchVtl(vp, 0, 0, true);
    expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, 0x8100_0000_0000_0001n).exception).toBeUndefined();
    expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, 0x401001n).exception).toBeUndefined();
    p.switchVtl(vp, 1, 0, false);
    const r = translate(p, vp, input(0x7f_0000_2n, { validateRead: true, inputVtl: 0x10 }));
    expect(r.out.translationResult).toMatchObject({ resultCode: 0, overlayPage: true });
    expect(translate(p, vp, input(0x7f_0000_2n, { validateWrite: true, inputVtl: 0x10 })).out.translationResult.resultCode).toBe(
      C.HvTranslateGvaGpaIllegalOverlayAccess,
    );
  });

  test('bad input: wrong partition, VTL0 caller, reserved bits, both access modes, rep count on a simple call, unknown VP', () => {
    const { p, vp } = setup();
    const status = (inp: Buffer, control = encodeHypercallInput({ callCode: HvCallCode.HvCallTranslateVirtualAddress })) => {
      p.memory.write(IN, inp);
      return call(p, vp, control, IN, OUT).status;
    };
    const flags = { validateRead: true, inputVtl: 0x10 };
    expect(status(input(1n, flags, { partitionId: 7n }))).toBe(HvStatus.HV_STATUS_ACCESS_DENIED);
    expect(status(input(1n, { ...flags, inputVtl: 0x30 }))).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER); // HV_INPUT_VTL bit 5
    expect(status(input(1n, { ...flags, inputVtl: 0x11 }))).toBe(HvStatus.HV_STATUS_ACCESS_DENIED); // own VTL
    expect(status(input(1n, flags, { rsvdZ: 1 }))).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
    expect(status(input(1n, { ...flags, shadowStack: true }))).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
    expect(status(input(1n, { ...flags, userAccess: true, supervisorAccess: true }))).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
    expect(status(input(1n, flags, { vpIndex: 9 }))).toBe(HvStatus.HV_STATUS_INVALID_VP_INDEX);
    expect(status(input(1n, flags), encodeHypercallInput({ callCode: HvCallCode.HvCallTranslateVirtualAddress, repCount: 1 }))).toBe(
      HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT,
    );
    // From VTL0 (no lower VTL): ACCESS_DENIED.
    p.switchVtl(vp, 0, 0, true);
    expect(status(input(1n, { validateRead: true, inputVtl: 0x10 }))).toBe(HvStatus.HV_STATUS_ACCESS_DENIED);
  });

  test('TLB_FLUSH_INHIBIT locks VTL0 TLB on the VP: a VTL0 flush from another VP returns for continuation until VTL1 returns', () => {
    const { p, vp } = setup();
    translate(p, vp, input(0x7f_0000_1n, { validateRead: true, tlbFlushInhibit: true, inputVtl: 0x10 }));
    expect(p.getRegister(vp, 1, R.HvRegisterVsmVpSecureConfigVtl0).low & 2n).toBe(2n);
    const other = p.vp(1);
    p.memory.write(IN, HvFlushVirtualAddressSpaceInputLayout.encode({ addressSpace: 0n, flags: 1n, processorMask: 0n }));
    const rip = p.reg(other, R.HvX64RegisterRip);
    const control = encodeHypercallInput({ callCode: HvCallCode.HvCallFlushVirtualAddressSpace });
    p.setReg(other, R.HvX64RegisterRax, 0x7777n);
    const r = call(p, other, control, IN, OUT);
    expect(r.o.continuation).toBe(true);
    expect(p.reg(other, R.HvX64RegisterRip)).toBe(rip); // re-executed
    expect(p.reg(other, R.HvX64RegisterRax)).toBe(0x7777n); // RAX not written
    // VP0 returns to VTL0: the lock no longer holds; the reissued call completes.
    p.switchVtl(vp, 0, 0, true);
    const again = call(p, other, control, IN, OUT);
    expect([again.o.continuation, again.status]).toEqual([undefined, 0]);
    expect(p.reg(other, R.HvX64RegisterRip)).toBe(rip + 3n);
  });
});

describe('XMM fast hypercalls', () => {
  test('HvCallGetVpRegisters with XMM input and output; SetVpRegisters with XMM input', () => {
    const p = partition();
    const vp = p.vp(0);
    p.setReg(vp, R.HvX64RegisterRbx, 0xb0b0n);
    // Header (RDX, R8) = partition SELF, VP SELF + VTL current; names in XMM0: RBX, RIP.
    const hdr2 = BigInt(HV_VP_INDEX_SELF);
    p.setRegisters(vp, 0, [{ name: R.HvX64RegisterXmm0, value: { low: BigInt(R.HvX64RegisterRbx) | (BigInt(R.HvX64RegisterRip) << 32n), high: 0n } }], 'host');
    const r = call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallGetVpRegisters, fast: true, repCount: 2 }), SELF, hdr2);
    expect([r.status, r.repsCompleted]).toEqual([0, 2]);
    // 24 input bytes -> output from byte 32 = XMM1, XMM2 (16 bytes per HV_REGISTER_VALUE).
    expect(r.o.fastOutput).toMatchObject({ start: 32, offset: 32 });
    expect(p.getRegister(vp, 0, R.HvX64RegisterXmm0 + 1)).toEqual({ low: 0xb0b0n, high: 0n });
    expect(p.getRegister(vp, 0, R.HvX64RegisterXmm0 + 2).low).toBe(p.reg(vp, R.HvX64RegisterRip) - 3n);
    // Input registers are preserved.
    expect(p.reg(vp, R.HvX64RegisterRdx)).toBe(SELF);
    // SetVpRegisters: header in RDX/R8, one HV_REGISTER_ASSOC (32 bytes) in XMM0..XMM1.
    p.setRegisters(
      vp,
      0,
      [
        { name: R.HvX64RegisterXmm0, value: { low: BigInt(R.HvX64RegisterR8 + 1), high: 0n } },
        { name: R.HvX64RegisterXmm0 + 1, value: { low: 0x9999n, high: 0n } },
      ],
      'host',
    );
    const s = call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallSetVpRegisters, fast: true, repCount: 1 }), SELF, hdr2);
    expect(s.status).toBe(0);
    expect(p.reg(vp, R.HvX64RegisterR8 + 1)).toBe(0x9999n);
  });

  test('limits: more than 112 input bytes, output that does not fit, 32-bit callers -> INVALID_HYPERCALL_INPUT', () => {
    const p = partition();
    const vp = p.vp(0);
    const names = (a: number, b: number) => BigInt(a) | (BigInt(b) << 32n);
    p.setRegisters(
      vp,
      0,
      [{ name: R.HvX64RegisterXmm0, value: { low: names(R.HvX64RegisterRax, R.HvX64RegisterRcx), high: names(R.HvX64RegisterRdx, R.HvX64RegisterRbx) } }],
      'host',
    );
    const g = (n: number) =>
      call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallGetVpRegisters, fast: true, repCount: n }), SELF, BigInt(HV_VP_INDEX_SELF));
    expect(g(4).status).toBe(0); // 32 bytes in -> 64 bytes out from byte 32 (80 available)
    expect(g(5).status).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT); // 36 in -> 80 out from byte 48: 64 available
    const set = (n: number) =>
      call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallSetVpRegisters, fast: true, repCount: n }), SELF, BigInt(HV_VP_INDEX_SELF));
    expect(set(4).status).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT); // 16 + 128 > 112
    // 32-bit caller (CS.L clear): no XMM fast calls.
    const cs = p.getRegister(vp, 0, R.HvX64RegisterCs);
    p.setRegisters(vp, 0, [{ name: R.HvX64RegisterCs, value: { low: cs.low, high: cs.high & ~(1n << (48n + 13n)) } }], 'host');
    p.setReg(vp, R.HvX64RegisterRax, encodeHypercallInput({ callCode: HvCallCode.HvCallGetVpRegisters, fast: true, repCount: 1 }) & 0xffffffffn);
    p.setReg(vp, R.HvX64RegisterRdx, encodeHypercallInput({ callCode: HvCallCode.HvCallGetVpRegisters, fast: true, repCount: 1 }) >> 32n);
    expect(decodeHypercallResult(executeVmcall(p, vp).resultValue).status).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
  });
});

describe('what guests call early: flushes, IPIs, long spin wait', () => {
  test('flush statuses: reserved flags, NON_GLOBAL on a List call, malformed HV_VP_SET; rep counts', () => {
    const p = partition();
    const vp = p.vp(0);
    const space = (flags: bigint) => {
      p.memory.write(IN, HvFlushVirtualAddressSpaceInputLayout.encode({ addressSpace: 0n, flags, processorMask: 3n }));
      return call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallFlushVirtualAddressSpace }), IN, 0n).status;
    };
    expect(space(7n)).toBe(0);
    expect(space(8n)).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
    p.memory.write(IN, Buffer.concat([HvFlushVirtualAddressSpaceInputLayout.encode({ addressSpace: 0n, flags: 4n, processorMask: 1n }), Buffer.alloc(16)]));
    expect(call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallFlushVirtualAddressList, repCount: 2 }), IN, 0n).status).toBe(
      HvStatus.HV_STATUS_INVALID_PARAMETER,
    );
    p.memory.write(IN, Buffer.concat([HvFlushVirtualAddressSpaceInputLayout.encode({ addressSpace: 0n, flags: 0n, processorMask: 1n }), Buffer.alloc(16)]));
    expect(call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallFlushVirtualAddressList, repCount: 2 }), IN, 0n)).toMatchObject({
      status: 0,
      repsCompleted: 2,
    });
    expect(call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallFlushVirtualAddressList }), IN, 0n).status).toBe(
      HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT,
    );
    expect(call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallFlushVirtualAddressSpace, repCount: 1 }), IN, 0n).status).toBe(
      HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT,
    );
    // Ex: one bank announced, none given (variable header size 0) -> INVALID_HYPERCALL_INPUT (KVM); with it: success.
    p.memory.write(
      IN,
      Buffer.concat([HvFlushVirtualAddressSpaceExInputLayout.encode({ addressSpace: 0n, flags: 0n, format: 0n, validBanksMask: 1n }), hex('0300000000000000')]),
    );
    expect(call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallFlushVirtualAddressSpaceEx }), IN, 0n).status).toBe(
      HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT,
    );
    expect(call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallFlushVirtualAddressSpaceEx, variableHeaderSize: 1 }), IN, 0n).status).toBe(0);
    p.memory.write(
      IN,
      Buffer.concat([HvFlushVirtualAddressSpaceExInputLayout.encode({ addressSpace: 0n, flags: 0n, format: 1n, validBanksMask: 0n }), Buffer.alloc(8)]),
    );
    expect(call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallFlushVirtualAddressListEx, repCount: 1 }), IN, 0n)).toMatchObject({
      status: 0,
      repsCompleted: 1,
    });
  });

  test('IPIs reach raiseInterrupt of the target VPs in the target VTL; statuses', () => {
    const raised: Raised[] = [];
    const p = partition({ vpCount: 3, raised });
    const vp = p.vp(0);
    const fast = (vector: number, vtl: number, mask: bigint) =>
      call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallSendSyntheticClusterIpi, fast: true }), BigInt(vector) | (BigInt(vtl) << 32n), mask).status;
    expect(fast(0x40, 0, 0b1_0110n)).toBe(0); // VPs 1, 2 and a VP 4 that does not exist
    expect(raised).toEqual([
      { vp: 1, vtl: 0, vector: 0x40 },
      { vp: 2, vtl: 0, vector: 0x40 },
    ]);
    raised.length = 0;
    expect(fast(0x0f, 0, 1n)).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
    expect(fast(0x100, 0, 1n)).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
    expect(fast(0x40, 0x11, 1n)).toBe(HvStatus.HV_STATUS_ACCESS_DENIED); // VTL0 -> VTL1
    expect(fast(0x40, 0x20, 1n)).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER); // HV_INPUT_VTL reserved bit
    expect(call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallSendSyntheticClusterIpi, fast: true }), 0x40n | (1n << 40n), 1n).status).toBe(
      HvStatus.HV_STATUS_INVALID_PARAMETER,
    ); // padding
    expect(raised).toEqual([]);
    // From VTL1 to VTL0 of every VP (Ex, all-VP set), and to VTL1 where it is enabled.
    const v1 = withVtl1(p);
    p.memory.write(IN, HvSendSyntheticClusterIpiExInputLayout.encode({ vector: 0x50, targetVtl: 0x10, rsvdZ: 0n, format: 1n, validBanksMask: 0n }));
    expect(call(p, v1, encodeHypercallInput({ callCode: HvCallCode.HvCallSendSyntheticClusterIpiEx }), IN, 0n).status).toBe(0);
    expect(raised.map((r) => [r.vp, r.vtl])).toEqual([
      [0, 0],
      [1, 0],
      [2, 0],
    ]);
    raised.length = 0;
    p.memory.write(
      IN,
      Buffer.concat([
        HvSendSyntheticClusterIpiExInputLayout.encode({ vector: 0x51, targetVtl: 0, rsvdZ: 0n, format: 0n, validBanksMask: 1n }),
        hex('0400000000000000'),
      ]),
    );
    expect(call(p, v1, encodeHypercallInput({ callCode: HvCallCode.HvCallSendSyntheticClusterIpiEx, variableHeaderSize: 1 }), IN, 0n).status).toBe(0);
    expect(raised).toEqual([{ vp: 2, vtl: 1, vector: 0x51 }]);
  });

  test('HvCallNotifyLongSpinWait: always SUCCESS (advisory), ABI checks still apply', () => {
    const p = partition();
    const vp = p.vp(0);
    expect(call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallNotifyLongSpinWait, fast: true }), 0xffff_ffff_0000_1000n, 0n).status).toBe(0);
    expect(call(p, vp, encodeHypercallInput({ callCode: HvCallCode.HvCallNotifyLongSpinWait, fast: true, repCount: 1 }), 1n, 0n).status).toBe(
      HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT,
    );
  });

  test('implementedHypercalls lists exactly the dispatcher and VtlCall/VtlReturn', () => {
    const codes = implementedHypercalls();
    for (const c of [0x2, 0x3, 0x8, 0xb, 0x13, 0x14, 0x15, 0x52, 0xac]) expect(codes).toContain(c);
    expect([...codes].sort((a, b) => a - b)).toEqual(codes);
    for (const c of codes) {
      const p = partition();
      const r = call(p, p.vp(0), encodeHypercallInput({ callCode: c }), IN, OUT);
      if (c !== HvCallCode.HvCallVtlCall && c !== HvCallCode.HvCallVtlReturn) expect(r.status).not.toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_CODE);
    }
    expect(decodeHypercallInput(1n).callCode).toBe(1);
  });
});

describe('MBEC and GVAs of memory actions', () => {
  test('with MBEC in force, execute at CPL3 needs UMX and at CPL0 KMX; the intercept says which', () => {
    const p = partition();
    const vp = withVtl1(p);
    p.setRegisters(vp, 1, [{ name: R.HvRegisterVsmPartitionConfig, value: reg64(1n | (0xfn << 1n)) }], 'host');
    // With MBEC enabled for VTL1 (EnableMbec), KMX and UMX are separate bits of its protections: R|UX
    // (0x9) is legal; SecureConfigVtl0.MbecEnabled puts them in force for VTL0 on this VP.
    p.setRegisters(vp, 1, [{ name: R.HvRegisterVsmVpSecureConfigVtl0, value: reg64(1n) }], 'host');
    p.modifyVtlProtectionMask('host', 1, 0x9, [{ start: 0x300n, count: 1n }]); // R | UMX
    p.modifyVtlProtectionMask('host', 1, 0xd, [{ start: 0x301n, count: 1n }]); // R | KMX | UMX
    p.switchVtl(vp, 0, 0, true);
    expect(p.getRegister(vp, 0, R.HvRegisterVsmVpStatus).low & 0x10n).toBe(0x10n); // ActiveMbecEnabled
    const kernel = guestAccess(p, vp, 'execute', 0x300000n, 4);
    expect(kernel.status).toBe('intercepted');
    if (kernel.status === 'intercepted') expect(kernel.intercept.mbecExecuteMode).toBe('kernel');
    p.switchVtl(vp, 0, 0, true);
    expect(guestAccess(p, vp, 'execute', 0x301000n, 4).status).toBe('completed');
    // CPL3 (CS.DPL = 3): UMX allows it.
    const cs = p.getRegister(vp, 0, R.HvX64RegisterCs);
    p.setRegisters(vp, 0, [{ name: R.HvX64RegisterCs, value: { low: cs.low, high: cs.high | (3n << (48n + 5n)) } }], 'host');
    expect(guestAccess(p, vp, 'execute', 0x300000n, 4).status).toBe('completed');
    // Without MbecEnabled on the VP, KMX governs every execute: CPL3 is refused at 0x300000.
    p.setRegisters(vp, 1, [{ name: R.HvRegisterVsmVpSecureConfigVtl0, value: reg64(0n) }], 'host');
    const user = guestAccess(p, vp, 'execute', 0x300000n, 4);
    expect(user.status).toBe('intercepted');
    if (user.status === 'intercepted') expect(user.intercept.mbecExecuteMode).toBeUndefined();
  });

  test('SecureConfigVtl0.MbecEnabled needs EnableMbec on the protecting VTL', () => {
    const p = partition();
    p.enablePartitionVtl('host', 1, 0);
    p.enableVpVtl('host', 0, 1, longModeContext());
    expect(() => p.setRegisters(p.vp(0), 1, [{ name: R.HvRegisterVsmVpSecureConfigVtl0, value: reg64(1n) }], 'host')).toThrow(/EnableMbec/);
  });

  test('a memory action with a GVA: translated, GvaValid in the intercept message, #PF when it does not translate', () => {
    const p = partition();
    const vp1 = withVtl1(p);
    p.setRegisters(vp1, 1, [{ name: R.HvRegisterVsmPartitionConfig, value: reg64(1n | (0xfn << 1n)) }], 'host');
    p.modifyVtlProtectionMask('host', 1, 0x1, [{ start: 0x500n, count: 1n }]); // read-only
    p.switchVtl(vp1, 0, 0, true);
    const vp = p.vp(0);
    const { map } = paging(p, vp, 0);
    map(0x7f_1234_5000n, 0x50_0000n, 0x3n);
    const a = resolveActionAddress(p, vp, 'write', 0n, 8, 0x7f_1234_5010n);
    expect(a).toEqual({ gpa: 0x50_0010n, gva: 0x7f_1234_5010n });
    if (!('exception' in a)) {
      const o = guestAccess(p, vp, 'write', a.gpa, 8, Buffer.alloc(8, 1), { gva: a.gva });
      expect(o.status).toBe('intercepted');
      if (o.status === 'intercepted') {
        expect(o.intercept.gva).toBe(0x7f_1234_5010n);
        const m = decodeMemoryInterceptMessage(o.intercept.message, 16); // after the HV_MESSAGE header
        expect(m.memoryAccessInfo.gvaValid).toBe(true);
        expect(m.guestVirtualAddress).toBe(0x7f_1234_5010n);
        expect(m.guestPhysicalAddress).toBe(0x50_0010n);
      }
    }
    p.switchVtl(vp, 0, 0, true);
    expect(resolveActionAddress(p, vp, 'read', 0n, 4, 0x7f_0000_0000n)).toEqual({ exception: 14, gva: 0x7f_0000_0000n });
    expect(p.reg(vp, R.HvX64RegisterCr2)).toBe(0x7f_0000_0000n);
    expect(() => resolveActionAddress(p, vp, 'read', 0x1000n, 4, 0x7f_1234_5000n)).toThrow(/not 0x1000/);
    expect(() => resolveActionAddress(p, vp, 'read', 0n, 8, 0x7f_1234_5ffcn)).toThrow(/crosses/);
  });
});

describe('caller first (issue #16 deviation)', () => {
  test('VTL0 EnableVpVtl for a VP where VTL1 runs: ACCESS_DENIED; VTL1 asking: VTL_ALREADY_ENABLED', () => {
    const p = partition();
    p.enablePartitionVtl('host', 1, 0);
    p.enableVpVtl('host', 0, 1, longModeContext());
    const status = (caller: 0 | 1) => {
      try {
        p.enableVpVtl(caller, 0, 1, longModeContext(), 0);
        return 0;
      } catch (e) {
        return (e as { status: number }).status;
      }
    };
    expect(status(0)).toBe(HvStatus.HV_STATUS_ACCESS_DENIED);
    expect(status(1)).toBe(HvStatus.HV_STATUS_VTL_ALREADY_ENABLED);
  });
});
