// Observability (#15): OpenTelemetry traces reach an OTLP collector (an in-process receiver,
// test/support/otlp-receiver.ts) from the real processes: vsm-service --backend agent in front of an
// agent, both with OTEL_EXPORTER_OTLP_ENDPOINT set. One call gives one trace: the service's SERVER
// span, its CLIENT span for the call it forwards, and the agent's SERVER span as the child of that
// CLIENT span (the context crossed the process boundary in the gRPC metadata, traceparent). The
// agent is the KVM agent where /dev/kvm is usable, else a second vsm-service (emulator) standing in
// for it: the propagation is the same code (the server wrapper and RemoteBackend's clients).
// Also: without the variable the SDK is never loaded.
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { connect, type pb } from '@vsm/client';
import { AGENT_MAIN, type ChildService, SERVICE_MAIN, envWithoutVsm, spawnService } from '../support/child-service';
import { kvmUnavailableReason } from '../support/kvm-gate';
import { type OtlpReceiver, SPAN_KIND, startOtlpReceiver } from '../support/otlp-receiver';
import { waitFor } from '../support/wait';

jest.setTimeout(120_000);

let receiver: OtlpReceiver;
const children: ChildService[] = [];
const kvmWhy = kvmUnavailableReason();

beforeAll(async () => {
  receiver = await startOtlpReceiver();
});
afterAll(async () => {
  for (const c of children.reverse()) await c.stop();
  await receiver?.close();
});

test(`one call, one trace across service and agent (${kvmWhy ? `agent: an emulator vsm-service, KVM unusable: ${kvmWhy}` : 'agent: vsm-kvm-agent'})`, async () => {
  const otel = (name: string) => ({ ...envWithoutVsm(), OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint, OTEL_SERVICE_NAME: name });
  const agent = await spawnService([], { name: 'agent', main: kvmWhy ? SERVICE_MAIN : AGENT_MAIN, env: otel('test-agent') });
  children.push(agent);
  const service = await spawnService(['--backend', 'agent', '--agent', agent.address], { name: 'service', env: otel('test-service') });
  children.push(service);
  const c = connect(service.address, { deadlineMs: 30_000, retries: 0 });
  try {
    const p = await c.partitions.createPartition({ partition: { vpCount: 1, memoryBytes: 1n << 24n, maximumVtl: 1 } as pb.Partition });
    await c.partitions.getPartition({ name: p.name });
  } finally {
    c.close();
  }
  const NAME = 'vsm.v1.PartitionService/CreatePartition';
  const spans = await waitFor(
    'the CreatePartition spans of both processes',
    () => {
      const s = receiver.spans.filter((x) => x.name === NAME);
      return s.some((x) => x.service === 'test-agent') && s.filter((x) => x.service === 'test-service').length >= 2 ? s : undefined;
    },
    60_000,
    100,
  );
  const server = spans.find((x) => x.service === 'test-service' && x.kind === SPAN_KIND.SERVER)!;
  const client = spans.find((x) => x.service === 'test-service' && x.kind === SPAN_KIND.CLIENT)!;
  const agentSpan = spans.find((x) => x.service === 'test-agent' && x.kind === SPAN_KIND.SERVER)!;
  expect(server).toBeDefined();
  expect(client).toBeDefined();
  expect(agentSpan).toBeDefined();
  expect(server.parentSpanId).toBe(''); // the client sent no trace context: a root span
  expect(client.traceId).toBe(server.traceId);
  expect(client.parentSpanId).toBe(server.spanId);
  expect(agentSpan.traceId).toBe(server.traceId);
  expect(agentSpan.parentSpanId).toBe(client.spanId);
  expect(server.attributes).toMatchObject({
    'rpc.system': 'grpc',
    'rpc.service': 'vsm.v1.PartitionService',
    'rpc.method': 'CreatePartition',
    'rpc.grpc.status_code': 0,
  });
  expect(agentSpan.attributes['rpc.grpc.status_code']).toBe(0);
  // GetPartition: its own trace, also on both sides.
  await waitFor('the GetPartition spans', () => receiver.spans.filter((x) => x.name === 'vsm.v1.PartitionService/GetPartition').length >= 3, 60_000, 100);
});

test('without OTEL_EXPORTER_OTLP_ENDPOINT the OpenTelemetry SDK is not loaded and no interceptor is installed', () => {
  const dist = path.resolve(__dirname, '../../services/vsm-v1/dist/index.js');
  const script = `
    const v = require(${JSON.stringify(dist)});
    const pino = require('pino');
    v.startObservability('probe', v.parseConfig([], {}), pino({ level: 'silent' }), {}).then((o) => {
      // prom-client loads @opentelemetry/api itself (exemplars; without an SDK it is no-ops): the SDK is what must stay out.
      const loaded = Object.keys(require.cache).filter((k) => k.includes('@opentelemetry/') && !k.includes('@opentelemetry/api/'));
      console.log(JSON.stringify({ tracing: o.tracing !== undefined, telemetry: o.telemetry !== undefined, interceptors: v.outgoingInterceptors().length, loaded }));
    });`;
  const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { cwd: path.resolve(__dirname, '../..'), env: envWithoutVsm() }).toString());
  expect(out).toEqual({ tracing: false, telemetry: false, interceptors: 0, loaded: [] });
});
