// service layer: the gRPC server. Registers the vsm.v1 services over a Backend, gRPC reflection
// (v1 and v1alpha, for grpcurl), grpc.health.v1, per-call structured logs, message size limits and
// a bounded graceful shutdown. Security (src/security): TLS with certificate reload, plaintext only
// on loopback unless allowed, authentication + role-based authorization on every vsm.v1 call,
// stream limits, malformed requests answered INVALID_ARGUMENT.
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import pino, { Logger } from 'pino';
import { pb } from '@vsm/client';
import { Backend, StreamSink } from './backend';
import { toServiceError } from './errors';
import { CallGuard, PLAINTEXT_REMOTE_REFUSED, ReloadingCertificateProvider, SecurityOptions, TlsOptions, isLoopbackListen, isMalformed, tlsServerCredentials, tolerantService } from './security';

export const SERVICE_NAMES = ['vsm.v1.PartitionService', 'vsm.v1.VirtualProcessorService', 'vsm.v1.GuestService', 'vsm.v1.MemoryService', 'vsm.v1.VtlService', 'vsm.v1.InterceptService', 'vsm.v1.SynicService', 'vsm.v1.SnapshotService'];
export const MAX_MESSAGE_BYTES = 8 * 1024 * 1024;
export const PROTO_DIR = path.resolve(__dirname, '../../../proto');

export interface ServerOptions {
  listen: string;
  backend: Backend;
  logger?: Logger;
  /** How long shutdown waits for in-flight calls before cancelling them. */
  shutdownGraceMs?: number;
  /** Serve TLS (certificates re-read when the files change). Unset = plaintext. */
  tls?: TlsOptions;
  /** Plaintext on a non-loopback address is refused unless this is set. */
  allowInsecureRemote?: boolean;
  /** Authorization policy and stream limits (see security/guard.ts). */
  security?: SecurityOptions;
}

export interface RunningServer {
  server: grpc.Server;
  port: number;
  address: string;
  health: HealthImplementation;
  /** The TLS certificate provider (reload state), when serving TLS. */
  tls?: ReloadingCertificateProvider;
  guard: CallGuard;
  shutdown(reason?: string): Promise<void>;
}

type Unary<Req, Res> = (req: Req) => Promise<Res>;

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const log = opts.logger ?? pino({ level: process.env.VSM_LOG_LEVEL ?? 'info' });
  const backend = opts.backend;
  if (!opts.tls && !opts.allowInsecureRemote && !isLoopbackListen(opts.listen)) throw new Error(PLAINTEXT_REMOTE_REFUSED(opts.listen));
  const guard = new CallGuard(opts.security ?? {}, log);
  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    ...(guard.authzEnabled ? { interceptors: [guard.interceptor()] } : {}),
  });
  const inflight = new Set<AbortController>();

  const unary = <Req, Res>(method: string, fn: Unary<Req, Res>): grpc.handleUnaryCall<Req, Res> =>
    (call, callback) => {
      const t0 = process.hrtime.bigint();
      const ac = new AbortController();
      inflight.add(ac);
      Promise.resolve()
        .then(() => {
          const principal = guard.authenticate(call);
          if (isMalformed(call.request)) throw guard.malformed(call.getPath(), call.request);
          guard.authorize(call.getPath(), principal, call.request);
          return fn(call.request);
        })
        .then(
          (res) => {
            log.debug({ method, us: Number((process.hrtime.bigint() - t0) / 1000n), code: 0 }, 'rpc');
            callback(null, res);
          },
          (e: unknown) => {
            const err = toServiceError(e);
            const entry = { method, us: Number((process.hrtime.bigint() - t0) / 1000n), code: err.code, reason: err.metadata?.get('grpc-status-details-bin') ? undefined : undefined, error: err.details };
            if (err.code === grpc.status.INTERNAL) log.error({ ...entry, stack: e instanceof Error ? e.stack : undefined }, 'rpc failed');
            else log.info(entry, 'rpc rejected');
            callback(err);
          },
        )
        .finally(() => inflight.delete(ac));
    };

  const stream = <Req, Res>(method: string, fn: (req: Req, sink: StreamSink<Res>, signal: AbortSignal) => Promise<void>): grpc.handleServerStreamingCall<Req, Res> =>
    (call) => {
      const ac = new AbortController();
      inflight.add(ac);
      call.on('cancelled', () => ac.abort());
      call.on('close', () => ac.abort());
      const sink: StreamSink<Res> = {
        write: (m) => call.write(m),
        drained: () => new Promise((res) => { if (ac.signal.aborted) res(); else { call.once('drain', res); ac.signal.addEventListener('abort', () => res(), { once: true }); } }),
      };
      let release: (() => void) | undefined;
      log.info({ method }, 'stream opened');
      Promise.resolve().then(() => {
        const principal = guard.authenticate(call);
        if (isMalformed(call.request)) throw guard.malformed(call.getPath(), call.request);
        guard.authorize(call.getPath(), principal, call.request);
        release = guard.acquireStream(call, principal);
        return fn(call.request, sink, ac.signal);
      }).then(
        () => { if (!call.cancelled) call.end(); },
        (e: unknown) => { const err = toServiceError(e); log.info({ method, code: err.code, error: err.details }, 'stream failed'); call.emit('error', err); },
      ).finally(() => { release?.(); inflight.delete(ac); log.info({ method }, 'stream closed'); });
    };

  const bidi = <Req, Res>(method: string, fn: (reqs: AsyncIterable<Req>, sink: StreamSink<Res>, signal: AbortSignal) => Promise<void>): grpc.handleBidiStreamingCall<Req, Res> =>
    (call) => {
      const ac = new AbortController();
      inflight.add(ac);
      call.on('cancelled', () => ac.abort());
      call.on('error', () => ac.abort());
      const sink: StreamSink<Res> = {
        write: (m) => (ac.signal.aborted ? false : call.write(m)),
        drained: () => new Promise((res) => { if (ac.signal.aborted) res(); else { call.once('drain', res); ac.signal.addEventListener('abort', () => res(), { once: true }); } }),
      };
      let release: (() => void) | undefined;
      log.info({ method }, 'stream opened');
      Promise.resolve().then(async () => {
        const principal = guard.authenticate(call);
        release = guard.acquireStream(call, principal);
        // Authorization needs the first message (Monitor: subscribe names the partition): it is
        // read and checked here, before the handler sees anything or anything is sent.
        const reqs = guardedRequests<Req>(call as unknown as AsyncIterable<unknown>, (m) => guard.malformed(call.getPath(), m));
        const first = await reqs.peek();
        guard.authorize(call.getPath(), principal, first.done ? undefined : first.value);
        return fn(reqs, sink, ac.signal);
      }).then(
        () => { if (!call.cancelled) call.end(); },
        (e: unknown) => { const err = toServiceError(e); log.info({ method, code: err.code, error: err.details }, 'stream failed'); call.emit('error', err); },
      ).finally(() => { release?.(); inflight.delete(ac); log.info({ method }, 'stream closed'); });
    };

  const b = backend;
  // Every vsm.v1 service is registered with decoders that never throw (a malformed request is
  // INVALID_ARGUMENT, not grpc-js's INTERNAL); health and reflection keep theirs.
  const addService = server.addService.bind(server);
  server.addService = (def, impl) => addService(Object.values(def).every((m) => m.path.startsWith('/vsm.v1.')) ? tolerantService(def) : def, impl);
  server.addService(pb.PartitionServiceService, {
    createPartition: unary('CreatePartition', (r: pb.CreatePartitionRequest) => b.createPartition(r)),
    getPartition: unary('GetPartition', (r: pb.GetPartitionRequest) => b.getPartition(r)),
    listPartitions: unary('ListPartitions', (r: pb.ListPartitionsRequest) => b.listPartitions(r)),
    deletePartition: unary('DeletePartition', (r: pb.DeletePartitionRequest) => b.deletePartition(r)),
    getCapabilities: unary('GetCapabilities', (r: pb.GetCapabilitiesRequest) => b.getCapabilities(r)),
  } satisfies pb.PartitionServiceServer);
  server.addService(pb.VirtualProcessorServiceService, {
    getVirtualProcessor: unary('GetVirtualProcessor', (r: pb.GetVirtualProcessorRequest) => b.getVirtualProcessor(r)),
    getVpRegisters: unary('GetVpRegisters', (r: pb.GetVpRegistersRequest) => b.getVpRegisters(r)),
    setVpRegisters: unary('SetVpRegisters', (r: pb.SetVpRegistersRequest) => b.setVpRegisters(r)),
  } satisfies pb.VirtualProcessorServiceServer);
  server.addService(pb.GuestServiceService, {
    writeMsr: unary('WriteMsr', (r: pb.WriteMsrRequest) => b.writeMsr(r)),
    readMsr: unary('ReadMsr', (r: pb.ReadMsrRequest) => b.readMsr(r)),
    hypercall: unary('Hypercall', (r: pb.HypercallRequest) => b.hypercall(r)),
    callHypercallPage: unary('CallHypercallPage', (r: pb.CallHypercallPageRequest) => b.callHypercallPage(r)),
    readMemory: unary('ReadMemory', (r: pb.ReadMemoryRequest) => b.readMemory(r)),
    writeMemory: unary('WriteMemory', (r: pb.WriteMemoryRequest) => b.writeMemory(r)),
    executeMemory: unary('ExecuteMemory', (r: pb.ExecuteMemoryRequest) => b.executeMemory(r)),
  } satisfies pb.GuestServiceServer);
  server.addService(pb.MemoryServiceService, {
    readGpa: unary('ReadGpa', (r: pb.ReadGpaRequest) => b.readGpa(r)),
    writeGpa: unary('WriteGpa', (r: pb.WriteGpaRequest) => b.writeGpa(r)),
    listOverlays: unary('ListOverlays', (r: pb.ListOverlaysRequest) => b.listOverlays(r)),
  } satisfies pb.MemoryServiceServer);
  server.addService(pb.VtlServiceService, {
    enablePartitionVtl: unary('EnablePartitionVtl', (r: pb.EnablePartitionVtlRequest) => b.enablePartitionVtl(r)),
    enableVpVtl: unary('EnableVpVtl', (r: pb.EnableVpVtlRequest) => b.enableVpVtl(r)),
    watchVtlTransitions: stream('WatchVtlTransitions', (r: pb.WatchVtlTransitionsRequest, s: StreamSink<pb.WatchVtlTransitionsResponse>, sig) => b.watchVtlTransitions(r, s, sig)),
  } satisfies pb.VtlServiceServer);

  server.addService(pb.InterceptServiceService, {
    modifyVtlProtectionMask: unary('ModifyVtlProtectionMask', (r: pb.ModifyVtlProtectionMaskRequest) => b.modifyVtlProtectionMask(r)),
    getVtlProtections: unary('GetVtlProtections', (r: pb.GetVtlProtectionsRequest) => b.getVtlProtections(r)),
    setInterceptRoute: unary('SetInterceptRoute', (r: pb.SetInterceptRouteRequest) => b.setInterceptRoute(r)),
    listPendingIntercepts: unary('ListPendingIntercepts', (r: pb.ListPendingInterceptsRequest) => b.listPendingIntercepts(r)),
    monitor: bidi('Monitor', (reqs: AsyncIterable<pb.MonitorRequest>, s: StreamSink<pb.MonitorResponse>, sig) => b.monitor(reqs, s, sig)),
  } satisfies pb.InterceptServiceServer);

  server.addService(pb.SynicServiceService, {
    postMessage: unary('PostMessage', (r: pb.PostMessageRequest) => b.postMessage(r)),
    signalEvent: unary('SignalEvent', (r: pb.SignalEventRequest) => b.signalEvent(r)),
    getSynicState: unary('GetSynicState', (r: pb.GetSynicStateRequest) => b.getSynicState(r)),
  } satisfies pb.SynicServiceServer);

  server.addService(pb.SnapshotServiceService, {
    savePartition: unary('SavePartition', (r: pb.SavePartitionRequest) => b.savePartition(r)),
    restorePartition: unary('RestorePartition', (r: pb.RestorePartitionRequest) => b.restorePartition(r)),
  } satisfies pb.SnapshotServiceServer);

  // Health (grpc.health.v1) for the server as a whole and for each vsm.v1 service.
  const health = new HealthImplementation(Object.fromEntries(['', ...SERVICE_NAMES].map((s) => [s, 'SERVING' as const])));
  health.addToServer(server);
  // Reflection (grpc.reflection.v1 and v1alpha) from the .proto sources, for grpcurl.
  // grpc.health.v1 and the reflection services themselves are described too, so that grpcurl
  // lists them and `grpcurl ... grpc.health.v1.Health/Check` resolves.
  const healthProto = require.resolve('grpc-health-check/proto/health/v1/health.proto');
  const reflectionDir = path.join(path.dirname(require.resolve('@grpc/reflection/package.json')), 'build/proto');
  const reflectionProtos = ['v1', 'v1alpha'].map((v) => path.join(reflectionDir, `grpc/reflection/${v}/reflection.proto`));
  const pkg = protoLoader.loadSync(
    [...SERVICE_NAMES.map((s) => path.join(PROTO_DIR, 'vsm/v1', protoFileOf(s))), healthProto, ...reflectionProtos],
    { includeDirs: [PROTO_DIR, path.dirname(healthProto), reflectionDir], keepCase: true, longs: String, enums: String, defaults: false, oneofs: true },
  );
  new ReflectionService(pkg).addToServer(server);

  let tls: ReloadingCertificateProvider | undefined;
  let credentials = grpc.ServerCredentials.createInsecure();
  try {
    if (opts.tls) ({ credentials, provider: tls } = tlsServerCredentials(opts.tls, log));
  } catch (e) {
    guard.close();
    throw e;
  }
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(opts.listen, credentials, (err, p) => (err ? reject(err) : resolve(p))),
  ).catch((e: unknown) => { tls?.close(); guard.close(); throw e; });
  const address = opts.listen.replace(/:0$/, `:${port}`);
  log.info({ listen: address, backend: backend.kind, transport: tls ? `tls (client certificates: ${opts.tls?.clientAuth ?? (opts.tls?.caFile ? 'require' : 'none')})` : 'plaintext', authorization: guard.authzEnabled }, 'vsm-service listening');

  let stopping: Promise<void> | undefined;
  const shutdown = (reason = 'shutdown') =>
    (stopping ??= (async () => {
      log.info({ reason, inflight: inflight.size }, 'shutting down');
      for (const s of ['', ...SERVICE_NAMES]) health.setStatus(s, 'NOT_SERVING');
      // Streams have no natural end: cancel them; unary calls may finish within the grace period.
      const grace = opts.shutdownGraceMs ?? 5000;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => { server.forceShutdown(); resolve(); }, grace);
        timer.unref();
        for (const ac of inflight) ac.abort();
        server.tryShutdown(() => { clearTimeout(timer); resolve(); });
      });
      tls?.close();
      guard.close();
      await backend.close();
      log.info('stopped');
    })());
  return { server, port, address, health, tls, guard, shutdown };
}

/**
 * A bidi call's requests as the handler's AsyncIterable, with `peek()` for the first one; a
 * message that failed to decode ends the iteration with INVALID_ARGUMENT.
 */
function guardedRequests<Req>(source: AsyncIterable<unknown>, malformed: (m: never) => Error): AsyncIterable<Req> & { peek(): Promise<IteratorResult<Req>> } {
  // Node's default stream iterator destroys the whole duplex once the client half-closes, so the
  // server could no longer send its status (the client would hang until its deadline): iterate
  // without destroying; the call's own lifecycle ends it.
  const readable = source as AsyncIterable<unknown> & { iterator?: (o: { destroyOnReturn: boolean }) => AsyncIterator<unknown> };
  const it = typeof readable.iterator === 'function' ? readable.iterator({ destroyOnReturn: false }) : source[Symbol.asyncIterator]();
  let peeked: Promise<IteratorResult<Req>> | undefined;
  const pull = async (): Promise<IteratorResult<Req>> => {
    const r = await it.next();
    if (!r.done && isMalformed(r.value)) throw malformed(r.value as never);
    return r as IteratorResult<Req>;
  };
  return {
    peek: () => (peeked ??= pull()),
    [Symbol.asyncIterator]: () => ({
      next: () => {
        if (peeked) {
          const p = peeked;
          peeked = undefined;
          return p;
        }
        return pull();
      },
      return: async (v?: unknown) => {
        await it.return?.(v);
        return { done: true, value: undefined };
      },
    }),
  };
}

function protoFileOf(service: string): string {
  return ({ PartitionService: 'partition.proto', VirtualProcessorService: 'vp.proto', GuestService: 'guest.proto', MemoryService: 'memory.proto', VtlService: 'vtl.proto', InterceptService: 'intercept.proto', SynicService: 'synic.proto', SnapshotService: 'snapshot.proto' } as Record<string, string>)[service.split('.').pop()!]!;
}
