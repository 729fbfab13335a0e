// vsm.v1 implementation, observability: OpenTelemetry traces. A span for every vsm.v1 call a process
// serves (SERVER), a span for every call the service forwards to an agent (CLIENT, RemoteBackend),
// and the W3C trace context (traceparent) in the forwarded call's gRPC metadata, so that the agent's
// span of the same call is a child of the service's. Exported with OTLP (http/protobuf) when
// OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; when it is not, the
// SDK is never loaded, no interceptor is installed and the call wrappers take no span: no cost.
import * as grpc from '@grpc/grpc-js';
import type * as otel from '@opentelemetry/api';
import type { Logger } from 'pino';

/** One call's span: `run` runs the handler in its context (what the handler calls is its child). */
export interface SpanScope {
  run<T>(fn: () => T): T;
  end(code: grpc.status, message?: string): void;
}

/** gRPC codes a server reports as a span error (OpenTelemetry's semantic conventions for RPC servers). */
const SERVER_ERRORS = new Set<number>([
  grpc.status.UNKNOWN,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.UNIMPLEMENTED,
  grpc.status.INTERNAL,
  grpc.status.UNAVAILABLE,
  grpc.status.DATA_LOSS,
]);

const metadataGetter: otel.TextMapGetter<grpc.Metadata> = {
  keys: (md) => Object.keys(md.getMap()),
  get: (md, key) => {
    const v = md.get(key);
    return v.length === 0 ? undefined : v.length === 1 ? String(v[0]) : v.map(String);
  },
};
const metadataSetter: otel.TextMapSetter<grpc.Metadata> = { set: (md, key, value) => md.set(key, value) };

export class Tracing {
  private readonly tracer: otel.Tracer;

  private constructor(
    private readonly api: typeof otel,
    private readonly provider: { shutdown(): Promise<void>; forceFlush(): Promise<void> },
    readonly endpoint: string,
  ) {
    this.tracer = api.trace.getTracer('@vsm/vsm-v1');
  }

  /**
   * Tracing for process `serviceName` when the environment names an OTLP endpoint (undefined
   * otherwise, and when OTEL_SDK_DISABLED=true). Registers the global tracer provider, the
   * AsyncLocalStorage context manager and the W3C propagators.
   */
  static fromEnv(serviceName: string, env: NodeJS.ProcessEnv, log?: Logger): Tracing | undefined {
    if ((env.OTEL_SDK_DISABLED ?? '').toLowerCase() === 'true') return undefined;
    const traces = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
    const base = env.OTEL_EXPORTER_OTLP_ENDPOINT;
    if (!traces && !base) return undefined;
    const url = traces || `${base!.replace(/\/+$/, '')}/v1/traces`;
    const protocol = env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL || env.OTEL_EXPORTER_OTLP_PROTOCOL;
    if (protocol && protocol !== 'http/protobuf')
      log?.warn({ protocol }, 'OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is supported; traces are sent with http/protobuf');
    // Loaded only now: a process without an endpoint never loads the SDK.
    const api = require('@opentelemetry/api') as typeof otel;
    const { NodeTracerProvider } = require('@opentelemetry/sdk-trace-node') as typeof import('@opentelemetry/sdk-trace-node');
    const { BatchSpanProcessor } = require('@opentelemetry/sdk-trace-base') as typeof import('@opentelemetry/sdk-trace-base');
    const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto') as typeof import('@opentelemetry/exporter-trace-otlp-proto');
    const { resourceFromAttributes } = require('@opentelemetry/resources') as typeof import('@opentelemetry/resources');
    const provider = new NodeTracerProvider({
      resource: resourceFromAttributes({ 'service.name': env.OTEL_SERVICE_NAME || serviceName }),
      spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url }), { scheduledDelayMillis: 1000 })],
    });
    provider.register();
    log?.info({ endpoint: url }, 'OpenTelemetry traces exported with OTLP');
    const t = new Tracing(api, provider, url);
    active = t;
    return t;
  }

  /** The span of a call this process serves (`path`: /vsm.v1.Service/Method), child of the caller's traceparent. */
  serverSpan(path: string, metadata: grpc.Metadata): SpanScope {
    const api = this.api;
    const parent = api.propagation.extract(api.ROOT_CONTEXT, metadata, metadataGetter);
    const name = path.slice(1);
    const slash = name.indexOf('/');
    const span = this.tracer.startSpan(
      name,
      { kind: api.SpanKind.SERVER, attributes: { 'rpc.system': 'grpc', 'rpc.service': name.slice(0, slash), 'rpc.method': name.slice(slash + 1) } },
      parent,
    );
    const ctx = api.trace.setSpan(parent, span);
    return {
      run: (fn) => api.context.with(ctx, fn),
      end: (code, message) => {
        span.setAttribute('rpc.grpc.status_code', code);
        if (SERVER_ERRORS.has(code)) span.setStatus({ code: api.SpanStatusCode.ERROR, message });
        span.end();
      },
    };
  }

  /** A client interceptor: a CLIENT span per outgoing call, its context in the call's metadata (traceparent). */
  clientInterceptor(): grpc.Interceptor {
    const api = this.api;
    return (options, nextCall) => {
      const name = options.method_definition.path.slice(1);
      const slash = name.indexOf('/');
      const span = this.tracer.startSpan(name, {
        kind: api.SpanKind.CLIENT,
        attributes: { 'rpc.system': 'grpc', 'rpc.service': name.slice(0, slash), 'rpc.method': name.slice(slash + 1) },
      });
      const ctx = api.trace.setSpan(api.context.active(), span);
      return new grpc.InterceptingCall(nextCall(options), {
        start: (metadata, _listener, next) => {
          api.propagation.inject(ctx, metadata, metadataSetter);
          next(metadata, {
            onReceiveStatus: (status, nextStatus) => {
              span.setAttribute('rpc.grpc.status_code', status.code);
              if (status.code !== grpc.status.OK) span.setStatus({ code: api.SpanStatusCode.ERROR, message: status.details });
              span.end();
              nextStatus(status);
            },
          });
        },
      });
    };
  }

  /** Sends what is buffered. */
  flush(): Promise<void> {
    return this.provider.forceFlush();
  }

  /** Flushes and stops the exporter. */
  async shutdown(): Promise<void> {
    if (active === this) active = undefined;
    await this.provider.shutdown();
  }
}

let active: Tracing | undefined;

/** Interceptors for outgoing vsm.v1 calls (RemoteBackend's agent clients): none unless tracing is on. */
export function outgoingInterceptors(): grpc.Interceptor[] {
  return active ? [active.clientInterceptor()] : [];
}
