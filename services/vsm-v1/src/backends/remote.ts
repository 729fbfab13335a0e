// service layer, agent backend: forwards every vsm.v1 call to the KVM host agent(s) that host the
// partition. Stateless and without fan-out: with a static --agent list, a partition's agent is a
// pure function of its id and the list (rendezvous hashing, staticOwner), so any number of service
// replicas given the same list agree on it without coordinating and without asking any agent; the
// service draws the id itself when the request has none. The list must be the same on every replica
// and fixed for the partitions' lifetime: growing or shrinking a fleet is fleet mode (etcd,
// fleet/backend.ts, a subclass whose locate reads the partition's record). Streams are proxied message by message with
// back-pressure (nothing is buffered without bound). An unreachable agent is UNAVAILABLE, never a
// hang: forwarded calls carry deadlines, except guest memory actions, which may legitimately wait
// for a monitor (a dead agent still fails them promptly: the channel reports UNAVAILABLE).
import * as crypto from 'node:crypto';
import { status as Code } from '@grpc/grpc-js';
import { connect, pb, type VsmClient, VsmError } from '@vsm/client';
import type { Backend, StreamSink } from '../backend';
import { ApiError, invalidArgument } from '../errors';
import { parsePartitionName } from '../names';
import { outgoingInterceptors } from '../observability/tracing';
import { type ActionAuthorizer, runGuestActions } from '../guest-action-stream';
import { GarbagePacer } from '../snapshot-stream';
import { findTargetAgent, migratePartition } from './migration';

const UNARY_DEADLINE_MS = 30_000;
const WAITING_DEADLINE_MS = 24 * 3600_000;
/** StopPartition waits for every VP thread of the guest to end; LoadGuestImage copies up to 8 MiB. */
const EXECUTION_DEADLINE_MS = 120_000;

/** An agent a call is forwarded to. */
export interface RemoteAgent {
  address: string;
  client: VsmClient;
}
type Agent = RemoteAgent;

/**
 * The static owner of a partition id among agent addresses: rendezvous (highest random weight)
 * hashing, the agent whose SHA-256(address NUL id) is highest. Depends only on the id and the set of
 * addresses (not their order); removing an agent moves only that agent's ids.
 */
export function staticOwner(id: string, addresses: readonly string[]): number {
  let best = -1;
  let bestScore = -1n;
  for (const [i, a] of addresses.entries()) {
    const score = crypto.createHash('sha256').update(a).update('\0').update(id).digest().readBigUInt64BE(0);
    if (score > bestScore) {
      best = i;
      bestScore = score;
    }
  }
  return best;
}

/** An id for a partition created without one: from its request_id when it has one (a retry through any replica lands on the same agent), else random. */
export function drawPartitionId(requestId = ''): string {
  const h = requestId ? crypto.createHash('sha256').update('request_id\0').update(requestId).digest('hex') : crypto.randomBytes(8).toString('hex');
  return `p-${h.slice(0, 12)}`;
}

/** A client-side VsmError turned back into the same gRPC status + ErrorInfo for our caller. */
export function relay(e: unknown): never {
  if (e instanceof VsmError)
    throw new ApiError(
      e.code,
      e.reason ?? (e.code === Code.UNAVAILABLE ? 'HV_STATUS_OPERATION_FAILED' : 'UNKNOWN'),
      e.code === Code.UNAVAILABLE ? `KVM agent unavailable: ${e.message}` : e.message,
    );
  throw e;
}

/**
 * An ImportPartition request stream as snapshot chunks: the first message read (its header, which
 * placement may look at), the partition_id it asks for, and every chunk in order (the first again).
 */
export async function importStream(
  requests: AsyncIterable<pb.ImportPartitionRequest>,
): Promise<{ partitionId: string; first: pb.SnapshotChunk; chunks: AsyncIterable<pb.SnapshotChunk> }> {
  const it = requests[Symbol.asyncIterator]();
  const head = await it.next();
  if (head.done) throw invalidArgument('the stream held no snapshot (a header first)');
  if (!head.value.chunk) throw invalidArgument('chunk is required in every message');
  const partitionId = head.value.partitionId;
  async function* chunks(): AsyncIterable<pb.SnapshotChunk> {
    for (let r = head; !r.done; r = await it.next()) {
      if (r.value.partitionId && r.value.partitionId !== partitionId)
        throw invalidArgument(`partition_id ${r.value.partitionId} differs from the first message's ${JSON.stringify(partitionId)}`);
      if (!r.value.chunk) throw invalidArgument('chunk is required in every message');
      yield r.value.chunk;
    }
  }
  return { partitionId, first: head.value.chunk, chunks: chunks() };
}

export class RemoteBackend implements Backend {
  readonly kind = 'agent';
  private readonly agents: Agent[];

  constructor(addresses: string[]) {
    // Fleet mode (fleet/backend.ts, a subclass) has no static list: its agents come from etcd.
    if (addresses.length === 0 && new.target === RemoteBackend) throw new Error('the agent backend needs at least one --agent address');
    this.agents = addresses.map((address) => ({
      address,
      client: connect(address, { deadlineMs: UNARY_DEADLINE_MS, retries: 0, interceptors: outgoingInterceptors() }),
    }));
  }

  /**
   * Partitions a live migration through this replica moved off their static owner (MigratePartition),
   * to the agent that has them now. Other replicas of the same --agent list do not learn of the move
   * (routing stays a function of the id, without fan-out): a deployment with several replicas
   * migrates in fleet mode, where the partition record moves.
   */
  private readonly moved = new Map<string, Agent>();

  /** The agent hosting a partition (by resource name): its static owner, or where a migration through this replica moved it. Fleet mode reads the partition's record instead. */
  protected async locate(name: string, _refresh = false): Promise<Agent> {
    const id = parsePartitionName(name.split('/vps/')[0]!);
    return this.moved.get(id) ?? this.ownerOf(id);
  }

  /** `agent` said NOT_FOUND for a partition this replica had moved there: it is its owner's again. */
  private forgetMoved(name: string, agent: Agent): boolean {
    const id = parsePartitionName(name.split('/vps/')[0]!);
    if (this.moved.get(id) !== agent) return false;
    this.moved.delete(id);
    return true;
  }

  private ownerOf(id: string): Agent {
    return this.agents[
      staticOwner(
        id,
        this.agents.map((a) => a.address),
      )
    ]!;
  }

  /**
   * Forwards a call that names a partition. NOT_FOUND from the located agent re-locates once with a
   * fresh lookup (fleet mode: the record may have moved to another agent); a static owner never moves.
   */
  private async route<T>(name: string, call: (c: VsmClient) => Promise<T>): Promise<T> {
    const agent = await this.locate(name);
    try {
      return await call(agent.client);
    } catch (e) {
      if (e instanceof VsmError && e.code === Code.NOT_FOUND && e.reason === 'HV_STATUS_INVALID_PARTITION_ID') {
        let again = await this.locate(name, true);
        if (again.address === agent.address && this.forgetMoved(name, agent)) again = await this.locate(name);
        if (again.address !== agent.address) return call(again.client).catch(relay);
      }
      return relay(e);
    }
  }

  /** On the id's static owner (the agent checks the id and the request_id); an id is drawn when there is none. */
  async createPartition(r: pb.CreatePartitionRequest) {
    const partitionId = r.partitionId || drawPartitionId(r.requestId);
    return this.ownerOf(partitionId)
      .client.partitions.createPartition({ ...r, partitionId })
      .catch(relay);
  }
  getPartition(r: pb.GetPartitionRequest) {
    return this.route(r.name, (c) => c.partitions.getPartition(r));
  }
  async listPartitions(r: pb.ListPartitionsRequest): Promise<pb.ListPartitionsResponse> {
    // Page token: "<agent index>:<that agent's token>".
    let agent = 0;
    let token = '';
    if (r.pageToken) {
      const m = /^(\d+):(.*)$/.exec(r.pageToken);
      if (!m || Number(m[1]) >= this.agents.length) throw invalidArgument('page_token is not valid');
      agent = Number(m[1]);
      token = m[2]!;
    }
    const res = await this.agents[agent]!.client.partitions.listPartitions({ pageSize: r.pageSize, pageToken: token }).catch(relay);
    const nextPageToken = res.nextPageToken ? `${agent}:${res.nextPageToken}` : agent + 1 < this.agents.length ? `${agent + 1}:` : '';
    return { partitions: res.partitions, nextPageToken };
  }
  async deletePartition(r: pb.DeletePartitionRequest) {
    return this.route(r.name, (c) => c.partitions.deletePartition(r));
  }
  async getCapabilities(r: pb.GetCapabilitiesRequest) {
    return this.agents[0]!.client.partitions.getCapabilities(r).catch(relay);
  }
  /** The static --agent list, each asked whether it answers (fleet mode lists etcd's members). */
  async listAgents(_r: pb.ListAgentsRequest): Promise<pb.ListAgentsResponse> {
    const agents = await Promise.all(
      this.agents.map(async (a): Promise<pb.Agent> => {
        const base = { name: `agents/${a.address}`, address: a.address, labels: {}, version: '', registerTimeUnixMs: 0n, capacity: undefined, load: undefined };
        try {
          const caps = await a.client.partitions.getCapabilities({}, { deadlineMs: 5000 });
          return { ...base, state: pb.AgentState.AGENT_STATE_READY, stateReason: '', backend: caps.backend };
        } catch (e) {
          return { ...base, state: pb.AgentState.AGENT_STATE_UNREACHABLE, stateReason: e instanceof Error ? e.message : String(e), backend: '' };
        }
      }),
    );
    return { agents, nextPageToken: '' };
  }

  /** FleetService.CheckpointPartition / RecoverPartition: fleet mode only (fleet/backend.ts overrides both). */
  async checkpointPartition(_r: pb.CheckpointPartitionRequest): Promise<pb.Partition> {
    throw new ApiError(
      Code.FAILED_PRECONDITION,
      'HV_STATUS_FEATURE_UNAVAILABLE',
      'CheckpointPartition needs fleet mode (--etcd-endpoints with --checkpoint-dir): a static --agent list has nowhere to restart a partition',
    );
  }
  async recoverPartition(_r: pb.RecoverPartitionRequest): Promise<pb.Partition> {
    throw new ApiError(
      Code.FAILED_PRECONDITION,
      'HV_STATUS_FEATURE_UNAVAILABLE',
      'RecoverPartition needs fleet mode (--etcd-endpoints with --checkpoint-dir): with a static --agent list a partition lives on its agent only',
    );
  }

  getVirtualProcessor(r: pb.GetVirtualProcessorRequest) {
    return this.route(r.name, (c) => c.vps.getVirtualProcessor(r));
  }
  getVpRegisters(r: pb.GetVpRegistersRequest) {
    return this.route(r.name, (c) => c.vps.getVpRegisters(r));
  }
  setVpRegisters(r: pb.SetVpRegistersRequest) {
    return this.route(r.name, (c) => c.vps.setVpRegisters(r));
  }

  writeMsr(r: pb.WriteMsrRequest) {
    return this.route(r.name, (c) => c.guest.writeMsr(r));
  }
  readMsr(r: pb.ReadMsrRequest) {
    return this.route(r.name, (c) => c.guest.readMsr(r));
  }
  hypercall(r: pb.HypercallRequest) {
    return this.route(r.name, (c) => c.guest.hypercall(r));
  }
  callHypercallPage(r: pb.CallHypercallPageRequest) {
    return this.route(r.name, (c) => c.guest.callHypercallPage(r));
  }
  readMemory(r: pb.ReadMemoryRequest) {
    return this.route(r.name, (c) => c.guest.readMemory(r, { deadlineMs: WAITING_DEADLINE_MS }));
  }
  writeMemory(r: pb.WriteMemoryRequest) {
    return this.route(r.name, (c) => c.guest.writeMemory(r, { deadlineMs: WAITING_DEADLINE_MS }));
  }
  executeMemory(r: pb.ExecuteMemoryRequest) {
    return this.route(r.name, (c) => c.guest.executeMemory(r, { deadlineMs: WAITING_DEADLINE_MS }));
  }
  writeControlRegister(r: pb.WriteControlRegisterRequest) {
    return this.route(r.name, (c) => c.guest.writeControlRegister(r));
  }
  /**
   * RunGuestActions: each action authorized here and forwarded to its partition's agent as its unary
   * call (the agent can be a different one per action's partition); ordering, concurrency and flow
   * control are the shared stream's (guest-action-stream.ts).
   */
  runGuestActions(
    requests: AsyncIterable<pb.RunGuestActionsRequest>,
    sink: StreamSink<pb.RunGuestActionsResponse>,
    signal: AbortSignal,
    authorize?: ActionAuthorizer,
  ): Promise<void> {
    return runGuestActions(this, requests, sink, signal, authorize);
  }

  readGpa(r: pb.ReadGpaRequest) {
    return this.route(r.name, (c) => c.memory.readGpa(r));
  }
  writeGpa(r: pb.WriteGpaRequest) {
    return this.route(r.name, (c) => c.memory.writeGpa(r));
  }
  listOverlays(r: pb.ListOverlaysRequest) {
    return this.route(r.name, (c) => c.memory.listOverlays(r));
  }

  enablePartitionVtl(r: pb.EnablePartitionVtlRequest) {
    return this.route(r.name, (c) => c.vtl.enablePartitionVtl(r));
  }
  enableVpVtl(r: pb.EnableVpVtlRequest) {
    return this.route(r.name, (c) => c.vtl.enableVpVtl(r));
  }

  async watchVtlTransitions(r: pb.WatchVtlTransitionsRequest, sink: StreamSink<pb.WatchVtlTransitionsResponse>, signal: AbortSignal): Promise<void> {
    const agent = await this.locate(r.name);
    try {
      for await (const ev of agent.client.vtl.watchTransitions(r, signal)) if (!sink.write(ev)) await sink.drained();
    } catch (e) {
      relay(e);
    }
  }

  modifyVtlProtectionMask(r: pb.ModifyVtlProtectionMaskRequest) {
    return this.route(r.name, (c) => c.intercepts.modifyVtlProtectionMask(r));
  }
  getVtlProtections(r: pb.GetVtlProtectionsRequest) {
    return this.route(r.name, (c) => c.intercepts.getVtlProtections(r));
  }
  setInterceptRoute(r: pb.SetInterceptRouteRequest) {
    return this.route(r.name, (c) => c.intercepts.setInterceptRoute(r));
  }
  listPendingIntercepts(r: pb.ListPendingInterceptsRequest) {
    return this.route(r.name, (c) => c.intercepts.listPendingIntercepts(r));
  }

  async monitor(requests: AsyncIterable<pb.MonitorRequest>, sink: StreamSink<pb.MonitorResponse>, signal: AbortSignal): Promise<void> {
    const it = requests[Symbol.asyncIterator]();
    const first = await it.next();
    if (first.done || first.value.kind?.$case !== 'subscribe') throw invalidArgument('the first Monitor message must be subscribe');
    const agent = await this.locate(first.value.kind.value.name);
    const session = agent.client.intercepts.monitor(signal);
    session.send(first.value);
    // Client -> agent in the background; agent -> client here, with back-pressure.
    const upstream = (async () => {
      for (;;) {
        const n = await it.next();
        if (n.done) break;
        session.send(n.value);
      }
      session.close();
    })().catch(() => session.cancel());
    try {
      for await (const ev of session.events) if (!sink.write(ev)) await sink.drained();
    } catch (e) {
      relay(e);
    } finally {
      session.cancel();
      // Not awaited: after the agent ended the stream (its partition deleted, or moved by a live
      // migration) the caller's side may stay open; the call ends now (the caller reconnects), and
      // the pump stops when the server closes the request stream.
      void upstream;
    }
  }

  postMessage(r: pb.PostMessageRequest) {
    return this.route(r.name, (c) => c.synic.postMessage(r));
  }
  signalEvent(r: pb.SignalEventRequest) {
    return this.route(r.name, (c) => c.synic.signalEvent(r));
  }
  getSynicState(r: pb.GetSynicStateRequest) {
    return this.route(r.name, (c) => c.synic.getSynicState(r));
  }

  // ExecutionService: forwarded as is, the console stream message by message with back-pressure.
  loadGuestImage(r: pb.LoadGuestImageRequest) {
    return this.route(r.name, (c) => c.execution.loadGuestImage(r, { deadlineMs: EXECUTION_DEADLINE_MS }));
  }
  startPartition(r: pb.StartPartitionRequest) {
    return this.route(r.name, (c) => c.execution.startPartition(r));
  }
  pausePartition(r: pb.PausePartitionRequest) {
    return this.route(r.name, (c) => c.execution.pausePartition(r));
  }
  resumePartition(r: pb.ResumePartitionRequest) {
    return this.route(r.name, (c) => c.execution.resumePartition(r));
  }
  stopPartition(r: pb.StopPartitionRequest) {
    return this.route(r.name, (c) => c.execution.stopPartition(r, { deadlineMs: EXECUTION_DEADLINE_MS }));
  }
  /**
   * StreamConsole follows a live migration: when the agent's stream ends (the source deletes the
   * partition once it runs on the target) and the partition is now on another agent, the stream goes
   * on from there at the next offset (a migrated guest's console offsets continue), so the caller
   * sees one uninterrupted stream. Otherwise the end (or error) is the caller's.
   */
  async streamConsole(r: pb.StreamConsoleRequest, sink: StreamSink<pb.StreamConsoleResponse>, signal: AbortSignal): Promise<void> {
    let agent = await this.locate(r.name);
    let fromOffset = r.fromOffset;
    for (;;) {
      let end: pb.StreamConsoleResponse | undefined;
      let failed: unknown;
      try {
        for await (const m of agent.client.execution.streamConsole({ ...r, fromOffset }, signal)) {
          if (m.kind?.$case === 'end') {
            end = m;
            break;
          }
          if (m.kind?.$case === 'chunk') fromOffset = m.kind.value.offset + BigInt(m.kind.value.data.length);
          if (!sink.write(m)) await sink.drained();
        }
      } catch (e) {
        failed = e;
      }
      if (signal.aborted) return;
      const gone = end?.kind?.$case === 'end' || (failed instanceof VsmError && failed.code === Code.NOT_FOUND);
      const now = gone ? await this.locate(r.name, true).catch(() => agent) : agent;
      if (now.address !== agent.address) {
        agent = now;
        continue;
      }
      if (failed) relay(failed);
      if (end) sink.write(end);
      return;
    }
  }
  writeConsole(r: pb.WriteConsoleRequest) {
    return this.route(r.name, (c) => c.execution.writeConsole(r));
  }
  createConnection(r: pb.CreateConnectionRequest) {
    return this.route(r.name, (c) => c.execution.createConnection(r));
  }
  deleteConnection(r: pb.DeleteConnectionRequest) {
    return this.route(r.name, (c) => c.execution.deleteConnection(r));
  }
  listConnections(r: pb.ListConnectionsRequest) {
    return this.route(r.name, (c) => c.execution.listConnections(r));
  }

  savePartition(r: pb.SavePartitionRequest) {
    return this.route(r.name, (c) => c.snapshots.savePartition(r));
  }
  async restorePartition(r: pb.RestorePartitionRequest) {
    const partitionId = r.partitionId || drawPartitionId();
    return this.ownerOf(partitionId)
      .client.snapshots.restorePartition({ ...r, partitionId })
      .catch(relay);
  }

  /** ExportPartition: the hosting agent's stream, message by message with back-pressure. */
  async exportPartition(r: pb.ExportPartitionRequest, sink: StreamSink<pb.SnapshotChunk>, signal: AbortSignal): Promise<void> {
    const agent = await this.locate(r.name);
    // The relayed chunks' buffers are collected as they pile up (snapshot-stream.ts GarbagePacer).
    const garbage = new GarbagePacer(true);
    try {
      for await (const m of agent.client.snapshots.exportPartition(r, signal)) {
        if (!sink.write(m)) await sink.drained();
        await garbage.pace();
      }
      // The stream ends when this returns: what the sink still queues (the trailer) must be out first.
      await sink.drained();
    } catch (e) {
      relay(e);
    }
  }
  /**
   * MigratePartition (static --agent list): the partition's agent to `target_agent`, piped through
   * this service (migration.ts); from the switch-over on this replica routes the partition to the
   * target (other replicas do not know: see `moved`). Fleet mode overrides it (fleet/backend.ts: the
   * record's compare-and-swap).
   */
  async migratePartition(r: pb.MigratePartitionRequest, sink: StreamSink<pb.MigrationProgress>, signal: AbortSignal): Promise<void> {
    if (this.agents.length === 0)
      throw new ApiError(
        Code.UNIMPLEMENTED,
        'HV_STATUS_FEATURE_UNAVAILABLE',
        'MigratePartition needs the agents: a static --agent list, or fleet mode (--etcd-endpoints)',
      );
    const id = parsePartitionName(r.name);
    await this.getPartition({ name: r.name }); // NOT_FOUND for an unknown partition
    const source = await this.locate(r.name);
    const target = findTargetAgent(this.agents, r.targetAgent);
    return migratePartition(
      r,
      {
        source,
        target,
        relay,
        switched: () => {
          this.moved.set(id, target);
        },
      },
      sink,
      signal,
    );
  }

  /** ImportPartition: the chunks go on to the id's static owner as they arrive (an id is drawn when the stream names none). */
  async importPartition(requests: AsyncIterable<pb.ImportPartitionRequest>, signal: AbortSignal): Promise<pb.Partition> {
    const { partitionId, chunks } = await importStream(requests);
    const id = partitionId || drawPartitionId();
    return this.ownerOf(id).client.snapshots.importPartition(chunks, { partitionId: id, signal }).catch(relay);
  }

  async close(): Promise<void> {
    for (const a of this.agents) a.client.close();
  }
}
