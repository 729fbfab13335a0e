// tlfs layer: partition reference time (tlfs-overlays-synic.md §4.4; TLFS timers.md): the
// HV_REFERENCE_TSC_PAGE overlay that lets a guest compute the reference time from its TSC.
import { at, type CodecValue, struct, u32, u64 } from './layout';

/**
 * HV_REFERENCE_TSC_PAGE, 4096 bytes (tlfs-overlays-synic.md §4.4): +4 Reserved1, +24 Reserved2[509].
 * ReferenceTime = ((TSC * TscScale) >> 64) + TscOffset; TscSequence 0 = invalid (use
 * HV_X64_MSR_TIME_REF_COUNT). TscOffset is an INT64: encode takes a negative bigint as its two's
 * complement, decode returns the unsigned bits (see signedTscOffset).
 */
export const HvReferenceTscPageLayout = struct('HV_REFERENCE_TSC_PAGE', 4096, {
  tscSequence: at(0, u32, 'TscSequence'),
  tscScale: at(8, u64, 'TscScale'),
  tscOffset: at(16, u64, 'TscOffset'),
});
export type HvReferenceTscPage = CodecValue<typeof HvReferenceTscPageLayout>;

/** TscSequence values a guest treats as "page not valid" (0; Linux and kvm-unit-tests also refuse 0xFFFFFFFF). */
export const HV_REFERENCE_TSC_SEQUENCE_INVALID = 0;
export const HV_REFERENCE_TSC_SEQUENCE_RESERVED = 0xffff_ffff;

/** The sequence number after `seq`: never 0 or 0xFFFFFFFF. */
export function nextTscSequence(seq: number): number {
  let n = (seq + 1) >>> 0;
  if (n === HV_REFERENCE_TSC_SEQUENCE_RESERVED) n = 1;
  if (n === HV_REFERENCE_TSC_SEQUENCE_INVALID) n = 1;
  return n;
}

/** TscOffset as the INT64 the TLFS declares. */
export const signedTscOffset = (raw: bigint): bigint => BigInt.asIntN(64, raw);
