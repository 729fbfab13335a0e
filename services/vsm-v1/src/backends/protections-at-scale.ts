// service layer: protections and snapshots at real sizes (issue #17). A ModifyVtlProtectionMask with
// many ranges is prepared on a copy-on-write draft a slice at a time, yielding to the event loop
// between slices, and put in force at once (core prepareVtlProtectionChange): no request holds the
// loop for long, and nobody sees half of a request. GetVtlProtections reads pages of ranges. A unary
// SavePartition whose reply cannot fit one gRPC message says so before building it.
import { status as Code } from '@grpc/grpc-js';
import * as core from '@vsm/core';
import { type Partition, isVtl } from '@vsm/core';
import type { pb as P } from '@vsm/client';
import { ApiError, invalidArgument } from '../errors';

/** Runs applied between two yields: ≈ 1-2 ms of work here (a run costs ≈ 0.7 µs over 10^6 ranges). */
export const PROTECTION_SLICE_RUNS = 2048;
/** Requests with more runs than this are applied in slices; smaller ones at once. */
export const PROTECTION_SLICED_ABOVE = PROTECTION_SLICE_RUNS;

const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** One host ModifyVtlProtectionMask at a time per partition (big ones take several turns of the loop). */
const chains = new WeakMap<Partition, Promise<unknown>>();

/** Applies a host ModifyVtlProtectionMask; large requests in slices, put in force at once. Returns the pages changed. */
export async function modifyProtectionsSliced(
  p: Partition,
  protectingVtl: number,
  mapFlags: number,
  runs: { start: bigint; count: bigint }[],
  slice = PROTECTION_SLICE_RUNS,
): Promise<number> {
  const run = async (): Promise<number> => {
    if (runs.length <= PROTECTION_SLICED_ABOVE) return p.modifyVtlProtectionMask('host', protectingVtl, mapFlags, runs);
    const job = p.prepareVtlProtectionChange('host', protectingVtl, mapFlags, runs);
    while (!job.step(slice)) await yieldToLoop();
    return job.commit();
  };
  const prev = chains.get(p) ?? Promise.resolve();
  const mine = prev.then(run, run);
  const tail = mine.catch(() => undefined);
  chains.set(p, tail);
  void tail.then(() => {
    if (chains.get(p) === tail) chains.delete(p);
  });
  return mine;
}

/** Default and most ranges one GetVtlProtections reply carries (≈ 1.5 MB encoded). */
export const PROTECTIONS_PAGE_MAX = 100_000;

/** A page token names the page the previous reply ended at; the next page holds the ranges that end after it. */
function parsePageToken(token: string): number {
  if (token === '') return -1;
  const m = /^end:(\d{1,16})$/.exec(Buffer.from(token, 'base64url').toString());
  if (!m) throw invalidArgument('page_token is not a token this server returned');
  return Number(m[1]);
}
const pageToken = (lastEnd: number) => Buffer.from(`end:${lastEnd}`).toString('base64url');

/** GetVtlProtections: one page of ranges (page_size, page_token), O(log n + page_size). */
export function protectionsPage(p: Partition, r: P.GetVtlProtectionsRequest): P.GetVtlProtectionsResponse {
  if (!isVtl(r.protectingVtl) || r.protectingVtl === 0)
    throw invalidArgument(`VTL ${r.protectingVtl} does not protect anything (protecting VTLs are 1..${core.HV_MAX_SUPPORTED_VTL})`);
  if (!Number.isInteger(r.pageSize) || r.pageSize < 0) throw invalidArgument('page_size must not be negative');
  const size = r.pageSize === 0 ? PROTECTIONS_PAGE_MAX : Math.min(r.pageSize, PROTECTIONS_PAGE_MAX);
  const after = parsePageToken(r.pageToken);
  const m = p.protections.get(r.protectingVtl);
  const ranges = m ? m.rangesFrom(after, size + 1) : [];
  const more = ranges.length > size;
  if (more) ranges.length = size;
  return {
    protectionEnabled: !!m,
    defaultMapFlags: m ? m.defaultMask : 0xf,
    ranges: ranges.map((x) => ({ pages: { startPage: BigInt(x.start), pageCount: BigInt(x.end - x.start) }, mapFlags: x.mask })),
    viewGeneration: BigInt(p.viewGeneration),
    nextPageToken: more ? pageToken(ranges[ranges.length - 1]!.end) : '',
  };
}

/** The largest message a unary reply may be (server.ts MAX_MESSAGE_BYTES; the client's receive limit is the same). */
export const UNARY_REPLY_LIMIT = 8 * 1024 * 1024;

/**
 * Refuses (RESOURCE_EXHAUSTED, reason SNAPSHOT_TOO_LARGE) a unary SavePartition whose snapshot would
 * not fit one reply, before anything is built: a lower bound of its encoded size from the touched
 * RAM pages (4 KiB each) and protection ranges (≥ 8 bytes each).
 */
export function assertSnapshotFits(p: Partition, name: string, limit = UNARY_REPLY_LIMIT): void {
  const pages = p.memory.pagesTouched;
  let ranges = 0;
  for (const m of p.protections.map((x) => x)) ranges += m?.rangeCount ?? 0;
  const atLeast = pages * (4096 + 8) + ranges * 8;
  if (atLeast <= limit) return;
  throw new ApiError(
    Code.RESOURCE_EXHAUSTED,
    'SNAPSHOT_TOO_LARGE',
    `the snapshot of ${name} is too large for one SavePartition reply: at least ${atLeast} bytes (${pages} touched RAM pages, ${ranges} protection ranges) against the ${limit}-byte message limit; stream it with ExportPartition (vsmctl snapshot export), which has no size limit`,
  );
}
