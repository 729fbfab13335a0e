// core: GPA overlay pages (tlfs-overlays-synic.md §4). An overlay hides the RAM page under it
// without touching it; the RAM page reappears byte for byte when the overlay is disabled or moved.
// Overlays are per VTL: VTL n sees only its own. Stacking order (the TLFS leaves it to the
// implementation): the most recently placed overlay on a GPA is on top; removing it uncovers the
// next one, removing all uncovers RAM. What each kind is (scope, MSR, read-only) is the table in
// overlay-kinds.ts.
import { type Vtl, VtlArray, VTLS } from './vtl-array';
import type { OverlayKind } from './overlay-kinds';

export type { OverlayKind } from './overlay-kinds';

export interface Overlay {
  kind: OverlayKind;
  vtl: Vtl;
  /** VP whose MSR placed it; null for partition-wide (hypercall page). */
  vpIndex: number | null;
  gpfn: bigint;
  /** The overlay's own contents; persists across moves and disable/enable. */
  page: Buffer;
  /** Placement sequence number: higher = on top. */
  seq: number;
  /** Whether guest writes fault (#GP): the hypercall page is read/execute for the guest. */
  readOnly: boolean;
}

/** The placement of an overlay as snapshots keep it (everything but its page). */
export type OverlayPlacement = Omit<Overlay, 'page'>;

/** One VTL's overlays: those placed, and every slot's page (kind, VP), placed or not. */
class VtlOverlays {
  readonly placed: Overlay[] = [];
  readonly pages = new Map<OverlayKind, Map<number | null, Buffer>>();

  page(kind: OverlayKind, vpIndex: number | null): Buffer | undefined {
    return this.pages.get(kind)?.get(vpIndex);
  }
  setPage(kind: OverlayKind, vpIndex: number | null, page: Buffer): void {
    let byVp = this.pages.get(kind);
    if (!byVp) this.pages.set(kind, (byVp = new Map()));
    byVp.set(vpIndex, page);
  }
}

export class OverlayManager {
  private seq = 0;
  private readonly vtls = new VtlArray(() => new VtlOverlays());
  /** Bumped whenever a mapping changes (seed 001: the memory view generation). */
  generation = 1;

  constructor(
    private readonly allocPage: () => Buffer = () => Buffer.alloc(4096),
    private readonly onViewChange?: (vtl: Vtl) => void,
  ) {}

  /** A slot's name in snapshots: `kind/vtl/vp`, `*` for a partition-wide page. */
  static slot(kind: OverlayKind, vtl: Vtl, vpIndex: number | null): string {
    return `${kind}/${vtl}/${vpIndex ?? '*'}`;
  }
  private static parseSlot(slot: string): { kind: OverlayKind; vtl: Vtl; vpIndex: number | null } {
    const [kind, vtl, vp] = slot.split('/');
    return { kind: kind as OverlayKind, vtl: Number(vtl) as Vtl, vpIndex: vp === '*' ? null : Number(vp) };
  }

  pageFor(kind: OverlayKind, vtl: Vtl, vpIndex: number | null, init?: () => Buffer): Buffer {
    const v = this.vtls.get(vtl);
    let p = v.page(kind, vpIndex);
    if (!p) {
      p = this.allocPage();
      if (init) init().copy(p);
      v.setPage(kind, vpIndex, p);
    }
    return p;
  }

  find(kind: OverlayKind, vtl: Vtl, vpIndex: number | null): Overlay | undefined {
    return this.vtls.get(vtl).placed.find((o) => o.kind === kind && o.vpIndex === vpIndex);
  }

  /** Places (or moves) the overlay of a slot at gpfn; a move puts it on top at its new GPA. */
  place(kind: OverlayKind, vtl: Vtl, vpIndex: number | null, gpfn: bigint, readOnly: boolean, init?: () => Buffer): Overlay {
    const existing = this.find(kind, vtl, vpIndex);
    if (existing && existing.gpfn === gpfn) return existing;
    if (existing) this.remove(kind, vtl, vpIndex);
    const o: Overlay = { kind, vtl, vpIndex, gpfn, page: this.pageFor(kind, vtl, vpIndex, init), seq: ++this.seq, readOnly };
    this.vtls.get(vtl).placed.push(o);
    this.generation++;
    this.onViewChange?.(vtl);
    return o;
  }

  remove(kind: OverlayKind, vtl: Vtl, vpIndex: number | null): boolean {
    const placed = this.vtls.get(vtl).placed;
    const i = placed.findIndex((o) => o.kind === kind && o.vpIndex === vpIndex);
    if (i < 0) return false;
    placed.splice(i, 1);
    this.generation++;
    this.onViewChange?.(vtl);
    return true;
  }

  /** Top overlay that VP `vpIndex` running in `vtl` sees at gpfn, if any. */
  visible(vtl: Vtl, vpIndex: number, gpfn: bigint): Overlay | undefined {
    let top: Overlay | undefined;
    for (const o of this.vtls.get(vtl).placed) {
      if (o.gpfn !== gpfn) continue;
      if (o.vpIndex !== null && o.vpIndex !== vpIndex) continue;
      if (!top || o.seq > top.seq) top = o;
    }
    return top;
  }

  /** Overlays at gpfn in a VTL that VP `vpIndex` can see (all VPs when null), top first. */
  stackAt(vtl: Vtl, gpfn: bigint, vpIndex: number | null = null): Overlay[] {
    return this.vtls
      .get(vtl)
      .placed.filter((o) => o.gpfn === gpfn && (vpIndex === null || o.vpIndex === null || o.vpIndex === vpIndex))
      .sort((a, b) => b.seq - a.seq);
  }

  /** Every placed overlay, in placement order. */
  list(): readonly Overlay[] {
    return VTLS.flatMap((v) => this.vtls.get(v).placed).sort((a, b) => a.seq - b.seq);
  }

  /** State for snapshots: every slot's page (placed or not) and the placements. */
  exportState(): { seq: number; generation: number; placed: OverlayPlacement[]; pages: { slot: string; page: Buffer }[] } {
    return {
      seq: this.seq,
      generation: this.generation,
      placed: this.list().map(({ page: _page, ...o }) => ({ ...o })),
      pages: VTLS.flatMap((vtl) =>
        [...this.vtls.get(vtl).pages].flatMap(([kind, byVp]) =>
          [...byVp].map(([vp, page]) => ({ slot: OverlayManager.slot(kind, vtl, vp), page: Buffer.from(page) })),
        ),
      ),
    };
  }
  /** Replaces everything with a snapshot's state (validated first: snapshot-validate.ts). */
  importState(s: ReturnType<OverlayManager['exportState']>): void {
    for (const v of VTLS) {
      this.vtls.get(v).pages.clear();
      this.vtls.get(v).placed.length = 0;
    }
    for (const { slot, page } of s.pages) {
      const { kind, vtl, vpIndex } = OverlayManager.parseSlot(slot);
      const p = this.allocPage();
      page.copy(p);
      this.vtls.get(vtl).setPage(kind, vpIndex, p);
    }
    for (const o of s.placed) {
      const page = this.vtls.get(o.vtl).page(o.kind, o.vpIndex);
      if (!page) throw new Error(`snapshot has a placed ${o.kind} overlay without its page`);
      this.vtls.get(o.vtl).placed.push({ ...o, page });
      this.onViewChange?.(o.vtl);
    }
    this.seq = s.seq;
    this.generation = s.generation;
  }
}
