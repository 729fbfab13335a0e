// vsm.v1 implementation, observability: what the gRPC server's call wrappers (server.ts) report, in
// one interface: metrics and traces of each call, authorization decisions. Built from whichever of
// the two is on; a server given none has no per-call cost at all.
import type * as grpc from '@grpc/grpc-js';
import type { AuthzDecision } from '../security/guard';
import type { VsmMetrics } from './metrics';
import type { SpanScope, Tracing } from './tracing';

/** One call, from its start to its status. */
export interface RpcScope {
  /** Runs the handler in the call's trace context. */
  run<T>(fn: () => T): T;
  end(code: grpc.status, message?: string): void;
}

export interface RpcTelemetry {
  /** A vsm.v1 call starts: `method` is its RPC name (ReadMsr), `path` /vsm.v1.Service/Method. */
  start(method: string, path: string, stream: boolean, metadata: grpc.Metadata): RpcScope;
  authz(decision: AuthzDecision): void;
}

const direct = <T>(fn: () => T): T => fn();

/** Telemetry from metrics and/or tracing; undefined when neither is on. */
export function rpcTelemetry(metrics: VsmMetrics | undefined, tracing: Tracing | undefined): RpcTelemetry | undefined {
  if (!metrics && !tracing) return undefined;
  return {
    start(method, path, stream, metadata) {
      const done = metrics?.rpcStart(method, stream);
      const span: SpanScope | undefined = tracing?.serverSpan(path, metadata);
      return {
        run: span ? span.run : direct,
        end(code, message) {
          done?.(code);
          span?.end(code, message);
        },
      };
    },
    authz(decision) {
      metrics?.authz(decision);
    },
  };
}
