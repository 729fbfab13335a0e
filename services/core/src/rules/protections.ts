// core, rules: VTL protections (tlfs-vsm.md §7, tlfs-hypercalls.md §2.3): a VTL that set
// EnableVtlProtection gets a protection map (its DefaultVtlProtectionMask everywhere), and
// HvCallModifyVtlProtectionMask changes page masks in it. The map itself is ../protections.ts.
import type { PartitionState } from '../state/partition';
import { type Vtl, isVtl } from '../vtl-array';
import { ProtectionMap, normalizeMapFlags } from '../protections';
import { HvStatus, hvFail } from '../tlfs/status';
import { assertActive } from './lifecycle';

/** EnableVtlProtection took effect for `vtl`: its DefaultVtlProtectionMask applies to every page from now on (§7.2). */
export function enableVtlProtection(p: PartitionState, vtl: Vtl, defaultVtlProtectionMask: number): void {
  const m = normalizeMapFlags(defaultVtlProtectionMask, p.vtls.get(0).mbec);
  p.protections.set(vtl, new ProtectionMap(typeof m === 'number' ? m : 0xf));
  protectionsChanged(p, vtl);
}

/**
 * HvCallModifyVtlProtectionMask: `protectingVtl` sets `mapFlags` on page runs, restricting every
 * lower VTL. `caller` is the calling VTL (guest) or 'host'. Validates everything before changing
 * anything; returns the number of pages changed.
 */
export function modifyVtlProtectionMask(
  p: PartitionState,
  caller: Vtl | 'host',
  protectingVtl: number,
  mapFlags: number,
  runs: { start: bigint; count: bigint }[],
): number {
  assertActive(p);
  if (!isVtl(protectingVtl) || protectingVtl === 0)
    hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `VTL ${protectingVtl} cannot set protections (only a higher VTL protects lower ones)`);
  if (caller !== 'host' && protectingVtl > caller) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${caller} may not change VTL ${protectingVtl}'s protections`);
  if (!p.vtls.get(protectingVtl).enabled) hvFail(HvStatus.HV_STATUS_INVALID_VTL_STATE, `VTL ${protectingVtl} is not enabled`);
  const map = p.protections.get(protectingVtl);
  if (!map) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${protectingVtl} has not set EnableVtlProtection in HvRegisterVsmPartitionConfig`);
  const mask = normalizeMapFlags(mapFlags, p.vtls.get(0).mbec);
  if (typeof mask === 'string') hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, mask);
  const pages = p.memory.sizeBytes >> 12n;
  let total = 0n;
  for (const r of runs) {
    // Non-RAM GPAs cannot be protected (tlfs-vsm.md §7.2).
    if (r.count <= 0n || r.start < 0n || r.start + r.count > pages)
      hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `pages 0x${r.start.toString(16)}+${r.count} are not RAM of this partition`);
    total += r.count;
  }
  for (const r of runs) map.set(Number(r.start), Number(r.count), mask);
  protectionsChanged(p, protectingVtl);
  return Number(total);
}

/** Protection mask `protectingVtl` imposes on a page, or undefined when it protects nothing. */
export function protectionOf(p: PartitionState, protectingVtl: Vtl, gpfn: number): number | undefined {
  return p.protections.get(protectingVtl)?.get(gpfn);
}

function protectionsChanged(p: PartitionState, protectingVtl: Vtl): void {
  p.protectionChanges++;
  p.spec.platform?.onProtectionChange?.(protectingVtl);
}
