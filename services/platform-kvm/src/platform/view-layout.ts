/**
 * The memslot layout of one VTL's view (pure; no KVM here). What VTL n may do with a RAM page is the
 * AND of the masks every protecting VTL m > n imposes on it (the core's ProtectionMap of m, its
 * DefaultVtlProtectionMask outside the ranges). On KVM that becomes:
 *
 *   effective mask has R and W  → RAM, read/write memslot
 *   R without W                 → RAM, read-only memslot (a write exits as KVM_EXIT_MMIO)
 *   no R (and so no W, no X)    → no memslot: a hole (any data access exits as KVM_EXIT_MMIO)
 *
 * Execute bits cannot be enforced with memslots (see the README). Overlay pages of the VTL are
 * memslots of their own on top, whatever the protections of the RAM page underneath
 * (tlfs-overlays-synic.md §4.1). Runs of equal access are coalesced into one memslot each, cut at
 * 1 GiB boundaries (KVM's per-slot metadata; see vtl-vm.ts), so a uniform range of any size costs at
 * most one slot per GiB.
 */
import type { Vtl } from '@vsm/core';

export const PAGE = 4096;

/** The access a view gives to a RAM page, as memslots can express it. */
export type PageAccess = 'rw' | 'ro' | 'none';

/** A run of pages [start, end) whose effective access is `access` (only 'ro' and 'none' are listed). */
export interface RestrictedRun {
  start: number;
  end: number;
  access: 'ro' | 'none';
}

/** What the layout needs of the core's ProtectionMap. */
export interface ProtectionSource {
  readonly defaultMask: number;
  list(): readonly { start: number; end: number; mask: number }[];
  get(gpfn: number): number;
}

const READ = 0x1;
const WRITE = 0x2;

export function accessOfMask(mask: number): PageAccess {
  if ((mask & READ) === 0) return 'none';
  return (mask & WRITE) === 0 ? 'ro' : 'rw';
}

const RANK: Record<PageAccess, number> = { none: 0, ro: 1, rw: 2 };
const stricter = (a: PageAccess, b: PageAccess): PageAccess => (RANK[a] <= RANK[b] ? a : b);

/**
 * The restricted runs of VTL `vtl`'s view over `pages` RAM pages, from the protection maps indexed by
 * protecting VTL (null = that VTL protects nothing). Sorted, disjoint, coalesced. Stops early and
 * returns undefined once more than `limit` runs would be needed.
 */
export function restrictedRuns(maps: readonly (ProtectionSource | null)[], vtl: Vtl, pages: number, limit = Infinity): RestrictedRun[] | undefined {
  const active = maps.filter((m, i): m is ProtectionSource => i > vtl && m !== null);
  if (active.length === 0 || pages <= 0) return [];
  // Elementary intervals: between consecutive range bounds of all maps.
  const bounds = new Set<number>([0, pages]);
  for (const m of active) {
    for (const r of m.list()) {
      if (r.start < pages) bounds.add(r.start);
      if (r.end < pages) bounds.add(r.end);
    }
  }
  const points = [...bounds].sort((a, b) => a - b);
  const out: RestrictedRun[] = [];
  for (let i = 0; i + 1 < points.length; i++) {
    const start = points[i]!;
    const end = points[i + 1]!;
    let access: PageAccess = 'rw';
    for (const m of active) access = stricter(access, accessOfMask(m.get(start)));
    if (access === 'rw') continue;
    const last = out[out.length - 1];
    if (last && last.end === start && last.access === access) last.end = end;
    else {
      if (out.length >= limit) return undefined;
      out.push({ start, end, access });
    }
  }
  return out;
}

/** One memslot of a view: `backing` 'ram' (offset = GPA) or 'overlay' (offset in the overlay pool). */
export interface ViewSlot {
  gpa: bigint;
  size: number;
  backing: 'ram' | 'overlay';
  offset: number;
  readonly: boolean;
}

export interface OverlaySlot {
  gpfn: number;
  /** Offset of its page in the overlay pool. */
  offset: number;
  readOnly: boolean;
  /**
   * No memslot at all for this page (a per-VP overlay while every VP of the VM runs at once: each
   * VP sees its own page there, so an access exits as MMIO and the agent serves it for that VP).
   */
  hole?: boolean;
}

/**
 * The memslots of a view over [0, pages): RAM in runs of equal access (holes for 'none'), cut at
 * `slotPages` boundaries, with the overlays (sorted by gpfn, one per gpfn, inside RAM) on top.
 * Returns undefined once more than `limit` slots would be needed.
 */
export function viewSlots(
  pages: number,
  slotPages: number,
  runs: readonly RestrictedRun[],
  overlays: readonly OverlaySlot[],
  limit = Infinity,
): ViewSlot[] | undefined {
  const out: ViewSlot[] = [];
  let full = false;
  const push = (s: ViewSlot) => {
    if (out.length >= limit) full = true;
    else out.push(s);
  };
  const ram = (start: number, end: number, readonly: boolean) => {
    for (let s = start; s < end && !full; ) {
      const e = Math.min(end, (Math.floor(s / slotPages) + 1) * slotPages);
      push({ gpa: BigInt(s) * BigInt(PAGE), size: (e - s) * PAGE, backing: 'ram', offset: s * PAGE, readonly });
      s = e;
    }
  };
  let ov = 0;
  // RAM [start, end) with access `a`, minus the overlay pages inside it (which go on top).
  const span = (start: number, end: number, a: PageAccess) => {
    let s = start;
    while (ov < overlays.length && overlays[ov]!.gpfn < end && !full) {
      const o = overlays[ov++]!;
      if (o.gpfn < s) continue;
      if (a !== 'none') ram(s, o.gpfn, a === 'ro');
      if (!o.hole) push({ gpa: BigInt(o.gpfn) * BigInt(PAGE), size: PAGE, backing: 'overlay', offset: o.offset, readonly: o.readOnly });
      s = o.gpfn + 1;
    }
    if (a !== 'none') ram(s, end, a === 'ro');
  };
  let pos = 0;
  for (const r of runs) {
    if (full) break;
    if (r.start > pos) span(pos, r.start, 'rw');
    span(r.start, r.end, r.access);
    pos = r.end;
  }
  if (pos < pages && !full) span(pos, pages, 'rw');
  return full ? undefined : out;
}
