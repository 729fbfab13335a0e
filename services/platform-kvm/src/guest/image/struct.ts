/**
 * Little-endian byte structures of the loaders (ELF headers, the multiboot header and information
 * structure), each written once as a table of fields with the names and offsets its specification
 * gives; the table drives both reading and writing. (The core's tlfs/layout.ts plays this role for
 * TLFS structures; it is internal to @vsm/core, and these are not TLFS structures.)
 *
 * Reading checks the bounds first and throws GuestImageError naming the structure, its file offset
 * and the available length — never a RangeError from a DataView.
 */
import { GuestImageError, hex } from './errors';

export interface Field<T extends number | bigint> {
  readonly offset: number;
  readonly size: 1 | 2 | 4 | 8;
  /** Type carrier only. */
  readonly _t?: T;
}
export const u8 = (offset: number): Field<number> => ({ offset, size: 1 });
export const u16 = (offset: number): Field<number> => ({ offset, size: 2 });
export const u32 = (offset: number): Field<number> => ({ offset, size: 4 });
export const u64 = (offset: number): Field<bigint> => ({ offset, size: 8 });

type Fields = Record<string, Field<number | bigint>>;
export type StructValue<F extends Fields> = { -readonly [K in keyof F]: F[K] extends Field<infer T> ? T : never };

export interface Struct<F extends Fields> {
  readonly name: string;
  readonly size: number;
  readonly fields: F;
  /** The structure at `at` in `bytes` (GuestImageError if it does not fit). */
  read(bytes: Uint8Array, at: number): StructValue<F>;
  /** Writes every given field (absent ones are left as they are) at `at` in `out`. */
  write(out: Uint8Array, at: number, value: Partial<StructValue<F>>): void;
  offsetOf(field: keyof F & string): number;
}

const view = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);

export function struct<F extends Fields>(name: string, size: number, fields: F): Struct<F> {
  for (const [k, f] of Object.entries(fields)) {
    if (f.offset < 0 || f.offset + f.size > size) throw new Error(`struct ${name}: field ${k} does not fit ${size} bytes`);
  }
  const entries = Object.entries(fields);
  return {
    name,
    size,
    fields,
    read(bytes, at) {
      if (!Number.isSafeInteger(at) || at < 0 || at + size > bytes.length) {
        throw new GuestImageError(`${name} at offset ${hex(at)} needs ${size} bytes; the image has ${bytes.length} (${hex(bytes.length)})`);
      }
      const v = view(bytes);
      const o: Record<string, number | bigint> = {};
      for (const [k, f] of entries) {
        const p = at + f.offset;
        o[k] = f.size === 1 ? v.getUint8(p) : f.size === 2 ? v.getUint16(p, true) : f.size === 4 ? v.getUint32(p, true) : v.getBigUint64(p, true);
      }
      return o as StructValue<F>;
    },
    write(out, at, value) {
      if (at < 0 || at + size > out.length) throw new Error(`struct ${name}: ${size} bytes at ${at} do not fit a ${out.length}-byte buffer`);
      const v = view(out);
      for (const [k, f] of entries) {
        const x = (value as Record<string, number | bigint | undefined>)[k];
        if (x === undefined) continue;
        const p = at + f.offset;
        if (f.size === 8) v.setBigUint64(p, BigInt.asUintN(64, BigInt(x)), true);
        else if (f.size === 4) v.setUint32(p, Number(x) >>> 0, true);
        else if (f.size === 2) v.setUint16(p, Number(x) & 0xffff, true);
        else v.setUint8(p, Number(x) & 0xff);
      }
    },
    offsetOf(field) {
      return fields[field]!.offset;
    },
  };
}
