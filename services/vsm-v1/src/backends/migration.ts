// service layer, agent backend: live migration of a partition between two KVM agents (MigratePartition,
// issue #17). The data goes source agent -> this service -> target agent: the source's
// ExportPartition streams are piped, chunk by chunk, into ONE ImportPartition stream on the target
// (a full snapshot, then incremental ones back to back), so the service holds a few chunks whatever
// the partition size (the import pulls, the export produces only what was pulled).
//
//   round 0        ExportPartition EXPORT_MODE_LIVE, full          (the guest runs)
//   round 1..n     ExportPartition EXPORT_MODE_LIVE, incremental   (pages the KVM dirty log saw written)
//   switch-over    ExportPartition EXPORT_MODE_PAUSE_GUEST, incremental: the source pauses the guest,
//                  reads its VPs back from KVM; the last pages and the whole VSM state follow
//   commit         the import's half-close: the target lists the partition, its guest LOADED
//   resume         StartPartition on the target (when the guest was running), then the source's
//                  partition is deleted.
//
// Downtime is the pause (the switch-over export's request) to the target's StartPartition answer.
// Until the import stream was sent whole, every failure (the target unreachable, a refused stream,
// the caller cancelling) cancels the import (nothing is created there) and resumes the source guest
// if this migration paused it: the source is untouched. Once it was sent whole the target may commit
// at any moment, so a cancel waits for the import's answer instead of cancelling it (cancelling then
// left a copy on the target when the commit won the race: seen in a CI rehearsal), and the copy is
// deleted; so is any copy after a failure from then on, and after one following the commit
// (StartPartition on the target); the source is resumed.
import { status as Code } from '@grpc/grpc-js';
import { pb, type VsmClient, VsmError } from '@vsm/client';
import type { StreamSink } from '../backend';
import { ApiError, invalidArgument } from '../errors';
import { parsePartitionName } from '../names';
import { GarbagePacer } from '../snapshot-stream';

export const MIGRATION_DEFAULT_ROUNDS = 8;
export const MIGRATION_MAX_ROUNDS = 64;
export const MIGRATION_DEFAULT_DIRTY_PAGES = 64;

const { EXPORT_MODE_LIVE, EXPORT_MODE_PAUSE_GUEST } = pb.ExportMode;
const { MIGRATION_PHASE_PRECOPY, MIGRATION_PHASE_SWITCHOVER, MIGRATION_PHASE_DONE } = pb.MigrationPhase;

/** An agent of the migration (remote.ts RemoteAgent). */
export interface RemoteAgent {
  address: string;
  client: VsmClient;
}

/** The agent a `target_agent` names among `agents`: an address or `agents/{address}`. */
export function findTargetAgent<A extends RemoteAgent>(agents: readonly A[], target: string): A {
  if (!target) throw invalidArgument('target_agent is required (an agent address, or agents/{address} as ListAgents names it)');
  const address = target.startsWith('agents/') ? target.slice('agents/'.length) : target;
  const a = agents.find((x) => x.address === address);
  if (!a) throw invalidArgument(`target_agent ${target} is not one of this service's agents (${agents.map((x) => x.address).join(', ') || 'none'})`);
  return a;
}

/** Bytes a chunk takes on the wire, near enough (RAM and ranges exact, framing estimated). */
function chunkBytes(c: pb.SnapshotChunk): number {
  const k = c.chunk;
  if (!k) return 0;
  if (k.$case === 'memory') return k.value.runs.reduce((n, r) => n + r.data.length + 16, 0);
  if (k.$case === 'protections') return 8 + k.value.ranges.length * 20;
  if (k.$case === 'header') return pb.SnapshotHeader.encode(k.value).finish().length;
  return 48;
}

export interface MigrationEnds {
  source: RemoteAgent;
  target: RemoteAgent;
  /**
   * Called once the partition runs on the target, before the source copy is deleted: routing switches
   * (fleet mode: the record's compare-and-swap). A rejection undoes the move (the target's copy is
   * deleted, the source resumed).
   */
  switched(imported: pb.Partition): Promise<void> | void;
  /** An agent's error as our caller's (remote.ts relay). */
  relay(e: unknown): never;
}

/** MigratePartition between `ends.source` and `ends.target` (see the file comment). */
export async function migratePartition(
  r: pb.MigratePartitionRequest,
  ends: MigrationEnds,
  sink: StreamSink<pb.MigrationProgress>,
  signal: AbortSignal,
): Promise<void> {
  const { source, target, relay } = ends;
  const name = r.name;
  const id = parsePartitionName(name);
  if (r.maxRounds > MIGRATION_MAX_ROUNDS) throw invalidArgument(`max_rounds ${r.maxRounds} exceeds ${MIGRATION_MAX_ROUNDS}`);
  const maxRounds = r.maxRounds || MIGRATION_DEFAULT_ROUNDS;
  const maxDirty = r.maxDirtyPages || MIGRATION_DEFAULT_DIRTY_PAGES;
  const before = await source.client.partitions.getPartition({ name }).catch(relay);
  if (source.address === target.address)
    throw new ApiError(Code.FAILED_PRECONDITION, 'HV_STATUS_INVALID_PARAMETER', `${name} is already on agent ${target.address}: nothing to migrate`);
  // The target must answer and run KVM before anything moves.
  const caps = await target.client.partitions.getCapabilities({}, { deadlineMs: 5000 }).catch((e: unknown) => {
    if (e instanceof VsmError && (e.code === Code.UNAVAILABLE || e.code === Code.DEADLINE_EXCEEDED))
      throw new ApiError(
        Code.UNAVAILABLE,
        'HV_STATUS_OPERATION_FAILED',
        `target agent ${target.address} is unreachable: ${e.message}; ${name} stays on ${source.address}`,
      );
    return relay(e);
  });
  if (caps.backend !== 'kvm')
    throw new ApiError(
      Code.FAILED_PRECONDITION,
      'HV_STATUS_FEATURE_UNAVAILABLE',
      `target agent ${target.address} runs the ${caps.backend} backend: live migration moves running guests between KVM agents`,
    );

  const t0 = performance.now();
  const ms = () => BigInt(Math.round(performance.now() - t0));
  const abort = new AbortController();
  /**
   * Set once the import stream was sent whole: from then on the target may commit the import at any
   * moment, so a cancel no longer cancels the import call (its outcome would be unknown: a copy could
   * be left on the target); the import is awaited and, when it was created, deleted again.
   */
  let sentAll = false;
  const onAbort = () => {
    if (!sentAll) abort.abort();
  };
  signal.addEventListener('abort', onAbort, { once: true });
  const progress = async (m: Partial<pb.MigrationProgress>) => {
    if (!sink.write(pb.MigrationProgress.fromPartial({ ...m, elapsedMs: ms() }))) await sink.drained();
  };

  let pausedAt: number | undefined;
  let pausedGuest = false;
  let rounds = 0;
  let pagesTotal = 0n;
  let bytesTotal = 0n;
  let base = '';
  // The chunks' buffers pass through this process: collected as they pile up (snapshot-stream.ts).
  const garbage = new GarbagePacer(true);

  /** One export round piped into the import: its chunks, counted. */
  async function* round(mode: pb.ExportMode, phase: pb.MigrationPhase): AsyncGenerator<pb.SnapshotChunk, bigint, undefined> {
    let pages = 0n;
    let bytes = 0;
    for await (const c of source.client.snapshots.exportPartition({ name, baseSnapshotId: base, chunkBytes: r.chunkBytes, mode }, abort.signal)) {
      if (c.chunk?.$case === 'header') {
        base = c.chunk.value.snapshotId;
        pages = c.chunk.value.memoryPages;
        if (mode === EXPORT_MODE_PAUSE_GUEST) pausedGuest = c.chunk.value.guest?.runState === pb.RunState.RUN_STATE_RUNNING;
      }
      bytes += chunkBytes(c);
      yield c;
      await garbage.pace();
    }
    if (signal.aborted) throw new ApiError(Code.CANCELLED, 'HV_STATUS_OPERATION_FAILED', 'the migration was cancelled');
    pagesTotal += pages;
    bytesTotal += BigInt(bytes);
    await progress({ round: rounds, phase, pagesSent: pages, bytesSent: BigInt(bytes), dirtyPages: rounds === 0 ? 0n : pages });
    rounds++;
    return pages;
  }

  async function* all(): AsyncGenerator<pb.SnapshotChunk, void, undefined> {
    // Pre-copy: the full copy, then deltas until one is small enough or the rounds are used up.
    yield* round(EXPORT_MODE_LIVE, MIGRATION_PHASE_PRECOPY);
    for (let i = 0; i < maxRounds; i++) {
      const pages: bigint = yield* round(EXPORT_MODE_LIVE, MIGRATION_PHASE_PRECOPY);
      if (pages <= BigInt(maxDirty)) break;
    }
    pausedAt = performance.now();
    yield* round(EXPORT_MODE_PAUSE_GUEST, MIGRATION_PHASE_SWITCHOVER);
    sentAll = true;
  }

  /** Gives the source back as it was: its guest runs again if this migration paused it. */
  const restoreSource = async () => {
    if (before.runState !== pb.RunState.RUN_STATE_RUNNING) return;
    const now = await source.client.partitions.getPartition({ name }).catch(() => undefined);
    if (now?.runState === pb.RunState.RUN_STATE_PAUSED) await source.client.execution.resumePartition({ name }).catch(() => undefined);
  };

  let imported: pb.Partition;
  try {
    imported = await target.client.snapshots.importPartition(all(), { partitionId: id, signal: abort.signal });
    if (signal.aborted) {
      // Cancelled after the whole stream was sent: the target created the partition; undo it.
      await target.client.partitions.deletePartition({ name }).catch(() => undefined);
      throw new ApiError(Code.CANCELLED, 'HV_STATUS_OPERATION_FAILED', 'the migration was cancelled');
    }
  } catch (e) {
    abort.abort();
    // Failed after the whole stream was sent (the connection lost before the answer): the target may
    // have created it. The header went through, so the name was free there: any copy is this one's.
    if (sentAll) await target.client.partitions.deletePartition({ name }).catch(() => undefined);
    await restoreSource();
    if (signal.aborted)
      throw new ApiError(Code.CANCELLED, 'HV_STATUS_OPERATION_FAILED', `the migration of ${name} was cancelled; it stays on ${source.address}`);
    if (e instanceof VsmError && (e.code === Code.UNAVAILABLE || e.code === Code.DEADLINE_EXCEEDED))
      throw new ApiError(
        Code.UNAVAILABLE,
        'HV_STATUS_OPERATION_FAILED',
        `the migration of ${name} to ${target.address} failed: ${e.message}; it stays on ${source.address}`,
      );
    return relay(e);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }

  // Committed on the target: continue the guest there, then switch the routing.
  let resumedAt = 0;
  try {
    if (pausedGuest) imported = await target.client.execution.startPartition({ name });
    resumedAt = performance.now();
    await ends.switched(imported);
  } catch (e) {
    await target.client.partitions.deletePartition({ name }).catch(() => undefined);
    await restoreSource();
    if (e instanceof ApiError) throw e;
    return relay(e);
  }
  // The source copy goes (its guest is stopped first); its Monitor and StreamConsole streams end.
  await source.client.partitions.deletePartition({ name }).catch(() => undefined);
  const total = ms();
  await progress({
    round: rounds,
    phase: MIGRATION_PHASE_DONE,
    result: {
      partition: imported,
      targetAgent: target.address,
      sourceAgent: source.address,
      downtimeMs: BigInt(Math.round(resumedAt - (pausedAt ?? resumedAt))),
      totalMs: total,
      rounds,
      pagesSent: pagesTotal,
      bytesSent: bytesTotal,
    },
  });
  await sink.drained();
}
