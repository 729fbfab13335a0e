// Observability (#15): a real Prometheus (Debian's prometheus; `npm run setup` / scripts/ensure-setup.js
// installs it when missing) scrapes both processes - vsm-service --backend agent and vsm-kvm-agent,
// each with --metrics-listen on a loopback port - with a scrape configuration written by the test.
// After a scripted scenario through the service (a partition, VTL1, VtlCall/VtlReturn on the real
// vCPU, a refused call), queries through Prometheus' HTTP API return the expected series from both
// jobs; every query of the Grafana dashboard evaluates without error against the scraped data.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { connect, type pb } from '@vsm/client';
import { HvMsr } from '@vsm/core';
import { AGENT_MAIN, type ChildService, type WatchedChild, envWithoutVsm, spawnService, watchChild } from '../support/child-service';
import { gateDescribe, kvmUnavailableReason } from '../support/kvm-gate';
import { waitFor } from '../support/wait';

jest.setTimeout(240_000);

const ROOT = path.resolve(__dirname, '../..');

function getJson<T>(url: string): Promise<{ status: number; body: T }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let s = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (s += c));
        res.on('end', () => {
          try {
            resolve({ status: res.statusCode ?? 0, body: JSON.parse(s) as T });
          } catch {
            resolve({ status: res.statusCode ?? 0, body: s as unknown as T });
          }
        });
      })
      .on('error', reject);
  });
}

/** A free loopback port (Prometheus takes its listen address as a flag, not port 0). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Spawns a process with --metrics-listen 127.0.0.1:0 and returns it with the endpoint's host:port (from its log). */
async function withMetrics(args: string[], opts: { name: string; main?: string }): Promise<ChildService & { metrics: string }> {
  let metrics: string | undefined;
  const c = await spawnService([...args, '--metrics-listen', '127.0.0.1:0'], {
    ...opts,
    env: envWithoutVsm(),
    onStdoutLine: (line) => {
      try {
        const j = JSON.parse(line) as { msg?: string; url?: string };
        if (j.msg === 'metrics endpoint listening' && j.url) metrics = j.url.replace(/^http:\/\//, '');
      } catch {
        // not a log line
      }
    },
  });
  return { ...c, metrics: await waitFor(`${opts.name}'s metrics endpoint`, () => metrics) };
}

type Vector = { status: string; data: { resultType: string; result: { metric: Record<string, string>; value: [number, string] }[] }; error?: string };

gateDescribe(kvmUnavailableReason())('Prometheus scrapes vsm-service and vsm-kvm-agent', () => {
  const children: WatchedChild[] = [];
  let prom: ChildProcess | undefined;
  let promUrl = '';
  let tmp = '';

  afterAll(async () => {
    for (const c of children.reverse()) await c.stop();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('the scenario series are queryable from both jobs', async () => {
    let bin: string;
    try {
      bin = execFileSync('sh', ['-c', 'command -v prometheus']).toString().trim();
    } catch {
      throw new Error("prometheus is not installed: `npm run setup` (scripts/ensure-setup.js) installs Debian's prometheus package");
    }
    const agent = await withMetrics([], { name: 'vsm-kvm-agent', main: AGENT_MAIN });
    children.push(agent);
    const service = await withMetrics(['--backend', 'agent', '--agent', agent.address], { name: 'vsm-service' });
    children.push(service);

    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-prom-'));
    const config = path.join(tmp, 'prometheus.yml');
    fs.writeFileSync(
      config,
      [
        'global:',
        '  scrape_interval: 1s',
        '  scrape_timeout: 1s',
        'scrape_configs:',
        '  - job_name: vsm-service',
        `    static_configs: [{ targets: ['${service.metrics}'] }]`,
        '  - job_name: vsm-kvm-agent',
        `    static_configs: [{ targets: ['${agent.metrics}'] }]`,
        '',
      ].join('\n'),
    );
    const port = await freePort();
    promUrl = `http://127.0.0.1:${port}`;
    prom = spawn(
      bin,
      [`--config.file=${config}`, `--storage.tsdb.path=${path.join(tmp, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
      { stdio: ['ignore', 'pipe', 'pipe'], cwd: tmp },
    );
    const promChild = watchChild(prom, 'prometheus');
    children.push(promChild);
    await waitFor('Prometheus to be ready', async () => (await getJson<string>(`${promUrl}/-/ready`).catch(() => ({ status: 0 }))).status === 200, 60_000, 200);
    const query = async (q: string) => (await getJson<Vector>(`${promUrl}/api/v1/query?query=${encodeURIComponent(q)}`)).body;

    // Both targets up.
    await waitFor('both targets up', async () => (await query('sum(up{job=~"vsm-service|vsm-kvm-agent"})')).data?.result[0]?.value[1] === '2', 60_000, 250);

    // The scenario: a partition with VTL1, a VtlCall into VTL1 and a VtlReturn on the real vCPU, a refused call.
    const c = connect(service.address, { deadlineMs: 60_000, retries: 0 });
    try {
      const p = await c.partitions.createPartition({ partitionId: 'prom-1', partition: { vpCount: 1, memoryBytes: 1n << 24n, maximumVtl: 1 } as pb.Partition });
      const vp = `${p.name}/vps/0`;
      await c.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
      await c.vtl.enableVpVtl({ name: vp, targetVtl: 1 });
      await c.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 1n });
      await c.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x1000n | 1n });
      expect((await c.guest.callHypercallPage({ name: vp, offset: 0x0f, rcx: 0n })).outcome?.activeVtl).toBe(1); // VtlCall
      // VTL1 places its own hypercall page before it can VtlReturn.
      await c.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 2n });
      await c.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x2000n | 1n });
      expect((await c.guest.callHypercallPage({ name: vp, offset: 0x26, rcx: 1n })).outcome?.activeVtl).toBe(0); // VtlReturn
      await expect(c.partitions.getPartition({ name: 'partitions/absent' })).rejects.toThrow();
    } finally {
      c.close();
    }

    const expectSeries = async (what: string, q: string, ok: (v: number) => boolean) =>
      waitFor(
        what,
        async () => {
          const r = await query(q);
          const v = r.data?.result[0]?.value[1];
          return v !== undefined && ok(Number(v)) ? Number(v) : undefined;
        },
        60_000,
        250,
      );
    await expectSeries('the service counted CreatePartition', 'vsm_rpc_requests_total{job="vsm-service",method="CreatePartition",code="OK"}', (v) => v === 1);
    await expectSeries('the agent counted CreatePartition', 'vsm_rpc_requests_total{job="vsm-kvm-agent",method="CreatePartition",code="OK"}', (v) => v === 1);
    await expectSeries(
      'the refused call on the service',
      'sum(vsm_rpc_requests_total{job="vsm-service",method="GetPartition",code="NOT_FOUND"})',
      (v) => v >= 1,
    );
    await expectSeries('guest-action latency on the agent', 'vsm_rpc_duration_seconds_count{job="vsm-kvm-agent",method="CallHypercallPage"}', (v) => v === 2);
    await expectSeries('the VtlCall on the agent', 'vsm_vtl_transitions_total{job="vsm-kvm-agent",from="0",to="1",reason="vtl_call"}', (v) => v === 1);
    await expectSeries('the VtlReturn on the agent', 'vsm_vtl_transitions_total{job="vsm-kvm-agent",from="1",to="0",reason="return"}', (v) => v === 1);
    await expectSeries('KVM exits of the guest actions', 'sum(vsm_kvm_exits_total{job="vsm-kvm-agent"})', (v) => v > 0);
    await expectSeries('the agent partition', 'vsm_partitions{job="vsm-kvm-agent",state="idle"}', (v) => v === 1);
    await expectSeries('the agent VP', 'vsm_vps{job="vsm-kvm-agent",state="idle"}', (v) => v === 1);
    await expectSeries('process metrics of both', 'count(process_resident_memory_bytes{job=~"vsm-service|vsm-kvm-agent"})', (v) => v === 2);

    // Every query of the dashboard is valid PromQL over these series.
    const dash = JSON.parse(fs.readFileSync(path.join(ROOT, 'deploy/grafana/vsm-dashboard.json'), 'utf8')) as { panels: { targets?: { expr: string }[] }[] };
    for (const t of dash.panels.flatMap((p) => p.targets ?? [])) {
      const r = await query(t.expr.replaceAll('$__rate_interval', '1m').replaceAll('$job', '.*'));
      expect({ expr: t.expr, status: r.status, error: r.error }).toEqual({ expr: t.expr, status: 'success', error: undefined });
    }
  });
});
