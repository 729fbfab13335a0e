// service layer: the gRPC server. Registers the vsm.v1 services over a Backend, gRPC reflection
// (v1 and v1alpha, for grpcurl), grpc.health.v1, per-call structured logs, message size limits and
// a bounded graceful shutdown. Security (src/security): TLS with certificate reload, plaintext only
// on loopback unless allowed, authentication + role-based authorization on every vsm.v1 call
// (re-checked for open streams when the policy changes), stream limits, bounded request bytes,
// bounded unsent responses per stream, malformed requests answered INVALID_ARGUMENT.
import * as http2 from 'node:http2';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import pino, { type Logger } from 'pino';
import { type RpcMethod, type pb, vsmServices } from '@vsm/api';
import { HvError, HvStatus } from '@vsm/core';
import type { Backend, StreamSink } from './backend';
import { ApiError, invalidArgument, toServiceError } from './errors';
import {
  CallGuard,
  PLAINTEXT_REMOTE_REFUSED,
  type ReloadingCertificateProvider,
  type SecurityOptions,
  type TlsOptions,
  isLoopbackListen,
  isMalformed,
  sha256Hex,
  tlsServerCredentials,
  tolerantService,
} from './security';
import { BoundedSink, DEFAULT_STREAM_BUFFER, type StreamBufferLimits } from './stream-sink';
import { reflectionPackage } from './reflection';
import type { RpcTelemetry } from './observability/telemetry';
import type { ActionAuthorizer } from './guest-action-stream';
import { abortLatch } from './stop-latch';

/** Every vsm.v1 service, as the descriptors list them. */
export const SERVICE_NAMES: string[] = vsmServices().map((s) => s.name);
export const MAX_MESSAGE_BYTES = 8 * 1024 * 1024;
export const PROTO_DIR = path.resolve(__dirname, '../../../proto');
/** HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS each connection advertises. */
export const DEFAULT_MAX_CONCURRENT_STREAMS = 1000;
/** How long a bidi stream (Monitor) may take to send its first (subscribe) message. */
export const DEFAULT_FIRST_MESSAGE_TIMEOUT_MS = 10_000;

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
  /** Authorization policy, stream limits, request-byte budget, health watches (see security/guard.ts). */
  security?: SecurityOptions;
  /** Per-stream cap on responses the client has not taken yet (see stream-sink.ts). */
  streamBuffer?: StreamBufferLimits;
  /** A bidi stream (Monitor) that sends no first message within this time is ended (default 10 s). */
  firstMessageTimeoutMs?: number;
  /** HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per connection (default 1000). */
  maxConcurrentStreams?: number;
  /** Metrics and traces of every vsm.v1 call and authorization decision (observability/); unset = none. */
  telemetry?: RpcTelemetry;
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

/** What a handler learns about its caller. */
export interface CallContext {
  /** The authenticated principal; undefined when authorization is off. */
  principal: string | undefined;
}

type Unary<Req, Res> = (req: Req, ctx: CallContext) => Promise<Res>;
type ServerStreamCall<Res> = grpc.ServerWritableStream<unknown, Res> | grpc.ServerDuplexStream<unknown, Res>;

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const log = opts.logger ?? pino({ level: process.env.VSM_LOG_LEVEL ?? 'info' });
  const backend = opts.backend;
  if (!opts.tls && !opts.allowInsecureRemote && !isLoopbackListen(opts.listen)) throw new Error(PLAINTEXT_REMOTE_REFUSED(opts.listen));
  const guard = new CallGuard(opts.security ?? {}, log);
  const telemetry = opts.telemetry;
  if (telemetry) guard.onDecision = (d) => telemetry.authz(d);
  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_concurrent_streams': opts.maxConcurrentStreams ?? DEFAULT_MAX_CONCURRENT_STREAMS,
    // Always: it meters request bytes (and, with a policy, authenticates before the body is read).
    interceptors: [guard.interceptor()],
  });
  const inflight = new Set<AbortController>();
  /** Each vsm.v1 method's response encoder, by path (stream sinks encode as they queue). */
  const encoders = new Map<string, (m: unknown) => Buffer>();
  const bufferLimits = { ...DEFAULT_STREAM_BUFFER, ...Object.fromEntries(Object.entries(opts.streamBuffer ?? {}).filter(([, v]) => v !== undefined)) };
  const firstMessageTimeoutMs = opts.firstMessageTimeoutMs ?? DEFAULT_FIRST_MESSAGE_TIMEOUT_MS;

  const unary =
    <Req, Res>(method: string, fn: Unary<Req, Res>): grpc.handleUnaryCall<Req, Res> =>
    (call, callback) => {
      const t0 = process.hrtime.bigint();
      const ac = new AbortController();
      inflight.add(ac);
      const scope = telemetry?.start(method, call.getPath(), false, call.metadata);
      const handle = () => {
        const principal = guard.authenticate(call);
        if (isMalformed(call.request)) throw guard.malformed(call.getPath(), call.request);
        guard.authorize(call.getPath(), principal, call.request);
        return fn(call.request, { principal });
      };
      Promise.resolve()
        .then(scope ? () => scope.run(handle) : handle)
        .then(
          (res) => {
            log.debug({ method, us: Number((process.hrtime.bigint() - t0) / 1000n), code: 0 }, 'rpc');
            scope?.end(grpc.status.OK);
            callback(null, res);
          },
          (e: unknown) => {
            const err = toServiceError(e);
            scope?.end(err.code, err.details);
            const entry = { method, us: Number((process.hrtime.bigint() - t0) / 1000n), code: err.code, error: err.details };
            if (err.code === grpc.status.INTERNAL) log.error({ ...entry, stack: e instanceof Error ? e.stack : undefined }, 'rpc failed');
            else log.info(entry, 'rpc rejected');
            callback(err);
          },
        )
        .finally(() => inflight.delete(ac));
    };

  /**
   * The lifecycle every server stream shares: one status, decided once (the handler's end, its
   * error, or an end imposed from outside: revoked authorization, a lagging client); a stream the
   * client ended (cancel, deadline) is logged at debug as CANCELLED, never as a server failure.
   */
  const streamControl = <Res>(method: string, call: ServerStreamCall<Res>) => {
    const ac = new AbortController();
    inflight.add(ac);
    const scope = telemetry?.start(method, call.getPath(), true, call.metadata);
    /** The status the stream ended with (for its metrics and span). */
    let code: grpc.status = grpc.status.OK;
    let details: string | undefined;
    let decided = false;
    let clientGone = false;
    call.on('cancelled', () => {
      clientGone = true;
      ac.abort();
    });
    call.on('error', () => ac.abort());
    call.on('close', () => ac.abort());
    const gone = () => clientGone || call.cancelled;
    /**
     * Runs `fn` once every message handed to grpc-js was written (bounded): an error status emitted
     * while a write is still pending is lost, because the request iterator's reaction to the error
     * destroys the call before grpc-js sends the status after that write.
     */
    const whenFlushed = (fn: () => void) => {
      const until = Date.now() + 2000;
      const tick = () => {
        const w = call as unknown as { writableLength?: number; destroyed?: boolean };
        if (w.destroyed || !w.writableLength || Date.now() > until) fn();
        else setTimeout(tick, 2);
      };
      tick();
    };
    const endWith = (err?: grpc.ServiceError) => {
      if (decided) return;
      decided = true;
      if (err) ({ code, details } = err);
      ac.abort();
      if (gone()) return;
      if (err)
        whenFlushed(() => {
          if (!gone()) call.emit('error', err);
        });
      else call.end();
    };
    const clientEnded = (why: string) => {
      decided = true;
      code = grpc.status.CANCELLED;
      ac.abort();
      log.debug({ method, code: grpc.status.CANCELLED, why }, 'stream ended by the client');
    };
    return {
      signal: ac.signal,
      /** Runs the handler in the stream's trace context. */
      run: <T>(fn: () => T): T => (scope ? scope.run(fn) : fn()),
      /** Ends the stream now with `e` (from outside the handler). */
      fail(e: ApiError, level: 'info' | 'warn' = 'info') {
        if (decided || gone()) return;
        const err = toServiceError(e);
        log[level]({ method, code: err.code, error: err.details }, 'stream ended');
        endWith(err);
      },
      /** The handler returned. */
      done(): Promise<void> {
        // A client's cancel first ends the request side (the handler may return on it) and only then
        // reports 'cancelled' (next tick): decide once that has had its turn.
        return new Promise((resolve) =>
          setImmediate(() => {
            if (!decided) {
              if (gone()) clientEnded('the client cancelled the stream or its deadline passed');
              else endWith();
            }
            resolve();
          }),
        );
      },
      /** The handler (or the checks before it) threw. */
      failed(e: unknown) {
        if (decided) return;
        if (gone() || (e as { code?: unknown })?.code === 'ERR_STREAM_PREMATURE_CLOSE') return clientEnded(e instanceof Error ? e.message : String(e));
        const err = toServiceError(e);
        if (err.code === grpc.status.INTERNAL)
          log.error({ method, code: err.code, error: err.details, stack: e instanceof Error ? e.stack : undefined }, 'stream failed');
        else log.info({ method, code: err.code, error: err.details }, 'stream failed');
        endWith(err);
      },
      closed() {
        inflight.delete(ac);
        scope?.end(code, details);
        log.info({ method }, 'stream closed');
      },
    };
  };

  /** The sink of a stream: encodes as it queues, honours back-pressure, ends a lagging client. */
  const sinkFor = <Res>(method: string, call: ServerStreamCall<Res>, ctl: ReturnType<typeof streamControl<Res>>): StreamSink<Res> => {
    const encode = encoders.get(call.getPath());
    if (!encode) throw new Error(`no response encoder for ${call.getPath()}`);
    return new BoundedSink<Res>(
      call as unknown as { write(chunk: Buffer, cb: () => void): boolean },
      encode as (m: Res) => Buffer,
      bufferLimits,
      (why) => {
        ctl.fail(new ApiError(grpc.status.RESOURCE_EXHAUSTED, 'HV_STATUS_INSUFFICIENT_BUFFERS', why), 'warn');
        // A client that takes nothing never receives that status either: reset the HTTP/2 stream
        // after a grace period so that what is still queued for it is freed. gRPC clients read
        // RST_STREAM ENHANCE_YOUR_CALM as RESOURCE_EXHAUSTED.
        const h2 = guard.transportOf(call.metadata);
        if (h2) {
          setTimeout(() => {
            if (!h2.closed && !h2.destroyed) {
              log.warn({ method }, 'lagging stream reset (the client took nothing)');
              h2.close(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
            }
          }, bufferLimits.resetAfterMs).unref();
        }
      },
      ctl.signal,
    );
  };

  /**
   * One stream's life once its call is open, shared by server streams and bidi streams: authenticate,
   * `admit` (returns the request the stream is authorized against: the call's request, or the first
   * message of a bidi stream), authorize, take a stream slot, track the principal for revocation, run
   * the handler with the stream's sink, then end the call once what the handler wrote is sent (the
   * sink's lag and stall rules bound that wait; ending earlier would drop the sink's queue, the stream's
   * last messages), or with the handler's error.
   */
  const serveStream = <Res>(
    method: string,
    call: grpc.ServerWritableStream<unknown, Res> | grpc.ServerDuplexStream<unknown, Res>,
    admit: (ctl: ReturnType<typeof streamControl<Res>>) => unknown | Promise<unknown>,
    handler: (sink: StreamSink<Res>, signal: AbortSignal, principal: string | undefined) => Promise<void>,
  ): void => {
    const ctl = streamControl(method, call as unknown as ServerStreamCall<Res>);
    let release: (() => void) | undefined;
    let untrack: (() => void) | undefined;
    let sink: StreamSink<Res> | undefined;
    log.info({ method }, 'stream opened');
    Promise.resolve()
      .then(() =>
        ctl.run(async () => {
          const principal = guard.authenticate(call);
          const request = await admit(ctl);
          guard.authorize(call.getPath(), principal, request);
          release = guard.acquireStream(call, principal);
          if (principal !== undefined)
            untrack = guard.track({
              path: call.getPath(),
              principal,
              request,
              metadata: call.metadata,
              authContext: call.getAuthContext(),
              end: (e) => ctl.fail(e, 'warn'),
            });
          sink = sinkFor(method, call as unknown as ServerStreamCall<Res>, ctl);
          return handler(sink, ctl.signal, principal);
        }),
      )
      .then(
        async () => {
          await sink?.drained();
          return ctl.done();
        },
        (e: unknown) => ctl.failed(e),
      )
      .finally(() => {
        untrack?.();
        release?.();
        ctl.closed();
      });
  };

  const stream =
    <Req, Res>(method: string, fn: (req: Req, sink: StreamSink<Res>, signal: AbortSignal) => Promise<void>): grpc.handleServerStreamingCall<Req, Res> =>
    (call) =>
      serveStream<Res>(
        method,
        call as unknown as grpc.ServerWritableStream<unknown, Res>,
        () => {
          if (isMalformed(call.request)) throw guard.malformed(call.getPath(), call.request);
          return call.request;
        },
        (sink, signal) => fn(call.request, sink, signal),
      );

  const bidi =
    <Req, Res>(
      method: string,
      fn: (reqs: AsyncIterable<Req>, sink: StreamSink<Res>, signal: AbortSignal, authorize: ActionAuthorizer) => Promise<void>,
    ): grpc.handleBidiStreamingCall<Req, Res> =>
    (call) => {
      let reqs: ReturnType<typeof guardedRequests<Req>> | undefined;
      serveStream<Res>(
        method,
        call as unknown as grpc.ServerDuplexStream<unknown, Res>,
        async (ctl) => {
          // Authorization needs the first message (Monitor: subscribe names the partition): it is
          // read and checked here, before the handler sees anything or anything is sent; it must come
          // within firstMessageTimeoutMs. Only then does the stream take a slot.
          reqs = guardedRequests<Req>(call as unknown as AsyncIterable<unknown>, (m) => guard.malformed(call.getPath(), m), ctl.signal);
          const first = await withTimeout(
            reqs.peek(),
            firstMessageTimeoutMs,
            ctl.signal,
            () =>
              new ApiError(
                grpc.status.DEADLINE_EXCEEDED,
                'HV_STATUS_TIME_OUT',
                `${method}: no first message within ${firstMessageTimeoutMs} ms of opening the stream; send subscribe right after opening it`,
              ),
          );
          return first.done ? undefined : first.value;
        },
        // RunGuestActions authorizes each action as its unary RPC, with the stream's caller.
        (sink, signal, principal) => fn(reqs!, sink, signal, (path, req) => guard.authorize(path, principal, req)),
      );
    };

  /**
   * Client stream (ImportPartition): authorized on the first message (as bidi), then the handler reads
   * the requests until the client half-closes and answers once, like a unary call.
   */
  const client =
    <Req, Res>(method: string, fn: (reqs: AsyncIterable<Req>, signal: AbortSignal) => Promise<Res>): grpc.handleClientStreamingCall<Req, Res> =>
    (call, callback) => {
      const t0 = process.hrtime.bigint();
      const ac = new AbortController();
      inflight.add(ac);
      const scope = telemetry?.start(method, call.getPath(), true, call.metadata);
      call.on('cancelled', () => ac.abort());
      call.on('error', () => ac.abort());
      let settled = false;
      const answer = (err: grpc.ServiceError | null, res?: Res) => {
        if (settled) return;
        settled = true;
        ac.abort();
        scope?.end(err ? err.code : grpc.status.OK, err?.details);
        const entry = { method, us: Number((process.hrtime.bigint() - t0) / 1000n), code: err ? err.code : 0, error: err?.details };
        if (err?.code === grpc.status.INTERNAL) log.error(entry, 'rpc failed');
        else log.info(entry, err ? 'rpc rejected' : 'rpc');
        if (err) callback(err);
        else callback(null, res);
      };
      let release: (() => void) | undefined;
      let untrack: (() => void) | undefined;
      const handle = async () => {
        const principal = guard.authenticate(call);
        const reqs = guardedRequests<Req>(call as unknown as AsyncIterable<unknown>, (m) => guard.malformed(call.getPath(), m), ac.signal);
        const first = await withTimeout(
          reqs.peek(),
          firstMessageTimeoutMs,
          ac.signal,
          () =>
            new ApiError(
              grpc.status.DEADLINE_EXCEEDED,
              'HV_STATUS_TIME_OUT',
              `${method}: no first message within ${firstMessageTimeoutMs} ms of opening the stream`,
            ),
        );
        const request = first.done ? undefined : first.value;
        guard.authorize(call.getPath(), principal, request);
        release = guard.acquireStream(call, principal);
        if (principal !== undefined)
          untrack = guard.track({
            path: call.getPath(),
            principal,
            request,
            metadata: call.metadata,
            authContext: call.getAuthContext(),
            end: (e) => answer(toServiceError(e)),
          });
        return fn(reqs, ac.signal);
      };
      Promise.resolve()
        .then(scope ? () => scope.run(handle) : handle)
        .then(
          (res) => answer(null, res),
          (e: unknown) => answer(toServiceError(e)),
        )
        .finally(() => {
          untrack?.();
          release?.();
          inflight.delete(ac);
        });
    };

  // Every vsm.v1 service is registered with decoders that never throw (a malformed request is
  // INVALID_ARGUMENT, not grpc-js's INTERNAL); health and reflection keep theirs.
  const addService = server.addService.bind(server);
  server.addService = (def, impl) => {
    if (Object.values(def).every((m) => m.path.startsWith('/vsm.v1.'))) return addService(tolerantService(def as never, encoders) as typeof def, impl);
    // grpc.health.v1.Health/Watch needs no credentials: its streams are counted per peer address.
    if (Object.values(def).some((m) => m.path === '/grpc.health.v1.Health/Watch') && typeof impl.watch === 'function') {
      const watch = impl.watch as grpc.handleServerStreamingCall<unknown, unknown>;
      impl = {
        ...impl,
        watch: (call: grpc.ServerWritableStream<unknown, unknown>) => {
          let release: () => void;
          try {
            release = guard.acquireHealthWatch(call.getPeer());
          } catch (e) {
            call.emit('error', toServiceError(e));
            return;
          }
          for (const ev of ['cancelled', 'close', 'finish', 'error']) call.once(ev, release);
          watch(call);
        },
      };
    }
    return addService(def, impl);
  };
  // Every vsm.v1 RPC, bound by walking the descriptors (@vsm/api vsmServices()): the RPC's kind
  // picks the wrapper above (unary / server stream / bidi), and that wrapper is the one place a call
  // is authenticated, checked, authorized, logged and its errors mapped (errors.ts). An RPC the
  // backend has no method for is reported here, at start-up, and answers UNIMPLEMENTED /
  // HV_STATUS_FEATURE_UNAVAILABLE (the Backend type and test/rpc-descriptors.test.ts require every
  // method of the built-in backends).
  const missing = missingRpcs(backend);
  if (missing.length) log.warn({ backend: backend.kind, missing }, 'the backend implements no method for these vsm.v1 RPCs: they answer UNIMPLEMENTED');
  for (const svc of vsmServices()) {
    const impl: grpc.UntypedServiceImplementation = {};
    for (const rpc of svc.methods) impl[rpc.localName] = bindRpc(rpc, backend, { unary, stream, bidi, client });
    server.addService(svc.definition, impl);
  }

  // Health (grpc.health.v1) for the server as a whole and for each vsm.v1 service.
  const health = new HealthImplementation(Object.fromEntries(['', ...SERVICE_NAMES].map((s) => [s, 'SERVING' as const])));
  health.addToServer(server);
  // Reflection (grpc.reflection.v1 and v1alpha), for grpcurl: the vsm.v1 files as buf built them
  // (with their comments, so `grpcurl describe` shows them), google.rpc.Status and ErrorInfo (so
  // grpcurl decodes error details), grpc.health.v1 and the reflection services themselves.
  new ReflectionService(reflectionPackage()).addToServer(server);

  let tls: ReloadingCertificateProvider | undefined;
  let credentials = grpc.ServerCredentials.createInsecure();
  try {
    if (opts.tls) ({ credentials, provider: tls } = tlsServerCredentials(opts.tls, log));
  } catch (e) {
    guard.close();
    throw e;
  }
  const port = await new Promise<number>((resolve, reject) => server.bindAsync(opts.listen, credentials, (err, p) => (err ? reject(err) : resolve(p)))).catch(
    (e: unknown) => {
      tls?.close();
      guard.close();
      throw e;
    },
  );
  const address = opts.listen.replace(/:0$/, `:${port}`);
  log.info(
    {
      listen: address,
      backend: backend.kind,
      transport: tls ? `tls (client certificates: ${opts.tls?.clientAuth ?? (opts.tls?.caFile ? 'require' : 'none')})` : 'plaintext',
      authorization: guard.authzEnabled,
    },
    'vsm-service listening',
  );

  let stopping: Promise<void> | undefined;
  const shutdown = (reason = 'shutdown') =>
    (stopping ??= (async () => {
      log.info({ reason, inflight: inflight.size }, 'shutting down');
      for (const s of ['', ...SERVICE_NAMES]) health.setStatus(s, 'NOT_SERVING');
      // Streams have no natural end: cancel them; unary calls may finish within the grace period.
      const grace = opts.shutdownGraceMs ?? 5000;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, grace);
        timer.unref();
        for (const ac of inflight) ac.abort();
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
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
 * message that failed to decode ends the iteration with INVALID_ARGUMENT. Once `signal` aborts
 * (the stream was ended: client gone, authorization revoked, client lagged) nothing more is
 * yielded: a message that arrives after that is never handled.
 */
function guardedRequests<Req>(
  source: AsyncIterable<unknown>,
  malformed: (m: never) => Error,
  signal: AbortSignal,
): AsyncIterable<Req> & { peek(): Promise<IteratorResult<Req>> } {
  // Node's default stream iterator destroys the whole duplex once the client half-closes, so the
  // server could no longer send its status (the client would hang until its deadline): iterate
  // without destroying; the call's own lifecycle ends it.
  const readable = source as AsyncIterable<unknown> & { iterator?: (o: { destroyOnReturn: boolean }) => AsyncIterator<unknown> };
  const it = typeof readable.iterator === 'function' ? readable.iterator({ destroyOnReturn: false }) : source[Symbol.asyncIterator]();
  let peeked: Promise<IteratorResult<Req>> | undefined;
  const ended: IteratorResult<Req> = { done: true, value: undefined };
  // Not Promise.race with a promise pending for the stream's life: that keeps a reaction per message.
  const aborted = abortLatch(signal, ended);
  const pull = async (): Promise<IteratorResult<Req>> => {
    if (signal.aborted) return ended;
    const r = await aborted.race(it.next() as Promise<IteratorResult<Req>>);
    if (signal.aborted) return ended;
    if (!r.done && isMalformed(r.value)) throw malformed(r.value as never);
    return r;
  };
  return {
    peek: () => (peeked ??= pull()),
    [Symbol.asyncIterator]: () => ({
      next: () => {
        if (peeked) {
          const p = peeked;
          peeked = undefined;
          return p.then((r) => (signal.aborted ? ended : r));
        }
        return pull();
      },
      return: async (v?: unknown) => {
        await it.return?.(v);
        return ended;
      },
    }),
  };
}

/** `p`, or the error `timeout()` makes if it has not settled after `ms` (the timer stops on abort). */
function withTimeout<T>(p: Promise<T>, ms: number, signal: AbortSignal, timeout: () => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(timeout()), ms);
    t.unref();
    signal.addEventListener('abort', () => clearTimeout(t), { once: true });
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}

type Wrappers = {
  unary: <Req, Res>(method: string, fn: Unary<Req, Res>) => grpc.handleUnaryCall<Req, Res>;
  stream: <Req, Res>(method: string, fn: (req: Req, sink: StreamSink<Res>, signal: AbortSignal) => Promise<void>) => grpc.handleServerStreamingCall<Req, Res>;
  bidi: <Req, Res>(
    method: string,
    fn: (reqs: AsyncIterable<Req>, sink: StreamSink<Res>, signal: AbortSignal, authorize: ActionAuthorizer) => Promise<void>,
  ) => grpc.handleBidiStreamingCall<Req, Res>;
  client?: <Req, Res>(method: string, fn: (reqs: AsyncIterable<Req>, signal: AbortSignal) => Promise<Res>) => grpc.handleClientStreamingCall<Req, Res>;
};

/**
 * RPCs whose call adds something to what the backend's method does, by key. Everything else calls
 * the backend's method of the same name as is.
 */
const ADAPTED: Readonly<Record<string, (b: Backend, req: never, ctx: CallContext) => Promise<unknown>>> = {
  'vsm.v1.PartitionService/CreatePartition': (b, r: pb.CreatePartitionRequest, ctx) => createPartitionScoped(b, r, ctx.principal),
};

/** The vsm.v1 RPCs (keys) `backend` has no method for. */
export function missingRpcs(backend: Backend): string[] {
  return vsmServices()
    .flatMap((s) => s.methods)
    .filter((m) => typeof (backend as unknown as Record<string, unknown>)[m.localName] !== 'function')
    .map((m) => m.key);
}

const notImplemented = (rpc: RpcMethod, backend: Backend) =>
  new HvError(HvStatus.HV_STATUS_FEATURE_UNAVAILABLE, `${rpc.key} is not implemented by the ${backend.kind} backend`);

/**
 * The grpc-js handler of one RPC: the backend's method of the RPC's name in the wrapper of its kind
 * (one the backend lacks answers UNIMPLEMENTED / HV_STATUS_FEATURE_UNAVAILABLE, through the wrapper).
 */
export function bindRpc(rpc: RpcMethod, backend: Backend, w: Wrappers): grpc.UntypedHandleCall {
  const method = (backend as unknown as Record<string, unknown>)[rpc.localName];
  const fn = typeof method === 'function' ? (method as (...a: unknown[]) => Promise<unknown>) : () => Promise.reject(notImplemented(rpc, backend));
  const adapted = ADAPTED[rpc.key];
  switch (rpc.kind) {
    case 'unary':
      return w.unary(rpc.name, adapted ? (r: unknown, ctx) => adapted(backend, r as never, ctx) : (r: unknown) => fn.call(backend, r));
    case 'server_streaming':
      return w.stream(rpc.name, (r: unknown, sink, signal) => fn.call(backend, r, sink, signal) as Promise<void>);
    case 'bidi_streaming':
      return w.bidi(rpc.name, (reqs: AsyncIterable<unknown>, sink, signal, authorize) => fn.call(backend, reqs, sink, signal, authorize) as Promise<void>);
    case 'client_streaming':
      if (!w.client) throw new Error(`${rpc.key}: client-streaming RPCs need the client wrapper`);
      return w.client(rpc.name, (reqs: AsyncIterable<unknown>, signal) => fn.call(backend, reqs, signal));
    default:
      rpc.kind satisfies never;
      throw new Error(`${rpc.key}: unknown RPC kind`);
  }
}

/**
 * CreatePartition with its request_id scoped to the caller: with authorization on, the id the
 * backend keys idempotency by is derived from (principal, request_id), so one principal's id
 * neither finds nor blocks another's partition, and the client sees its own id in the answer and
 * in any error. Without authorization (no principals) request_id is passed through as is.
 */
async function createPartitionScoped(b: Backend, r: pb.CreatePartitionRequest, principal: string | undefined): Promise<pb.Partition> {
  if (principal === undefined || r.requestId === '') return b.createPartition(r);
  if (r.requestId.length > 128) throw invalidArgument('request_id is longer than 128 characters');
  const scoped = `scoped-${sha256Hex(`${principal}\n${r.requestId}`)}`;
  try {
    const p = await b.createPartition({ ...r, requestId: scoped });
    return { ...p, requestId: r.requestId };
  } catch (e) {
    if (e instanceof Error && e.message.includes(scoped)) e.message = e.message.split(scoped).join(r.requestId);
    throw e;
  }
}
