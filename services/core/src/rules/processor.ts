// core, rules: the processor state of a VP in its active VTL as the other rules read it: a
// register (shared or VTL-private, per the TLFS's lists), CPL, real mode, 64-bit mode.
import type { VirtualProcessor } from '../state/vp';
import { HvRegisterName as R, type Reg128, SegmentAttr, reg64, registerInfo, segmentDpl } from '../tlfs/registers';

export const CR0_PE = 1n;
const EFER_LMA = 0x400n;

/** The register file that holds `name` for the VP's active VTL. */
function fileOf(vp: VirtualProcessor, name: number) {
  const info = registerInfo(name)!;
  return info.scope === 'shared' ? vp.shared : vp.vtls.get(vp.activeVtl).regs;
}

export function reg(vp: VirtualProcessor, name: number): bigint {
  return fileOf(vp, name).get(name)?.low ?? 0n;
}
export function setReg(vp: VirtualProcessor, name: number, value: bigint): void {
  fileOf(vp, name).set(name, reg64(value));
}
/**
 * HV_X64_SEGMENT_REGISTER.Attributes of a segment register's value (bits 48..63 of its high half).
 * The last value asked about is remembered: register values are immutable objects (a write replaces
 * the object), and the hypercall path asks for CS's attributes three or four times per call.
 */
let lastSegment: Reg128 | undefined;
let lastAttributes = 0;
function segmentAttributes(s: Reg128 | undefined): number {
  if (s === undefined) return 0;
  if (s !== lastSegment) {
    lastAttributes = Number((s.high >> 48n) & 0xffffn);
    lastSegment = s;
  }
  return lastAttributes;
}

/** CPL from CS.DPL (x64: CPL = CS.RPL = CS.DPL for code segments). */
export function cpl(vp: VirtualProcessor): number {
  const cs = vp.vtls.get(vp.activeVtl).regs.get(R.HvX64RegisterCs);
  return cs ? segmentDpl(segmentAttributes(cs)) : 0;
}
/**
 * Whether a register value has the bits of `mask` set, remembered for the last value asked about per
 * mask (CR0 and EFER change rarely; the hypercall path tests them three times per call, and each
 * bigint AND made a bigint).
 */
class BitTest {
  private last: Reg128 | undefined;
  private lastResult = false;
  constructor(private readonly mask: bigint) {}
  test(r: Reg128 | undefined): boolean {
    if (r === undefined) return false;
    if (r !== this.last) {
      this.lastResult = (r.low & this.mask) !== 0n;
      this.last = r;
    }
    return this.lastResult;
  }
}
const cr0Pe = new BitTest(CR0_PE);
const eferLma = new BitTest(EFER_LMA);

export function inRealMode(vp: VirtualProcessor): boolean {
  return !cr0Pe.test(fileOf(vp, R.HvX64RegisterCr0).get(R.HvX64RegisterCr0));
}
/** 64-bit calling convention when EFER.LMA && CS.L (tlfs-hypercalls.md §1.4). */
export function is64Bit(vp: VirtualProcessor): boolean {
  const attrs = segmentAttributes(vp.vtls.get(vp.activeVtl).regs.get(R.HvX64RegisterCs));
  return (attrs & SegmentAttr.Long) !== 0 && eferLma.test(fileOf(vp, R.HvX64RegisterEfer).get(R.HvX64RegisterEfer));
}
