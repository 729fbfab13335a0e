// fleet: the etcd connection both processes use (etcd3, Microsoft's etcd v3 client). Keys are
// relative to --etcd-prefix (an etcd3 namespace). Unary calls carry a short deadline and the client
// fails over between endpoints; an unreachable etcd is an error the caller reports, never a hang.
import * as fs from 'node:fs';
import { status as Code } from '@grpc/grpc-js';
import { ConsecutiveBreaker, ConstantBackoff, ExponentialBackoff, circuitBreaker, handleWhen, retry } from 'cockatiel';
import { Etcd3, type Namespace, isRecoverableError } from 'etcd3';
import { ApiError } from '../errors';
import type { FleetConfig } from './config';

/** Deadline of one etcd unary call (a txn, a get, a page of a range). */
export const ETCD_CALL_DEADLINE_MS = 5000;

export class FleetStore {
  readonly client: Etcd3;
  /** Every key of the fleet, relative to the prefix. */
  readonly ns: Namespace;

  constructor(
    readonly config: FleetConfig,
    options: { callDeadlineMs?: number } = {},
  ) {
    const tls = config.tls;
    const deadline = options.callDeadlineMs ?? ETCD_CALL_DEADLINE_MS;
    this.client = new Etcd3({
      hosts: config.endpoints,
      credentials: tls
        ? {
            rootCertificate: tls.caFile ? fs.readFileSync(tls.caFile) : (undefined as unknown as Buffer),
            privateKey: tls.keyFile ? fs.readFileSync(tls.keyFile) : undefined,
            certChain: tls.certFile ? fs.readFileSync(tls.certFile) : undefined,
          }
        : undefined,
      dialTimeout: deadline,
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + deadline }),
      faultHandling: {
        // One retry on another endpoint (a killed member); a host that keeps failing is skipped for 2 s.
        global: retry(
          handleWhen((e) => isRecoverableError(e)),
          { maxAttempts: 2, backoff: new ConstantBackoff(50) },
        ),
        host: () =>
          circuitBreaker(
            handleWhen((e) => isRecoverableError(e)),
            { halfOpenAfter: 2000, breaker: new ConsecutiveBreaker(3) },
          ),
        // Watches reconnect quickly: a member coming back is noticed within about a second.
        watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 1000 }).next(),
      },
    });
    this.ns = this.client.namespace(config.prefix);
  }

  close(): void {
    this.client.close();
  }
}

/** An etcd failure as the caller sees it: UNAVAILABLE, saying that the fleet store is the cause. */
export function storeUnavailable(e: unknown, doing: string): ApiError {
  const msg = e instanceof Error ? e.message : String(e);
  return new ApiError(Code.UNAVAILABLE, 'HV_STATUS_OPERATION_FAILED', `fleet store (etcd) unavailable while ${doing}: ${msg}`);
}
