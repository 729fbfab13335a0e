// Test support: real etcd members (Debian's etcd-server, installed by scripts/ensure-setup.js) on
// loopback ports, with their data in a temporary directory. A cluster of n members; a member can be
// killed (SIGKILL) and started again on its data; the leader is found with etcdctl. With `tls`, the
// members serve clients over TLS and require a client certificate from `tls.ca` (--client-cert-auth).
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type WatchedChild, watchChild } from './child-service';
import { freePort } from './ports';
import { waitFor } from './wait';

export function etcdUnavailable(): string | undefined {
  try {
    execFileSync('etcd', ['--version'], { stdio: 'ignore' });
    execFileSync('etcdctl', ['version'], { stdio: 'ignore' });
    return undefined;
  } catch {
    return "etcd/etcdctl not found: scripts/ensure-setup.js (npm test, npm run setup) installs Debian's etcd-server and etcd-client";
  }
}

export interface EtcdMember {
  name: string;
  clientUrl: string;
  peerUrl: string;
  dataDir: string;
  proc?: WatchedChild;
}

/** TLS for etcd's client port: its server certificate and key, and the CA its clients' certificates must chain to. */
export interface EtcdTls {
  cert: string;
  key: string;
  ca: string;
  /** A client certificate etcdctl uses (issued by `ca`). */
  clientCert: string;
  clientKey: string;
}

export { freePort };

export class EtcdCluster {
  readonly members: EtcdMember[] = [];
  private readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-etcd-'));
  private tls: EtcdTls | undefined;

  /** etcdctl's flags for reaching the members (TLS ones when the cluster has TLS). */
  get etcdctlFlags(): string[] {
    const t = this.tls;
    return t ? ['--cacert', t.ca, '--cert', t.clientCert, '--key', t.clientKey] : [];
  }

  /** Endpoints of every member, comma-separated (for --etcd-endpoints). */
  get endpoints(): string {
    return this.members.map((m) => m.clientUrl).join(',');
  }

  static async start(n: number, opts: { clientPorts?: number[]; tls?: EtcdTls } = {}): Promise<EtcdCluster> {
    const c = new EtcdCluster();
    c.tls = opts.tls;
    for (let i = 0; i < n; i++) {
      const client = opts.clientPorts?.[i] ?? (await freePort());
      const peer = await freePort();
      c.members.push({
        name: `m${i}`,
        clientUrl: `${opts.tls ? 'https' : 'http'}://127.0.0.1:${client}`,
        peerUrl: `http://127.0.0.1:${peer}`,
        dataDir: path.join(c.dir, `m${i}`),
      });
    }
    for (const m of c.members) c.spawn(m);
    await c.waitHealthy();
    return c;
  }

  private spawn(m: EtcdMember): void {
    const initial = this.members.map((x) => `${x.name}=${x.peerUrl}`).join(',');
    const child = spawn(
      'etcd',
      [
        '--name',
        m.name,
        '--data-dir',
        m.dataDir,
        '--listen-client-urls',
        m.clientUrl,
        '--advertise-client-urls',
        m.clientUrl,
        '--listen-peer-urls',
        m.peerUrl,
        '--initial-advertise-peer-urls',
        m.peerUrl,
        '--initial-cluster',
        initial,
        '--initial-cluster-state',
        'new',
        '--initial-cluster-token',
        path.basename(this.dir),
        '--logger',
        'zap',
        '--log-level',
        'error',
        ...(this.tls ? ['--cert-file', this.tls.cert, '--key-file', this.tls.key, '--trusted-ca-file', this.tls.ca, '--client-cert-auth'] : []),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    m.proc = watchChild(child, `etcd ${m.name}`);
  }

  /** Every running member answers etcdctl endpoint health. */
  async waitHealthy(timeoutMs = 60_000): Promise<void> {
    const running = this.members.filter((m) => m.proc && m.proc.child.exitCode === null && m.proc.child.signalCode === null);
    await waitFor(
      'etcd members healthy',
      () => {
        try {
          execFileSync(
            'etcdctl',
            [...this.etcdctlFlags, '--endpoints', running.map((m) => m.clientUrl).join(','), '--command-timeout=2s', 'endpoint', 'health'],
            {
              stdio: 'ignore',
            },
          );
          return true;
        } catch {
          return false;
        }
      },
      timeoutMs,
      200,
    );
  }

  /** The member that leads now (etcdctl endpoint status). */
  leader(): EtcdMember {
    const running = this.members.filter((m) => m.proc && m.proc.child.exitCode === null && m.proc.child.signalCode === null);
    const out = execFileSync('etcdctl', [
      ...this.etcdctlFlags,
      '--endpoints',
      running.map((m) => m.clientUrl).join(','),
      '-w',
      'json',
      'endpoint',
      'status',
    ]).toString();
    const st = JSON.parse(out) as { Endpoint: string; Status: { header: { member_id: number | string }; leader: number | string } }[];
    const lead = st.find((s) => String(s.Status.header.member_id) === String(s.Status.leader));
    const m = lead && this.members.find((x) => x.clientUrl === lead.Endpoint);
    if (!m) throw new Error(`no leader among ${out}`);
    return m;
  }

  async kill(m: EtcdMember): Promise<void> {
    await m.proc?.stop('SIGKILL');
  }

  /** Starts a killed member again on its data. */
  async restart(m: EtcdMember): Promise<void> {
    this.spawn(m);
    await this.waitHealthy();
  }

  async stop(): Promise<void> {
    await Promise.all(this.members.map((m) => m.proc?.stop('SIGKILL')));
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
