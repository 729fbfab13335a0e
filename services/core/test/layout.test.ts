// The layout facility (services/core/src/tlfs/layout.ts) and the TLFS tables written with it. Expected
// offsets and values are typed out from the reference tables (tlfs-*.md), never read from the code.
import { HvMsr, HvMsrNames, encodeHvMessage, hvMessageTypeOf, interceptMessageIpOf } from '@vsm/core';
import {
  type HvArm64MemoryInterceptMessage,
  HvMessageHeaderLayout,
  HvX64InterceptMessageHeaderLayout,
  HvX64MemoryInterceptMessageLayout,
  decodeArm64MemoryInterceptMessage,
  decodeHvMessageHeader,
  decodeModifyVtlProtectionMaskHeader,
  decodeSignalEventInput,
  encodeArm64MemoryInterceptMessage,
  encodeModifyVtlProtectionMaskHeader,
  encodeVpExecutionState,
} from '../src/tlfs/message';
import {
  HV_SINT_MASKED,
  HV_OVERLAY_ENABLE,
  HV_OVERLAY_RSVDP,
  HV_SCONTROL_ENABLE,
  HV_X64_MSR_HYPERCALL_ENABLE,
  HV_X64_MSR_HYPERCALL_LOCKED,
  HV_X64_MSR_HYPERCALL_RSVDP,
  HvSynicSintLayout,
  HvX64MsrHypercallLayout,
  gpfnOf,
} from '../src/tlfs/msr';
import {
  HvEnableVpVtlInputLayout,
  HvInitialVpContextLayout,
  HvRegisterAssocLayout,
  HvVpAssistPageLayout,
  VSM_VINA_DEFINED,
  VSM_VP_SECURE_CONFIG_DEFINED,
  decodeInputVtl,
  decodeVpRegistersHeader,
  encodeInputVtl,
} from '../src/tlfs/vsm';
import { array, at, bigBits, bitfield, bits, bitsOf, bytes, flag, seq, struct, u16, u32, u64, u8, ubig, uint } from '@vsm/core/tlfs/layout';

const hex = (...parts: string[]): Buffer => Buffer.from(parts.join('').replace(/[\s_]/g, ''), 'hex');

describe('struct layouts', () => {
  const L = struct('T', 24, {
    a: at(0, u32, 'A'),
    b: at(4, u8, 'B'),
    // +5..+7 reserved
    c: at(8, u64, 'C'),
    d: seq(u16, 'D'),
    e: seq(uint(3), 'E'),
    f: at(21, ubig(3), 'F'),
  });

  test('encoding into a used buffer: gaps of a nested structure are cleared, integers covering every byte overwrite it whole', () => {
    // A gap inside a nested structure must be cleared (the byte masks of a nested struct do not show it).
    const inner = struct('Inner', 8, { x: at(0, u32, 'X'), y: at(6, u16, 'Y') });
    const outer = struct('Outer', 16, { i: at(0, inner, 'I'), z: at(8, u64, 'Z') });
    for (const pool of [Buffer.alloc(16, 0xaa), Buffer.alloc(4096, 0xaa).subarray(100, 116)]) {
      outer.encode({ i: { x: 1, y: 2 }, z: 3n }, pool, 0);
      expect(pool.toString('hex')).toBe(hex('01000000', '0000', '0200', '0300000000000000').toString('hex'));
    }
    // Two u64 (HV_REGISTER_VALUE's shape): no clearing needed, every byte written.
    const whole = struct('Whole', 16, { lo: at(0, u64, 'Lo'), hi: at(8, u64, 'Hi') });
    for (const pool of [Buffer.alloc(16, 0xaa), Buffer.alloc(4096, 0xaa).subarray(100, 116)]) {
      whole.encode({ lo: 1n, hi: 0n }, pool, 0);
      expect(pool.toString('hex')).toBe(hex('0100000000000000', '0000000000000000').toString('hex'));
    }
  });

  test('little-endian fields at their offsets; gaps are zero on encode and ignored on decode', () => {
    const v = { a: 0x0102_0304, b: 0x05, c: 0x1112_1314_1516_1718n, d: 0x2122, e: 0x313233, f: 0x414243n };
    const b = L.encode(v);
    expect(b.toString('hex')).toBe(hex('04030201', '05', '000000', '1817161514131211', '2221', '333231', '434241').toString('hex'));
    expect(L.decode(b)).toEqual(v);
    b.fill(0xee, 5, 8);
    expect(L.decode(b)).toEqual(v);
    expect(L.offsetOf('d')).toBe(16);
    expect(L.offsetOf('e')).toBe(18);
    expect(L.fields.map((f) => [f.name, f.tlfsName, f.offset, f.size])).toEqual([
      ['a', 'A', 0, 4],
      ['b', 'B', 4, 1],
      ['c', 'C', 8, 8],
      ['d', 'D', 16, 2],
      ['e', 'E', 18, 3],
      ['f', 'F', 21, 3],
    ]);
  });

  test('integers are taken modulo 2^width, as the C field would store them', () => {
    const b = L.encode({ a: -1, b: 0x1ff, c: -1n, d: 0x1_2345, e: 0x1ff_ffff, f: (1n << 40n) | 7n });
    expect(L.decode(b)).toEqual({ a: 0xffff_ffff, b: 0xff, c: 0xffff_ffff_ffff_ffffn, d: 0x2345, e: 0xff_ffff, f: 7n });
  });

  test('encode into a buffer touches only the structure; decode at an offset', () => {
    const out = Buffer.alloc(40, 0x99);
    L.encode({ a: 1, b: 2, c: 3n, d: 4, e: 5, f: 6n }, out, 8);
    expect(out.subarray(0, 8).equals(Buffer.alloc(8, 0x99))).toBe(true);
    expect(out.subarray(32).equals(Buffer.alloc(8, 0x99))).toBe(true);
    expect(out.subarray(13, 16).equals(Buffer.alloc(3))).toBe(true); // the reserved gap is zeroed
    expect(L.decode(out, 8)).toEqual({ a: 1, b: 2, c: 3n, d: 4, e: 5, f: 6n });
  });

  test('a short buffer is a RangeError naming the structure, on decode and on encode', () => {
    expect(() => L.decode(Buffer.alloc(23))).toThrow(RangeError);
    expect(() => L.decode(Buffer.alloc(23))).toThrow(/^T needs 24 bytes at offset 0; the buffer has 23$/);
    expect(() => L.decode(Buffer.alloc(30), 7)).toThrow(/T needs 24 bytes at offset 7/);
    expect(() => L.encode({ a: 1, b: 2, c: 3n, d: 4, e: 5, f: 6n }, Buffer.alloc(24), 1)).toThrow(RangeError);
  });

  test('definition errors: a field past the end, overlapping fields, overlapping bits', () => {
    expect(() => struct('X', 8, { a: at(4, u64, 'A') })).toThrow(/layout X: field a \(\+4, 8 bytes\) does not fit in 8 bytes/);
    expect(() => struct('X', 8, { a: at(0, u32, 'A'), b: at(2, u16, 'B') })).toThrow(/layout X: field b overlaps a at \+2/);
    expect(() => struct('X', 4, { a: at(0, bitsOf(u8, 3, 0), 'A'), b: at(0, bitsOf(u8, 7, 3), 'B') })).toThrow(/field b overlaps a/);
    expect(() => struct('X', 4, { a: at(0, bitsOf(u8, 3, 0), 'A'), b: at(0, bitsOf(u8, 7, 4), 'B') })).not.toThrow();
    expect(() => bitsOf(u8, 8, 0)).toThrow(/do not fit/);
  });

  test('bytes: copied on decode, zero-filled when short, RangeError when long', () => {
    const L2 = struct('B', 6, { x: at(0, bytes(4), 'X'), y: at(4, u16, 'Y') });
    const b = L2.encode({ x: Buffer.from([1, 2]), y: 0xffff });
    expect(b.toString('hex')).toBe('01020000ffff');
    const d = L2.decode(b);
    b[0] = 9;
    expect(d.x.toString('hex')).toBe('01020000'); // a copy, not a view
    expect(() => L2.encode({ x: Buffer.alloc(5), y: 0 })).toThrow(RangeError);
  });

  test('arrays: element by element; the wrong length is a RangeError', () => {
    const L3 = struct('A', 8, { v: at(0, array(u16, 4), 'V') });
    expect(L3.encode({ v: [1, 2, 3, 0xffff] }).toString('hex')).toBe('010002000300ffff');
    expect(L3.decode(hex('010002000300ffff'))).toEqual({ v: [1, 2, 3, 0xffff] });
    expect(() => L3.encode({ v: [1, 2, 3] })).toThrow(/3 elements where the layout has 4/);
  });

  test('bitsOf: fields sharing one integer keep each other', () => {
    const L4 = struct('S', 4, { lo: at(0, bitsOf(u16, 3, 0), 'Lo'), mid: at(0, bitsOf(u16, 11, 4), 'Mid'), hi: at(2, bitsOf(u16, 15, 0), 'Hi') });
    const b = L4.encode({ lo: 0x1f, mid: 0xabc, hi: 0xffff });
    expect(b.readUInt16LE(0)).toBe(0x0bcf); // each value modulo its width: 0x1f -> 0xf, 0xabc -> 0xbc
    expect(L4.decode(b)).toEqual({ lo: 0xf, mid: 0xbc, hi: 0xffff });
    const full = struct('W', 4, { w: at(0, bitsOf(u32, 31, 0), 'W') });
    expect(full.decode(full.encode({ w: 0xffff_fffe }))).toEqual({ w: 0xffff_fffe }); // no sign flip at bit 31
  });
  test('word form: the same bytes as little-endian 64-bit words, only for integers inside one word', () => {
    const W = struct('W', 16, { a: at(0, u64, 'A'), b: at(8, u32, 'B'), c: at(14, u16, 'C') });
    const v = { a: 0x0102_0304_0506_0708n, b: 0x1112_1314, c: 0x2122 };
    expect(W.toWords(v)).toEqual([0x0102_0304_0506_0708n, 0x2122_0000_1112_1314n]);
    expect(W.toWords(v)).toEqual([W.encode(v).readBigUInt64LE(0), W.encode(v).readBigUInt64LE(8)]);
    expect(W.fromWords([0x0102_0304_0506_0708n, 0x2122_ffff_1112_1314n])).toEqual(v); // the gap is ignored
    expect(() => struct('X', 16, { a: at(4, u64, 'A') }).toWords({ a: 1n })).toThrow(/layout X has a field that is not an integer inside one 8-byte word/);
    expect(() => struct('X', 8, { a: at(0, bytes(8), 'A') }).fromWords([0n])).toThrow(/no word form/);
  });
  test('word form, every field kind: number fields in either 32-bit half, across halves, bigint and 64-bit fields', () => {
    // fromWords takes number fields inside one half with number arithmetic and the others as bigints:
    // each must give what decoding the same bytes gives, for all-ones, alternating and random words.
    const K = struct('K', 24, {
      lo8: at(0, u8, 'Lo8'),
      lo16: at(2, u16, 'Lo16'),
      hi32: at(4, u32, 'Hi32'),
      big: at(8, u64, 'Big'),
      across: at(19, uint(3), 'Across'), // bits 31:24 of the low half and 15:0 of the high half
      b3: at(16, ubig(3), 'B3'),
      top: at(22, u16, 'Top'),
    });
    const words = [
      [0xffff_ffff_ffff_ffffn, 0xffff_ffff_ffff_ffffn, 0xffff_ffff_ffff_ffffn],
      [0xaaaa_5555_aaaa_5555n, 0x5555_aaaa_5555_aaaan, 0x8000_0001_8000_0001n],
      [0n, 0n, 0n],
      ...Array.from({ length: 50 }, (_, i) => [0, 1, 2].map((k) => BigInt.asUintN(64, BigInt(i * 7919 + k) * 0x9e37_79b9_7f4a_7c15n))),
    ];
    for (const w of words) {
      const b = Buffer.alloc(24);
      for (const [i, x] of w.entries()) b.writeBigUInt64LE(x, 8 * i);
      expect(K.fromWords(w)).toEqual(K.decode(b));
      expect(K.toWords(K.fromWords(w))).toEqual(w.map((x, i) => (i === 0 ? x & 0xffff_ffff_ffff_00ffn : x))); // +1 is a gap
    }
  });
  test('the DataView path (buffers inside an ArrayBuffer of 256 B..64 KiB) writes the same bytes as the codecs, nested structures and u64 arrays included', () => {
    const Inner = struct('Inner', 16, { a: at(0, u16, 'A'), b: at(4, u32, 'B'), c: at(8, u64, 'C') });
    const Outer = struct('Outer', 64, {
      x: at(0, u8, 'X'),
      inner: at(8, Inner, 'Inner'),
      regs: at(24, array(u64, 3), 'Regs'),
      bitsy: at(48, bitsOf(u16, 3, 0), 'Lo'),
      tail: at(56, ubig(6), 'Tail'),
    });
    const v = { x: 0x1ff, inner: { a: 0x1_2345, b: -1, c: -2n }, regs: [1n, 0xffff_ffff_ffff_ffffn, 1n << 64n], bitsy: 0x1f, tail: 0x1234_5678_9abcn };
    const small = Outer.encode(v); // its own 64-byte ArrayBuffer: the codecs' path
    const big = Buffer.alloc(1024, 0xee); // the DataView path, at an offset inside it
    Outer.encode(v, big, 100);
    expect(big.subarray(100, 164)).toEqual(small);
    expect(big.subarray(0, 100).every((x) => x === 0xee) && big.subarray(164).every((x) => x === 0xee)).toBe(true);
    expect(small.readUInt16LE(8)).toBe(0x2345); // each leaf modulo its width, as the codec would
    expect(small.readUInt32LE(12)).toBe(0xffff_ffff);
    expect(small.readBigUInt64LE(16)).toBe(0xffff_ffff_ffff_fffen);
    expect(small.readBigUInt64LE(40)).toBe(0n);
    expect(Outer.decode(big, 100)).toEqual(Outer.decode(small));
    // A slice whose end is inside the ArrayBuffer: the range is the slice's, not the ArrayBuffer's.
    const slice = big.subarray(200, 250);
    expect(() => Outer.encode(v, slice, 0)).toThrow(/Outer needs 64 bytes at offset 0; the buffer has 50/);
    expect(() => Outer.write(slice, 0, v)).toThrow(RangeError);
    expect(() => array(u64, 3).write(big.subarray(200, 220), 0, [1n, 2n, 3n])).toThrow(RangeError);
    expect(() => Outer.encode({ ...v, regs: [1n] }, big, 300)).toThrow(/1 elements where the layout has 3/);
    expect(big.subarray(200, 250).every((x) => x === 0xee)).toBe(true);
  });
  test("a short buffer at offset 0 (its own, kept in V8's heap, or the start of a larger one) reads and writes through Buffer's methods: the same bytes, its ArrayBuffer never asked for", () => {
    const W = struct('W', 32, { a: at(0, u64, 'A'), b: at(8, u32, 'B'), c: at(12, u32, 'C'), regs: at(16, array(u64, 2), 'Regs') });
    const own = Buffer.alloc(32);
    const head = Buffer.alloc(1024, 0xee).subarray(0, 32); // offset 0 of an ArrayBuffer the DataView path would take
    const inside = Buffer.alloc(1024, 0xee).subarray(200, 232); // the DataView path
    const v = { a: 0xffff_ffff_ffff_fffen, b: 7, c: 0, regs: [1n, 1n << 63n] };
    for (const b of [own, head, inside]) W.encode(v, b);
    expect(own.toString('hex')).toBe('feffffffffffffff07000000000000000100000000000000' + '0000000000000080');
    expect(head).toEqual(own);
    expect(inside).toEqual(own);
    for (const b of [own, head, inside]) expect(W.decode(b)).toEqual(v);
    expect(head.buffer.byteLength).toBe(1024);
    expect(Buffer.from(head.buffer, 32, 8).every((x) => x === 0xee)).toBe(true); // nothing written past the slice
    expect(() => u64.read(head, 28)).toThrow(RangeError);
  });
  test("u64 fields of a buffer cut from a larger one (Node's pool): RangeError past the buffer, neighbours untouched", () => {
    const pool = Buffer.alloc(64, 0xee);
    const part = pool.subarray(8, 24);
    const W = struct('W', 16, { a: at(0, u64, 'A'), b: at(8, u64, 'B') });
    W.encode({ a: 1n, b: 0xffff_ffff_ffff_ffffn }, part);
    expect(pool.toString('hex')).toBe(`${'ee'.repeat(8)}0100000000000000ffffffffffffffff${'ee'.repeat(40)}`);
    expect(W.decode(pool, 8)).toEqual({ a: 1n, b: 0xffff_ffff_ffff_ffffn });
    expect(u64.read(part, 8)).toBe(0xffff_ffff_ffff_ffffn);
    expect(() => u64.write(part, 9, 1n)).toThrow(RangeError); // the pool has room there; the buffer does not
    expect(() => u64.read(part, 12)).toThrow(RangeError);
    expect(() => u64.read(part, -1)).toThrow(RangeError);
    expect(pool.subarray(24).toString('hex')).toBe('ee'.repeat(40));
    u64.write(part, 0, -1n); // taken modulo 2^64, as before
    expect(part.readBigUInt64LE(0)).toBe(0xffff_ffff_ffff_ffffn);
  });
});

describe('bit layouts', () => {
  const B = bitfield('R', 64, { en: flag(0), n: bits(7, 4), big: bigBits(63, 12) });

  test('pack/unpack, partial values, masks and the defined bits', () => {
    expect(B.pack({ en: true, n: 0xf, big: 0xf_ffff_ffff_ffffn })).toBe(0xffff_ffff_ffff_f0f1n);
    expect(B.pack({ n: 2 })).toBe(0x20n);
    expect(B.pack({})).toBe(0n);
    expect(B.unpack(0xffff_ffff_ffff_ffffn)).toEqual({ en: true, n: 0xf, big: 0xf_ffff_ffff_ffffn });
    expect(B.mask('n')).toBe(0xf0n);
    expect(B.definedMask).toBe(0xffff_ffff_ffff_f0f1n);
    expect(B.pack({ n: 0x13 })).toBe(0x30n); // modulo the field's width
  });

  test('a narrow layout packs to a number', () => {
    const N = bitfield('N', 16, { a: bits(1, 0), b: flag(15) });
    expect(N.pack({ a: 3, b: true })).toBe(0x8003);
    expect(N.unpack(0xffff)).toEqual({ a: 3, b: true });
  });

  test('64-bit layouts of number fields pack by halves: the same integer as bit-by-bit arithmetic', () => {
    // Fields in the low half, in the high half, 32 bits wide, and at both ends.
    const H = bitfield('H', 64, { code: bits(15, 0), fast: flag(16), count: bits(43, 32), start: bits(59, 48), top: flag(63), w: bits(31, 17) });
    const spec: [string, number, number][] = [
      ['code', 0, 16],
      ['fast', 16, 1],
      ['w', 17, 15],
      ['count', 32, 12],
      ['start', 48, 12],
      ['top', 63, 1],
    ];
    let seed = 12345;
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed;
    };
    for (let i = 0; i < 500; i++) {
      const v: Record<string, number | boolean> = {};
      let expected = 0n;
      for (const [k, lo, w] of spec) {
        if (rnd() % 4 === 0) continue; // absent
        const x = w === 1 ? rnd() % 2 : rnd() % 2 ** w;
        v[k] = w === 1 ? x === 1 : x;
        expected |= BigInt(x) << BigInt(lo);
      }
      expect(H.pack(v as never)).toBe(expected);
      expect(H.unpack(expected)).toEqual(
        Object.fromEntries(
          spec.map(([k, lo, w]) => [k, w === 1 ? ((expected >> BigInt(lo)) & 1n) === 1n : Number((expected >> BigInt(lo)) & ((1n << BigInt(w)) - 1n))]),
        ),
      );
    }
    // Values wider than their field are taken modulo its width, as before; a bigint for a number field too.
    expect(H.pack({ code: 0x1_0005, count: 0x1001 } as never)).toBe((0x1n << 32n) | 0x5n);
    expect(H.pack({ count: 0xabcn as never })).toBe(0xabcn << 32n);
  });

  test('64-bit unpack is the same on both sides of 2^53 (below it the halves come from one number)', () => {
    const H = bitfield('H', 64, { code: bits(15, 0), fast: flag(16), count: bits(43, 32), mid: bits(52, 44), hi: bits(62, 53) });
    const W = bitfield('W', 64, { low: bits(19, 0), big: bigBits(63, 20) }); // a bigint field straddling bit 32
    const f = (v: bigint, lo: number, w: number) => (v >> BigInt(lo)) & ((1n << BigInt(w)) - 1n);
    const manualH = (v: bigint) => ({
      code: Number(f(v, 0, 16)),
      fast: f(v, 16, 1) === 1n,
      count: Number(f(v, 32, 12)),
      mid: Number(f(v, 44, 9)),
      hi: Number(f(v, 53, 10)),
    });
    const manualW = (v: bigint) => ({ low: Number(f(v, 0, 20)), big: f(v, 20, 44) });
    const edge = 1n << 53n;
    for (const v of [0n, 1n, 0x1_0050n, 0xffff_ffffn, 0x1_0000_0000n, edge - 1n, edge, edge + 1n, edge + 0x1_0001n, 0x8000_0000_0000_0000n, (1n << 64n) - 1n]) {
      expect(H.unpack(v)).toEqual(manualH(v));
      expect(W.unpack(v)).toEqual(manualW(v));
    }
    // Out of range: taken modulo 2^64 as before (a negative bigint, one above 2^64).
    expect(H.unpack(-1n)).toEqual(manualH((1n << 64n) - 1n));
    expect(W.unpack((1n << 64n) + 5n)).toEqual(manualW(5n));
  });

  test('definition errors', () => {
    expect(() => bitfield('R', 8, { a: bits(8, 0) })).toThrow(/does not fit 8 bits/);
    expect(() => bitfield('R', 64, { a: bits(40, 0) })).toThrow(/use bigBits/);
    expect(() => bitfield('R', 64, { a: bits(7, 0), b: flag(7) })).toThrow(/field b overlaps/);
  });
});

describe('TLFS tables as layouts', () => {
  const rows = (l: { fields: readonly { tlfsName: string; offset: number; size: number }[] }) => l.fields.map((f) => [f.tlfsName, f.offset, f.size]);

  test('HV_MESSAGE_HEADER (tlfs-overlays-synic.md §5.3)', () => {
    expect(HvMessageHeaderLayout.size).toBe(16);
    expect(rows(HvMessageHeaderLayout)).toEqual([
      ['MessageType', 0, 4],
      ['PayloadSize', 4, 1],
      ['MessageFlags', 5, 1],
      ['Sender / Port (OriginationId)', 8, 8],
    ]);
    const slot = encodeHvMessage(
      { messageType: 0x8000_0001, payloadSize: 3, messageFlags: 1, originationId: 0x0102_0304_0506_0708n },
      Buffer.from([0xaa, 0xbb, 0xcc]),
    );
    expect(slot.length).toBe(256);
    expect(slot.subarray(0, 20).toString('hex')).toBe('01000080' + '03' + '01' + '0000' + '0807060504030201' + 'aabbcc00');
    expect(decodeHvMessageHeader(slot)).toEqual({ messageType: 0x8000_0001, payloadSize: 3, messageFlags: 1, originationId: 0x0102_0304_0506_0708n });
    expect(() => encodeHvMessage({ messageType: 0, payloadSize: 0, messageFlags: 0, originationId: 0n }, Buffer.alloc(241))).toThrow(
      'HV_MESSAGE payload exceeds 240 bytes',
    );
  });

  test('HV_X64_INTERCEPT_MESSAGE_HEADER and the memory intercept message (tlfs-intercepts.md §6.1, §6.7)', () => {
    expect(rows(HvX64InterceptMessageHeaderLayout)).toEqual([
      ['VpIndex', 0, 4],
      ['InstructionLength', 4, 1],
      ['InterceptAccessType', 5, 1],
      ['ExecutionState', 6, 2],
      ['CsSegment', 8, 16],
      ['Rip', 24, 8],
      ['Rflags', 32, 8],
    ]);
    expect(rows(HvX64MemoryInterceptMessageLayout)).toEqual([
      ['Header', 0, 40],
      ['CacheType', 40, 4],
      ['InstructionByteCount', 44, 1],
      ['MemoryAccessInfo', 45, 1],
      ['TprPriority', 46, 1],
      ['GuestVirtualAddress', 48, 8],
      ['GuestPhysicalAddress', 56, 8],
      ['InstructionBytes', 64, 16],
      ['DsSegment', 80, 16],
      ['SsSegment', 96, 16],
      ['Rax..R15', 112, 128],
    ]);
    // InstructionLength is bits 3:0 of +4 (7:4 Cr8): decode ignores the high nibble
    const b = Buffer.alloc(40);
    b[4] = 0xf3;
    expect(HvX64InterceptMessageHeaderLayout.decode(b).instructionLength).toBe(3);
  });

  test('HV_X64_VP_EXECUTION_STATE bits (tlfs-intercepts.md §6.2)', () => {
    const none = { cpl: 0, cr0Pe: false, cr0Am: false, eferLma: false, debugActive: false, interruptionPending: false, vtl: 0 };
    expect(encodeVpExecutionState({ ...none, cpl: 3 })).toBe(0x3);
    expect(encodeVpExecutionState({ ...none, cr0Pe: true })).toBe(0x4);
    expect(encodeVpExecutionState({ ...none, cr0Am: true })).toBe(0x8);
    expect(encodeVpExecutionState({ ...none, eferLma: true })).toBe(0x10);
    expect(encodeVpExecutionState({ ...none, debugActive: true })).toBe(0x20);
    expect(encodeVpExecutionState({ ...none, interruptionPending: true })).toBe(0x40);
    expect(encodeVpExecutionState({ ...none, vtl: 0xf })).toBe(0x780);
  });

  test('HV_ARM64_MEMORY_INTERCEPT_MESSAGE: 64 bytes at the OpenVMM/Linux offsets, decodes back', () => {
    const m: HvArm64MemoryInterceptMessage = {
      vpIndex: 0x0a0b0c0d,
      instructionLength: 4,
      interceptAccessType: 2,
      executionState: { cpl: 1, debugActive: true, interruptionPending: false, vtl: 1 },
      pc: 0x1122_3344_5566_7788n,
      cpsr: 0x3c5n,
      cacheType: 6,
      instructionByteCount: 4,
      memoryAccessInfo: { gvaValid: true },
      instructionBytes: Buffer.from([0x1f, 0x20, 0x03, 0xd5]),
      guestVirtualAddress: 0xffff_0000_1234_5000n,
      guestPhysicalAddress: 0x8_0000n,
      syndrome: 0x8200_000fn,
    };
    const b = encodeArm64MemoryInterceptMessage(m);
    expect(b.toString('hex')).toBe(
      hex(
        '0d0c0b0a',
        '04',
        '02',
        '1500', //    +0 VpIndex, +4 InstructionLength, +5 access type, +6 Cpl 1 | DebugActive (bit 2) | Vtl 1 << 4
        '8877665544332211', //                +8 Pc
        'c503000000000000', //                +16 Cpsr
        '06000000',
        '04',
        '01',
        '0000', //    +24 CacheType, +28 InstructionByteCount, +29 GvaValid, +30 reserved
        '1f2003d5',
        '00000000', //            +32 InstructionBytes, +36 reserved
        '005034120000ffff', //                +40 GuestVirtualAddress
        '0000080000000000', //                +48 GuestPhysicalAddress
        '0f00008200000000', //                +56 Syndrome
      ).toString('hex'),
    );
    expect(decodeArm64MemoryInterceptMessage(b)).toEqual(m);
    // In a SIM slot: the Monitor stream's InterceptEvent reads the type and the Pc (not the x64 Rip's offset, +24: CacheType...).
    const slot = encodeHvMessage({ messageType: 0x80000001, payloadSize: 64, messageFlags: 0, originationId: 0n }, b);
    expect(hvMessageTypeOf(slot)).toBe(0x80000001);
    expect(interceptMessageIpOf(slot, 'arm64')).toBe(0x1122_3344_5566_7788n);
    expect(interceptMessageIpOf(slot, 'x64')).toBe(0x0000_0104_0000_0006n); // what reading it at the x64 Rip's offset gives
    // instruction bytes beyond 4 are dropped, as before
    expect(
      encodeArm64MemoryInterceptMessage({ ...m, instructionBytes: Buffer.from([1, 2, 3, 4, 5]) })
        .subarray(32, 40)
        .toString('hex'),
    ).toBe('0102030400000000');
  });

  test('HvCallModifyVtlProtectionMask header and HvCallSignalEvent input (tlfs-hypercalls.md §2.3, §2.9)', () => {
    const h = { targetPartitionId: 0xffff_ffff_ffff_ffffn, mapFlags: 0x0000_000f, targetVtl: 0x11, rsvdZ: 0xabcdef };
    const b = encodeModifyVtlProtectionMaskHeader(h);
    expect(b.toString('hex')).toBe('ffffffffffffffff' + '0f000000' + '11' + 'efcdab');
    expect(decodeModifyVtlProtectionMaskHeader(b)).toEqual(h);
    expect(decodeSignalEventInput(hex('04030201', '0605', '0807'))).toEqual({ connectionId: 0x0102_0304, flagNumber: 0x0506, rsvdZ: 0x0708 });
  });

  test('HV_INPUT_VTL (tlfs-hypercalls.md §2.2)', () => {
    expect(encodeInputVtl({ targetVtl: 2, useTargetVtl: true })).toBe(0x12);
    expect(encodeInputVtl({})).toBe(0);
    expect(encodeInputVtl({ rsvdZ: 7 })).toBe(0xe0);
    expect(decodeInputVtl(0xff)).toEqual({ targetVtl: 0xf, useTargetVtl: true, rsvdZ: 7 });
    expect(decodeVpRegistersHeader(hex('0100000000000000', '02000000', '11', '000000'))).toEqual({ partitionId: 1n, vpIndex: 2, targetVtl: 0x11, rsvdZ: 0 });
  });

  test('HV_REGISTER_ASSOC, HV_INITIAL_VP_CONTEXT, HvCallEnableVpVtl, HV_VP_ASSIST_PAGE (tlfs-hypercalls.md §2.5, §2.7; tlfs-vsm.md §5.2)', () => {
    expect(rows(HvRegisterAssocLayout)).toEqual([
      ['Name', 0, 4],
      ['RsvdZ', 4, 12],
      ['Value', 16, 16],
    ]);
    expect(HvInitialVpContextLayout.fields.map((f) => [f.tlfsName, f.offset])).toEqual([
      ['Rip', 0],
      ['Rsp', 8],
      ['Rflags', 16],
      ['Cs', 24],
      ['Ds', 40],
      ['Es', 56],
      ['Fs', 72],
      ['Gs', 88],
      ['Ss', 104],
      ['Tr', 120],
      ['Ldtr', 136],
      ['Idtr', 152],
      ['Gdtr', 168],
      ['Efer', 184],
      ['Cr0', 192],
      ['Cr3', 200],
      ['Cr4', 208],
      ['MsrCrPat', 216],
    ]);
    expect(HvEnableVpVtlInputLayout.offsetOf('vpVtlContext')).toBe(16);
    expect(HvVpAssistPageLayout.size).toBe(4096);
    expect(HvVpAssistPageLayout.offsetOf('interceptMessage')).toBe(112);
  });

  test('synthetic MSR formats (tlfs-hypercalls.md §1.7, tlfs-overlays-synic.md §4.3, §5.1)', () => {
    expect(HV_X64_MSR_HYPERCALL_ENABLE).toBe(0x1n);
    expect(HV_X64_MSR_HYPERCALL_LOCKED).toBe(0x2n);
    expect(HV_X64_MSR_HYPERCALL_RSVDP).toBe(0xffcn);
    expect(HV_OVERLAY_ENABLE).toBe(0x1n);
    expect(HV_OVERLAY_RSVDP).toBe(0xffen);
    expect(HV_SCONTROL_ENABLE).toBe(0x1n);
    expect(HV_SINT_MASKED).toBe(0x10000n);
    expect(HvSynicSintLayout.pack({ vector: 0x30, autoEoi: true })).toBe(0x20030n);
    expect(HvSynicSintLayout.unpack(0x70031n)).toEqual({ vector: 0x31, masked: true, autoEoi: true, polling: true });
    expect(HvX64MsrHypercallLayout.unpack(0x1234_5003n)).toEqual({ enable: true, locked: true, rsvdP: 0, gpfn: 0x12345n });
    expect(gpfnOf(0xffff_ffff_ffff_f001n)).toBe(0xf_ffff_ffff_ffffn);
    expect(gpfnOf(0x5001n)).toBe(5n);
    expect(VSM_VP_SECURE_CONFIG_DEFINED).toBe(0x3n);
    expect(VSM_VINA_DEFINED).toBe(0x7ffn);
  });

  test('MSR numbers and names (tlfs-intercepts.md §7.1)', () => {
    expect(HvMsrNames.size).toBe(15 + 8 + 16);
    expect(HvMsrNames.get(0x400000b0)).toBe('HV_X64_MSR_STIMER0_CONFIG');
    expect(HvMsrNames.get(0x400000b7)).toBe('HV_X64_MSR_STIMER3_COUNT');
    expect(HvMsrNames.get(0x40000000)).toBe('HV_X64_MSR_GUEST_OS_ID');
    expect(HvMsrNames.get(0x40000073)).toBe('HV_X64_MSR_VP_ASSIST_PAGE');
    expect(HvMsrNames.get(0x40000090)).toBe('HV_X64_MSR_SINT0');
    expect(HvMsrNames.get(0x40000095)).toBe('HV_X64_MSR_SINT5');
    expect(HvMsrNames.get(0x4000009f)).toBe('HV_X64_MSR_SINT15');
    for (const [name, msr] of Object.entries(HvMsr)) expect([name, HvMsrNames.get(msr)]).toEqual([name, name]);
  });
});
