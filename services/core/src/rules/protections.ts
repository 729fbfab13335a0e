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
  const m = normalizeMapFlags(defaultVtlProtectionMask, p.vtls.get(vtl).mbec);
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
  const { map, mask, total, vtl } = checkProtectionChange(p, caller, protectingVtl, mapFlags, runs);
  for (const r of runs) map.set(Number(r.start), Number(r.count), mask);
  protectionsChanged(p, vtl);
  return total;
}

/** A protection change prepared on a draft in steps (prepareVtlProtectionChange), put in force at once by commit(). */
export interface ProtectionChangeJob {
  /** Applies up to `runs` more runs to the draft (nothing in force changes); true once all are applied. */
  step(runs: number): boolean;
  /**
   * Re-checks the partition's state (it may have changed between steps) and puts the whole change in
   * force at once. If the map in force changed meanwhile (a guest's hypercall, EnableVtlProtection),
   * the runs are applied to it directly instead, so nothing is lost. Returns the pages changed.
   */
  commit(): number;
}

/**
 * ModifyVtlProtectionMask in steps, for requests with many runs: validated completely now (same
 * errors as modifyVtlProtectionMask), then applied to a copy-on-write draft of the map a few runs
 * at a time (the caller yields between steps), then put in force at once. Other readers see the
 * old protections until commit, the new ones after: never a half-applied request.
 */
export function prepareVtlProtectionChange(
  p: PartitionState,
  caller: Vtl | 'host',
  protectingVtl: number,
  mapFlags: number,
  runs: { start: bigint; count: bigint }[],
): ProtectionChangeJob {
  const { map, mask } = checkProtectionChange(p, caller, protectingVtl, mapFlags, runs);
  const draft = map.draft();
  let next = 0;
  return {
    step(n: number): boolean {
      const stop = Math.min(runs.length, next + n);
      for (; next < stop; next++) draft.set(Number(runs[next]!.start), Number(runs[next]!.count), mask);
      return next >= runs.length;
    },
    commit(): number {
      const now = checkProtectionChange(p, caller, protectingVtl, mapFlags, runs);
      if (now.map !== map || map.changedSince(draft) || next < runs.length) {
        for (const r of runs) now.map.set(Number(r.start), Number(r.count), now.mask);
      } else map.adopt(draft);
      protectionsChanged(p, now.vtl);
      return now.total;
    },
  };
}

/** Everything ModifyVtlProtectionMask checks before changing anything. */
function checkProtectionChange(
  p: PartitionState,
  caller: Vtl | 'host',
  protectingVtl: number,
  mapFlags: number,
  runs: { start: bigint; count: bigint }[],
): { map: ProtectionMap; mask: number; total: number; vtl: Vtl } {
  assertActive(p);
  if (!isVtl(protectingVtl) || protectingVtl === 0)
    hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `VTL ${protectingVtl} cannot set protections (only a higher VTL protects lower ones)`);
  if (caller !== 'host' && protectingVtl > caller) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${caller} may not change VTL ${protectingVtl}'s protections`);
  if (!p.vtls.get(protectingVtl).enabled) hvFail(HvStatus.HV_STATUS_INVALID_VTL_STATE, `VTL ${protectingVtl} is not enabled`);
  const map = p.protections.get(protectingVtl);
  if (!map) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${protectingVtl} has not set EnableVtlProtection in HvRegisterVsmPartitionConfig`);
  const mask = normalizeMapFlags(mapFlags, p.vtls.get(protectingVtl).mbec); // MBEC of the protecting VTL (EnablePartitionVtl EnableMbec);
  if (typeof mask === 'string') hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, mask);
  const pages = p.memory.sizeBytes >> 12n;
  let total = 0n;
  for (const r of runs) {
    // Non-RAM GPAs cannot be protected (tlfs-vsm.md §7.2).
    if (r.count <= 0n || r.start < 0n || r.start + r.count > pages)
      hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `pages 0x${r.start.toString(16)}+${r.count} are not RAM of this partition`);
    total += r.count;
  }
  return { map, mask, total: Number(total), vtl: protectingVtl };
}

/** Protection mask `protectingVtl` imposes on a page, or undefined when it protects nothing. */
export function protectionOf(p: PartitionState, protectingVtl: Vtl, gpfn: number): number | undefined {
  return p.protections.get(protectingVtl)?.get(gpfn);
}

function protectionsChanged(p: PartitionState, protectingVtl: Vtl): void {
  p.protectionChanges++;
  p.spec.platform?.onProtectionChange?.(protectingVtl);
}
