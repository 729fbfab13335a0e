// vsmctl map: a picture of a window of the GPA space, one character per 4 KiB page: RAM contents
// (zero / non-zero, sampled with ReadGpa) and, per VTL, the overlay pages on top of it.
import { pb } from '@vsm/client';
import { type Json, type Paint, type Style, formatSize, hex64, overlayKind, toJson, vtlSet } from './format';
import { MASK_LEGEND, maskLabel, maskLetter, maskText, unrestricted } from './protect';

export const PAGE = 4096;
const PER_ROW = 64;
const GROUP = 16;

interface OverlayLabel {
  letter: string;
  color: Style;
  /** Its entry in the legend. */
  legend: string;
}
/** How the map draws each overlay kind: one entry per vsm.v1.OverlayKind (a new kind does not compile until it has one). */
const OVERLAY_LABELS = {
  [pb.OverlayKind.OVERLAY_KIND_HYPERCALL]: { letter: 'H', color: 'magenta', legend: 'hypercall' },
  [pb.OverlayKind.OVERLAY_KIND_REFERENCE_TSC]: { letter: 'T', color: 'cyan', legend: 'reference TSC' },
  [pb.OverlayKind.OVERLAY_KIND_VP_ASSIST_PAGE]: { letter: 'A', color: 'yellow', legend: 'VP assist' },
  [pb.OverlayKind.OVERLAY_KIND_SIMP]: { letter: 'M', color: 'green', legend: 'SynIC messages (SIMP)' },
  [pb.OverlayKind.OVERLAY_KIND_SIEFP]: { letter: 'E', color: 'blue', legend: 'SynIC events (SIEFP)' },
} as const satisfies Record<Exclude<pb.OverlayKind, pb.OverlayKind.OVERLAY_KIND_UNSPECIFIED>, OverlayLabel>;
/** The label of a kind the server sent (undefined for one this client does not know). */
const overlayLabel = (kind: number): OverlayLabel | undefined => (OVERLAY_LABELS as Partial<Record<number, OverlayLabel>>)[kind];

export interface MapInput {
  partition: pb.Partition;
  /** First page's GPA (page aligned). */
  from: bigint;
  /** Per page of the window: whether RAM (host view, under overlays) holds a non-zero byte. */
  nonZero: boolean[];
  /** Overlays (any VTL; those outside the window or the chosen VTLs are ignored). */
  overlays: pb.Overlay[];
  viewGeneration: bigint;
  /** VTLs to draw. */
  vtls: number[];
  /** Protections (GetVtlProtections) of protecting VTLs to draw; only enabled ones get a grid. */
  protections?: MapProtections[];
}

/** GetVtlProtections of one protecting VTL. */
export interface MapProtections {
  vtl: number;
  protectionEnabled: boolean;
  defaultMapFlags: number;
  ranges: pb.ProtectionRange[];
}

const MASK_COLOR: Record<string, Style> = { '-': 'red', r: 'yellow', w: 'blue', x: 'magenta', u: 'cyan', '?': 'white' };

/** Mask in force for each page of the window. */
function pageMasks(inp: MapInput, p: MapProtections): number[] {
  const n = inp.nonZero.length;
  const first = inp.from / BigInt(PAGE);
  const masks = new Array<number>(n).fill(p.defaultMapFlags);
  for (const r of rangesInWindow(inp, p)) {
    const s = r.pages!.startPage;
    const lo = Number((s > first ? s : first) - first);
    const end = s + r.pages!.pageCount - first;
    const hi = Math.min(n, Number(end));
    for (let i = lo; i < hi; i++) masks[i] = r.mapFlags;
  }
  return masks;
}

function rangesInWindow(inp: MapInput, p: MapProtections): pb.ProtectionRange[] {
  const first = inp.from / BigInt(PAGE);
  const last = first + BigInt(inp.nonZero.length);
  return p.ranges.filter((r) => r.pages && r.pages.startPage < last && r.pages.startPage + r.pages.pageCount > first);
}

const drawnProtections = (inp: MapInput): MapProtections[] => (inp.protections ?? []).filter((p) => p.protectionEnabled);

function pageIndex(inp: MapInput, gpa: bigint): number | undefined {
  if (gpa < inp.from) return undefined;
  const i = Number((gpa - inp.from) / BigInt(PAGE));
  return i < inp.nonZero.length ? i : undefined;
}

/** Overlays in the window for the chosen VTLs, grouped by VTL and page, each stack top first. */
function stacks(inp: MapInput): Map<number, Map<number, pb.Overlay[]>> {
  const out = new Map<number, Map<number, pb.Overlay[]>>();
  for (const v of inp.vtls) out.set(v, new Map());
  for (const o of inp.overlays) {
    const i = pageIndex(inp, o.gpa);
    const m = out.get(o.vtl);
    if (i === undefined || !m) continue;
    const list = m.get(i) ?? [];
    list.push(o);
    m.set(i, list);
  }
  for (const m of out.values()) for (const l of m.values()) l.sort((a, b) => a.stackPosition - b.stackPosition || (a.vpIndex ?? -1) - (b.vpIndex ?? -1));
  return out;
}

const ovLabel = (o: pb.Overlay) => `${overlayKind(o.kind)}${o.vpIndex !== undefined ? ` vp${o.vpIndex}` : ''}`;

export function renderMap(inp: MapInput, paint: Paint): string {
  const n = inp.nonZero.length;
  const st = stacks(inp);
  const ramCell = (i: number) => (inp.nonZero[i] ? paint('#', 'bold', 'white') : paint('.', 'dim'));
  const grid = (cell: (i: number) => string) => {
    const rows: string[] = [];
    for (let r = 0; r < n; r += PER_ROW) {
      let line = '';
      for (let i = r; i < Math.min(r + PER_ROW, n); i++) {
        if (i > r && (i - r) % GROUP === 0) line += ' ';
        line += cell(i);
      }
      rows.push(`  ${paint(hex64(inp.from + BigInt(r * PAGE)), 'dim')}  ${line}`);
    }
    return rows;
  };
  const last = inp.from + BigInt(n * PAGE) - 1n;
  const out: string[] = [];
  out.push(
    `${paint(inp.partition.name, 'bold')}  memory ${formatSize(inp.partition.memoryBytes)}  VTLs enabled ${vtlSet(inp.partition.enabledVtlSet)}  view generation ${inp.viewGeneration}`,
  );
  out.push(`window ${hex64(inp.from)}-${hex64(last)}: ${n} pages of 4 KiB, ${PER_ROW} per row`);
  out.push('');
  const kinds = Object.values(OVERLAY_LABELS).map((o: OverlayLabel) => `${paint(o.letter, o.color)} ${o.legend}`);
  out.push(`legend: ${paint('.', 'dim')} zero RAM  ${paint('#', 'bold', 'white')} non-zero RAM  ${kinds.join('  ')}`);
  out.push('        lowercase letter = top of a stack with more overlays underneath (listed below)');
  if (drawnProtections(inp).length) {
    out.push(
      `        protections: ${MASK_LEGEND.map(([l, what]) => `${l === '.' ? paint('.', 'dim') : paint(l, MASK_COLOR[l] ?? 'bold', 'bold')} ${what}`).join('  ')}`,
    );
  }
  out.push('');
  out.push(paint('RAM (host view, under any overlay)', 'bold'));
  out.push(...grid(ramCell));
  for (const v of inp.vtls) {
    const m = st.get(v)!;
    out.push(paint(`VTL ${v} view`, 'bold'));
    out.push(
      ...grid((i) => {
        const s = m.get(i);
        if (!s?.length) return ramCell(i);
        const label = overlayLabel(s[0]!.kind);
        const l = label?.letter ?? '?';
        const color = label?.color ?? 'bold';
        const stacked = s.some((o) => o.stackPosition > 0);
        return stacked ? paint(l.toLowerCase(), color, 'bold', 'underline') : paint(l, color, 'bold');
      }),
    );
  }
  const prot = drawnProtections(inp);
  const protDetails: string[] = [];
  const restricted: string[] = [];
  for (const p of prot) {
    const masks = pageMasks(inp, p);
    const def = unrestricted(p.defaultMapFlags) ? '' : `; default mask ${maskLabel(p.defaultMapFlags)} outside the ranges`;
    out.push(paint(`VTL ${p.vtl} protections (what VTL ${p.vtl} allows lower VTLs${def})`, 'bold'));
    out.push(
      ...grid((i) => {
        const l = maskLetter(masks[i]!);
        return l === '.' ? paint('.', 'dim') : paint(l, MASK_COLOR[l] ?? 'bold', 'bold');
      }),
    );
    for (const r of rangesInWindow(inp, p)) {
      if (unrestricted(r.mapFlags)) continue;
      const s = r.pages!.startPage << 12n;
      const e = s + (r.pages!.pageCount << 12n) - 1n;
      protDetails.push(`  VTL ${p.vtl}  ${hex64(s)}-${hex64(e)}  ${r.pages!.pageCount} page${r.pages!.pageCount === 1n ? '' : 's'}  ${maskLabel(r.mapFlags)}`);
    }
    restricted.push(`${masks.filter((m) => !unrestricted(m)).length} of ${n} pages restricted by VTL ${p.vtl}`);
  }
  const details: string[] = [];
  for (const v of inp.vtls) {
    for (const [i, s] of [...st.get(v)!.entries()].sort((a, b) => a[0] - b[0])) {
      const chain = [...s.map(ovLabel), `RAM (${inp.nonZero[i] ? 'non-zero' : 'zero'})`].join(' > ');
      const ro = s[0]!.readOnly ? ', read-only for the guest' : '';
      details.push(`  VTL ${v}  ${hex64(inp.from + BigInt(i * PAGE))}  ${chain}${ro}`);
    }
  }
  out.push('');
  if (details.length) {
    out.push('overlays in the window (top first):');
    out.push(...details);
  } else {
    out.push('no overlays in the window');
  }
  if (prot.length) {
    if (protDetails.length) {
      out.push('protected ranges in the window (protecting VTL, GPAs, pages, mask):');
      out.push(...protDetails);
    } else {
      out.push('no restricted protection ranges in the window');
    }
  }
  const nz = inp.nonZero.filter(Boolean).length;
  out.push(`${nz} of ${n} RAM pages non-zero`);
  out.push(...restricted);
  return out.join('\n');
}

export function mapJson(inp: MapInput): Json {
  const st = stacks(inp);
  const inWindow = inp.overlays.filter((o) => pageIndex(inp, o.gpa) !== undefined && st.has(o.vtl));
  return {
    name: inp.partition.name,
    from: inp.from.toString(),
    pages: inp.nonZero.length,
    pageSize: PAGE,
    viewGeneration: inp.viewGeneration.toString(),
    vtls: inp.vtls,
    nonZeroPages: inp.nonZero.flatMap((nz, i) => (nz ? [(inp.from + BigInt(i * PAGE)).toString()] : [])),
    overlays: toJson(inWindow),
    protections: (inp.protections ?? []).map((p) => {
      const masks = p.protectionEnabled ? pageMasks(inp, p) : [];
      return {
        protectingVtl: p.vtl,
        protectionEnabled: p.protectionEnabled,
        defaultMapFlags: p.defaultMapFlags,
        defaultMask: maskText(p.defaultMapFlags),
        ranges: rangesInWindow(inp, p).map((r) => ({ ...(toJson(r) as { [k: string]: Json }), mask: maskText(r.mapFlags) })),
        restrictedPages: masks.flatMap((m, i) => (unrestricted(m) ? [] : [(inp.from + BigInt(i * PAGE)).toString()])),
      };
    }),
  };
}
