// vsm.v1 implementation, observability: metrics (Prometheus, prom-client), their HTTP endpoint with
// the Kubernetes probes, and OpenTelemetry traces, put together for a process by startObservability.
import type { Logger } from 'pino';
import type { Backend } from '../backend';
import { CoreBackend } from '../backends/core-backend';
import type { Config } from '../config';
import { VsmMetrics } from './metrics';
import { type RunningMetricsServer, startMetricsServer } from './metrics-server';
import { type RpcTelemetry, rpcTelemetry } from './telemetry';
import { Tracing } from './tracing';

export { VSM_METRIC_NAMES, VsmMetrics, codeName } from './metrics';
export { METRICS_PLAINTEXT_REMOTE_REFUSED, type MetricsServerOptions, type RunningMetricsServer, startMetricsServer } from './metrics-server';
export { type RpcScope, type RpcTelemetry, rpcTelemetry } from './telemetry';
export { type SpanScope, Tracing, outgoingInterceptors } from './tracing';

export interface Observability {
  /** Undefined without --metrics-listen. */
  metrics: VsmMetrics | undefined;
  /** Undefined without OTEL_EXPORTER_OTLP_ENDPOINT. */
  tracing: Tracing | undefined;
  /** What the gRPC server reports to (ServerOptions.telemetry); undefined when both are off. */
  telemetry: RpcTelemetry | undefined;
  /** The metrics endpoint, when on. */
  endpoint: RunningMetricsServer | undefined;
  /** Counts `backend`'s partitions, VPs, transitions and intercepts (core-backed backends; others: nothing). */
  observeBackend(backend: Backend): void;
  /** Readiness (/readyz): set once the gRPC server listens, cleared when shutdown begins. */
  setReady(ready: boolean): void;
  /** Stops the endpoint and flushes the traces. */
  close(): Promise<void>;
}

/**
 * The observability of process `svc` from its configuration (--metrics-listen) and environment
 * (OTEL_*). Start it before the backend (the agent backend's clients carry the trace context) and
 * before the gRPC server (probes answer while the process restores its state: not ready yet).
 */
export async function startObservability(svc: string, cfg: Config, log: Logger, env: NodeJS.ProcessEnv = process.env): Promise<Observability> {
  const tracing = Tracing.fromEnv(svc, env, log);
  const metrics = cfg.metricsListen ? new VsmMetrics() : undefined;
  let ready = false;
  let endpoint: RunningMetricsServer | undefined;
  if (metrics && cfg.metricsListen)
    endpoint = await startMetricsServer({
      listen: cfg.metricsListen,
      metrics,
      ready: () => ready,
      tls: cfg.tls,
      allowInsecureRemote: cfg.metricsInsecureAllowRemote || cfg.insecureAllowRemote,
      logger: log,
    });
  return {
    metrics,
    tracing,
    telemetry: rpcTelemetry(metrics, tracing),
    endpoint,
    observeBackend(backend) {
      if (metrics && backend instanceof CoreBackend) metrics.observeBackend(backend);
    },
    setReady(r) {
      ready = r;
    },
    async close() {
      ready = false;
      await endpoint?.close();
      await tracing?.shutdown().catch((e: unknown) => log.warn({ err: e }, 'OpenTelemetry: flushing traces failed'));
    },
  };
}
