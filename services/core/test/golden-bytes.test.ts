// Byte-exact layouts. Every expected buffer below is written out by hand from the reference tables
// (tlfs-hypercalls.md §1.7, §2.4, §2.5; tlfs-vsm.md §3.2-3.6, §5.2), little-endian, never produced
// by the code under test.
import {
  type HvInitialVpContext,
  HypercallPageOffsets,
  buildHypercallPage,
  encodeEnableVpVtlInput,
  reg128ToSegment,
  reg128ToTable,
  reg64,
  segmentToReg128,
  tableToReg128,
} from '@vsm/core';
import { decodeReg128, encodeReg128 } from '../src/tlfs/registers';
import {
  HV_ENABLE_PARTITION_VTL_INPUT_SIZE,
  HV_ENABLE_VP_VTL_INPUT_SIZE,
  HV_INITIAL_VP_CONTEXT_SIZE,
  HV_VP_VTL_CONTROL_SIZE,
  HvVpAssistPage,
  VSM_CODE_PAGE_OFFSETS_64,
  VSM_PARTITION_CONFIG_DEFINED,
  decodeEnablePartitionVtlInput,
  decodeEnableVpVtlInput,
  decodeInitialVpContext,
  decodeVpVtlControl,
  decodeVsmPartitionConfig,
  encodeEnablePartitionVtlInput,
  encodeInitialVpContext,
  encodeVpVtlControl,
  encodeVsmCodePageOffsets,
  encodeVsmPartitionConfig,
  encodeVsmPartitionStatus,
  encodeVsmVpStatus,
} from '../src/tlfs/vsm';

/** Hex with spaces/underscores allowed for readability. */
const hex = (...parts: string[]): Buffer => Buffer.from(parts.join('').replace(/[\s_]/g, ''), 'hex');

// A context in which every field (and every sub-field of every segment) has a distinct value whose
// bytes are all different, so a field at a wrong offset, of a wrong width or in the wrong byte
// order cannot go unnoticed.
const seg = (p: number) => ({
  base: BigInt('0x' + [0, 1, 2, 3, 4, 5, 6, 7].map((i) => (p + i).toString(16)).join('')),
  limit: Number('0x' + [8, 9, 10, 11].map((i) => (p + i).toString(16)).join('')),
  selector: Number('0x' + [12, 13].map((i) => (p + i).toString(16)).join('')),
  attributes: Number('0x' + [14, 15].map((i) => (p + i).toString(16)).join('')),
});
const CTX: HvInitialVpContext = {
  rip: 0x0102_0304_0506_0708n,
  rsp: 0x1112_1314_1516_1718n,
  rflags: 0x2122_2324_2526_2728n,
  cs: seg(0x30), // base 0x3031323334353637, limit 0x38393a3b, selector 0x3c3d, attributes 0x3e3f
  ds: seg(0x40),
  es: seg(0x50),
  fs: seg(0x60),
  gs: seg(0x70),
  ss: seg(0x80),
  tr: seg(0x90),
  ldtr: seg(0xa0),
  idtr: { limit: 0xb6b7, base: 0xb8b9_babb_bcbd_bebfn },
  gdtr: { limit: 0xc6c7, base: 0xc8c9_cacb_cccd_cecfn },
  efer: 0xd0d1_d2d3_d4d5_d6d7n,
  cr0: 0xd8d9_dadb_dcdd_dedfn,
  cr3: 0xe0e1_e2e3_e4e5_e6e7n,
  cr4: 0xe8e9_eaeb_eced_eeefn,
  msrCrPat: 0xf0f1_f2f3_f4f5_f6f7n,
};

// HV_INITIAL_VP_CONTEXT (tlfs-hypercalls.md §2.5). Segments: Base(8) Limit(4) Selector(2) Attributes(2);
// tables: Pad(6) Limit(2) Base(8).
const CTX_HEX = [
  '0807060504030201', //                               +0   Rip
  '1817161514131211', //                               +8   Rsp
  '2827262524232221', //                               +16  Rflags
  '3736353433323130 3b3a3938 3d3c 3f3e', //            +24  Cs
  '4746454443424140 4b4a4948 4d4c 4f4e', //            +40  Ds
  '5756555453525150 5b5a5958 5d5c 5f5e', //            +56  Es
  '6766656463626160 6b6a6968 6d6c 6f6e', //            +72  Fs
  '7776757473727170 7b7a7978 7d7c 7f7e', //            +88  Gs
  '8786858483828180 8b8a8988 8d8c 8f8e', //            +104 Ss
  '9796959493929190 9b9a9998 9d9c 9f9e', //            +120 Tr
  'a7a6a5a4a3a2a1a0 abaaa9a8 adac afae', //            +136 Ldtr
  '000000000000 b7b6 bfbebdbcbbbab9b8', //             +152 Idtr
  '000000000000 c7c6 cfcecdcccbcac9c8', //             +168 Gdtr
  'd7d6d5d4d3d2d1d0', //                               +184 Efer
  'dfdedddcdbdad9d8', //                               +192 Cr0
  'e7e6e5e4e3e2e1e0', //                               +200 Cr3
  'efeeedecebeae9e8', //                               +208 Cr4
  'f7f6f5f4f3f2f1f0', //                               +216 MsrCrPat
];

describe('HV_INITIAL_VP_CONTEXT (224 bytes, tlfs-hypercalls.md §2.5)', () => {
  const bytes = encodeInitialVpContext(CTX);

  test('size', () => {
    expect(HV_INITIAL_VP_CONTEXT_SIZE).toBe(224);
    expect(bytes.length).toBe(224);
  });

  test('golden bytes', () => {
    expect(bytes.toString('hex')).toBe(hex(...CTX_HEX).toString('hex'));
  });

  test('each field at its offset', () => {
    expect(bytes.readBigUInt64LE(0)).toBe(CTX.rip);
    expect(bytes.readBigUInt64LE(8)).toBe(CTX.rsp);
    expect(bytes.readBigUInt64LE(16)).toBe(CTX.rflags);
    const segs = [
      ['cs', 24],
      ['ds', 40],
      ['es', 56],
      ['fs', 72],
      ['gs', 88],
      ['ss', 104],
      ['tr', 120],
      ['ldtr', 136],
    ] as const;
    for (const [name, off] of segs) {
      expect([name, bytes.readBigUInt64LE(off)]).toEqual([name, CTX[name].base]);
      expect([name, bytes.readUInt32LE(off + 8)]).toEqual([name, CTX[name].limit]);
      expect([name, bytes.readUInt16LE(off + 12)]).toEqual([name, CTX[name].selector]);
      expect([name, bytes.readUInt16LE(off + 14)]).toEqual([name, CTX[name].attributes]);
    }
    expect(bytes.subarray(152, 158).equals(Buffer.alloc(6))).toBe(true);
    expect(bytes.readUInt16LE(152 + 6)).toBe(0xb6b7);
    expect(bytes.readBigUInt64LE(152 + 8)).toBe(0xb8b9_babb_bcbd_bebfn);
    expect(bytes.subarray(168, 174).equals(Buffer.alloc(6))).toBe(true);
    expect(bytes.readUInt16LE(168 + 6)).toBe(0xc6c7);
    expect(bytes.readBigUInt64LE(168 + 8)).toBe(0xc8c9_cacb_cccd_cecfn);
    expect(bytes.readBigUInt64LE(184)).toBe(CTX.efer);
    expect(bytes.readBigUInt64LE(192)).toBe(CTX.cr0);
    expect(bytes.readBigUInt64LE(200)).toBe(CTX.cr3);
    expect(bytes.readBigUInt64LE(208)).toBe(CTX.cr4);
    expect(bytes.readBigUInt64LE(216)).toBe(CTX.msrCrPat);
  });

  test('decode of the golden bytes gives the context back; encode(decode(x)) = x', () => {
    expect(decodeInitialVpContext(hex(...CTX_HEX))).toEqual(CTX);
    expect(encodeInitialVpContext(decodeInitialVpContext(hex(...CTX_HEX))).equals(hex(...CTX_HEX))).toBe(true);
  });

  test('the table pad is ignored on decode', () => {
    const b = hex(...CTX_HEX);
    b.fill(0xee, 152, 158);
    b.fill(0xee, 168, 174);
    expect(decodeInitialVpContext(b)).toEqual(CTX);
  });

  test('encoding into a larger buffer at a base offset touches only those 224 bytes', () => {
    const out = Buffer.alloc(300, 0x99);
    encodeInitialVpContext(CTX, out, 40);
    expect(out.subarray(0, 40).equals(Buffer.alloc(40, 0x99))).toBe(true);
    expect(out.subarray(264).equals(Buffer.alloc(36, 0x99))).toBe(true);
    // everything from Cs to Ldtr matches the golden bytes at base + 24
    expect(out.subarray(40 + 24, 40 + 152).equals(hex(...CTX_HEX).subarray(24, 152))).toBe(true);
    expect(decodeInitialVpContext(out, 40)).toEqual(CTX);
  });
});

describe('HvCallEnableVpVtl input (240 bytes) and HvCallEnablePartitionVtl input (16 bytes)', () => {
  test('EnableVpVtl: 16-byte header then the context', () => {
    const b = encodeEnableVpVtlInput({ targetPartitionId: 0xffff_ffff_ffff_ffffn, vpIndex: 0x0102_0304, targetVtl: 1, rsvdZ: 0, vpVtlContext: CTX });
    expect(HV_ENABLE_VP_VTL_INPUT_SIZE).toBe(240);
    expect(b.length).toBe(240);
    const expected = hex(
      'ffffffffffffffff', // +0  TargetPartitionId (HV_PARTITION_ID_SELF)
      '04030201', //         +8  VpIndex
      '01', //               +12 TargetVtl
      '000000', //           +13 RsvdZ
      ...CTX_HEX, //         +16 VpVtlContext
    );
    expect(b.toString('hex')).toBe(expected.toString('hex'));
    expect(decodeEnableVpVtlInput(expected)).toEqual({
      targetPartitionId: 0xffff_ffff_ffff_ffffn,
      vpIndex: 0x0102_0304,
      targetVtl: 1,
      rsvdZ: 0,
      vpVtlContext: CTX,
    });
  });

  test('EnableVpVtl: RsvdZ bytes 13..15', () => {
    const b = encodeEnableVpVtlInput({ targetPartitionId: 0n, vpIndex: 0xffff_fffe, targetVtl: 2, rsvdZ: 0xabcdef, vpVtlContext: CTX });
    expect(b.subarray(0, 16).toString('hex')).toBe('0000000000000000' + 'feffffff' + '02' + 'efcdab');
    expect(decodeEnableVpVtlInput(b).rsvdZ).toBe(0xabcdef);
    expect(decodeEnableVpVtlInput(b).vpIndex).toBe(0xffff_fffe);
  });

  test('EnablePartitionVtl', () => {
    const b = encodeEnablePartitionVtlInput({ targetPartitionId: 0x0123_4567_89ab_cdefn, targetVtl: 2, flags: 1, rsvdZ: 0n });
    expect(HV_ENABLE_PARTITION_VTL_INPUT_SIZE).toBe(16);
    expect(b.toString('hex')).toBe(
      hex(
        'efcdab8967452301', // +0  TargetPartitionId
        '02', //               +8  TargetVtl
        '01', //               +9  Flags (EnableMbec)
        '000000000000', //     +10 RsvdZ
      ).toString('hex'),
    );
    expect(decodeEnablePartitionVtlInput(b)).toEqual({ targetPartitionId: 0x0123_4567_89ab_cdefn, targetVtl: 2, flags: 1, rsvdZ: 0n });
  });

  test('EnablePartitionVtl decode flags any non-zero RsvdZ byte', () => {
    for (let i = 10; i < 16; i++) {
      const b = hex('ffffffffffffffff', '01', '00', '000000000000');
      b[i] = 0x80;
      expect(decodeEnablePartitionVtlInput(b).rsvdZ).not.toBe(0n);
    }
  });
});

describe('HV_VP_VTL_CONTROL (24 bytes) and HV_VP_ASSIST_PAGE offsets (tlfs-vsm.md §5.2)', () => {
  test('encodeVpVtlControl golden bytes', () => {
    const b = encodeVpVtlControl({ entryReason: 0x0102_0304, vinaStatus: 1, vtlReturnX64Rax: 0x1122_3344_5566_7788n, vtlReturnX64Rcx: 0x99aa_bbcc_ddee_ff00n });
    expect(HV_VP_VTL_CONTROL_SIZE).toBe(24);
    expect(b.toString('hex')).toBe(
      hex(
        '04030201', //         +0  EntryReason (u32)
        '01', //               +4  VinaStatus
        '00', //               +5  ReservedZ
        '0000', //             +6  ReservedZ
        '8877665544332211', // +8  VtlReturnX64Rax
        '00ffeeddccbbaa99', // +16 VtlReturnX64Rcx
      ).toString('hex'),
    );
  });

  test('VinaStatus: only bit 0 (VinaAsserted) is written', () => {
    const b = encodeVpVtlControl({ entryReason: 1, vinaStatus: 0xff, vtlReturnX64Rax: 0n, vtlReturnX64Rcx: 0n });
    expect(b.toString('hex')).toBe('01000000' + '01000000' + '0000000000000000' + '0000000000000000');
  });

  test('decodeVpVtlControl reads the fields at base + 0/4/8/16', () => {
    const page = Buffer.alloc(4096);
    hex('02000000', '01', '000000', '0807060504030201', '1817161514131211').copy(page, 8);
    expect(decodeVpVtlControl(page, 8)).toEqual({
      entryReason: 2,
      vinaStatus: 1,
      vtlReturnX64Rax: 0x0102_0304_0506_0708n,
      vtlReturnX64Rcx: 0x1112_1314_1516_1718n,
    });
  });

  test('assist page offsets', () => {
    expect(HvVpAssistPage.VtlControl).toBe(8);
    expect(HvVpAssistPage.EntryReason).toBe(8);
    expect(HvVpAssistPage.VinaStatus).toBe(12);
    expect(HvVpAssistPage.VtlReturnX64Rax).toBe(16);
    expect(HvVpAssistPage.VtlReturnX64Rcx).toBe(24);
    expect(HvVpAssistPage.InterceptMessage).toBe(112);
    // the control block placed at +8 lines up with those offsets
    const page = Buffer.alloc(4096);
    encodeVpVtlControl({ entryReason: 3, vinaStatus: 1, vtlReturnX64Rax: 0xaan, vtlReturnX64Rcx: 0xbbn }).copy(page, HvVpAssistPage.VtlControl);
    expect(page.readUInt32LE(8)).toBe(3);
    expect(page[12]).toBe(1);
    expect(page.readBigUInt64LE(16)).toBe(0xaan);
    expect(page.readBigUInt64LE(24)).toBe(0xbbn);
  });
});

describe('hypercall page contents (tlfs-hypercalls.md §1.7, OpenVMM layout)', () => {
  const expectedHead = (call: string) =>
    hex(
      call,
      'c3', //                            0x00 vmcall; ret
      '89c1',
      'b811000000',
      call,
      'c3', //      0x04 mov ecx,eax; mov eax,0x11; vmcall; ret
      '4889c8',
      'b911000000',
      call,
      'c3', //    0x0F mov rax,rcx; mov ecx,0x11; vmcall; ret
      '89c1',
      'b812000000',
      call,
      'c3', //      0x1B mov ecx,eax; mov eax,0x12; vmcall; ret
      '4889c8',
      'b912000000',
      call,
      'c3', //    0x26 mov rax,rcx; mov ecx,0x12; vmcall; ret
    );

  test.each([
    ['amd', '0f01d9'],
    ['intel', '0f01c1'],
  ] as const)('%s page', (vendor, call) => {
    const page = buildHypercallPage(vendor);
    expect(page.length).toBe(4096);
    const head = expectedHead(call);
    expect(head.length).toBe(0x32);
    expect(page.subarray(0, 0x32).toString('hex')).toBe(head.toString('hex'));
    // the individual entry points
    expect(page.subarray(0x00, 0x04).toString('hex')).toBe(call + 'c3');
    expect(page.subarray(0x04, 0x0f).toString('hex')).toBe('89c1b811000000' + call + 'c3');
    expect(page.subarray(0x0f, 0x1b).toString('hex')).toBe('4889c8b911000000' + call + 'c3');
    expect(page.subarray(0x1b, 0x26).toString('hex')).toBe('89c1b812000000' + call + 'c3');
    expect(page.subarray(0x26, 0x32).toString('hex')).toBe('4889c8b912000000' + call + 'c3');
    // INT3 everywhere else
    expect(page.subarray(0x32).equals(Buffer.alloc(4096 - 0x32, 0xcc))).toBe(true);
  });

  test('the exact AMD and Intel stub bytes', () => {
    expect(buildHypercallPage('amd').subarray(0, 4).toString('hex')).toBe('0f01d9c3');
    expect(buildHypercallPage('intel').subarray(0, 4).toString('hex')).toBe('0f01c1c3');
    expect(buildHypercallPage('amd').subarray(0x0f, 0x1b).toString('hex')).toBe('4889c8b9110000000f01d9c3');
    expect(buildHypercallPage('intel').subarray(0x0f, 0x1b).toString('hex')).toBe('4889c8b9110000000f01c1c3');
  });

  test('offsets constants and HvRegisterVsmCodePageOffsets (tlfs-vsm.md §3.6)', () => {
    expect(HypercallPageOffsets).toEqual({ hypercall: 0x00, vtlCall32: 0x04, vtlCall64: 0x0f, vtlReturn32: 0x1b, vtlReturn64: 0x26 });
    expect(VSM_CODE_PAGE_OFFSETS_64).toBe(0x2600fn);
    expect(encodeVsmCodePageOffsets(0x04, 0x1b)).toBe(0x1b004n);
    expect(encodeVsmCodePageOffsets(0xfff, 0)).toBe(0xfffn);
    expect(encodeVsmCodePageOffsets(0, 0xfff)).toBe(0xfff000n);
    expect(encodeVsmCodePageOffsets(0x1fff, 0x1fff)).toBe(0xffffffn); // masked to 12 bits each
  });

  test('each call builds a fresh page', () => {
    const a = buildHypercallPage('amd');
    a[0] = 0;
    expect(buildHypercallPage('amd')[0]).toBe(0x0f);
  });
});

describe('VSM register bitfields (tlfs-vsm.md §3.2-3.4)', () => {
  test('HvRegisterVsmPartitionStatus: 15:0 EnabledVtlSet, 19:16 MaximumVtl, 35:20 MbecEnabledVtlSet', () => {
    expect(encodeVsmPartitionStatus(0xffff, 0, 0)).toBe(0x0_0000_ffffn);
    expect(encodeVsmPartitionStatus(0, 0xf, 0)).toBe(0x0_000f_0000n);
    expect(encodeVsmPartitionStatus(0, 0, 0xffff)).toBe(0xf_fff0_0000n);
    expect(encodeVsmPartitionStatus(0x7, 2, 0x2)).toBe(0x0_0022_0007n);
    expect(encodeVsmPartitionStatus(0x1_0000, 0x10, 0x1_0000)).toBe(0n); // masked
  });

  test('HvRegisterVsmVpStatus: 3:0 ActiveVtl, 4 ActiveMbecEnabled, 31:16 EnabledVtlSet', () => {
    expect(encodeVsmVpStatus(0xf, false, 0)).toBe(0xfn);
    expect(encodeVsmVpStatus(0, true, 0)).toBe(0x10n);
    expect(encodeVsmVpStatus(0, false, 0xffff)).toBe(0xffff_0000n);
    expect(encodeVsmVpStatus(1, true, 0x3)).toBe(0x0003_0011n);
    expect(encodeVsmVpStatus(0x10, false, 0x1_0000)).toBe(0n); // masked
  });

  test('HvRegisterVsmPartitionConfig: 0, 4:1, 5, 6, 9', () => {
    const none = { enableVtlProtection: false, defaultVtlProtectionMask: 0, zeroMemoryOnReset: false, denyLowerVtlStartup: false, interceptVpStartup: false };
    expect(encodeVsmPartitionConfig(none)).toBe(0n);
    expect(encodeVsmPartitionConfig({ ...none, enableVtlProtection: true })).toBe(0x1n);
    expect(encodeVsmPartitionConfig({ ...none, defaultVtlProtectionMask: 0x1 })).toBe(0x2n);
    expect(encodeVsmPartitionConfig({ ...none, defaultVtlProtectionMask: 0x8 })).toBe(0x10n);
    expect(encodeVsmPartitionConfig({ ...none, defaultVtlProtectionMask: 0xf })).toBe(0x1en);
    expect(encodeVsmPartitionConfig({ ...none, zeroMemoryOnReset: true })).toBe(0x20n);
    expect(encodeVsmPartitionConfig({ ...none, denyLowerVtlStartup: true })).toBe(0x40n);
    expect(encodeVsmPartitionConfig({ ...none, interceptVpStartup: true })).toBe(0x200n);
    const all = { enableVtlProtection: true, defaultVtlProtectionMask: 0xf, zeroMemoryOnReset: true, denyLowerVtlStartup: true, interceptVpStartup: true };
    expect(encodeVsmPartitionConfig(all)).toBe(0x27fn);
    expect(VSM_PARTITION_CONFIG_DEFINED).toBe(0x27fn);
    expect(decodeVsmPartitionConfig(0x27fn)).toEqual(all);
    expect(decodeVsmPartitionConfig(0x0an)).toEqual({ ...none, defaultVtlProtectionMask: 0x5 });
    // bits 7, 8 and 63:10 are ignored by decode
    expect(decodeVsmPartitionConfig(0xffff_ffff_ffff_fd80n)).toEqual(none);
  });
});

describe('HV_REGISTER_VALUE encodings of segment and table registers (tlfs-hypercalls.md §2.5)', () => {
  test('HV_X64_SEGMENT_REGISTER: base@0, limit@8, selector@12, attributes@14', () => {
    const s = { base: 0x1122_3344_5566_7788n, limit: 0xaabb_ccdd, selector: 0x0123, attributes: 0xa09b };
    const r = segmentToReg128(s);
    expect(r).toEqual({ low: 0x1122_3344_5566_7788n, high: 0xa09b_0123_aabb_ccddn });
    expect(encodeReg128(r).toString('hex')).toBe(
      hex(
        '8877665544332211', // +0  Base
        'ddccbbaa', //         +8  Limit
        '2301', //             +12 Selector
        '9ba0', //             +14 Attributes
      ).toString('hex'),
    );
    expect(reg128ToSegment(decodeReg128(encodeReg128(r)))).toEqual(s);
  });

  test('HV_X64_TABLE_REGISTER: pad 6 bytes, limit@6, base@8', () => {
    const t = { limit: 0x1234, base: 0x0102_0304_0506_0708n };
    const r = tableToReg128(t);
    expect(r).toEqual({ low: 0x1234_0000_0000_0000n, high: 0x0102_0304_0506_0708n });
    expect(encodeReg128(r).toString('hex')).toBe(
      hex(
        '000000000000', //     +0  Pad
        '3412', //             +6  Limit
        '0807060504030201', // +8  Base
      ).toString('hex'),
    );
    expect(reg128ToTable(decodeReg128(encodeReg128(r)))).toEqual(t);
  });

  test('segment/table register values are the same bytes as the context slots', () => {
    const ctx = hex(...CTX_HEX);
    expect(encodeReg128(segmentToReg128(CTX.cs)).equals(ctx.subarray(24, 40))).toBe(true);
    expect(encodeReg128(segmentToReg128(CTX.ldtr)).equals(ctx.subarray(136, 152))).toBe(true);
    expect(encodeReg128(tableToReg128(CTX.idtr)).equals(ctx.subarray(152, 168))).toBe(true);
    expect(encodeReg128(tableToReg128(CTX.gdtr)).equals(ctx.subarray(168, 184))).toBe(true);
  });

  test('reg64 is zero-extended; encodeReg128 writes at an offset', () => {
    expect(reg64(0xffff_ffff_ffff_ffffn)).toEqual({ low: 0xffff_ffff_ffff_ffffn, high: 0n });
    expect(reg64(0x1_0000_0000_0000_0001n)).toEqual({ low: 1n, high: 0n });
    const out = Buffer.alloc(20, 0xee);
    encodeReg128({ low: 0x0102_0304_0506_0708n, high: 0x1112_1314_1516_1718n }, out, 2);
    expect(out.toString('hex')).toBe('eeee' + '0807060504030201' + '1817161514131211' + 'eeee');
  });
});
