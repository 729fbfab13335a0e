// Test support: an in-process OTLP trace receiver (OTLP/HTTP, http/protobuf, POST /v1/traces) on a
// loopback port. It decodes ExportTraceServiceRequest with the subset of the OTLP protos the tests
// read (opentelemetry/proto/trace/v1/trace.proto, field numbers as published) and keeps the spans.
import * as http from 'node:http';
import * as protobuf from 'protobufjs';

const OTLP_TRACE_SUBSET = `
syntax = "proto3";
package otlp;
message AnyValue { oneof value { string string_value = 1; bool bool_value = 2; int64 int_value = 3; double double_value = 4; } }
message KeyValue { string key = 1; AnyValue value = 2; }
message Resource { repeated KeyValue attributes = 1; }
message InstrumentationScope { string name = 1; string version = 2; }
message Status { string message = 2; int32 code = 3; }
message Span {
  bytes trace_id = 1; bytes span_id = 2; string trace_state = 3; bytes parent_span_id = 4; string name = 5; int32 kind = 6;
  fixed64 start_time_unix_nano = 7; fixed64 end_time_unix_nano = 8; repeated KeyValue attributes = 9; Status status = 15;
}
message ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; }
message ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }
message ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }
`;

/** OTLP SpanKind values. */
export const SPAN_KIND = { INTERNAL: 1, SERVER: 2, CLIENT: 3 } as const;

export interface ReceivedSpan {
  service: string;
  name: string;
  kind: number;
  traceId: string;
  spanId: string;
  /** '' for a root span. */
  parentSpanId: string;
  attributes: Record<string, string | number | boolean>;
  statusCode: number;
}

export interface OtlpReceiver {
  /** http://127.0.0.1:PORT (what OTEL_EXPORTER_OTLP_ENDPOINT takes). */
  endpoint: string;
  spans: ReceivedSpan[];
  /** Export requests received (each decoded). */
  requests: number;
  close(): Promise<void>;
}

type Decoded = {
  resourceSpans?: {
    resource?: { attributes?: { key: string; value?: Record<string, unknown> }[] };
    scopeSpans?: {
      spans?: {
        traceId: Uint8Array;
        spanId: Uint8Array;
        parentSpanId?: Uint8Array;
        name: string;
        kind?: number;
        attributes?: { key: string; value?: Record<string, unknown> }[];
        status?: { code?: number };
      }[];
    }[];
  }[];
};

const attrs = (kvs: { key: string; value?: Record<string, unknown> }[] = []) =>
  Object.fromEntries(
    kvs.map((kv) => {
      const v = kv.value ?? {};
      if (v.intValue !== undefined) return [kv.key, Number(v.intValue)];
      return [kv.key, (v.stringValue ?? v.boolValue ?? v.doubleValue) as string | number | boolean];
    }),
  );

export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const Req = protobuf.parse(OTLP_TRACE_SUBSET, { keepCase: false }).root.lookupType('otlp.ExportTraceServiceRequest');
  const r: OtlpReceiver = { endpoint: '', spans: [], requests: 0, close: async () => undefined };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/traces' || !String(req.headers['content-type']).startsWith('application/x-protobuf')) {
        res.writeHead(404).end();
        return;
      }
      let msg: Decoded;
      try {
        msg = Req.toObject(Req.decode(Buffer.concat(chunks)), { longs: String, bytes: Array, defaults: false }) as Decoded;
      } catch {
        res.writeHead(400).end();
        return;
      }
      r.requests++;
      const hex = (b?: Uint8Array | number[]) => Buffer.from(b ?? []).toString('hex');
      for (const rs of msg.resourceSpans ?? []) {
        const service = String(attrs(rs.resource?.attributes)['service.name'] ?? '');
        for (const ss of rs.scopeSpans ?? [])
          for (const s of ss.spans ?? [])
            r.spans.push({
              service,
              name: s.name,
              kind: s.kind ?? 0,
              traceId: hex(s.traceId),
              spanId: hex(s.spanId),
              parentSpanId: hex(s.parentSpanId),
              attributes: attrs(s.attributes),
              statusCode: s.status?.code ?? 0,
            });
      }
      // ExportTraceServiceResponse {} (empty message).
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end(Buffer.alloc(0));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  r.endpoint = `http://127.0.0.1:${port}`;
  r.close = () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  return r;
}
