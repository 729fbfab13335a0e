// core: per-VTL state as a fixed array indexed by VTL (OpenVMM VtlArray style), never a map keyed
// by strings: "which VTL does this belong to" is visible in the type.
import { HV_MAX_SUPPORTED_VTL } from './tlfs/vsm';

export type Vtl = 0 | 1 | 2;
export const VTLS: readonly Vtl[] = [0, 1, 2];

export function isVtl(n: number): n is Vtl {
  return Number.isInteger(n) && n >= 0 && n <= HV_MAX_SUPPORTED_VTL;
}

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
}
