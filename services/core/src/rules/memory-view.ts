// core, rules: guest memory as a VTL sees it (tlfs-overlays-synic.md §4.1): the VTL's overlays on
// top of RAM. Reads and writes go through the view; a write that would touch a read-only overlay
// writes nothing. Protections are not checked here (access.ts does that for guest accesses).
import type { PartitionState } from '../state/partition';
import type { VirtualProcessor } from '../state/vp';
import type { Overlay } from '../overlays';
import type { Vtl } from '../vtl-array';
import { PAGE_SIZE } from '../memory';
import { HvStatus, hvFail } from '../tlfs/status';

export function checkRange(p: PartitionState, gpa: bigint, length: number): void {
  // In numbers: exact for every GPA below 2^53, and a larger one stays larger than any RAM size
  // (no bigint made per guest access).
  if (gpa < 0n || Number(gpa) + length > Number(p.memory.sizeBytes)) {
    hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `GPA range 0x${gpa.toString(16)}+${length} is outside the partition's ${p.memory.sizeBytes} bytes`);
  }
}

/** Bytes VP `vpIndex` would read at gpa in `vtl` (overlays on top of RAM). Management view too. */
export function readView(p: PartitionState, vtl: Vtl, vpIndex: number, gpa: bigint, length: number): Buffer {
  checkRange(p, gpa, length);
  const first = Number(gpa) % PAGE_SIZE; // exact: gpa is inside RAM
  if (length > 0 && first + length <= PAGE_SIZE) {
    // Inside one page (every memory-based hypercall parameter block): the overlay's bytes or RAM's
    // read, which is a fresh buffer the caller owns (GuestRam.read), without a second copy.
    const o = p.overlays.visible(vtl, vpIndex, gpa >> 12n);
    return o ? Buffer.from(o.page.subarray(first, first + length)) : p.memory.read(gpa, length);
  }
  const out = Buffer.alloc(length);
  let pos = 0;
  while (pos < length) {
    const cur = gpa + BigInt(pos);
    const off = Number(cur & 0xfffn);
    const n = Math.min(PAGE_SIZE - off, length - pos);
    const o = p.overlays.visible(vtl, vpIndex, cur >> 12n);
    if (o) o.page.copy(out, pos, off, off + n);
    else p.memory.read(cur, n).copy(out, pos);
    pos += n;
  }
  return out;
}

/** Guest write through the view; returns false (and writes nothing) if any byte hits a read-only overlay. */
export function writeView(p: PartitionState, vtl: Vtl, vpIndex: number, gpa: bigint, data: Buffer): boolean {
  checkRange(p, gpa, data.length);
  const first = Number(gpa) % PAGE_SIZE; // exact: gpa is inside RAM
  if (data.length > 0 && first + data.length <= PAGE_SIZE) {
    // Inside one page (a hypercall's output block): one chunk, the same checks as below.
    const o = p.overlays.visible(vtl, vpIndex, gpa >> 12n);
    if (o?.readOnly) return false;
    if (o) data.copy(o.page, first);
    else p.memory.write(gpa, data); // one write: its own resident-RAM check comes before any byte lands
    return true;
  }
  const chunks: { o?: Overlay; cur: bigint; off: number; n: number; pos: number }[] = [];
  let pos = 0;
  while (pos < data.length) {
    const cur = gpa + BigInt(pos);
    const off = Number(cur & 0xfffn);
    const n = Math.min(PAGE_SIZE - off, data.length - pos);
    const o = p.overlays.visible(vtl, vpIndex, cur >> 12n);
    if (o?.readOnly) return false;
    chunks.push({ o, cur, off, n, pos });
    pos += n;
  }
  // All or nothing against the resident-RAM limit: refused before any chunk lands.
  p.memory.assertWritable?.(chunks.filter((c) => !c.o).map((c) => ({ gpa: c.cur, data: data.subarray(c.pos, c.pos + c.n) })));
  for (const c of chunks) {
    if (c.o) data.copy(c.o.page, c.off, c.pos, c.pos + c.n);
    else p.memory.write(c.cur, data.subarray(c.pos, c.pos + c.n));
  }
  return true;
}

/** What the VP assist page of (vp, vtl) holds, if enabled. */
export function vpAssistPage(p: PartitionState, vp: VirtualProcessor, vtl: Vtl): Buffer | undefined {
  return p.overlays.find('vp-assist', vtl, vp.index)?.page;
}
