// Pure helpers of the KVM suites (no /dev/kvm, no koffi): batch arithmetic, the capability gate
// of the protection figure, and the alternating RIP a VTL1 handler uses to skip a faulting
// instruction. Unit-tested in bench/test/kvm-stats.test.ts.

/**
 * Exit-level operations cost a few µs, so every sample times a batch of `batch` operations
 * (one awaited call around a synchronous loop) and is divided by `batch`: per-operation µs,
 * the timer and the sampler's await amortised. Raw and agent figures use the same method.
 */
export function perOpUs(batchSamplesUs: readonly number[], batch: number): number[] {
  if (!(Number.isInteger(batch) && batch >= 1)) throw new RangeError('batch must be a positive integer');
  return batchSamplesUs.map((us) => us / batch);
}

/** Operations per second over all the batches of one repeat (total operations / total time). */
export function opsPerSec(batchSamplesUs: readonly number[], batch: number): number {
  if (!(Number.isInteger(batch) && batch >= 1)) throw new RangeError('batch must be a positive integer');
  let totalUs = 0;
  for (const us of batchSamplesUs) totalUs += us;
  if (!(totalUs > 0)) throw new RangeError('no time measured');
  return (batchSamplesUs.length * batch * 1e6) / totalUs;
}

/**
 * Batch size for an operation of roughly `estimateUs` so that one sample lasts about `targetUs`
 * (clamped to [1, max]); keeps a sample well above the timer's resolution and well below a
 * scheduler tick on a shared 2-core machine.
 */
export function batchFor(estimateUs: number, targetUs = 1500, max = 1000): number {
  if (!(estimateUs > 0)) return 1;
  return Math.max(1, Math.min(max, Math.round(targetUs / estimateUs)));
}

/**
 * Calibrates the batch size: runs `op(n)` with n = 1, 2, 4, ... until one call lasts at least
 * `probeUs` (so first-use costs and per-call overheads are amortised as in the real batches), then
 * `refine` more calls of that n, and sizes the batch with batchFor from the fastest of those (a
 * noisy neighbour only ever makes a call slower). `nowUs` is the clock (injected for tests).
 */
export async function calibrateBatch(
  op: (n: number) => unknown,
  opts: { targetUs: number; probeUs?: number; max?: number; refine?: number; nowUs?: () => number },
): Promise<number> {
  const max = opts.max ?? 1000;
  const probeUs = opts.probeUs ?? Math.min(2000, opts.targetUs);
  const refine = opts.refine ?? 3;
  const now = opts.nowUs ?? (() => Number(process.hrtime.bigint()) / 1000);
  const timed = async (n: number) => {
    const t0 = now();
    await op(n);
    return now() - t0;
  };
  await op(1); // first use (VM, vCPU, view) outside the probe
  let n = 1;
  let best = await timed(n);
  while (best < probeUs && n < max) {
    n = Math.min(max, n * 2);
    best = await timed(n);
  }
  for (let i = 0; i < refine; i++) best = Math.min(best, await timed(n));
  return batchFor(best / n, opts.targetUs, max);
}

export interface CapabilityFeature {
  name: string;
  supported: boolean;
  reason: string;
}

export const ENFORCED_PROTECTIONS = 'kvm-enforced-protections';

/**
 * Whether protection violations run on KVM (the feature `kvm-enforced-protections` of the KVM
 * backend's capabilities): true, or the reason to skip the protection figure.
 */
export function protectionGate(features: readonly CapabilityFeature[]): true | string {
  const f = features.find((x) => x.name === ENFORCED_PROTECTIONS);
  if (!f) return `the KVM backend does not report the capability ${ENFORCED_PROTECTIONS}`;
  if (f.supported) return true;
  return `protections are not enforced by the KVM platform yet (capability ${ENFORCED_PROTECTIONS} = false${f.reason ? `: ${firstClause(f.reason)}` : ''})`;
}

function firstClause(s: string): string {
  const i = s.search(/[:;.]/);
  return (i > 0 ? s.slice(0, i) : s).trim();
}

/**
 * The VTL1 handler skips VTL0's faulting instruction by moving VTL0's RIP (HvCallSetVpRegisters).
 * The core retries the access when RIP is unchanged, so consecutive round trips alternate between
 * two RIPs: the one to set is the one VTL0 is not at.
 */
export function nextRip(current: bigint, a: bigint, b: bigint): bigint {
  if (a === b) throw new RangeError('the two RIPs must differ');
  return current === a ? b : a;
}
