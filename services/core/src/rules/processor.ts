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
 * A value derived from a register's value object, remembered for the last object asked about: register
 * values are immutable objects (a write stores a new one), so a derivation is redone only when the
 * register changed. The hypercall path asks for CS's attributes, CR0.PE, EFER.LMA and RCX's Fast bit
 * several times per call, and each bigint shift or AND made a bigint.
 */
export class RegisterValueMemo<T> {
  private last: Reg128 | undefined;
  private lastValue: T;
  constructor(
    private readonly derive: (r: Reg128) => T,
    /** The value for an unset register. */
    private readonly unset: T,
  ) {
    this.lastValue = unset;
  }
  of(r: Reg128 | undefined): T {
    if (r === undefined) return this.unset;
    if (r !== this.last) {
      this.lastValue = this.derive(r);
      this.last = r;
    }
    return this.lastValue;
  }
}

/** The value object of `name` for the VP's active VTL (undefined: never set). */
export function registerValue(vp: VirtualProcessor, name: number): Reg128 | undefined {
  return fileOf(vp, name).get(name);
}

/** HV_X64_SEGMENT_REGISTER.Attributes (bits 48..63 of the value's high half). */
const segmentAttributes = new RegisterValueMemo((s) => Number((s.high >> 48n) & 0xffffn), 0);
const cr0Pe = new RegisterValueMemo((r) => (r.low & CR0_PE) !== 0n, false);
const eferLma = new RegisterValueMemo((r) => (r.low & EFER_LMA) !== 0n, false);

/** CPL from CS.DPL (x64: CPL = CS.RPL = CS.DPL for code segments). */
export function cpl(vp: VirtualProcessor): number {
  const cs = vp.vtls.get(vp.activeVtl).regs.get(R.HvX64RegisterCs);
  return cs ? segmentDpl(segmentAttributes.of(cs)) : 0;
}
export function inRealMode(vp: VirtualProcessor): boolean {
  return !cr0Pe.of(registerValue(vp, R.HvX64RegisterCr0));
}
/** 64-bit calling convention when EFER.LMA && CS.L (tlfs-hypercalls.md §1.4). */
export function is64Bit(vp: VirtualProcessor): boolean {
  const attrs = segmentAttributes.of(vp.vtls.get(vp.activeVtl).regs.get(R.HvX64RegisterCs));
  return (attrs & SegmentAttr.Long) !== 0 && eferLma.of(registerValue(vp, R.HvX64RegisterEfer));
}
