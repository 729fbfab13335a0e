// vsmctl: output formatting. `toJson` turns ts-proto messages into proto3-JSON-like values
// (64-bit as decimal strings, bytes as hex, enums by name, oneofs flattened); the rest is human
// output: hex, sizes, tables, hexdumps, ANSI colors.
import { pb } from '@vsm/client';
import { tlfsRegisterName } from './parse';

type EnumName = (v: number) => string | number;
/**
 * ts-proto's xxxToJSON throws on a value it does not know (a newer server); keep the number then.
 */
export const safeEnum =
  (f: (v: number) => string): ((v: number) => string | number) =>
  (v) => {
    try {
      return f(v);
    } catch {
      return v;
    }
  };
const ENUM_FIELDS: Record<string, EnumName> = {
  architecture: safeEnum(pb.architectureToJSON),
  architectures: safeEnum(pb.architectureToJSON),
  state: safeEnum(pb.partitionStateToJSON),
  kind: safeEnum(pb.overlayKindToJSON),
  lastEntryReason: safeEnum(pb.hvVtlEntryReasonToJSON),
  entryReason: safeEnum(pb.hvVtlEntryReasonToJSON),
  exception: safeEnum(pb.x64ExceptionToJSON),
  status: safeEnum(pb.hvStatusToJSON),
};
// Enums of newer API additions, when the generated client has them.
const optionalEnum = (fn: string, ...keys: string[]) => {
  const f = (pb as unknown as Record<string, unknown>)[fn];
  if (typeof f === 'function') for (const k of keys) ENUM_FIELDS[k] = safeEnum(f as (v: number) => string);
};
optionalEnum('hvInterceptAccessTypeToJSON', 'accessType');
optionalEnum('interceptRouteToJSON', 'route');
optionalEnum('interceptActionToJSON', 'deadlineAction', 'action');
optionalEnum('guestImageFormatToJSON', 'format');
optionalEnum('guestEntryModeToJSON', 'entryMode');

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const isUnion = (v: unknown): v is { $case: string; value: unknown } =>
  typeof v === 'object' && v !== null && typeof (v as { $case?: unknown }).$case === 'string' && 'value' in v;

/** A message (or any value) as JSON: bigint -> decimal string, bytes -> hex, enums -> names, oneof members inline. */
export function toJson(v: unknown, key?: string): Json {
  if (v === null || v === undefined) return null;
  if (typeof v === 'bigint') return v.toString();
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex');
  if (typeof v === 'number' && key && ENUM_FIELDS[key]) return ENUM_FIELDS[key]!(v);
  if (typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean') return v;
  if (Array.isArray(v)) return v.map((x) => toJson(x, key));
  if (typeof v === 'object') {
    const out: { [k: string]: Json } = {};
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
      if (x === undefined) continue;
      if (isUnion(x)) out[x.$case] = toJson(x.value, x.$case);
      else out[k] = toJson(x, k);
    }
    return out;
  }
  return String(v);
}

/** A RegisterAssoc as JSON: the API enum name, the TLFS name and the value arm. */
export function registerJson(a: pb.RegisterAssoc): Json {
  const base = { name: safeEnum(pb.hvRegisterNameToJSON)(a.name), tlfsName: tlfsRegisterName(a.name) };
  const val = a.value?.value;
  return { ...base, ...(val ? { [val.$case]: toJson(val.value) } : {}) };
}

// ---- numbers -----------------------------------------------------------------------------------

export const hex64 = (v: bigint): string => `0x${v.toString(16).padStart(16, '0')}`;
export const hex = (v: bigint | number, width = 0): string => `0x${v.toString(16).padStart(width, '0')}`;

const UNITS: [bigint, string][] = [
  [1n << 40n, 'TiB'],
  [1n << 30n, 'GiB'],
  [1n << 20n, 'MiB'],
  [1n << 10n, 'KiB'],
];
/** 4294967296 -> "4 GiB"; 1572864 -> "1.5 MiB"; 1000 -> "1000 B". */
export function formatSize(bytes: bigint | number): string {
  const b = BigInt(bytes);
  for (const [u, name] of UNITS) {
    if (b >= u) {
      if (b % u === 0n) return `${b / u} ${name}`;
      if ((b * 10n) % u === 0n) {
        const tenths = (b * 10n) / u;
        return `${tenths / 10n}.${tenths % 10n} ${name}`;
      }
    }
  }
  return `${b} B`;
}

/** Rounded, for progress lines: 3000000 -> "2.9 MiB". */
export function approxSize(bytes: number): string {
  const names = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < names.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${bytes} B` : `${v.toFixed(1)} ${names[i]}`;
}

/** Bitmask of VTLs -> "0,1". */
export function vtlSet(mask: number): string {
  const v: number[] = [];
  for (let i = 0; i < 16; i++) if (mask & (1 << i)) v.push(i);
  return v.length ? v.join(',') : '-';
}

export const shortEnum = (full: string | number, prefix: string): string =>
  typeof full === 'number' ? String(full) : full.startsWith(prefix) ? full.slice(prefix.length) : full;
export const entryReason = (r: number): string => shortEnum(safeEnum(pb.hvVtlEntryReasonToJSON)(r), 'HV_VTL_ENTRY_REASON_');
export const overlayKind = (k: number): string => shortEnum(safeEnum(pb.overlayKindToJSON)(k), 'OVERLAY_KIND_');
export const architectureText = (a: number): string => shortEnum(safeEnum(pb.architectureToJSON)(a), 'ARCHITECTURE_').toLowerCase();
export const partitionStateText = (s: number): string => shortEnum(safeEnum(pb.partitionStateToJSON)(s), 'PARTITION_STATE_').toLowerCase();
/** `1 page`, `2 pages`. */
export const count = (n: number | bigint, word: string): string => `${n} ${word}${n === 1 || n === 1n ? '' : 's'}`;

const EXCEPTIONS: Record<number, string> = { 3: '#BP (breakpoint)', 6: '#UD (invalid opcode)', 13: '#GP (general protection fault)' };
export const exceptionName = (e: number): string => EXCEPTIONS[e] ?? `exception ${e}`;

export function registerValueText(a: pb.RegisterAssoc): string {
  const val = a.value?.value;
  if (!val) return '-';
  switch (val.$case) {
    case 'reg64': {
      let s = hex64(val.value);
      if (a.name === pb.HvRegisterName.HV_REGISTER_NAME_VSM_CODE_PAGE_OFFSETS)
        s += `  (VtlCall +${hex(val.value & 0xfffn, 2)}, VtlReturn +${hex((val.value >> 12n) & 0xfffn, 2)})`;
      return s;
    }
    case 'reg128':
      return `0x${val.value.high.toString(16).padStart(16, '0')}${val.value.low.toString(16).padStart(16, '0')}`;
    case 'segment':
      return `base=${hex64(val.value.base)} limit=${hex(val.value.limit, 8)} selector=${hex(val.value.selector, 4)} attributes=${hex(val.value.attributes, 4)}`;
    case 'table':
      return `base=${hex64(val.value.base)} limit=${hex(val.value.limit, 4)}`;
  }
}

// ---- layout ------------------------------------------------------------------------------------

/** Left-aligned columns; `header` first. */
export function table(header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => visibleLength(r[i] ?? ''))));
  return all
    .map((r) =>
      r
        .map((c, i) => (i === r.length - 1 ? c : c + ' '.repeat(widths[i]! - visibleLength(c))))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** Key/value block. */
export function fields(pairs: [string, string][]): string {
  const w = Math.max(...pairs.map(([k]) => k.length)) + 1;
  return pairs.map(([k, v]) => `${(k + ':').padEnd(w)}  ${v}`).join('\n');
}

const ANSI = /\x1b\[[0-9;]*m/g;
export const visibleLength = (s: string): number => s.replace(ANSI, '').length;

/** `hexdump -C` style, addresses as 64-bit GPAs; identical lines collapse to `*`. */
export function hexdump(data: Uint8Array, base: bigint): string {
  const lines: string[] = [];
  let prev: string | undefined;
  let starred = false;
  for (let off = 0; off < data.length; off += 16) {
    const row = data.subarray(off, Math.min(off + 16, data.length));
    const bytes = Array.from(row, (b) => b.toString(16).padStart(2, '0'));
    const key = bytes.join(' ');
    if (key === prev && row.length === 16 && off + 16 < data.length) {
      if (!starred) lines.push('*');
      starred = true;
      continue;
    }
    prev = key;
    starred = false;
    const left = bytes.slice(0, 8).join(' ').padEnd(23);
    const right = bytes.slice(8).join(' ').padEnd(23);
    const ascii = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${(base + BigInt(off)).toString(16).padStart(16, '0')}  ${left}  ${right}  |${ascii}|`);
  }
  return lines.join('\n');
}

// ---- color -------------------------------------------------------------------------------------

/** ANSI colors when the stream is a TTY, unless NO_COLOR is set (non-empty); FORCE_COLOR forces them. */
export function colorEnabled(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== '') return false;
  if (env.FORCE_COLOR !== undefined && env.FORCE_COLOR !== '' && env.FORCE_COLOR !== '0' && env.FORCE_COLOR !== 'false') return true;
  return stream.isTTY === true;
}

export type Style = 'bold' | 'dim' | 'red' | 'green' | 'yellow' | 'blue' | 'magenta' | 'cyan' | 'white' | 'underline' | 'inverse';
const CODES: Record<Style, [number, number]> = {
  bold: [1, 22],
  dim: [2, 22],
  underline: [4, 24],
  inverse: [7, 27],
  red: [31, 39],
  green: [32, 39],
  yellow: [33, 39],
  blue: [34, 39],
  magenta: [35, 39],
  cyan: [36, 39],
  white: [37, 39],
};
export type Paint = (text: string, ...styles: Style[]) => string;
export const painter =
  (on: boolean): Paint =>
  (text, ...styles) =>
    on && styles.length ? styles.reduce((t, s) => `\x1b[${CODES[s][0]}m${t}\x1b[${CODES[s][1]}m`, text) : text;
