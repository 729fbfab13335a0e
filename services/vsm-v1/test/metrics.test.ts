// Observability (#15): the metrics move as calls happen. A real gRPC server over CoreBackend with
// VsmMetrics as its telemetry; every assertion reads the registry after a call (no timing). Also:
// authorization decisions, the KVM observer hooks, the HTTP endpoint (/metrics, /livez, /readyz) and
// its loopback rule, --metrics-listen parsing, and that labels stay bounded (no partition id).
import * as http from 'node:http';
import { connect, pb, type VsmClient } from '@vsm/client';
import pino from 'pino';
import { setupVtl1Partition, startSecured, tokenHash } from '../../../test/security/support';
import { waitFor } from '../../../test/support/wait';
import { CoreBackend } from '../src/backends/core-backend';
import { UsageError, parseConfig } from '../src/config';
import { VSM_METRIC_NAMES, VsmMetrics, rpcTelemetry, startMetricsServer } from '../src/observability';
import { parsePolicy } from '../src/security';
import { type RunningServer, startServer } from '../src/server';

const logger = pino({ level: 'silent' });

/** The value of `name` with exactly these labels (0 when the series does not exist). */
async function value(m: VsmMetrics, name: string, labels: Record<string, string> = {}): Promise<number> {
  const metric = m.registry.getSingleMetric(name);
  if (!metric) throw new Error(`no metric ${name}`);
  const got = await metric.get();
  const want = Object.entries(labels);
  const v = got.values.find(
    (x) =>
      want.every(([k, val]) => String((x.labels as Record<string, unknown>)[k]) === val) &&
      Object.keys(x.labels).filter((k) => k !== 'le').length === want.length &&
      !('le' in x.labels),
  );
  return v?.value ?? 0;
}
/** A histogram's observation count. */
async function count(m: VsmMetrics, name: string, labels: Record<string, string> = {}): Promise<number> {
  const got = await m.registry.getSingleMetric(name)!.get();
  const want = Object.entries(labels);
  return (
    got.values.find(
      (x) =>
        (x as { metricName?: string }).metricName === `${name}_count` && want.every(([k, val]) => String((x.labels as Record<string, unknown>)[k]) === val),
    )?.value ?? 0
  );
}

function get(url: string): Promise<{ status: number; body: string; type: string | undefined }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, type: res.headers['content-type'] }));
      })
      .on('error', reject);
  });
}

describe('metrics of a core-backed server', () => {
  let metrics: VsmMetrics;
  let backend: CoreBackend;
  let srv: RunningServer;
  let c: VsmClient;

  beforeAll(async () => {
    metrics = new VsmMetrics();
    backend = new CoreBackend();
    metrics.observeBackend(backend);
    srv = await startServer({ listen: '127.0.0.1:0', backend, logger, shutdownGraceMs: 200, telemetry: rpcTelemetry(metrics, undefined) });
    c = connect(srv.address, { deadlineMs: 20_000, retries: 0 });
  });
  afterAll(async () => {
    c.close();
    await srv.shutdown('test');
  });

  test('unary RPCs: requests by method and code, durations; partitions and VPs by state', async () => {
    await c.partitions.createPartition({ partitionId: 'm1', partition: { vpCount: 2, memoryBytes: 1n << 24n, maximumVtl: 1 } as pb.Partition });
    expect(await value(metrics, 'vsm_rpc_requests_total', { method: 'CreatePartition', code: 'OK' })).toBe(1);
    expect(await count(metrics, 'vsm_rpc_duration_seconds', { method: 'CreatePartition' })).toBe(1);
    await expect(c.partitions.getPartition({ name: 'partitions/nope' })).rejects.toThrow();
    expect(await value(metrics, 'vsm_rpc_requests_total', { method: 'GetPartition', code: 'NOT_FOUND' })).toBe(1);
    await c.partitions.getPartition({ name: 'partitions/m1' });
    expect(await value(metrics, 'vsm_rpc_requests_total', { method: 'GetPartition', code: 'OK' })).toBe(1);
    expect(await count(metrics, 'vsm_rpc_duration_seconds', { method: 'GetPartition' })).toBe(2);
    expect(await value(metrics, 'vsm_partitions', { state: 'idle' })).toBe(1);
    expect(await value(metrics, 'vsm_vps', { state: 'idle' })).toBe(2);
    await c.partitions.deletePartition({ name: 'partitions/m1' });
    expect(await value(metrics, 'vsm_partitions', { state: 'idle' })).toBe(0);
    expect(await value(metrics, 'vsm_vps', { state: 'idle' })).toBe(0);
  });

  test('VTL transitions, intercepts (monitor route: pending, answer time, suspended VP), streams, SynIC queue depth', async () => {
    const secret = Buffer.from('top secret');
    const { name, vps } = await setupVtl1Partition(c, 'm2', 1, secret);
    // setupVtl1Partition: a VtlCall into VTL1 and a VtlReturn back on the VP.
    expect(await value(metrics, 'vsm_vtl_transitions_total', { from: '0', to: '1', reason: 'vtl_call' })).toBe(1);
    expect(await value(metrics, 'vsm_vtl_transitions_total', { from: '1', to: '0', reason: 'return' })).toBe(1);

    // Monitor route: a VTL0 read of the protected page waits for the monitor's answer.
    await c.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
    const mon = c.intercepts.monitor();
    mon.send({ kind: { $case: 'subscribe', value: { name, accessMask: 0 } } } as pb.MonitorRequest);
    const events = mon.events[Symbol.asyncIterator]();
    expect((await events.next()).value?.kind?.$case).toBe('subscription');
    expect(await value(metrics, 'vsm_streams_active', { method: 'Monitor' })).toBe(1);
    const read = c.guest.readMemory({ name: vps[0]!, gpa: 0x40000n, length: secret.length });
    const ev = (await events.next()).value as pb.MonitorResponse;
    expect(ev.kind?.$case).toBe('intercept');
    const id = ev.kind?.$case === 'intercept' ? ev.kind.value.interceptId : 0n;
    expect(await value(metrics, 'vsm_intercepts_total', { route: 'monitor', access: 'read' })).toBe(1);
    expect(await value(metrics, 'vsm_intercepts_pending')).toBe(1);
    expect(await value(metrics, 'vsm_vps', { state: 'intercept_suspended' })).toBe(1);
    expect(await count(metrics, 'vsm_intercept_answer_seconds')).toBe(0);
    mon.send({
      kind: { $case: 'reply', value: { interceptId: id, action: pb.InterceptAction.INTERCEPT_ACTION_SKIP, data: Buffer.alloc(0) } },
    } as pb.MonitorRequest);
    await read;
    expect(await value(metrics, 'vsm_intercepts_pending')).toBe(0);
    expect(await count(metrics, 'vsm_intercept_answer_seconds')).toBe(1);
    expect(await value(metrics, 'vsm_vps', { state: 'idle' })).toBe(1);
    mon.close();
    await waitFor('the Monitor stream to end', async () => (await value(metrics, 'vsm_streams_active', { method: 'Monitor' })) === 0);
    expect(await value(metrics, 'vsm_rpc_requests_total', { method: 'Monitor', code: 'OK' })).toBe(1);

    // Route HIGHER_VTL: each intercept is a message to VTL1's SINT0; the second waits behind the first.
    await c.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_HIGHER_VTL });
    expect(await value(metrics, 'vsm_synic_queue_depth')).toBe(0);
    for (let i = 0; i < 2; i++) {
      await c.guest.readMemory({ name: vps[0]!, gpa: 0x40000n, length: 1 });
      // The intercept entered VTL1; VTL1 returns to VTL0 without taking the message (no EOM).
      await c.guest.callHypercallPage({ name: vps[0]!, offset: 0x26, rcx: 1n });
    }
    // Each access intercepts (and VtlReturn retries the pending one, which intercepts again): at least two.
    const raised = await value(metrics, 'vsm_intercepts_total', { route: 'vtl', access: 'read' });
    expect(raised).toBeGreaterThanOrEqual(2);
    // An intercept is delivered as SINT0's interrupt: VTL1 is entered with HvVtlEntryInterrupt.
    expect(await value(metrics, 'vsm_vtl_transitions_total', { from: '0', to: '1', reason: 'interrupt' })).toBeGreaterThanOrEqual(2);
    // No EOM: the messages after the first wait in SINT0's queue; the gauge shows what the API shows.
    const queued = (await c.synic.getSynicState({ name: vps[0]!, vtl: 1 })).queued;
    expect(Math.max(...queued)).toBeGreaterThanOrEqual(1);
    expect(await value(metrics, 'vsm_synic_queue_depth')).toBe(Math.max(...queued));
  });

  test('labels never carry a partition id or a resource name', async () => {
    const text = await metrics.text();
    expect(text).toContain('vsm_rpc_requests_total{method="CreatePartition",code="OK"}');
    expect(text).not.toMatch(/m1|m2|partitions\//);
    // The process defaults of prom-client are there too.
    expect(text).toContain('process_cpu_seconds_total');
    expect(text).toContain('nodejs_eventloop_lag_seconds');
  });
});

test('authorization decisions: allow, deny, unauthenticated', async () => {
  const metrics = new VsmMetrics({ defaultMetrics: false });
  const policy = parsePolicy(
    JSON.stringify({
      principals: {
        boss: { tokens: [tokenHash('boss')], roles: { 'partitions/*': ['admin'] } },
        viewer: { tokens: [tokenHash('viewer')], roles: { 'partitions/a-*': ['viewer'] } },
      },
    }),
  );
  const { srv } = await startSecured({ security: { authzPolicy: policy }, telemetry: rpcTelemetry(metrics, undefined) });
  const as = (token?: string) => connect(srv.address, { token, deadlineMs: 10_000, retries: 0 });
  const [boss, viewer, anonymous] = [as('boss'), as('viewer'), as()];
  try {
    await boss.partitions.createPartition({ partitionId: 'a-1', partition: { vpCount: 1, memoryBytes: 1n << 24n, maximumVtl: 0 } as pb.Partition });
    await viewer.partitions.getPartition({ name: 'partitions/a-1' });
    expect(await value(metrics, 'vsm_authz_decisions_total', { decision: 'allow' })).toBe(2);
    await expect(viewer.partitions.getPartition({ name: 'partitions/b-1' })).rejects.toThrow(/PERMISSION_DENIED|may not/);
    await expect(viewer.partitions.deletePartition({ name: 'partitions/a-1' })).rejects.toThrow();
    expect(await value(metrics, 'vsm_authz_decisions_total', { decision: 'deny' })).toBe(2);
    await expect(anonymous.partitions.getPartition({ name: 'partitions/a-1' })).rejects.toThrow();
    expect(await value(metrics, 'vsm_authz_decisions_total', { decision: 'unauthenticated' })).toBe(1);
  } finally {
    for (const x of [boss, viewer, anonymous]) x.close();
    await srv.shutdown('test');
  }
});

test('the KVM observer hooks move the agent metrics', async () => {
  const metrics = new VsmMetrics({ defaultMetrics: false });
  const o = metrics.kvmObserver();
  o.exit?.('io', 3);
  o.exit?.('mmio', 1);
  o.exit?.('io', 2);
  o.exitHandled?.(0.00002);
  o.memslotChanges?.(4);
  o.consoleBytes?.(11);
  expect(await value(metrics, 'vsm_kvm_exits_total', { reason: 'io' })).toBe(5);
  expect(await value(metrics, 'vsm_kvm_exits_total', { reason: 'mmio' })).toBe(1);
  expect(await count(metrics, 'vsm_kvm_exit_handling_seconds')).toBe(1);
  expect(await value(metrics, 'vsm_memslot_changes_total')).toBe(4);
  expect(await value(metrics, 'vsm_guest_console_bytes_total')).toBe(11);
  // Every metric the README and the dashboard name is registered.
  for (const n of VSM_METRIC_NAMES) expect(metrics.registry.getSingleMetric(n)).toBeDefined();
});

describe('the metrics endpoint', () => {
  test('/metrics in the text format, /livez, /readyz following readiness, 404 elsewhere', async () => {
    const metrics = new VsmMetrics({ defaultMetrics: false });
    let ready = false;
    const ep = await startMetricsServer({ listen: '127.0.0.1:0', metrics, ready: () => ready, logger });
    try {
      const m = await get(`${ep.url}/metrics`);
      expect(m.status).toBe(200);
      expect(m.type).toMatch(/^text\/plain; version=0\.0\.4/);
      expect(m.body).toContain('# TYPE vsm_rpc_requests_total counter');
      expect((await get(`${ep.url}/livez`)).status).toBe(200);
      expect((await get(`${ep.url}/readyz`)).status).toBe(503);
      ready = true;
      expect((await get(`${ep.url}/readyz`)).status).toBe(200);
      expect((await get(`${ep.url}/other`)).status).toBe(404);
    } finally {
      await ep.close();
    }
  });

  test('plaintext only on loopback unless allowed', async () => {
    const metrics = new VsmMetrics({ defaultMetrics: false });
    await expect(startMetricsServer({ listen: '0.0.0.0:0', metrics, ready: () => true })).rejects.toThrow(/refusing to serve metrics in plaintext/);
    expect(() => parseConfig(['--metrics-listen', '0.0.0.0:9464'], {})).toThrow(UsageError);
    expect(() => parseConfig(['--metrics-listen', 'nonsense'], {})).toThrow(/HOST:PORT/);
    expect(parseConfig(['--metrics-listen', '0.0.0.0:9464', '--metrics-insecure-allow-remote'], {}).metricsListen).toBe('0.0.0.0:9464');
    expect(parseConfig([], { VSM_METRICS_LISTEN: '127.0.0.1:9464' }).metricsListen).toBe('127.0.0.1:9464');
    expect(parseConfig([], {}).metricsListen).toBeUndefined();
  });
});
