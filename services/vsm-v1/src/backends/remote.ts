// service layer, agent backend: forwards every vsm.v1 call to the KVM host agent(s) that host the
// partition. Stateless: a partition is found by asking the agents (answers are cached; a cache miss
// or a NOT_FOUND from the cached agent asks them all again), so any number of service replicas can
// front the same agents without coordinating. Streams are proxied message by message with
// back-pressure (nothing is buffered without bound). An unreachable agent is UNAVAILABLE, never a
// hang: forwarded calls carry deadlines, except guest memory actions, which may legitimately wait
// for a monitor (a dead agent still fails them promptly: the channel reports UNAVAILABLE).
import { status as Code } from '@grpc/grpc-js';
import { connect, pb, type VsmClient, VsmError } from '@vsm/client';
import type { Backend, StreamSink } from '../backend';
import { ApiError, invalidArgument } from '../errors';
import { parsePartitionName } from '../names';
import { outgoingInterceptors } from '../observability/tracing';

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

export class RemoteBackend implements Backend {
  readonly kind = 'agent';
  private readonly agents: Agent[];
  private readonly home = new Map<string, number>();
  private next = 0;

  constructor(addresses: string[]) {
    // Fleet mode (fleet/backend.ts, a subclass) has no static list: its agents come from etcd.
    if (addresses.length === 0 && new.target === RemoteBackend) throw new Error('the agent backend needs at least one --agent address');
    this.agents = addresses.map((address) => ({
      address,
      client: connect(address, { deadlineMs: UNARY_DEADLINE_MS, retries: 0, interceptors: outgoingInterceptors() }),
    }));
  }

  /** The agent hosting a partition (by resource name). Fleet mode reads the partition's record instead. */
  protected async locate(name: string, refresh = false): Promise<Agent> {
    const id = parsePartitionName(name.split('/vps/')[0]!);
    const cached = this.home.get(id);
    if (cached !== undefined && !refresh) return this.agents[cached]!;
    // Ask every agent; one that is down is "not there" unless nobody has the partition, so a
    // fresh replica keeps serving partitions on live agents while another agent is down.
    const answers = await Promise.all(
      this.agents.map((a, i) =>
        a.client.partitions.getPartition({ name: `partitions/${id}` }).then(
          () => ({ i, found: true, down: false }),
          (e) => {
            if (e instanceof VsmError && e.code === Code.NOT_FOUND) return { i, found: false, down: false };
            if (e instanceof VsmError && (e.code === Code.UNAVAILABLE || e.code === Code.DEADLINE_EXCEEDED)) return { i, found: false, down: true };
            return Promise.reject(e);
          },
        ),
      ),
    ).catch(relay);
    const hit = answers.find((a) => a.found);
    if (!hit) {
      const down = answers.filter((a) => a.down).map((a) => this.agents[a.i]!.address);
      if (down.length)
        throw new ApiError(
          Code.UNAVAILABLE,
          'HV_STATUS_OPERATION_FAILED',
          `partition ${id} not found on the reachable agents; unreachable: ${down.join(', ')}`,
        );
      throw new ApiError(Code.NOT_FOUND, 'HV_STATUS_INVALID_PARTITION_ID', `partition ${id} not found on any agent`);
    }
    const i = hit.i;
    this.home.set(id, i);
    return this.agents[i]!;
  }

  /** Forwards a call that names a partition; a stale cache entry (NOT_FOUND) triggers one re-locate. */
  private async route<T>(name: string, call: (c: VsmClient) => Promise<T>): Promise<T> {
    let agent = await this.locate(name);
    try {
      return await call(agent.client);
    } catch (e) {
      if (e instanceof VsmError && e.code === Code.NOT_FOUND && e.reason === 'HV_STATUS_INVALID_PARTITION_ID') {
        agent = await this.locate(name, true);
        return call(agent.client).catch(relay);
      }
      return relay(e);
    }
  }

  async createPartition(r: pb.CreatePartitionRequest) {
    if (r.partitionId) {
      const exists = await this.locate(`partitions/${r.partitionId}`).then(
        () => true,
        (e) => (e instanceof ApiError && e.code === Code.NOT_FOUND ? false : Promise.reject(e)),
      );
      if (exists && !r.requestId) throw new ApiError(Code.ALREADY_EXISTS, 'HV_STATUS_OBJECT_IN_USE', `partition ${r.partitionId} already exists`);
      if (exists) return this.route(`partitions/${r.partitionId}`, (c) => c.partitions.createPartition(r));
    }
    const i = this.next++ % this.agents.length;
    const p = await this.agents[i]!.client.partitions.createPartition(r).catch(relay);
    this.home.set(parsePartitionName(p.name), i);
    return p;
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
    for (const p of res.partitions) this.home.set(parsePartitionName(p.name), agent);
    const nextPageToken = res.nextPageToken ? `${agent}:${res.nextPageToken}` : agent + 1 < this.agents.length ? `${agent + 1}:` : '';
    return { partitions: res.partitions, nextPageToken };
  }
  async deletePartition(r: pb.DeletePartitionRequest) {
    const res = await this.route(r.name, (c) => c.partitions.deletePartition(r));
    this.home.delete(parsePartitionName(r.name));
    return res;
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
      await upstream;
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
  async streamConsole(r: pb.StreamConsoleRequest, sink: StreamSink<pb.StreamConsoleResponse>, signal: AbortSignal): Promise<void> {
    const agent = await this.locate(r.name);
    try {
      for await (const m of agent.client.execution.streamConsole(r, signal)) if (!sink.write(m)) await sink.drained();
    } catch (e) {
      relay(e);
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
    const i = this.next++ % this.agents.length;
    const p = await this.agents[i]!.client.snapshots.restorePartition(r).catch(relay);
    this.home.set(parsePartitionName(p.name), i);
    return p;
  }

  /** ExportPartition: the hosting agent's stream, message by message with back-pressure. */
  async exportPartition(r: pb.ExportPartitionRequest, sink: StreamSink<pb.SnapshotChunk>, signal: AbortSignal): Promise<void> {
    const agent = await this.locate(r.name);
    try {
      for await (const m of agent.client.snapshots.exportPartition(r, signal)) if (!sink.write(m)) await sink.drained();
      // The stream ends when this returns: what the sink still queues (the trailer) must be out first.
      await sink.drained();
    } catch (e) {
      relay(e);
    }
  }
  /** ImportPartition: the chunks go on to one agent (placed as RestorePartition) as they arrive. */
  async importPartition(requests: AsyncIterable<pb.ImportPartitionRequest>, signal: AbortSignal): Promise<pb.Partition> {
    if (this.agents.length === 0)
      throw new ApiError(
        Code.UNIMPLEMENTED,
        'HV_STATUS_FEATURE_UNAVAILABLE',
        'ImportPartition is not available in fleet mode yet: import on an agent directly',
      );
    const it = requests[Symbol.asyncIterator]();
    const head = await it.next();
    if (head.done) throw invalidArgument('the stream held no snapshot (a header first)');
    const partitionId = head.value.partitionId;
    async function* chunks(): AsyncIterable<pb.SnapshotChunk> {
      for (let r = head; !r.done; r = await it.next()) {
        if (r.value.partitionId && r.value.partitionId !== partitionId)
          throw invalidArgument(`partition_id ${r.value.partitionId} differs from the first message's ${JSON.stringify(partitionId)}`);
        if (!r.value.chunk) throw invalidArgument('chunk is required in every message');
        yield r.value.chunk;
      }
    }
    const i = this.next++ % this.agents.length;
    const p = await this.agents[i]!.client.snapshots.importPartition(chunks(), { partitionId, signal }).catch(relay);
    this.home.set(parsePartitionName(p.name), i);
    return p;
  }

  async close(): Promise<void> {
    for (const a of this.agents) a.client.close();
  }
}
