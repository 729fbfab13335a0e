// tlfs layer: declarative layouts. Each TLFS structure is written once, as a table of fields, and
// that table drives both its encoder and its decoder (issue #18, "one table per fact").
//
// Two kinds of layout:
// - struct(name, size, fields): a little-endian byte structure (HV_MESSAGE, HV_INITIAL_VP_CONTEXT,
//   hypercall inputs, ...). A field is at an explicit byte offset (`at`, as the TLFS tables give
//   them) or follows the previous one (`seq`); its codec is an integer (u8/u16/u32/u64, uint(n),
//   ubig(n)), bytes(n), array(codec, n), a nested struct, a bit layout, or `bitsOf` (a bit range of
//   an integer that other fields share). Bytes no field covers are reserved: zero-filled on encode,
//   ignored on decode. Fields are checked at definition time to fit and not to overlap (to the bit).
// - bitfield(name, width, fields): the bits of one 8/16/32/64-bit integer (HV_HYPERCALL_INPUT, the
//   VSM registers, the synthetic MSR formats), written as the TLFS writes them: `bits(hi, lo)`,
//   `flag(bit)`. pack() takes a partial value (absent fields are 0); unpack() returns every field.
//
// Encoding never fails on a value too wide for its field: integers are taken modulo 2^width (the
// field's width is the ABI; a wider value is truncated as `>>> 0`, `& 0xffff` or a C cast would).
// Encoding fails (RangeError) only on a bytes value longer than its field, an array of the wrong
// length or a buffer too small; decoding fails (RangeError) on a buffer too short.
//
// Why no library: the well-kept binary-struct packages on npm were checked (restructure, typed-binary,
// @solana/buffer-layout, binary-layout). None covers the TLFS shapes without as much glue as this
// file: restructure and typed-binary have no 64-bit integers, @solana/buffer-layout reads u64 as a
// lossy number (bigint needs a second package that pulls in a web3 SDK), and binary-layout (the best
// typed of them) is sequential and big-endian by default and has no multi-bit fields inside an
// integer, which most TLFS layouts here are. The core has no run-time dependency and keeps it so.

/** Encoder/decoder of one value at a byte offset. */
export interface Codec<T> {
  readonly size: number;
  read(b: Buffer, off: number): T;
  write(b: Buffer, off: number, v: T): void;
  /** The bits of each of its `size` bytes the codec owns (for overlap checks); absent: all of them. */
  readonly byteMasks?: readonly number[];
}
export type CodecValue<C> = C extends Codec<infer T> ? T : never;

const trunc = (v: number): number => (Number.isFinite(v) ? Math.trunc(v) : 0);
/** v modulo 2^bits, for bits <= 48. */
const wrap = (v: number, bits: number): number => {
  const m = 2 ** bits;
  return ((trunc(v) % m) + m) % m;
};

// ---- integers (little-endian) --------------------------------------------------------------------

/** An integer codec: also converts its value to and from a bigint of its width (for Layout.toInt). */
export interface IntCodec<T extends number | bigint> extends Codec<T> {
  /** The value modulo 2^(8 * size), as a bigint. */
  toBig(v: T): bigint;
  /** The value of a bigint below 2^(8 * size). */
  fromBig(x: bigint): T;
}

export const u8: IntCodec<number> = {
  size: 1,
  read: (b, o) => b[o]!,
  write: (b, o, v) => void (b[o] = v & 0xff),
  toBig: (v) => BigInt(v & 0xff),
  fromBig: Number,
};
export const u16: IntCodec<number> = {
  size: 2,
  read: (b, o) => b.readUInt16LE(o),
  write: (b, o, v) => void b.writeUInt16LE(v & 0xffff, o),
  toBig: (v) => BigInt(v & 0xffff),
  fromBig: Number,
};
export const u32: IntCodec<number> = {
  size: 4,
  read: (b, o) => b.readUInt32LE(o),
  write: (b, o, v) => void b.writeUInt32LE(v >>> 0, o),
  toBig: (v) => BigInt(v >>> 0),
  fromBig: Number,
};
/**
 * A DataView over the ArrayBuffer of the buffer last read or written by u64 (one entry: a layout's
 * fields go to one buffer in a row). DataView.get/setBigUint64 take ≈9 ns where Buffer's
 * read/writeBigUInt64LE take ≈65 (they split the bigint into two numbers with bigint arithmetic);
 * an HV_MESSAGE has 25 such fields. Only ArrayBuffers of 256 B..64 KiB (messages, Node's 8 KiB pool)
 * are kept, so no guest memory stays referenced by the cache.
 */
let cachedBuffer: ArrayBufferLike | undefined;
let cachedView: DataView | undefined;
const CACHED_VIEW_MAX_BYTES = 64 * 1024;
const CACHED_VIEW_MIN_BYTES = 256;
function viewOf(b: Buffer, o: number): DataView | undefined {
  if (!(o >= 0 && o + 8 <= b.length)) throw new RangeError(`an 8-byte field at offset ${o} does not fit a buffer of ${b.length} bytes`);
  return dataViewOf(b);
}
/** The cached DataView over `b`'s ArrayBuffer (offsets: b.byteOffset + ...), or undefined (use Buffer's methods). */
function dataViewOf(b: Buffer): DataView | undefined {
  // A small buffer at offset 0 may be one of its own (Buffer.alloc(16) of one register, GuestRam.read
  // of a 24-byte hypercall input): V8 keeps typed arrays of up to 64 bytes inside its heap, and the
  // first `.buffer` of one moves its bytes out into a new ArrayBuffer (≈1 µs here, against ≈40 ns for
  // Buffer's own methods on it). Such a buffer is not asked for its ArrayBuffer at all: Buffer's
  // methods read it. (A pool slice that happens to start at offset 0 takes that path too: the same
  // bytes, read the slower way.)
  if (b.byteOffset === 0 && b.byteLength < CACHED_VIEW_MIN_BYTES) return undefined;
  if (b.buffer === cachedBuffer) return cachedView;
  // A buffer of its own that small has a field or two: a new DataView for it would cost more than
  // Buffer's methods, and would evict the pool's view.
  const n = b.buffer.byteLength;
  if (n > CACHED_VIEW_MAX_BYTES || n < CACHED_VIEW_MIN_BYTES) return undefined;
  cachedBuffer = b.buffer;
  cachedView = new DataView(b.buffer);
  return cachedView;
}

/** v modulo 2^64 (no new bigint when it is in range already: BigInt.asUintN allocates). */
export const toU64 = (v: bigint): bigint => (v >= 0n && v <= 0xffff_ffff_ffff_ffffn ? v : BigInt.asUintN(64, v));
/** Whether Number(v) is exactly v (0 <= v < 2^53): arithmetic on it may then be done in numbers, without making bigints. */
export const isExactNumber = (v: bigint): boolean => v >= 0n && v <= 0x1f_ffff_ffff_ffffn;

export const u64: IntCodec<bigint> = {
  size: 8,
  read: (b, o) => {
    const dv = viewOf(b, o);
    return dv ? dv.getBigUint64(b.byteOffset + o, true) : b.readBigUInt64LE(o);
  },
  write: (b, o, v) => {
    const x = toU64(v);
    const dv = viewOf(b, o);
    if (dv) dv.setBigUint64(b.byteOffset + o, x, true);
    else b.writeBigUInt64LE(x, o);
  },
  toBig: (v) => BigInt.asUintN(64, v),
  fromBig: (x) => x,
};
/** An n-byte unsigned integer read as a number (n = 1..6), e.g. a 3-byte RsvdZ. */
export function uint(n: 1 | 2 | 3 | 4 | 5 | 6): IntCodec<number> {
  return {
    size: n,
    read: (b, o) => b.readUIntLE(o, n),
    write: (b, o, v) => void b.writeUIntLE(wrap(v, 8 * n), o, n),
    toBig: (v) => BigInt(wrap(v, 8 * n)),
    fromBig: Number,
  };
}
/** An n-byte unsigned integer read as a bigint (n = 1..8), e.g. a 6-byte RsvdZ. */
export function ubig(n: 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8): IntCodec<bigint> {
  if (n === 8) return u64;
  const lo = Math.min(n, 6);
  return {
    size: n,
    read: (b, o) => BigInt(b.readUIntLE(o, lo)) | (n > 6 ? BigInt(b[o + 6]!) << 48n : 0n),
    write: (b, o, v) => {
      const x = BigInt.asUintN(8 * n, v);
      b.writeUIntLE(Number(x & 0xffff_ffff_ffffn), o, lo);
      if (n > 6) b[o + 6] = Number(x >> 48n);
    },
    toBig: (v) => BigInt.asUintN(8 * n, v),
    fromBig: (x) => x,
  };
}
/** A codec whose value has a narrower TypeScript type (an enum of numbers), same bytes. */
export const typed = <T extends number>(c: Codec<number>): Codec<T> => c as Codec<T>;

/** Bits hi:lo of a u8/u16/u32 at the field's offset, as a number; other fields may own the other bits. */
export function bitsOf(int: Codec<number>, hi: number, lo: number): Codec<number> {
  const width = hi - lo + 1;
  if (lo < 0 || width < 1 || hi >= 8 * int.size || int.size > 4) throw new Error(`bitsOf: bits ${hi}:${lo} do not fit a ${int.size}-byte integer`);
  const mask = width === 32 ? 0xffff_ffff : (1 << width) - 1;
  const shifted = (mask << lo) >>> 0;
  return {
    size: int.size,
    read: (b, o) => ((int.read(b, o) >>> lo) & mask) >>> 0,
    write: (b, o, v) => int.write(b, o, ((int.read(b, o) & ~shifted) | ((v & mask) << lo)) >>> 0),
    byteMasks: Array.from({ length: int.size }, (_, i) => (shifted >>> (8 * i)) & 0xff),
  };
}

// ---- bytes and arrays ------------------------------------------------------------------------------

/** n raw bytes. Decode copies them; encode copies a value of at most n bytes and zero-fills the rest. */
export function bytes(n: number): Codec<Buffer> {
  return {
    size: n,
    read: (b, o) => Buffer.from(b.subarray(o, o + n)),
    write: (b, o, v) => {
      if (v.length > n) throw new RangeError(`${v.length} bytes do not fit a ${n}-byte field`);
      if (!(o >= 0 && o + n <= b.length)) throw new RangeError(`a ${n}-byte field at offset ${o} does not fit a buffer of ${b.length} bytes`);
      b.set(v, o);
      if (v.length < n) b.fill(0, o + v.length, o + n);
    },
  };
}

/** `count` elements of one codec, back to back. */
export function array<T>(codec: Codec<T>, count: number): Codec<T[]> {
  return {
    size: codec.size * count,
    read: (b, o) => Array.from({ length: count }, (_, i) => codec.read(b, o + codec.size * i)),
    write: (b, o, v) => {
      if (v.length !== count) throw new RangeError(`${v.length} elements where the layout has ${count}`);
      // u64 elements (the GPRs of an intercept message) straight through the buffer's DataView.
      const dv = codec === (u64 as Codec<unknown>) ? dataViewOf(b) : undefined;
      if (dv !== undefined) {
        if (!(o >= 0 && o + 8 * count <= b.length)) throw new RangeError(`${count} 8-byte elements at offset ${o} do not fit a buffer of ${b.length} bytes`);
        const bo = b.byteOffset + o;
        for (let i = 0; i < count; i++) dv.setBigUint64(bo + 8 * i, toU64(v[i] as bigint), true);
        return;
      }
      for (let i = 0; i < count; i++) codec.write(b, o + codec.size * i, v[i]!);
    },
  };
}

// ---- structs ---------------------------------------------------------------------------------------

/** A field at a byte offset (or, from `seq`, right after the previous field), with its TLFS name. */
export interface Placed<T> {
  readonly offset: number | undefined;
  readonly codec: Codec<T>;
  readonly tlfsName: string;
}
export const at = <T>(offset: number, codec: Codec<T>, tlfsName: string): Placed<T> => ({ offset, codec, tlfsName });
export const seq = <T>(codec: Codec<T>, tlfsName: string): Placed<T> => ({ offset: undefined, codec, tlfsName });

type Fields = Record<string, Placed<unknown>>;
export type StructValue<F extends Fields> = { -readonly [K in keyof F]: F[K] extends Placed<infer T> ? T : never };

/** One row of a struct's table, as a layout describes itself. */
export interface FieldInfo {
  readonly name: string;
  readonly tlfsName: string;
  readonly offset: number;
  readonly size: number;
}

export interface Layout<T> extends Codec<T> {
  /** The TLFS name of the structure. */
  readonly name: string;
  readonly fields: readonly FieldInfo[];
  /** A buffer of `size` bytes, or `value` written into `out` at `offset` (only those bytes touched); returns the buffer. */
  encode(value: T, out?: Buffer, offset?: number): Buffer;
  decode(b: Buffer, offset?: number): T;
  /** Byte offset of a field inside the structure. */
  offsetOf(field: keyof T & string): number;
  /**
   * The structure as little-endian 64-bit words (the same bytes, without a buffer), for structures
   * made of integer fields that each sit inside one 8-byte word, e.g. a segment register <-> the two
   * halves of its 128-bit HV_REGISTER_VALUE.
   */
  toWords(value: T): bigint[];
  fromWords(words: readonly bigint[]): T;
}

/** A struct's fields flattened to the codecs that write bytes (nested structures opened up). */
interface Leaf {
  readonly offset: number;
  readonly path: readonly string[];
  readonly codec: Codec<unknown>;
  readonly kind: 'u8' | 'u16' | 'u32' | 'u64' | 'codec';
}
const LEAVES = Symbol('layout leaves');
function leavesOf(c: Codec<unknown>): readonly Leaf[] {
  const nested = (c as { [LEAVES]?: readonly Leaf[] })[LEAVES];
  if (nested) return nested;
  const kind = c === u8 ? 'u8' : c === u16 ? 'u16' : c === u32 ? 'u32' : c === u64 ? 'u64' : 'codec';
  return [{ offset: 0, path: [], codec: c, kind }];
}

export function struct<F extends Fields>(name: string, size: number, spec: F): Layout<StructValue<F>> {
  type T = StructValue<F>;
  const fields: (FieldInfo & { codec: Codec<unknown> })[] = [];
  const owned = new Array<number>(size).fill(0);
  const owner = new Array<string>(size).fill('');
  let cursor = 0;
  for (const [key, f] of Object.entries(spec)) {
    const offset = f.offset ?? cursor;
    const fsize = f.codec.size;
    if (!Number.isInteger(offset) || offset < 0 || offset + fsize > size)
      throw new Error(`layout ${name}: field ${key} (+${offset}, ${fsize} bytes) does not fit in ${size} bytes`);
    for (let i = 0; i < fsize; i++) {
      const m = f.codec.byteMasks?.[i] ?? 0xff;
      if ((owned[offset + i]! & m) !== 0) throw new Error(`layout ${name}: field ${key} overlaps ${owner[offset + i]} at +${offset + i}`);
      owned[offset + i]! |= m;
      owner[offset + i] = key;
    }
    fields.push({ name: key, tlfsName: f.tlfsName, offset, size: fsize, codec: f.codec });
    cursor = offset + fsize;
  }
  const need = (b: Buffer, off: number) => {
    if (!Number.isInteger(off) || off < 0 || off + size > b.length)
      throw new RangeError(`${name} needs ${size} bytes at offset ${off}; the buffer has ${b.length}`);
  };
  // write, like read below: one function per layout made from the field table. Nested structures are
  // flattened into their leaves (no call per nested structure); each leaf is written at its offset
  // with a named (not keyed) load of its value: u16/u32/u64 leaves straight through a DataView of the
  // buffer when it has one (dataViewOf), every other leaf (and every leaf of a buffer without one)
  // by its own codec. `fill` clears the bytes no field owns (RsvdZ) and the bits of bit fields that
  // are not set. The range is checked first: DataView writes are bounded by the ArrayBuffer, not by
  // the Buffer (a slice of Node's pool).
  const leaves: Leaf[] = fields.flatMap((f) =>
    leavesOf(f.codec).map((l) => ({ offset: f.offset + l.offset, path: [f.name, ...l.path], codec: l.codec, kind: l.kind })),
  );
  const access = (l: Leaf) => `v${l.path.map((k) => `[${JSON.stringify(k)}]`).join('')}`;
  // Nothing to clear first when whole integers own every byte (HV_REGISTER_VALUE: two u64s): the
  // writes cover the layout (a fill is a native call, ≈30-50 ns, per register encoded).
  const fillFirst = (() => {
    if (leaves.some((l) => l.kind === 'codec')) return true;
    const covered = new Array<boolean>(size).fill(false);
    for (const l of leaves) for (let i = 0; i < l.codec.size; i++) covered[l.offset + i] = true;
    return !covered.every(Boolean);
  })();
  const fastLeaf = (l: Leaf, i: number): string => {
    const x = access(l);
    switch (l.kind) {
      case 'u8':
        return `b[off + ${l.offset}] = ${x} & 0xff;`;
      case 'u16':
        return `dv.setUint16(bo + ${l.offset}, ${x} & 0xffff, true);`;
      case 'u32':
        return `dv.setUint32(bo + ${l.offset}, ${x} >>> 0, true);`;
      case 'u64':
        return `dv.setBigUint64(bo + ${l.offset}, n64(${x}), true);`;
      default:
        return `w[${i}](b, off + ${l.offset}, ${x});`;
    }
  };
  const write = new Function(
    'w',
    'need',
    'dataViewOf',
    'n64',
    `return (b, off, v) => { need(b, off); ${fillFirst ? `b.fill(0, off, off + ${size});` : ''} const dv = dataViewOf(b);
      if (dv === undefined) { ${leaves.map((l, i) => `w[${i}](b, off + ${l.offset}, ${access(l)});`).join(' ')} return; }
      const bo = b.byteOffset + off; ${leaves.map(fastLeaf).join(' ')} };`,
  )(
    leaves.map((l) => l.codec.write.bind(l.codec)),
    need,
    dataViewOf,
    toU64,
  ) as (b: Buffer, off: number, v: T) => void;
  // read: one object literal with the layout's keys, made once per layout from the field table (one
  // shape, no per-field keyed stores); field i is read by its own codec at its offset.
  // Integer fields (u16/u32/u64) are read straight through a DataView of the buffer when it has one
  // (dataViewOf), as the writes are; the others by their codecs.
  const readers = fields.map((f) => f.codec.read.bind(f.codec));
  const intKind = (c: Codec<unknown>) => (c === u16 ? 'u16' : c === u32 ? 'u32' : c === u64 ? 'u64' : undefined);
  const fastRead = (f: (typeof fields)[number], i: number): string => {
    switch (intKind(f.codec)) {
      case 'u16':
        return `dv.getUint16(bo + ${f.offset}, true)`;
      case 'u32':
        return `dv.getUint32(bo + ${f.offset}, true)`;
      case 'u64':
        return `dv.getBigUint64(bo + ${f.offset}, true)`;
      default:
        return `r[${i}](b, off + ${f.offset})`;
    }
  };
  const keyed = (x: (f: (typeof fields)[number], i: number) => string) => fields.map((f, i) => `${JSON.stringify(f.name)}: ${x(f, i)}`).join(', ');
  const read = new Function(
    'r',
    'dataViewOf',
    `return (b, off) => { const dv = dataViewOf(b); if (dv === undefined) return { ${keyed((_, i) => `r[${i}](b, off + ${fields[i]!.offset})`)} };
      const bo = b.byteOffset + off; return { ${keyed(fastRead)} }; };`,
  )(readers, dataViewOf) as (b: Buffer, off: number) => T;
  const offsets = new Map(fields.map((f) => [f.name, f.offset]));
  const words = Math.ceil(size / 8);
  const ints = fields.every((f) => 'toBig' in f.codec && Math.floor(f.offset / 8) === Math.floor((f.offset + f.size - 1) / 8))
    ? fields.map((f) => ({
        name: f.name,
        offset: f.offset,
        size: f.size,
        codec: f.codec as unknown as IntCodec<number | bigint>,
        word: Math.floor(f.offset / 8),
        shift: BigInt(8 * (f.offset % 8)),
        ones: (1n << BigInt(8 * f.size)) - 1n,
      }))
    : undefined;
  const slowFromWords = (w: readonly bigint[]): T => {
    const o: Record<string, unknown> = {};
    for (const f of intsOnly()) {
      const x = w[f.word] ?? 0n;
      o[f.name] = f.codec.fromBig((f.shift === 0n ? x : x >> f.shift) & f.ones);
    }
    return o as T;
  };
  // fromWords made once per layout (as read): each word split once into two 32-bit halves as numbers;
  // a number field inside one half is taken with number arithmetic (bigint shifts allocate), a
  // 64-bit field is the word itself, any other field the generic bigint way.
  const fromWordsFast = ints
    ? (new Function(
        'c',
        `return (w) => { ${Array.from({ length: words }, (_, i) => `const w${i} = w[${i}] ?? 0n, l${i} = Number(w${i} & 0xffffffffn), h${i} = Number(w${i} >> 32n);`).join(' ')} return { ${ints
          .map((f, i) => {
            const bit = 8 * (f.offset % 8);
            const width = 8 * f.size;
            const key = JSON.stringify(f.name);
            if (f.codec.fromBig === Number && width <= 32 && Math.floor(bit / 32) === Math.floor((bit + width - 1) / 32)) {
              const half = bit >= 32 ? `h${f.word}` : `l${f.word}`;
              const sh = bit % 32;
              const mask = width === 32 ? '' : ` & ${(1 << width) - 1}`;
              return `${key}: ((${half} >>> ${sh})${mask}) >>> 0`;
            }
            if (width === 64) return `${key}: c[${i}].fromBig(w${f.word})`;
            return `${key}: c[${i}].fromBig((w${f.word} >> ${f.shift}n) & ${f.ones}n)`;
          })
          .join(', ')} }; };`,
      )(ints.map((f) => f.codec)) as (w: readonly bigint[]) => T)
    : undefined;
  const intsOnly = () => {
    if (!ints) throw new Error(`layout ${name} has a field that is not an integer inside one 8-byte word: no word form`);
    return ints;
  };
  const layout: Layout<T> & { [LEAVES]: readonly Leaf[] } = {
    [LEAVES]: leaves,
    name,
    size,
    fields: fields.map(({ name: n, tlfsName, offset, size: s }) => ({ name: n, tlfsName, offset, size: s })),
    read,
    write,
    encode(value, out, offset = 0) {
      if (!out) {
        out = Buffer.alloc(size);
        write(out, 0, value);
        return out;
      }
      need(out, offset);
      write(out, offset, value);
      return out;
    },
    decode(b, offset = 0) {
      need(b, offset);
      return read(b, offset);
    },
    offsetOf(field) {
      const o = offsets.get(field);
      if (o === undefined) throw new Error(`layout ${name} has no field ${field}`);
      return o;
    },
    toWords(value) {
      const w = new Array<bigint>(words).fill(0n);
      for (const f of intsOnly()) {
        const x = f.codec.toBig((value as Record<string, never>)[f.name]);
        w[f.word] = w[f.word]! | (f.shift === 0n ? x : x << f.shift);
      }
      return w;
    },
    fromWords(w) {
      return (fromWordsFast ?? slowFromWords)(w);
    },
  };
  return layout;
}

// ---- bit layouts of one integer --------------------------------------------------------------------

export interface BitSpec<T> {
  readonly hi: number;
  readonly lo: number;
  readonly kind: 'flag' | 'number' | 'bigint';
  /** Type carrier only. */
  readonly _value?: T;
}
/** One bit, as a boolean. */
export const flag = (bit: number): BitSpec<boolean> => ({ hi: bit, lo: bit, kind: 'flag' });
/** Bits hi:lo (TLFS notation), as a number (at most 32 bits wide). */
export const bits = (hi: number, lo: number): BitSpec<number> => ({ hi, lo, kind: 'number' });
/** Bits hi:lo as a bigint (for fields wider than 32 bits, e.g. a GPA page number). */
export const bigBits = (hi: number, lo: number): BitSpec<bigint> => ({ hi, lo, kind: 'bigint' });

type BitFields = Record<string, BitSpec<unknown>>;
export type BitValue<F extends BitFields> = { -readonly [K in keyof F]: F[K] extends BitSpec<infer T> ? T : never };

export interface BitLayout<T, R extends number | bigint> extends Codec<T> {
  readonly name: string;
  readonly width: 8 | 16 | 32 | 64;
  /** The integer with the given fields set (absent fields 0/false; each value taken modulo its width). */
  pack(value: Partial<T>): R;
  /** Every field of an integer (bits outside the fields are ignored). */
  unpack(raw: R): T;
  /** The bits of one field. */
  mask(field: keyof T & string): R;
  /** The bits some field covers (everything else is reserved). */
  readonly definedMask: R;
}

export function bitfield<F extends BitFields>(name: string, width: 64, spec: F): BitLayout<BitValue<F>, bigint>;
export function bitfield<F extends BitFields>(name: string, width: 8 | 16 | 32, spec: F): BitLayout<BitValue<F>, number>;
export function bitfield<F extends BitFields>(name: string, width: 8 | 16 | 32 | 64, spec: F): BitLayout<BitValue<F>, number | bigint> {
  type T = BitValue<F>;
  const fields = Object.entries(spec).map(([key, s]) => {
    const w = s.hi - s.lo + 1;
    if (s.lo < 0 || w < 1 || s.hi >= width) throw new Error(`bit layout ${name}: field ${key} (${s.hi}:${s.lo}) does not fit ${width} bits`);
    if (s.kind === 'number' && w > 32) throw new Error(`bit layout ${name}: field ${key} is ${w} bits wide; use bigBits`);
    return {
      key,
      kind: s.kind,
      lo: BigInt(s.lo),
      w,
      numMask: w >= 32 ? 0xffff_ffff : (1 << w) - 1,
      ones: (1n << BigInt(w)) - 1n,
      mask: ((1n << BigInt(w)) - 1n) << BigInt(s.lo),
      // Fields inside one 32-bit half (bits 31:0 or 63:32) are coded with number arithmetic on that
      // half (the hypercall path decodes several per call; bigint shifts allocate).
      half: s.kind !== 'bigint' && (s.hi < 32 || s.lo >= 32) ? (s.lo >= 32 ? 1 : 0) : -1,
      halfShift: s.lo % 32,
    };
  });
  let defined = 0n;
  for (const f of fields) {
    if ((defined & f.mask) !== 0n) throw new Error(`bit layout ${name}: field ${f.key} overlaps another field`);
    defined |= f.mask;
  }
  const out = (v: bigint): number | bigint => (width === 64 ? v : Number(v));
  // pack: fields inside one 32-bit half (all but bigint fields and fields straddling bit 32) are
  // packed into two number halves (`& mask` takes an integer modulo 2^w for w <= 32, as `>>> 0`
  // does), made a bigint once at the end for 64-bit layouts; bigint arithmetic only for the fields
  // whose bits need it. No bigint per field for the intercept message's execution state and access
  // info, or a hypercall's result value (buildInterceptMessage 1.90 → 1.75 µs in a hot loop).
  const pack = (value: Partial<T>): number | bigint => {
    let lo = 0;
    let hi = 0;
    let big = 0n;
    for (const f of fields) {
      const v = (value as Record<string, unknown>)[f.key];
      if (v === undefined) continue;
      if (f.half < 0) {
        const x = typeof v === 'bigint' ? BigInt.asUintN(f.w, v) : BigInt(f.w === 32 ? (v as number) >>> 0 : ((v as number) & f.numMask) >>> 0);
        big |= f.lo === 0n ? x : x << f.lo;
        continue;
      }
      let x: number;
      if (f.kind === 'flag') {
        if (!v) continue;
        x = 1;
      } else if (typeof v === 'bigint') x = Number(BigInt.asUintN(f.w, v));
      else x = f.w === 32 ? (v as number) >>> 0 : ((v as number) & f.numMask) >>> 0;
      if (f.half === 0) lo = (lo | (x << f.halfShift)) >>> 0;
      else hi = (hi | (x << f.halfShift)) >>> 0;
    }
    if (width !== 64) return big === 0n ? lo : (lo | Number(big)) >>> 0;
    const halvesValue = hi === 0 ? BigInt(lo) : (BigInt(hi) << 32n) | BigInt(lo);
    return big === 0n ? halvesValue : halvesValue | big;
  };
  // unpack: the integer as two unsigned 32-bit halves; fields inside one half are extracted with
  // number arithmetic, the others (straddling bit 32, or bigint fields) from the bigint. The object is
  // built by a function made once per layout from the field table (one literal with the layout's
  // keys: one object shape, no per-field keyed stores; the hypercall path decodes several per call).
  const needsBig = fields.some((f) => f.half < 0);
  const props = fields.map((f) => {
    const key = JSON.stringify(f.key);
    if (f.half >= 0) {
      const x = `((${f.half === 0 ? 'lo' : 'hi'} >>> ${f.halfShift}) & ${f.numMask})`;
      return `${key}: ${f.kind === 'flag' ? `${x} !== 0` : `${x} >>> 0`}`;
    }
    const x = `((v >> ${f.lo}n) & ${f.ones}n)`;
    return `${key}: ${f.kind === 'flag' ? `${x} !== 0n` : f.kind === 'number' ? `Number(${x})` : x}`;
  });
  const build = new Function('lo', 'hi', 'v', `return { ${props.join(', ')} };`) as (lo: number, hi: number, v: bigint) => T;
  const unpack = (raw: number | bigint): T => {
    let v: bigint;
    if (typeof raw === 'bigint') {
      // Below 2^53 (a call code and its flags, most register values) the halves come from one
      // number, exactly: no bigint made (asUintN, the mask and the shift allocated one each).
      if (width === 64 && isExactNumber(raw)) {
        const n = Number(raw);
        return build(n >>> 0, Math.floor(n / 0x1_0000_0000), raw);
      }
      v = BigInt.asUintN(width, raw);
    } else {
      const t = trunc(raw);
      if (width !== 64 && t >= 0 && t <= 0xffff_ffff) return build(t, 0, needsBig ? BigInt(t) : 0n);
      v = BigInt.asUintN(width, BigInt(t));
    }
    return build(Number(v & 0xffff_ffffn), width === 64 ? Number(v >> 32n) : 0, v);
  };
  const masks = new Map(fields.map((f) => [f.key, f.mask]));
  const int: IntCodec<number | bigint> = width === 64 ? u64 : width === 32 ? u32 : width === 16 ? u16 : u8;
  return {
    name,
    width,
    size: width / 8,
    pack,
    unpack,
    mask(field) {
      const m = masks.get(field);
      if (m === undefined) throw new Error(`bit layout ${name} has no field ${field}`);
      return out(m);
    },
    definedMask: out(defined),
    read: (b, o) => unpack(int.read(b, o)),
    write: (b, o, v) => int.write(b, o, pack(v)),
  };
}
