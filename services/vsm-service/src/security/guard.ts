// service layer, security: the per-call checks the server's call wrappers run before a handler.
//   authenticate (policy configured)  -> UNAUTHENTICATED, reason HV_STATUS_ACCESS_DENIED
//   malformed request                 -> INVALID_ARGUMENT, reason HV_STATUS_INVALID_PARAMETER
//   authorize role on the partition   -> PERMISSION_DENIED, reason HV_STATUS_ACCESS_DENIED
//   stream slots (total / per client) -> RESOURCE_EXHAUSTED, reason HV_STATUS_NO_RESOURCES
// Denials are audit-logged at warn, allowed mutating calls at info (fields: audit, principal,
// method, resource, decision). With no policy configured, authorization is off: every caller may
// do everything (the default for a loopback-only development server).
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { ApiError, toServiceError } from '../errors';
import { Malformed, malformedReason } from './decode';
import { AuthContext, authenticate } from './identity';
import { StreamLimiter, StreamLimits, peerHost } from './limits';
import { Policy, PolicyError, isAllowed, isMutating, methodKey, parsePolicy, requiredRole, resourceOf, resourceString } from './policy';

export interface SecurityOptions {
  /** Authorization policy: parsed, or a JSON file that is re-read when it changes. Unset = authorization off. */
  authzPolicy?: Policy | { file: string; reloadIntervalMs?: number };
  /** Stream limits. */
  limits?: StreamLimits;
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
  malformed: (method: string, why: string) => new ApiError(grpc.status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER', `the request is not a valid ${method} request message: ${why}`),
  limit: (why: string) => new ApiError(grpc.status.RESOURCE_EXHAUSTED, 'HV_STATUS_NO_RESOURCES', why),
};

export class CallGuard {
  private policy: Policy | undefined;
  private readonly limiter: StreamLimiter;
  private policyTimer: NodeJS.Timeout | undefined;

  constructor(opts: SecurityOptions, private readonly log: Logger) {
    this.limiter = new StreamLimiter(opts.limits);
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

  /** The caller's principal (undefined when authorization is off). Throws UNAUTHENTICATED. */
  authenticate(call: CallLike): string | undefined {
    const policy = this.policy;
    if (!policy) return undefined;
    const a = authenticate(policy, call.metadata, call.getAuthContext());
    if (a.ok) return a.principal;
    this.log.warn({ audit: true, principal: null, peer: call.getPeer(), method: methodKey(call.getPath()), decision: 'deny', reason: a.why }, 'audit: unauthenticated call refused');
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
      throw Denied.permission(`${principal} may not call ${method} on ${res} (needs role ${role})`);
    }
    if (isMutating(path)) this.log.info({ audit: true, principal, method, resource: res, role, decision: 'allow' }, 'audit: allowed');
  }

  /** A stream slot for the caller (principal, else peer address); throws RESOURCE_EXHAUSTED. */
  acquireStream(call: CallLike, principal: string | undefined): () => void {
    const client = principal !== undefined ? `principal:${principal}` : `peer:${peerHost(call.getPeer())}`;
    const r = this.limiter.acquire(client);
    if (r.ok) return r.release;
    this.log.warn({ method: methodKey(call.getPath()), client, active: this.limiter.active }, 'stream refused: limit reached');
    throw Denied.limit(r.why);
  }

  malformed(path: string, m: Malformed): ApiError {
    return Denied.malformed(methodKey(path), malformedReason(m));
  }

  /**
   * Refuses unauthenticated calls before their request is even decoded, for every service except
   * grpc.health.v1 (probes carry no credentials) - so reflection needs credentials too.
   */
  interceptor(): grpc.ServerInterceptor {
    return (method, call) =>
      new grpc.ServerInterceptingCall(call, {
        start: (next) =>
          next({
            onReceiveMetadata: (md, mdNext) => {
              const policy = this.policy;
              if (!policy || method.path.startsWith('/grpc.health.v1.')) return mdNext(md);
              const a = authenticate(policy, md, call.getAuthContext());
              if (a.ok) return mdNext(md);
              this.log.warn({ audit: true, principal: null, peer: call.getPeer(), method: methodKey(method.path), decision: 'deny', reason: a.why }, 'audit: unauthenticated call refused');
              const err = toServiceError(Denied.unauthenticated(a.why));
              call.sendStatus({ code: err.code, details: err.details, metadata: err.metadata });
            },
          }),
      });
  }

  close(): void {
    if (this.policyTimer) clearInterval(this.policyTimer);
    this.policyTimer = undefined;
  }
}
