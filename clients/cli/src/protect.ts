// vsmctl: VTL protections (HV_MAP_GPA_FLAGS) and memory intercepts on the command line: parsing of
// flags, page ranges and access kinds, splitting of large ModifyVtlProtectionMask requests into
// calls, and the text of masks (`r-x`) and map letters.
import { pb } from '@vsm/client';
import { UsageError, parseUint } from './parse';

export const PAGE_SHIFT = 12n;
export const PAGE_BYTES = 1n << PAGE_SHIFT;

/** HV_MAP_GPA_FLAGS protection bits. */
export const MAP = { READ: 0x1, WRITE: 0x2, KX: 0x4, UX: 0x8, ALL: 0xf } as const;

/** Most ranges the server takes in one ModifyVtlProtectionMask call. */
export const MAX_RANGES_PER_CALL = 65536;
/** Most pages vsmctl changes in one call (4 GiB): larger requests go in chunks, with progress. */
export const MAX_PAGES_PER_CALL = 1n << 20n;

/**
 * `--flags`: letters `r` (read), `w` (write), `x` (kernel and user execute), `k` (kernel execute
 * only), `u` (user execute only, MBEC), dashes ignored (`r-x`); `none`, `-` or `---` for no access;
 * or a number (`0x5`, `13`). Legality (write or execute without read) is the server's to judge.
 */
export function parseMapFlags(text: string): number {
  const s = text.trim().toLowerCase();
  if (/^(0x[0-9a-f_]+|[0-9_]+)$/.test(s)) return Number(parseUint(s, '--flags', 0xffff_ffffn));
  if (s === 'none' || /^-+$/.test(s)) return 0;
  const bits: Record<string, number> = { r: MAP.READ, w: MAP.WRITE, x: MAP.KX | MAP.UX, k: MAP.KX, u: MAP.UX };
  let v = 0;
  for (const c of s.replace(/-/g, '')) {
    const b = bits[c];
    if (b === undefined)
      throw new UsageError(`--flags ${JSON.stringify(text)}: use letters r, w, x (k/u for kernel/user execute only), none, or a number like 0x5`);
    v |= b;
  }
  if (!s.replace(/-/g, '')) throw new UsageError(`--flags ${JSON.stringify(text)} is empty`);
  return v;
}

/** `rwx`, `r-x`, `r--`, `---`; the third letter is `x` for kernel+user execute, `k` or `u` for one of them. */
export function maskText(mask: number): string {
  const kx = (mask & MAP.KX) !== 0;
  const ux = (mask & MAP.UX) !== 0;
  const x = kx && ux ? 'x' : kx ? 'k' : ux ? 'u' : '-';
  return `${mask & MAP.READ ? 'r' : '-'}${mask & MAP.WRITE ? 'w' : '-'}${x}`;
}

/** `r-x (0xd)`. */
export const maskLabel = (mask: number): string => `${maskText(mask)} (0x${mask.toString(16)})`;

/** Whether a mask restricts nothing (all four protection bits). */
export const unrestricted = (mask: number): boolean => (mask & MAP.ALL) === MAP.ALL;

/**
 * One map character per page for a protection mask: `.` unrestricted, `-` no access, `r` read only,
 * `w` read/write (no execute), `x` read/execute (no write), `u` read + user execute only (MBEC),
 * `?` anything else.
 */
export function maskLetter(mask: number): string {
  const m = mask & MAP.ALL;
  if (m === MAP.ALL) return '.';
  switch (m) {
    case 0x0:
      return '-';
    case 0x1:
      return 'r';
    case 0x3:
      return 'w';
    case 0x5:
    case 0xd:
      return 'x';
    case 0x9:
    case 0xb:
      return 'u';
    default:
      return '?';
  }
}

export const MASK_LEGEND: [string, string][] = [
  ['.', 'unrestricted'],
  ['r', 'read only'],
  ['w', 'read/write, no execute'],
  ['x', 'read/execute, no write'],
  ['-', 'no access'],
  ['u', 'user execute only (MBEC)'],
];

export interface Pages {
  start: bigint;
  count: bigint;
}

/** `--pages START:COUNT` (page numbers, GPA >> 12; hex or decimal). */
export function parsePageRange(text: string): Pages {
  const m = /^\s*([^:]+):([^:]+)\s*$/.exec(text);
  if (!m) throw new UsageError(`--pages ${JSON.stringify(text)} is not START:COUNT (page numbers, e.g. 0x40:16)`);
  const start = parseUint(m[1]!, '--pages start page');
  const count = parseUint(m[2]!, '--pages count');
  if (count < 1n) throw new UsageError(`--pages ${JSON.stringify(text)}: the count must be at least 1`);
  return { start, count };
}

/** `--gpa GPA --size SIZE` as a page range; both must be page aligned. */
export function gpaRange(gpa: bigint, size: bigint): Pages {
  if (gpa % PAGE_BYTES !== 0n) throw new UsageError(`--gpa 0x${gpa.toString(16)} is not page aligned (4 KiB)`);
  if (size < 1n) throw new UsageError('--size must be at least 1 page (4096)');
  if (size % PAGE_BYTES !== 0n) throw new UsageError(`--size ${size} is not a whole number of 4 KiB pages`);
  return { start: gpa >> PAGE_SHIFT, count: size >> PAGE_SHIFT };
}

/**
 * Splits ranges into ModifyVtlProtectionMask calls of at most `maxRanges` ranges and `maxPages`
 * pages each (a range larger than `maxPages` is cut into pieces). Order is kept.
 */
export function planProtectCalls(ranges: Pages[], maxRanges = MAX_RANGES_PER_CALL, maxPages = MAX_PAGES_PER_CALL): pb.PageRange[][] {
  const calls: pb.PageRange[][] = [];
  let cur: pb.PageRange[] = [];
  let curPages = 0n;
  const flush = () => {
    if (cur.length) calls.push(cur);
    cur = [];
    curPages = 0n;
  };
  for (const r of ranges) {
    let start = r.start;
    let left = r.count;
    while (left > 0n) {
      if (cur.length >= maxRanges || curPages >= maxPages) flush();
      // biome-ignore lint/complexity/useMathMinMax: bigint page counts; Math.min takes numbers only
      const n = left < maxPages - curPages ? left : maxPages - curPages;
      cur.push({ startPage: start, pageCount: n });
      curPages += n;
      start += n;
      left -= n;
    }
  }
  flush();
  return calls;
}

/** `--access r,w,x` (or read,write,execute; `rw`; `all`) -> HV_INTERCEPT_ACCESS_TYPE_MASK bits. */
export function parseAccessMask(text: string): number {
  const words: Record<string, number> = { r: 1, read: 1, w: 2, write: 2, x: 4, exec: 4, execute: 4, all: 7 };
  let mask = 0;
  for (const part of text
    .toLowerCase()
    .split(/[,\s|+]+/)
    .filter(Boolean)) {
    const b = words[part];
    if (b !== undefined) {
      mask |= b;
      continue;
    }
    if (/^[rwx]+$/.test(part)) {
      for (const c of part) mask |= words[c]!;
      continue;
    }
    throw new UsageError(`--access ${JSON.stringify(text)}: use r, w, x (or read, write, execute), comma separated`);
  }
  if (!mask) throw new UsageError(`--access ${JSON.stringify(text)} selects nothing`);
  return mask;
}

/** HV_INTERCEPT_ACCESS_TYPE_MASK bits -> `read,write`. */
export function accessMaskText(mask: number): string {
  const names = ['read', 'write', 'execute'].filter((_, i) => mask & (1 << i));
  return names.length ? names.join(',') : 'none';
}

/** HvInterceptAccessType -> `read` / `write` / `execute`. */
export function accessTypeText(t: number): string {
  return ['read', 'write', 'execute'][t] ?? `access ${t}`;
}

export const ROUTES: Record<string, pb.InterceptRoute> = {
  'higher-vtl': pb.InterceptRoute.INTERCEPT_ROUTE_HIGHER_VTL,
  monitor: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR,
  both: pb.InterceptRoute.INTERCEPT_ROUTE_BOTH,
};

export const ACTIONS: Record<string, pb.InterceptAction> = {
  allow: pb.InterceptAction.INTERCEPT_ACTION_ALLOW,
  skip: pb.InterceptAction.INTERCEPT_ACTION_SKIP,
  retry: pb.InterceptAction.INTERCEPT_ACTION_RETRY,
  crash: pb.InterceptAction.INTERCEPT_ACTION_CRASH,
};

const nameOf = (table: Record<string, number>, v: number): string => Object.entries(table).find(([, x]) => x === v)?.[0] ?? String(v);
export const routeText = (r: number): string => nameOf(ROUTES, r);
export const actionText = (a: number): string => nameOf(ACTIONS, a).toUpperCase();
