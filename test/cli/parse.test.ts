// vsmctl parsers and formatters, in process (no server).
import { pb } from '@vsm/client';
import {
  UsageError,
  parseHexBytes,
  parseMsr,
  parseRegisterName,
  parseRegisterValue,
  parseSize,
  parseU64,
  partitionId,
  partitionName,
  tlfsRegisterName,
  allRegisters,
} from '../../clients/cli/src/parse';
import { colorEnabled, formatSize, hexdump, painter, toJson } from '../../clients/cli/src/format';
import { renderMap } from '../../clients/cli/src/map';

describe('parseSize', () => {
  test.each([
    ['4096', 4096n],
    ['0x1000', 4096n],
    ['1GiB', 1n << 30n],
    ['512MiB', 512n << 20n],
    ['512mib', 512n << 20n],
    ['4G', 4n << 30n],
    ['64 KiB', 64n << 10n],
    ['1.5GiB', 3n << 29n],
    ['1_048_576', 1n << 20n],
    ['2MB', 2_000_000n],
    ['1TiB', 1n << 40n],
    ['0x10MiB', 16n << 20n],
  ])('%s', (text, want) => expect(parseSize(text)).toBe(want));

  test.each(['', 'lots', '1XB', '1.5', '0.1KiB', '-1', '1e9', '0x', '99999999999999999999999'])('rejects %j', (text) => {
    expect(() => parseSize(text)).toThrow(UsageError);
  });
});

describe('numbers and names', () => {
  test('u64', () => {
    expect(parseU64('0xffffffffffffffff')).toBe((1n << 64n) - 1n);
    expect(parseU64('1073741824')).toBe(0x40000000n);
    expect(() => parseU64('0x10000000000000000')).toThrow(/too large/);
    expect(() => parseU64('12abc')).toThrow(/not a number/);
  });

  test('partition names', () => {
    expect(partitionName('demo')).toBe('partitions/demo');
    expect(partitionName('partitions/demo')).toBe('partitions/demo');
    expect(() => partitionName('partitions/a/vps/0')).toThrow(UsageError);
    expect(() => partitionName('')).toThrow(UsageError);
    expect(partitionId('partitions/my-vm')).toBe('my-vm');
    expect(() => partitionId('My_VM')).toThrow(UsageError);
  });

  test('register names: TLFS, API enum, short, number', () => {
    const R = pb.HvRegisterName;
    expect(parseRegisterName('HvX64RegisterRip')).toBe(R.HV_REGISTER_NAME_X64_RIP);
    expect(parseRegisterName('rip')).toBe(R.HV_REGISTER_NAME_X64_RIP);
    expect(parseRegisterName('RAX')).toBe(R.HV_REGISTER_NAME_X64_RAX);
    expect(parseRegisterName('cr3')).toBe(R.HV_REGISTER_NAME_X64_CR3);
    expect(parseRegisterName('HV_REGISTER_NAME_X64_GDTR')).toBe(R.HV_REGISTER_NAME_X64_GDTR);
    expect(parseRegisterName('X64_EFER')).toBe(R.HV_REGISTER_NAME_X64_EFER);
    expect(parseRegisterName('HvRegisterVsmCodePageOffsets')).toBe(R.HV_REGISTER_NAME_VSM_CODE_PAGE_OFFSETS);
    expect(parseRegisterName('guest-os-id')).toBe(R.HV_REGISTER_NAME_GUEST_OS_ID);
    expect(parseRegisterName('HvX64RegisterHypercall')).toBe(R.HV_REGISTER_NAME_X64_HYPERCALL);
    expect(parseRegisterName('0x20010')).toBe(R.HV_REGISTER_NAME_X64_RIP);
    expect(() => parseRegisterName('nope')).toThrow(/unknown register/);
    expect(() => parseRegisterName('0x1234')).toThrow(/unknown register/);
  });

  test('every register name round-trips through its TLFS name', () => {
    for (const r of allRegisters()) expect(parseRegisterName(tlfsRegisterName(r))).toBe(r);
    expect(tlfsRegisterName(pb.HvRegisterName.HV_REGISTER_NAME_X64_KERNEL_GS_BASE)).toBe('HvX64RegisterKernelGsBase');
    expect(tlfsRegisterName(pb.HvRegisterName.HV_REGISTER_NAME_VSM_VP_SECURE_CONFIG_VTL0)).toBe('HvRegisterVsmVpSecureConfigVtl0');
    expect(tlfsRegisterName(pb.HvRegisterName.HV_REGISTER_NAME_SINT15)).toBe('HvRegisterSint15');
  });

  test('register values by shape', () => {
    const R = pb.HvRegisterName;
    expect(parseRegisterValue(R.HV_REGISTER_NAME_X64_RIP, '0x1000')).toEqual({ value: { $case: 'reg64', value: 0x1000n } });
    expect(parseRegisterValue(R.HV_REGISTER_NAME_X64_CS, 'base=0,limit=0xffffffff,selector=8,attributes=0xa09b')).toEqual({
      value: { $case: 'segment', value: { base: 0n, limit: 0xffffffff, selector: 8, attributes: 0xa09b } },
    });
    expect(parseRegisterValue(R.HV_REGISTER_NAME_X64_IDTR, 'base=0x5000 limit=0xfff')).toEqual({
      value: { $case: 'table', value: { base: 0x5000n, limit: 0xfff } },
    });
    expect(() => parseRegisterValue(R.HV_REGISTER_NAME_X64_CS, '5')).toThrow(UsageError);
    expect(() => parseRegisterValue(R.HV_REGISTER_NAME_X64_IDTR, 'selector=1')).toThrow(/no field/);
  });

  test('MSRs by number or name', () => {
    expect(parseMsr('0x40000000')).toBe(0x40000000);
    expect(parseMsr('1073741825')).toBe(0x40000001);
    expect(parseMsr('HV_X64_MSR_VP_ASSIST_PAGE')).toBe(0x40000073);
    expect(parseMsr('hypercall')).toBe(0x40000001);
    expect(parseMsr('sint15')).toBe(0x4000009f);
    expect(() => parseMsr('nope')).toThrow(/unknown MSR/);
    expect(() => parseMsr('0x100000000')).toThrow(/too large/);
  });

  test('hex bytes', () => {
    expect(parseHexBytes('deadbeef')).toEqual(Buffer.from([0xde, 0xad, 0xbe, 0xef]));
    expect(parseHexBytes('0xDEAD')).toEqual(Buffer.from([0xde, 0xad]));
    expect(parseHexBytes('de ad:be-ef')).toEqual(Buffer.from([0xde, 0xad, 0xbe, 0xef]));
    expect(() => parseHexBytes('abc')).toThrow(/odd/);
    expect(() => parseHexBytes('zz')).toThrow(/not hex/);
    expect(() => parseHexBytes('')).toThrow(/not hex/);
  });
});

describe('formatting', () => {
  test('toJson: bigint as decimal string, bytes as hex, enums by name, oneofs inline', () => {
    expect(
      toJson({ a: 1n << 63n, b: Buffer.from([1, 0xab]), kind: pb.OverlayKind.OVERLAY_KIND_SIMP, skip: undefined, v: { value: { $case: 'reg64', value: 5n } } }),
    ).toEqual({
      a: '9223372036854775808',
      b: '01ab',
      kind: 'OVERLAY_KIND_SIMP',
      v: { reg64: '5' },
    });
    // An enum value this client does not know stays a number instead of failing.
    expect(toJson({ kind: 999 })).toEqual({ kind: 999 });
  });

  test('sizes', () => {
    expect(formatSize(1n << 30n)).toBe('1 GiB');
    expect(formatSize(3n << 29n)).toBe('1.5 GiB');
    expect(formatSize(4096)).toBe('4 KiB');
    expect(formatSize(1000)).toBe('1000 B');
    expect(formatSize(1025)).toBe('1025 B');
  });

  test('hexdump collapses repeated lines', () => {
    const d = Buffer.alloc(64);
    d.write('Hi', 0);
    expect(hexdump(d, 0x1000n)).toBe(
      [
        '0000000000001000  48 69 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |Hi..............|',
        '0000000000001010  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|',
        '*',
        '0000000000001030  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|',
      ].join('\n'),
    );
    expect(hexdump(Buffer.from([0x41, 0x42, 0x43]), 0n)).toBe('0000000000000000  41 42 43                                          |ABC|');
  });

  test('color: TTY only, NO_COLOR wins, FORCE_COLOR forces', () => {
    expect(colorEnabled({ isTTY: true }, {})).toBe(true);
    expect(colorEnabled({ isTTY: false }, {})).toBe(false);
    expect(colorEnabled({}, {})).toBe(false);
    expect(colorEnabled({ isTTY: true }, { NO_COLOR: '1' })).toBe(false);
    expect(colorEnabled({ isTTY: true }, { NO_COLOR: '' })).toBe(true);
    expect(colorEnabled({ isTTY: false }, { FORCE_COLOR: '1' })).toBe(true);
    expect(colorEnabled({ isTTY: false }, { FORCE_COLOR: '1', NO_COLOR: 'x' })).toBe(false);
    expect(painter(false)('x', 'red')).toBe('x');
    expect(painter(true)('x', 'red')).toBe('\x1b[31mx\x1b[39m');
  });
});

describe('map rendering', () => {
  const partition = pb.Partition.fromPartial({ name: 'partitions/m', memoryBytes: 1n << 30n, enabledVtlSet: 0b11, vpCount: 1 });
  const ov = (kind: pb.OverlayKind, vtl: number, gpa: bigint, stackPosition: number, vpIndex?: number): pb.Overlay => ({
    kind,
    vtl,
    gpa,
    stackPosition,
    readOnly: kind === pb.OverlayKind.OVERLAY_KIND_HYPERCALL,
    vpIndex,
  });
  const K = pb.OverlayKind;

  test('overlays per VTL, stacks in lowercase with the chain listed, RAM underneath', () => {
    const nonZero = Array.from({ length: 80 }, (_, i) => i === 3 || i === 70);
    const text = renderMap(
      {
        partition,
        from: 0n,
        nonZero,
        overlays: [
          ov(K.OVERLAY_KIND_HYPERCALL, 0, 0x1000n, 0),
          ov(K.OVERLAY_KIND_HYPERCALL, 1, 0x8000n, 1),
          ov(K.OVERLAY_KIND_SIMP, 1, 0x8000n, 0, 0),
          ov(K.OVERLAY_KIND_SIEFP, 1, 0x100000n, 0, 0),
        ],
        viewGeneration: 7n,
        vtls: [0, 1],
      },
      painter(false),
    );
    expect(text).not.toMatch(/\x1b/);
    expect(text).toContain('partitions/m  memory 1 GiB  VTLs enabled 0,1  view generation 7');
    expect(text).toContain('window 0x0000000000000000-0x000000000004ffff: 80 pages of 4 KiB, 64 per row');
    expect(text).toContain(
      'RAM (host view, under any overlay)\n  0x0000000000000000  ...#............ ................ ................ ................\n  0x0000000000040000  ......#.........\n',
    );
    expect(text).toContain('VTL 0 view\n  0x0000000000000000  .H.#............ ');
    expect(text).toContain('VTL 1 view\n  0x0000000000000000  ...#....m....... ');
    expect(text).toContain('  VTL 0  0x0000000000001000  HYPERCALL > RAM (zero), read-only for the guest');
    expect(text).toContain('  VTL 1  0x0000000000008000  SIMP vp0 > HYPERCALL > RAM (zero)');
    expect(text).not.toContain('SIEFP vp0 >'); // outside the window
    expect(text).toContain('2 of 80 RAM pages non-zero');
  });

  test('colors when asked', () => {
    const text = renderMap(
      { partition, from: 0n, nonZero: [false, true], overlays: [ov(K.OVERLAY_KIND_HYPERCALL, 0, 0n, 0)], viewGeneration: 1n, vtls: [0] },
      painter(true),
    );
    expect(text).toContain('\x1b[35m');
  });
});
