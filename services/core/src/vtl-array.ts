// core: per-VTL state as a fixed array indexed by VTL (OpenVMM VtlArray style), never a map keyed
// by strings: "which VTL does this belong to" is visible in the type. A set of VTLs is a VtlSet,
// the bit set the TLFS itself uses (bit n = VTL n), never a bare number.
import { HV_MAX_SUPPORTED_VTL } from './tlfs/vsm';

export type Vtl = 0 | 1 | 2;
export const VTLS: readonly Vtl[] = [0, 1, 2];

export function isVtl(n: number): n is Vtl {
  return Number.isInteger(n) && n >= 0 && n <= HV_MAX_SUPPORTED_VTL;
}

/**
 * A set of VTLs as the TLFS encodes one (EnabledVtlSet of HvRegisterVsmPartitionStatus and
 * HvRegisterVsmVpStatus, MbecEnabledVtlSet, MbecVtlMask: bit n = VTL n; tlfs-vsm.md §3). A number
 * underneath, so it goes into a register field or a proto uint32 as it is.
 */
export type VtlSet = number & { readonly __vtlSet: true };
export const VtlSet = {
  EMPTY: 0 as VtlSet,
  of(...vtls: Vtl[]): VtlSet {
    return vtls.reduce<number>((s, v) => s | (1 << v), 0) as VtlSet;
  },
  /** VTLs 0 .. vtl - 1. */
  below(vtl: Vtl): VtlSet {
    return ((1 << vtl) - 1) as VtlSet;
  },
  has(set: VtlSet, vtl: Vtl): boolean {
    return ((set >> vtl) & 1) === 1;
  },
};

export class VtlArray<T> {
  private readonly items: T[];
  constructor(make: (vtl: Vtl) => T) {
    this.items = VTLS.map(make);
  }
  get(vtl: Vtl): T {
    return this.items[vtl]!;
  }
  set(vtl: Vtl, value: T): void {
    this.items[vtl] = value;
  }
  map<U>(fn: (item: T, vtl: Vtl) => U): U[] {
    return this.items.map((t, i) => fn(t, i as Vtl));
  }
  /** The VTLs whose item satisfies `pred`. */
  setOf(pred: (item: T, vtl: Vtl) => boolean): VtlSet {
    // Bits set directly (no filtered array and spread: HvRegisterVsmVpStatus reads this per call).
    let set = 0;
    for (const v of VTLS) if (pred(this.items[v]!, v)) set |= 1 << v;
    return set as VtlSet;
  }
}
