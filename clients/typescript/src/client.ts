// @vsm/client ergonomic layer: `connect(address, options)` returns promise-based clients for every
// vsm.v1 service with default deadlines, async iterators for server streams, and VsmError carrying
// the HV_STATUS name from google.rpc.ErrorInfo. Retries happen only for the RPCs the proto declares NO_SIDE_EFFECTS.
import * as grpc from '@grpc/grpc-js';
import { pb, vsmRpc, vsmServices } from '@vsm/api';
import { type SnapshotStreams, snapshotStreams } from './snapshot-stream';

export interface ConnectOptions {
  /** TLS: `true` for system roots, or PEM material; unset = plaintext. */
  tls?: boolean | { ca?: Buffer; cert?: Buffer; key?: Buffer };
  /** Bearer token sent as `authorization: Bearer ...`. */
  token?: string;
  /** Default deadline for unary calls, in ms (default 10000). */
  deadlineMs?: number;
  /** Retries on UNAVAILABLE for the RPCs declared `idempotency_level = NO_SIDE_EFFECTS` (default 2). */
  retries?: number;
  /** grpc-js client interceptors for every call (e.g. the trace context of the service's agent clients). */
  interceptors?: grpc.Interceptor[];
}

/** A failed call: gRPC code plus the TLFS HV_STATUS name from ErrorInfo.reason (when present). */
export class VsmError extends Error {
  constructor(
    readonly code: grpc.status,
    readonly reason: string | undefined,
    readonly domain: string | undefined,
    readonly metadata: Record<string, string>,
    message: string,
  ) {
    super(message);
    this.name = 'VsmError';
  }
  get codeName(): string {
    return grpc.status[this.code] ?? String(this.code);
  }
  static from(e: grpc.ServiceError): VsmError {
    let reason: string | undefined;
    let domain: string | undefined;
    let md: Record<string, string> = {};
    const raw = e.metadata?.get('grpc-status-details-bin')?.[0];
    if (raw && Buffer.isBuffer(raw)) {
      try {
        const st = pb.RpcStatus.decode(raw);
        for (const d of st.details) {
          if (d.typeUrl.endsWith('/google.rpc.ErrorInfo')) {
            const info = pb.ErrorInfo.decode(d.value);
            reason = info.reason;
            domain = info.domain;
            md = info.metadata;
          }
        }
      } catch {
        // malformed details: keep code and message only
      }
    }
    return new VsmError(e.code, reason, domain, md, e.details || e.message);
  }
}

type Callback<Res> = (err: grpc.ServiceError | null, res: Res) => void;
type UnaryFn<Req, Res> = (req: Req, md: grpc.Metadata, opts: Partial<grpc.CallOptions>, cb: Callback<Res>) => grpc.ClientUnaryCall;
// ts-proto's generated client methods are overloaded; type inference sees the last overload,
// (request, metadata, options, callback).
type Promisified<C> = {
  [K in keyof C as C[K] extends (req: infer _R, md: grpc.Metadata, o: Partial<grpc.CallOptions>, cb: Callback<infer _S>) => grpc.ClientUnaryCall
    ? K
    : never]: C[K] extends (req: infer R, md: grpc.Metadata, o: Partial<grpc.CallOptions>, cb: Callback<infer S>) => grpc.ClientUnaryCall
    ? (req: Partial<R>, opts?: { deadlineMs?: number }) => Promise<S>
    : never;
};

/** Every vsm.v1 RPC `Foo` takes a `FooRequest` message (buf's RPC_REQUEST_STANDARD_NAME). */
function requestTypeOf(method: string): { fromPartial(o: unknown): unknown } {
  const t = (pb as unknown as Record<string, { fromPartial(o: unknown): unknown }>)[method[0]!.toUpperCase() + method.slice(1) + 'Request'];
  if (!t) throw new Error(`no request type for ${method}`);
  return t;
}

function promisify<C extends grpc.Client>(
  client: C,
  svc: Record<string, { path: string; requestStream: boolean; responseStream: boolean }>,
  o: ConnectOptions,
  md: () => grpc.Metadata,
): Promisified<C> {
  const out: Record<string, unknown> = {};
  for (const [method, def] of Object.entries(svc)) {
    if (def.requestStream || def.responseStream) continue;
    const requestType = requestTypeOf(method);
    // Retried: the RPCs the proto declares NO_SIDE_EFFECTS (a guest read can intercept: not retried).
    const attempts = vsmRpc(def.path)?.noSideEffects ? 1 + (o.retries ?? 2) : 1;
    const fn = (client as unknown as Record<string, UnaryFn<unknown, unknown>>)[method]!.bind(client);
    out[method] = async (req: unknown, callOpts?: { deadlineMs?: number }) => {
      const full = requestType.fromPartial(req ?? {});
      for (let i = 0; ; i++) {
        try {
          return await new Promise((resolve, reject) => {
            fn(full, md(), { deadline: Date.now() + (callOpts?.deadlineMs ?? o.deadlineMs ?? 10_000) }, (err, res) =>
              err ? reject(VsmError.from(err)) : resolve(res),
            );
          });
        } catch (e) {
          if (!(e instanceof VsmError) || e.code !== grpc.status.UNAVAILABLE || i + 1 >= attempts) throw e;
          await new Promise((r) => setTimeout(r, 100 * 2 ** i));
        }
      }
    };
  }
  return out as Promisified<C>;
}

export interface VsmClient {
  partitions: Promisified<pb.PartitionServiceClient>;
  vps: Promisified<pb.VirtualProcessorServiceClient>;
  guest: Promisified<pb.GuestServiceClient> & {
    /**
     * Opens a RunGuestActions stream: `send` actions (each with a `sequence` of your choosing),
     * iterate `results` (one per action, in completion order); `close()` half-closes (the server
     * answers what it accepted, then ends the stream). Batched form: `send({ action: { $case:
     * 'batch', value: { actions } } })` sends many actions in one message; their answers come in
     * `results` messages (`result.$case === 'results'`, the per-action answers in `result.value.results`).
     */
    runGuestActions(signal?: AbortSignal): GuestActionSession;
  };
  memory: Promisified<pb.MemoryServiceClient>;
  intercepts: Promisified<pb.InterceptServiceClient> & {
    /** Opens a Monitor stream: `send` requests, iterate `events`; `close()` half-closes. */
    monitor(signal?: AbortSignal): MonitorSession;
  };
  synic: Promisified<pb.SynicServiceClient>;
  execution: Omit<Promisified<pb.ExecutionServiceClient>, 'streamConsole'> & {
    /** Async iterator over StreamConsole (chunks, then the run's end); break out of the loop (or abort) to cancel. */
    streamConsole(req: Partial<pb.StreamConsoleRequest>, signal?: AbortSignal): AsyncIterable<pb.StreamConsoleResponse>;
  };
  /** SnapshotService; ExportPartition/ImportPartition stream with back-pressure (snapshot-stream.ts). */
  snapshots: Omit<Promisified<pb.SnapshotServiceClient>, keyof SnapshotStreams | 'migratePartition'> &
    SnapshotStreams & {
      /** MigratePartition: one progress message per round, the last with `result`; abort to cancel. */
      migratePartition(req: Partial<pb.MigratePartitionRequest>, signal?: AbortSignal): AsyncIterable<pb.MigrationProgress>;
    };
  /** FleetService: the agents behind a vsm-service in --backend agent mode. */
  fleet: Promisified<pb.FleetServiceClient>;
  vtl: Promisified<pb.VtlServiceClient> & {
    /** Async iterator over WatchVtlTransitions; break out of the loop (or abort) to cancel. */
    watchTransitions(req: Partial<pb.WatchVtlTransitionsRequest>, signal?: AbortSignal): AsyncIterable<pb.WatchVtlTransitionsResponse>;
  };
  close(): void;
}

export interface MonitorSession {
  send(req: Partial<pb.MonitorRequest>): boolean;
  events: AsyncIterable<pb.MonitorResponse>;
  /** Half-close: the server ends the stream after processing what was sent. */
  close(): void;
  /** Abort the stream (simulates a monitor that went away). */
  cancel(): void;
}

export interface GuestActionSession {
  /** Sends one action (or one `batch` of them); false when the transport wants the caller to wait (back-pressure). */
  send(req: Partial<pb.RunGuestActionsRequest>): boolean;
  /** The messages as they come: one answer each, or (`result.$case === 'results'`) the answers of batched actions. */
  results: AsyncIterable<pb.RunGuestActionsResponse>;
  /** Half-close: the server answers every accepted action, then ends the stream. */
  close(): void;
  /** Abort the stream (answers still owed are dropped). */
  cancel(): void;
}

const clientClasses = new Map<string, unknown>();
/**
 * The generated grpc-js client class of a vsm.v1 service, built over @vsm/api's definition instead:
 * the same methods and bytes, with request serializers that reuse their writer (@vsm/api wire.ts).
 */
function clientClass<C>(generated: C, service: string): C {
  let c = clientClasses.get(service);
  if (!c) {
    const def = vsmServices().find((s) => s.name === service)?.definition;
    c = def ? grpc.makeGenericClientConstructor(def, service) : generated;
    clientClasses.set(service, c);
  }
  return c as C;
}

export function connect(address: string, o: ConnectOptions = {}): VsmClient {
  let creds: grpc.ChannelCredentials = grpc.credentials.createInsecure();
  if (o.tls) creds = o.tls === true ? grpc.credentials.createSsl() : grpc.credentials.createSsl(o.tls.ca ?? null, o.tls.key ?? null, o.tls.cert ?? null);
  const md = () => {
    const m = new grpc.Metadata();
    if (o.token) m.set('authorization', `Bearer ${o.token}`);
    return m;
  };
  const opts = { 'grpc.max_receive_message_length': 8 * 1024 * 1024, ...(o.interceptors?.length ? { interceptors: o.interceptors } : {}) };
  const partitions = new (clientClass(pb.PartitionServiceClient, 'vsm.v1.PartitionService'))(address, creds, opts);
  const vps = new (clientClass(pb.VirtualProcessorServiceClient, 'vsm.v1.VirtualProcessorService'))(address, creds, opts);
  const guest = new (clientClass(pb.GuestServiceClient, 'vsm.v1.GuestService'))(address, creds, opts);
  const memory = new (clientClass(pb.MemoryServiceClient, 'vsm.v1.MemoryService'))(address, creds, opts);
  const vtl = new (clientClass(pb.VtlServiceClient, 'vsm.v1.VtlService'))(address, creds, opts);
  const intercepts = new (clientClass(pb.InterceptServiceClient, 'vsm.v1.InterceptService'))(address, creds, opts);
  const synic = new (clientClass(pb.SynicServiceClient, 'vsm.v1.SynicService'))(address, creds, opts);
  const snapshots = new (clientClass(pb.SnapshotServiceClient, 'vsm.v1.SnapshotService'))(address, creds, opts);
  const execution = new (clientClass(pb.ExecutionServiceClient, 'vsm.v1.ExecutionService'))(address, creds, opts);
  const fleet = new (clientClass(pb.FleetServiceClient, 'vsm.v1.FleetService'))(address, creds, opts);
  const S = (s: unknown) => s as Parameters<typeof promisify>[1];
  return {
    partitions: promisify(partitions, S(pb.PartitionServiceService), o, md),
    vps: promisify(vps, S(pb.VirtualProcessorServiceService), o, md),
    guest: Object.assign(promisify(guest, S(pb.GuestServiceService), o, md), {
      runGuestActions: (signal?: AbortSignal): GuestActionSession => {
        const call = guest.runGuestActions(md());
        return {
          send: (req: Partial<pb.RunGuestActionsRequest>) => call.write(pb.RunGuestActionsRequest.fromPartial(req)),
          results: streamIterator<pb.RunGuestActionsResponse>(call, signal),
          close: () => call.end(),
          cancel: () => call.cancel(),
        };
      },
    }),
    memory: promisify(memory, S(pb.MemoryServiceService), o, md),
    intercepts: Object.assign(promisify(intercepts, S(pb.InterceptServiceService), o, md), {
      monitor: (signal?: AbortSignal): MonitorSession => {
        const call = intercepts.monitor(md());
        return {
          send: (req: Partial<pb.MonitorRequest>) => call.write(pb.MonitorRequest.fromPartial(req)),
          events: streamIterator<pb.MonitorResponse>(call, signal),
          close: () => call.end(),
          cancel: () => call.cancel(),
        };
      },
    }),
    synic: promisify(synic, S(pb.SynicServiceService), o, md),
    snapshots: Object.assign(promisify(snapshots, S(pb.SnapshotServiceService), o, md), snapshotStreams(snapshots, md, VsmError.from), {
      migratePartition: (req: Partial<pb.MigratePartitionRequest>, signal?: AbortSignal) =>
        streamIterator<pb.MigrationProgress>(snapshots.migratePartition(pb.MigratePartitionRequest.fromPartial(req), md()), signal),
    }),
    fleet: promisify(fleet, S(pb.FleetServiceService), o, md),
    execution: Object.assign(promisify(execution, S(pb.ExecutionServiceService), o, md), {
      streamConsole: (req: Partial<pb.StreamConsoleRequest>, signal?: AbortSignal) =>
        streamIterator<pb.StreamConsoleResponse>(execution.streamConsole(pb.StreamConsoleRequest.fromPartial(req), md()), signal),
    }),
    vtl: Object.assign(promisify(vtl, S(pb.VtlServiceService), o, md), {
      watchTransitions: (req: Partial<pb.WatchVtlTransitionsRequest>, signal?: AbortSignal) =>
        streamIterator<pb.WatchVtlTransitionsResponse>(vtl.watchVtlTransitions(pb.WatchVtlTransitionsRequest.fromPartial(req), md()), signal),
    }),
    close() {
      for (const c of [partitions, vps, guest, memory, vtl, intercepts, synic, snapshots, execution, fleet]) c.close();
    },
  };
}

async function* streamIterator<T>(call: grpc.ClientReadableStream<T> | grpc.ClientDuplexStream<unknown, T>, signal?: AbortSignal): AsyncIterable<T> {
  const onAbort = () => call.cancel();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    for await (const m of call as AsyncIterable<T>) yield m;
  } catch (e) {
    const se = e as grpc.ServiceError;
    if (se.code === grpc.status.CANCELLED && (signal?.aborted ?? true)) return;
    throw typeof se.code === 'number' ? VsmError.from(se) : e;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    call.cancel();
  }
}
