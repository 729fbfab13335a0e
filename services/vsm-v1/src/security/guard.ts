// service layer, security: the per-call checks the server's call wrappers run before a handler.
//   authenticate (policy configured)  -> UNAUTHENTICATED, reason HV_STATUS_ACCESS_DENIED
//   malformed request                 -> INVALID_ARGUMENT, reason HV_STATUS_INVALID_PARAMETER
//   authorize role on the partition   -> PERMISSION_DENIED, reason HV_STATUS_ACCESS_DENIED
//   stream slots (total / per client) -> RESOURCE_EXHAUSTED, reason HV_STATUS_NO_RESOURCES
// and, from the transport interceptor, before a request body is read:
//   credentials (policy configured)   -> UNAUTHENTICATED
//   no grant of the method's role on any partition -> PERMISSION_DENIED (the body is never read)
//   request bytes still being received over budget (per client / total) -> RESOURCE_EXHAUSTED
// Open streams are re-checked whenever the policy changes: a stream whose principal lost its
// credentials or its role ends with UNAUTHENTICATED / PERMISSION_DENIED.
// Denials are audit-logged at warn, allowed mutating calls at info (fields: audit, principal,
// method, resource, decision). With no policy configured, authorization is off: every caller may
// do everything (the default for a loopback-only development server).
import * as fs from 'node:fs';
import * as http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { ApiError, toServiceError } from '../errors';
import { type Malformed, malformedReason } from './decode';
import { type AuthContext, authenticate } from './identity';
import { FrameTracker, RequestBudget, type RequestBudgetLimits, StreamLimiter, type StreamLimits, peerHost } from './limits';
import { type Policy, PolicyError, isAllowed, isMutating, methodKey, parsePolicy, requiredRole, resourceOf, resourceString } from './policy';

export interface SecurityOptions {
  /** Authorization policy: parsed, or a JSON file that is re-read when it changes. Unset = authorization off. */
  authzPolicy?: Policy | { file: string; reloadIntervalMs?: number };
  /** Stream limits. */
  limits?: StreamLimits;
  /** Bytes of request messages still being received, per client and in total. */
  requestBudget?: RequestBudgetLimits;
  /** grpc.health.v1.Health/Watch streams (unauthenticated: counted per peer address). Default 64 in total, 16 per peer. */
  healthWatches?: StreamLimits;
}

/** An open stream whose authorization is re-checked when the policy changes. */
export interface TrackedStream {
  path: string;
  principal: string;
  /** The request that was authorized (Monitor: its subscribe message). */
  request: unknown;
  metadata: grpc.Metadata;
  authContext: AuthContext;
  /** Ends the stream with this error (idempotent). */
  end(err: ApiError): void;
}

/** What a call wrapper needs from a grpc-js server call. */
export interface CallLike {
  metadata: grpc.Metadata;
  getPath(): string;
  getPeer(): string;
  getAuthContext(): AuthContext;
}

export const Denied = {
  unauthenticated: (why: string) => new ApiError(grpc.status.UNAUTHENTICATED, 'HV_STATUS_ACCESS_DENIED', `unauthenticated: ${why}`),
  permission: (msg: string) => new ApiError(grpc.status.PERMISSION_DENIED, 'HV_STATUS_ACCESS_DENIED', msg),
  malformed: (method: string, why: string) =>
    new ApiError(grpc.status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER', `the request is not a valid ${method} request message: ${why}`),
  limit: (why: string) => new ApiError(grpc.status.RESOURCE_EXHAUSTED, 'HV_STATUS_NO_RESOURCES', why),
};

/** An authorization decision, as the metrics count it (vsm_authz_decisions_total{decision}). */
export type AuthzDecision = 'allow' | 'deny' | 'unauthenticated' | 'revoked';

export class CallGuard {
  /** Told of every authorization decision (only made with a policy); unset = nothing is reported. */
  onDecision: ((d: AuthzDecision) => void) | undefined;
  private policy: Policy | undefined;
  private readonly limiter: StreamLimiter;
  private readonly healthLimiter: StreamLimiter;
  readonly requestBudget: RequestBudget;
  private policyTimer: NodeJS.Timeout | undefined;
  private readonly tracked = new Set<TrackedStream>();
  /**
   * The HTTP/2 stream under each call that streams responses, by the call's metadata object (set by
   * the interceptor). Not for unary calls, which never need it: V8's young-generation GC keeps the
   * value of a WeakMap entry whose key is young as if it were strong, so an entry per unary call
   * kept every call's HTTP/2 stream and grpc-js call (≈3.7 KB) alive through the next scavenge and
   * into the old generation: scavenges of 9-14 ms instead of 1-2, a Mark-Compact every few seconds,
   * ≈25-30 µs of the service's CPU per unary call on this host (bench/README.md "Unary guest actions").
   */
  private readonly transports = new WeakMap<grpc.Metadata, http2.ServerHttp2Stream>();

  constructor(
    opts: SecurityOptions,
    private readonly log: Logger,
  ) {
    this.limiter = new StreamLimiter(opts.limits);
    this.healthLimiter = new StreamLimiter({
      maxStreams: opts.healthWatches?.maxStreams ?? 64,
      maxStreamsPerClient: opts.healthWatches?.maxStreamsPerClient ?? 16,
    });
    this.requestBudget = new RequestBudget(opts.requestBudget);
    const p = opts.authzPolicy;
    if (p && 'file' in p) {
      let text = fs.readFileSync(p.file, 'utf8');
      this.policy = parsePolicy(text, p.file);
      this.policyTimer = setInterval(() => {
        fs.readFile(p.file, 'utf8', (err, now) => {
          if (err) return void this.log.warn({ err: err.message }, 'authorization policy unreadable; keeping the current one');
          if (now === text) return;
          text = now;
          try {
            this.policy = parsePolicy(now, p.file);
            this.log.info({ policy: p.file, principals: this.policy.principals.size }, 'authorization policy reloaded');
            this.recheckStreams();
          } catch (e) {
            this.log.warn({ err: e instanceof PolicyError ? e.message : String(e) }, 'authorization policy changed but is invalid; keeping the current one');
          }
        });
      }, p.reloadIntervalMs ?? 2000);
      this.policyTimer.unref();
    } else {
      this.policy = p;
    }
    if (this.policy) log.info({ principals: this.policy.principals.size }, 'authorization enabled');
    else log.info('authorization disabled (no --authz-policy): every caller may call every RPC');
  }

  get authzEnabled(): boolean {
    return this.policy !== undefined;
  }
  get streams(): StreamLimiter {
    return this.limiter;
  }
  get healthWatches(): StreamLimiter {
    return this.healthLimiter;
  }
  /** Open streams whose authorization is re-checked on policy changes. */
  get trackedStreams(): number {
    return this.tracked.size;
  }

  /** The caller's principal (undefined when authorization is off). Throws UNAUTHENTICATED. */
  authenticate(call: CallLike): string | undefined {
    const policy = this.policy;
    if (!policy) return undefined;
    const a = authenticate(policy, call.metadata, call.getAuthContext());
    if (a.ok) return a.principal;
    this.log.warn(
      { audit: true, principal: null, peer: call.getPeer(), method: methodKey(call.getPath()), decision: 'deny', reason: a.why },
      'audit: unauthenticated call refused',
    );
    this.onDecision?.('unauthenticated');
    throw Denied.unauthenticated(a.why);
  }

  /** Role check on the resource `req` names; audit-logged. No-op when authorization is off. */
  authorize(path: string, principal: string | undefined, req: unknown): void {
    const policy = this.policy;
    if (!policy || principal === undefined) return;
    const method = methodKey(path);
    const role = requiredRole(path);
    const resource = resourceOf(path, req);
    const res = resourceString(resource);
    if (!isAllowed(policy, principal, role, resource)) {
      this.log.warn({ audit: true, principal, method, resource: res, role, decision: 'deny' }, 'audit: permission denied');
      this.onDecision?.('deny');
      throw Denied.permission(`${principal} may not call ${method} on ${res} (needs role ${role})`);
    }
    if (isMutating(path)) this.log.info({ audit: true, principal, method, resource: res, role, decision: 'allow' }, 'audit: allowed');
    this.onDecision?.('allow');
  }

  /**
   * A stream slot for the caller (principal, else peer address); throws RESOURCE_EXHAUSTED. Taken
   * only once the stream is authorized, so a caller without the role holds no slot.
   */
  acquireStream(call: CallLike, principal: string | undefined): () => void {
    const client = clientKey(principal, call.getPeer());
    const r = this.limiter.acquire(client);
    if (r.ok) return r.release;
    this.log.warn({ method: methodKey(call.getPath()), client, active: this.limiter.active }, 'stream refused: limit reached');
    throw Denied.limit(r.why);
  }

  /** A grpc.health.v1.Health/Watch slot for the peer; throws RESOURCE_EXHAUSTED. */
  acquireHealthWatch(peer: string): () => void {
    const client = `peer:${peerHost(peer)}`;
    const r = this.healthLimiter.acquire(client);
    if (r.ok) return r.release;
    this.log.warn({ method: 'grpc.health.v1.Health/Watch', client, active: this.healthLimiter.active }, 'health watch refused: limit reached');
    throw Denied.limit(r.why.replace('concurrent streams', 'concurrent health watches'));
  }

  /**
   * Registers an authorized open stream: when the policy changes, its principal's credentials and
   * role are checked again and the stream is ended if they no longer hold. Returns the
   * unregistration. No-op when authorization is off.
   */
  track(s: TrackedStream): () => void {
    if (!this.policy) return () => undefined;
    this.tracked.add(s);
    return () => void this.tracked.delete(s);
  }

  /** Why `s` may no longer run under the current policy, or undefined when it still may. */
  private revoked(s: TrackedStream): ApiError | undefined {
    const policy = this.policy;
    if (!policy) return undefined;
    const method = methodKey(s.path);
    const a = authenticate(policy, s.metadata, s.authContext);
    if (!a.ok) return Denied.unauthenticated(`${a.why} (the authorization policy changed while ${method} was open)`);
    if (a.principal !== s.principal)
      return Denied.unauthenticated(`the credentials now name ${a.principal}, not ${s.principal} (the authorization policy changed while ${method} was open)`);
    const role = requiredRole(s.path);
    const resource = resourceOf(s.path, s.request);
    if (!isAllowed(policy, s.principal, role, resource))
      return Denied.permission(
        `${s.principal} may no longer call ${method} on ${resourceString(resource)} (needs role ${role}); the authorization policy changed`,
      );
    return undefined;
  }

  /** Re-checks every open stream against the current policy and ends those no longer allowed. */
  recheckStreams(): number {
    let ended = 0;
    for (const s of [...this.tracked]) {
      const err = this.revoked(s);
      if (!err) continue;
      this.tracked.delete(s);
      ended++;
      this.log.warn(
        {
          audit: true,
          principal: s.principal,
          method: methodKey(s.path),
          resource: resourceString(resourceOf(s.path, s.request)),
          decision: 'deny',
          reason: err.message,
        },
        'audit: open stream ended, authorization revoked',
      );
      this.onDecision?.('revoked');
      s.end(err);
    }
    return ended;
  }

  /** The HTTP/2 stream a call that streams responses runs on (to reset a stream whose client stopped reading). */
  transportOf(metadata: grpc.Metadata): http2.ServerHttp2Stream | undefined {
    return this.transports.get(metadata);
  }

  malformed(path: string, m: Malformed): ApiError {
    return Denied.malformed(methodKey(path), malformedReason(m));
  }

  /**
   * Runs on every call's headers, before its request body is read:
   *   - with a policy, refuses unauthenticated calls for every service except grpc.health.v1
   *     (probes carry no credentials) - so reflection needs credentials too - and refuses a vsm.v1
   *     call whose principal holds the method's role on no partition at all (PERMISSION_DENIED):
   *     such a call cannot succeed, so not a byte of its body is buffered;
   *   - counts the bytes of request messages still being received (per client and in total) and
   *     refuses a call that would go over the budget (RESOURCE_EXHAUSTED), so half-sent requests
   *     cannot hold unbounded memory.
   */
  interceptor(): grpc.ServerInterceptor {
    return (method, call) => {
      // grpc-js passes its own call object to the first interceptor; its HTTP/2 stream is where
      // request bytes arrive (not part of grpc-js's typed API: feature-tested, and the request
      // budget test fails if a grpc-js upgrade moves it).
      const h2 = (call as unknown as { stream?: Partial<http2.ServerHttp2Stream> }).stream;
      const stream = h2 && typeof h2.on === 'function' && typeof h2.close === 'function' && 'session' in h2 ? (h2 as http2.ServerHttp2Stream) : undefined;
      const refuse = (e: ApiError) => {
        const err = toServiceError(e);
        call.sendStatus({ code: err.code, details: err.details, metadata: err.metadata });
        // Tell the client to stop uploading (RFC 9113 8.1: a response before the request is
        // complete, then RST_STREAM NO_ERROR); the status above is sent first.
        if (stream)
          setImmediate(() => {
            if (!stream.closed && !stream.destroyed) stream.close(http2.constants.NGHTTP2_NO_ERROR);
          });
      };
      return new grpc.ServerInterceptingCall(call, {
        start: (next) =>
          next({
            onReceiveMetadata: (md, mdNext) => {
              let principal: string | undefined;
              const policy = this.policy;
              if (policy && !method.path.startsWith('/grpc.health.v1.')) {
                const a = authenticate(policy, md, call.getAuthContext());
                if (!a.ok) {
                  this.log.warn(
                    { audit: true, principal: null, peer: call.getPeer(), method: methodKey(method.path), decision: 'deny', reason: a.why },
                    'audit: unauthenticated call refused',
                  );
                  this.onDecision?.('unauthenticated');
                  return refuse(Denied.unauthenticated(a.why));
                }
                principal = a.principal;
                if (method.path.startsWith('/vsm.v1.')) {
                  const role = requiredRole(method.path);
                  if (!isAllowed(policy, principal, role, { kind: 'any', label: '' })) {
                    const m = methodKey(method.path);
                    this.log.warn(
                      {
                        audit: true,
                        principal,
                        method: m,
                        resource: ANY_PARTITION,
                        role,
                        decision: 'deny',
                        reason: `no ${role} role on any partition; the request was not read`,
                      },
                      'audit: permission denied',
                    );
                    this.onDecision?.('deny');
                    return refuse(Denied.permission(`${principal} may not call ${m} on any partition (needs role ${role})`));
                  }
                }
              }
              if (stream) {
                if (method.responseStream) this.transports.set(md, stream);
                this.meterRequestBytes(stream, clientKey(principal, call.getPeer()), methodKey(method.path), refuse);
                compactIncomingChunks(call);
              }
              mdNext(md);
            },
          }),
      });
    };
  }

  /** Charges the bytes of each incomplete request message of `stream` to `client`'s budget. */
  private meterRequestBytes(stream: http2.ServerHttp2Stream, client: string, method: string, refuse: (e: ApiError) => void): void {
    const frames = new FrameTracker();
    let held = 0;
    const done = () => {
      stream.off('data', onData);
      this.requestBudget.give(client, held);
      held = 0;
    };
    const onData = (chunk: Buffer) => {
      const delta = frames.push(chunk);
      if (delta <= 0) {
        this.requestBudget.give(client, -delta);
        held += delta;
        return;
      }
      const r = this.requestBudget.take(client, delta);
      if (r.ok) {
        held += delta;
        return;
      }
      done();
      this.log.warn({ method, client, held: this.requestBudget.held }, 'call refused: request bytes over budget');
      refuse(Denied.limit(r.why));
    };
    stream.on('data', onData);
    stream.once('close', done);
  }

  close(): void {
    if (this.policyTimer) clearInterval(this.policyTimer);
    this.policyTimer = undefined;
    this.tracked.clear();
  }
}

/**
 * Node's HTTP/2 hands each DATA frame to JS as a view into the connection's read buffer (64 KiB,
 * shared by every stream on the connection), and grpc-js keeps those views until a message is
 * complete: a stream receiving a large message interleaved with others, or in tiny frames, keeps
 * whole read buffers alive for the few bytes that are its own. The call's decoder gets a compact
 * copy of such a view instead, so what a half-received message holds is close to what the request
 * budget counts (measured, 96 MiB of unfinished requests: service RSS +195 MiB without the copy,
 * +140..160 MiB with it, the rest being read-buffer churn). (grpc-js's decoder is
 * not part of its typed API: feature-tested; test/security/request-memory.test.ts measures it.)
 */
function compactIncomingChunks(call: unknown): void {
  const decoder = (call as { decoder?: { write?: (b: Buffer) => Buffer[] } }).decoder;
  if (!decoder || typeof decoder.write !== 'function') return;
  const write = decoder.write.bind(decoder);
  decoder.write = (b: Buffer) => write(b.byteLength < b.buffer.byteLength ? Buffer.from(b) : b);
}

/** The audit `resource` of a call refused from its headers: its request (naming the partition) was not read. */
export const ANY_PARTITION = '(any partition)';

/** The key limits count a caller under: its principal, else its peer address. */
export function clientKey(principal: string | undefined, peer: string): string {
  return principal !== undefined ? `principal:${principal}` : `peer:${peerHost(peer)}`;
}
