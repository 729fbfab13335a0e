// core, rules: the partition reference time (TLFS timers.md; tlfs-overlays-synic.md §4.4): where it
// comes from (the platform's referenceClock, else the injected Clock counted from partition
// creation) and the HV_REFERENCE_TSC_PAGE the REFERENCE_TSC overlay shows.
import type { PartitionState } from '../state/partition';
import type { Vtl } from '../vtl-array';
import { VTLS } from '../vtl-array';
import { HvReferenceTscPageLayout, nextTscSequence } from '../tlfs/time';

/** The partition reference time now, 100 ns units (HV_X64_MSR_TIME_REF_COUNT). */
export function referenceTime(p: PartitionState, vpIndex?: number): bigint {
  const rc = p.spec.platform?.referenceClock;
  return rc ? rc.now100ns(vpIndex) : p.clock.referenceTime100ns() - p.referenceTimeOrigin;
}

/**
 * Writes VTL `vtl`'s reference TSC page (if placed) from the platform's tscPage: TscScale,
 * TscOffset and a new TscSequence (never 0 or 0xFFFFFFFF). Without tscPage the page is left as it
 * is (TscSequence 0: the guest falls back to HV_X64_MSR_TIME_REF_COUNT).
 */
export function publishReferenceTscPage(p: PartitionState, vtl: Vtl): void {
  const tsc = p.spec.platform?.referenceClock?.tscPage;
  const o = p.overlays.find('reference-tsc', vtl, null);
  if (!tsc || !o) return;
  const seq = nextTscSequence(HvReferenceTscPageLayout.decode(o.page).tscSequence);
  HvReferenceTscPageLayout.encode({ tscSequence: seq, tscScale: tsc.tscScale, tscOffset: tsc.tscOffset }, o.page, 0);
}

/** Rewrites every placed reference TSC page (the platform's tscPage changed, e.g. after a restore). */
export function publishReferenceTscPages(p: PartitionState): void {
  for (const vtl of VTLS) publishReferenceTscPage(p, vtl);
}
