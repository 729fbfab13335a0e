// core: GPA overlay pages (tlfs-overlays-synic.md §4). An overlay hides the RAM page under it
// without touching it; the RAM page reappears byte for byte when the overlay is disabled or moved.
// Overlays are per VTL: VTL n sees only its own. Stacking order (the TLFS leaves it to the
// implementation): the most recently placed overlay on a GPA is on top; removing it uncovers the
// next one, removing all uncovers RAM.
import { Vtl } from './vtl-array';

export type OverlayKind = 'hypercall' | 'reference-tsc' | 'simp' | 'siefp' | 'vp-assist';

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

export class OverlayManager {
  private seq = 0;
  /** Enabled overlays. */
  private readonly placed: Overlay[] = [];
  /** Every overlay's page, enabled or not, keyed by slot (kind, vtl, vp). */
  private readonly pages = new Map<string, Buffer>();
  /** Bumped whenever a mapping changes (seed 001: the memory view generation). */
  generation = 1;

  constructor(
    private readonly allocPage: () => Buffer = () => Buffer.alloc(4096),
    private readonly onViewChange?: (vtl: Vtl) => void,
  ) {}

  static slot(kind: OverlayKind, vtl: Vtl, vpIndex: number | null): string {
    return `${kind}/${vtl}/${vpIndex ?? '*'}`;
  }

  pageFor(kind: OverlayKind, vtl: Vtl, vpIndex: number | null, init?: () => Buffer): Buffer {
    const key = OverlayManager.slot(kind, vtl, vpIndex);
    let p = this.pages.get(key);
    if (!p) {
      p = this.allocPage();
      if (init) init().copy(p);
      this.pages.set(key, p);
    }
    return p;
  }

  find(kind: OverlayKind, vtl: Vtl, vpIndex: number | null): Overlay | undefined {
    return this.placed.find((o) => o.kind === kind && o.vtl === vtl && o.vpIndex === vpIndex);
  }

  /** Places (or moves) the overlay of a slot at gpfn; a move puts it on top at its new GPA. */
  place(kind: OverlayKind, vtl: Vtl, vpIndex: number | null, gpfn: bigint, readOnly: boolean, init?: () => Buffer): Overlay {
    const existing = this.find(kind, vtl, vpIndex);
    if (existing && existing.gpfn === gpfn) return existing;
    if (existing) this.remove(kind, vtl, vpIndex);
    const o: Overlay = { kind, vtl, vpIndex, gpfn, page: this.pageFor(kind, vtl, vpIndex, init), seq: ++this.seq, readOnly };
    this.placed.push(o);
    this.generation++;
    this.onViewChange?.(vtl);
    return o;
  }

  remove(kind: OverlayKind, vtl: Vtl, vpIndex: number | null): boolean {
    const i = this.placed.findIndex((o) => o.kind === kind && o.vtl === vtl && o.vpIndex === vpIndex);
    if (i < 0) return false;
    this.placed.splice(i, 1);
    this.generation++;
    this.onViewChange?.(vtl);
    return true;
  }

  /** Top overlay that VP `vpIndex` running in `vtl` sees at gpfn, if any. */
  visible(vtl: Vtl, vpIndex: number, gpfn: bigint): Overlay | undefined {
    let top: Overlay | undefined;
    for (const o of this.placed) {
      if (o.vtl !== vtl || o.gpfn !== gpfn) continue;
      if (o.vpIndex !== null && o.vpIndex !== vpIndex) continue;
      if (!top || o.seq > top.seq) top = o;
    }
    return top;
  }

  /** Overlays at gpfn in a VTL that VP `vpIndex` can see (all VPs when null), top first. */
  stackAt(vtl: Vtl, gpfn: bigint, vpIndex: number | null = null): Overlay[] {
    return this.placed
      .filter((o) => o.vtl === vtl && o.gpfn === gpfn && (vpIndex === null || o.vpIndex === null || o.vpIndex === vpIndex))
      .sort((a, b) => b.seq - a.seq);
  }

  list(): readonly Overlay[] {
    return [...this.placed].sort((a, b) => a.seq - b.seq);
  }

  /** State for snapshots: every slot's page (placed or not) and the placements. */
  exportState(): { seq: number; generation: number; placed: Omit<Overlay, 'page'>[]; pages: { slot: string; page: Buffer }[] } {
    return {
      seq: this.seq,
      generation: this.generation,
      placed: this.placed.map(({ page: _page, ...o }) => ({ ...o })),
      pages: [...this.pages].map(([slot, page]) => ({ slot, page: Buffer.from(page) })),
    };
  }
  importState(s: ReturnType<OverlayManager['exportState']>): void {
    this.pages.clear();
    this.placed.length = 0;
    for (const { slot, page } of s.pages) {
      const p = this.allocPage();
      page.copy(p);
      this.pages.set(slot, p);
    }
    for (const o of s.placed) {
      const page = this.pages.get(OverlayManager.slot(o.kind, o.vtl, o.vpIndex));
      if (!page) throw new Error(`snapshot has a placed ${o.kind} overlay without its page`);
      this.placed.push({ ...o, page });
      this.onViewChange?.(o.vtl);
    }
    this.seq = s.seq;
    this.generation = s.generation;
  }

  removeAllOf(vtl: Vtl): void {
    for (const o of this.placed.filter((x) => x.vtl === vtl)) this.remove(o.kind, o.vtl, o.vpIndex);
  }
}
