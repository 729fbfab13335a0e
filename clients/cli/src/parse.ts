// vsmctl: parsing of command-line values (sizes, numbers, resource names, register and MSR names,
// hex data). Every parser throws UsageError (exit code 2) with a message that names the bad value.
import { pb } from '@vsm/client';
import { HvMsr, HvMsrNames } from '@vsm/core';

/** A bad value on the command line: exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

const U64_MAX = (1n << 64n) - 1n;

/** Unsigned integer: decimal or 0x hex (underscores allowed as separators), up to `max`. */
export function parseUint(text: string, what = 'value', max: bigint = U64_MAX): bigint {
  const s = text.trim().replace(/_/g, '');
  let v: bigint;
  if (/^0x[0-9a-f]+$/i.test(s)) v = BigInt(s);
  else if (/^[0-9]+$/.test(s)) v = BigInt(s);
  else throw new UsageError(`${what} ${JSON.stringify(text)} is not a number (decimal or 0x hex)`);
  if (v > max) throw new UsageError(`${what} ${text} is too large (maximum ${max === U64_MAX ? '2^64-1' : `0x${max.toString(16)}`})`);
  return v;
}

export const parseU64 = (text: string, what = 'value'): bigint => parseUint(text, what);
export const parseU32 = (text: string, what = 'value'): number => Number(parseUint(text, what, 0xffff_ffffn));

/** A small non-negative integer (VP index, VTL, page counts). */
export function parseIndex(text: string, what: string, max: number): number {
  return Number(parseUint(text, what, BigInt(max)));
}

/** A positive count. */
export function parseCount(text: string, what: string, max: number): number {
  const n = parseIndex(text, what, max);
  if (n < 1) throw new UsageError(`${what} must be at least 1`);
  return n;
}

const KI = 1024n;
const SIZE_UNITS: Record<string, bigint> = {
  '': 1n,
  b: 1n,
  k: KI,
  kib: KI,
  m: KI ** 2n,
  mib: KI ** 2n,
  g: KI ** 3n,
  gib: KI ** 3n,
  t: KI ** 4n,
  tib: KI ** 4n,
  kb: 1000n,
  mb: 1000n ** 2n,
  gb: 1000n ** 3n,
  tb: 1000n ** 4n,
};

/**
 * A byte size: `4096`, `0x1000`, `512MiB`, `1GiB`, `1.5GiB`, `4G` (K/M/G/T are binary like KiB/MiB;
 * kB/MB/GB/TB are decimal). The result must be a whole number of bytes.
 */
export function parseSize(text: string, what = 'size'): bigint {
  const s = text.trim().replace(/_/g, '');
  const hex = /^(0x[0-9a-f]+)\s*([a-z]*)$/i.exec(s);
  const dec = /^([0-9]+)(?:\.([0-9]+))?\s*([a-z]*)$/i.exec(s);
  let num: bigint;
  let den = 1n;
  let unit: string;
  if (hex) {
    num = BigInt(hex[1]!);
    unit = hex[2]!;
  } else if (dec) {
    const frac = dec[2] ?? '';
    num = BigInt(dec[1]! + frac);
    den = 10n ** BigInt(frac.length);
    unit = dec[3]!;
  } else {
    throw new UsageError(`${what} ${JSON.stringify(text)} is not a size (e.g. 4096, 0x1000, 512MiB, 1GiB)`);
  }
  const mul = SIZE_UNITS[unit.toLowerCase()];
  if (mul === undefined) throw new UsageError(`${what} ${JSON.stringify(text)} has an unknown unit ${JSON.stringify(unit)} (use B, KiB, MiB, GiB, TiB)`);
  const bytes = num * mul;
  if (bytes % den !== 0n) throw new UsageError(`${what} ${JSON.stringify(text)} is not a whole number of bytes`);
  const v = bytes / den;
  if (v > U64_MAX) throw new UsageError(`${what} ${JSON.stringify(text)} is too large`);
  return v;
}

const ID = /^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$/;

/** `partitions/x` or `x` -> `partitions/x`. The id itself is validated by the server. */
export function partitionName(arg: string): string {
  const id = arg.startsWith('partitions/') ? arg.slice('partitions/'.length) : arg;
  if (!id || id.includes('/')) throw new UsageError(`${JSON.stringify(arg)} is not a partition (give partitions/ID or ID)`);
  return `partitions/${id}`;
}

/** Partition id for CreatePartition (`partitions/` prefix allowed). */
export function partitionId(arg: string): string {
  const id = arg.startsWith('partitions/') ? arg.slice('partitions/'.length) : arg;
  if (!ID.test(id))
    throw new UsageError(`partition id ${JSON.stringify(arg)} must be 1..64 characters of [a-z0-9-], starting and ending with a letter or digit`);
  return id;
}

export const vpName = (partition: string, vp: number): string => `${partitionName(partition)}/vps/${vp}`;

/** `key=value` into a label map. */
export function parseLabel(text: string, prev: Record<string, string> = {}): Record<string, string> {
  const i = text.indexOf('=');
  if (i <= 0) throw new UsageError(`label ${JSON.stringify(text)} is not of the form key=value`);
  return { ...prev, [text.slice(0, i)]: text.slice(i + 1) };
}

// ---- registers ---------------------------------------------------------------------------------

const REG_PREFIX = 'HV_REGISTER_NAME_';
const pascal = (snake: string) =>
  snake
    .toLowerCase()
    .split('_')
    .map((w) => w[0]!.toUpperCase() + w.slice(1))
    .join('');
const norm = (s: string) => s.toLowerCase().replace(/[-_\s]/g, '');

/** HV_REGISTER_NAME_X64_RIP -> HvX64RegisterRip; HV_REGISTER_NAME_GUEST_OS_ID -> HvRegisterGuestOsId. */
export function tlfsRegisterName(value: number): string {
  const e = (pb.HvRegisterName as unknown as Record<number, string>)[value];
  if (!e?.startsWith(REG_PREFIX)) return `register 0x${value.toString(16)}`;
  const rest = e.slice(REG_PREFIX.length);
  return rest.startsWith('X64_') ? `HvX64Register${pascal(rest.slice(4))}` : `HvRegister${pascal(rest)}`;
}

/** Every register in the API, by its enum value. */
export function allRegisters(): number[] {
  return Object.values(pb.HvRegisterName).filter((v): v is number => typeof v === 'number' && v !== 0);
}

let regIndex: Map<string, number> | undefined;
function registerIndex(): Map<string, number> {
  if (regIndex) return regIndex;
  regIndex = new Map();
  for (const v of allRegisters()) {
    const e = (pb.HvRegisterName as unknown as Record<number, string>)[v]!;
    const rest = e.slice(REG_PREFIX.length);
    const keys = [e, rest, tlfsRegisterName(v)];
    if (rest.startsWith('X64_')) keys.push(rest.slice(4));
    for (const k of keys) if (!regIndex.has(norm(k))) regIndex.set(norm(k), v);
  }
  return regIndex;
}

/**
 * A register name: the TLFS name (HvX64RegisterRip, HvRegisterVsmCodePageOffsets), the API enum
 * name (HV_REGISTER_NAME_X64_RIP), its suffix (X64_RIP), a short name (rip, cr3, guest-os-id,
 * vsm-code-page-offsets), or the number (0x20010). Case-insensitive.
 */
export function parseRegisterName(text: string): number {
  const v = registerIndex().get(norm(text));
  if (v !== undefined) return v;
  if (/^(0x[0-9a-f]+|[0-9]+)$/i.test(text.trim())) {
    const n = Number(parseUint(text, 'register', 0xffff_ffffn));
    if ((pb.HvRegisterName as unknown as Record<number, string>)[n] !== undefined && n !== 0) return n;
  }
  throw new UsageError(
    `unknown register ${JSON.stringify(text)} (e.g. rip, rax, cr3, HvX64RegisterRip, HvRegisterVsmCodePageOffsets; \`vsmctl registers\` lists them all)`,
  );
}

export type RegisterShape = 'reg64' | 'segment' | 'table';
export function registerShape(name: number): RegisterShape {
  const N = pb.HvRegisterName;
  if (name >= N.HV_REGISTER_NAME_X64_ES && name <= N.HV_REGISTER_NAME_X64_TR) return 'segment';
  if (name === N.HV_REGISTER_NAME_X64_IDTR || name === N.HV_REGISTER_NAME_X64_GDTR) return 'table';
  return 'reg64';
}

/**
 * A register value for SetVpRegisters: a number for 64-bit registers; for segment registers
 * `base=..,limit=..,selector=..,attributes=..`; for table registers `base=..,limit=..`.
 */
export function parseRegisterValue(name: number, text: string): pb.RegisterValue {
  const shape = registerShape(name);
  if (shape === 'reg64') return { value: { $case: 'reg64', value: parseU64(text, `value for ${tlfsRegisterName(name)}`) } };
  const fields = new Map<string, string>();
  for (const part of text.split(/[,\s]+/).filter(Boolean)) {
    const i = part.indexOf('=');
    if (i <= 0)
      throw new UsageError(
        `${tlfsRegisterName(name)} takes ${shape === 'segment' ? 'base=..,limit=..,selector=..,attributes=..' : 'base=..,limit=..'}; got ${JSON.stringify(text)}`,
      );
    fields.set(part.slice(0, i).toLowerCase(), part.slice(i + 1));
  }
  const allowed = shape === 'segment' ? ['base', 'limit', 'selector', 'attributes'] : ['base', 'limit'];
  for (const k of fields.keys())
    if (!allowed.includes(k)) throw new UsageError(`${tlfsRegisterName(name)} has no field ${JSON.stringify(k)} (fields: ${allowed.join(', ')})`);
  const base = parseU64(fields.get('base') ?? '0', 'base');
  const limit = parseU32(fields.get('limit') ?? '0', 'limit');
  if (shape === 'table') return { value: { $case: 'table', value: { base, limit } } };
  return {
    value: {
      $case: 'segment',
      value: {
        base,
        limit,
        selector: parseU32(fields.get('selector') ?? '0', 'selector'),
        attributes: parseU32(fields.get('attributes') ?? '0', 'attributes'),
      },
    },
  };
}

// ---- MSRs --------------------------------------------------------------------------------------

/** Hyper-V synthetic MSRs (TLFS names), for parsing and display: the core's TLFS table. */
export const MSRS: ReadonlyMap<number, string> = HvMsrNames;
const MSR_EXAMPLE = `0x${HvMsr.HV_X64_MSR_GUEST_OS_ID.toString(16)}`;

/** An MSR: number (0x40000000 or decimal) or a synthetic MSR name (HV_X64_MSR_HYPERCALL, hypercall, guest-os-id). */
export function parseMsr(text: string): number {
  if (/^(0x[0-9a-f_]+|[0-9_]+)$/i.test(text.trim())) return parseU32(text, 'MSR');
  const want = norm(text).replace(/^hvx64msr/, '');
  for (const [n, name] of MSRS) if (norm(name).replace(/^hvx64msr/, '') === want) return n;
  throw new UsageError(`unknown MSR ${JSON.stringify(text)} (give a number like ${MSR_EXAMPLE} or a name like HV_X64_MSR_GUEST_OS_ID)`);
}

export const msrLabel = (msr: number): string => {
  const name = MSRS.get(msr);
  const hex = `0x${msr.toString(16).padStart(8, '0')}`;
  return name ? `${name} (${hex})` : `MSR ${hex}`;
};

// ---- data --------------------------------------------------------------------------------------

/** Hex bytes: `deadbeef`, `0xdeadbeef`, `de ad be ef`, `de:ad:be:ef`. */
export function parseHexBytes(text: string): Buffer {
  let s = text.trim().replace(/[\s:,_-]/g, '');
  if (/^0x/i.test(s)) s = s.slice(2);
  if (!s || !/^[0-9a-f]*$/i.test(s))
    throw new UsageError(`data ${JSON.stringify(text.length > 40 ? text.slice(0, 40) + '...' : text)} is not hex bytes (or @FILE)`);
  if (s.length % 2) throw new UsageError(`data has an odd number of hex digits (${s.length})`);
  return Buffer.from(s, 'hex');
}
