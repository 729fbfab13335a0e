// Fleet mode (#14) over TLS to etcd: a real etcd member serving clients over TLS and requiring client
// certificates (--client-cert-auth), with a throw-away PKI made by openssl in the test. A real
// vsm-kvm-agent and a vsm-service replica connect with --etcd-ca/--etcd-cert/--etcd-key (https://
// endpoints): the agent registers, the replica places and records a partition. A replica with the CA
// but without a client certificate, and one dialling plaintext http, are refused by etcd: they stay
// NOT_SERVING and answer UNAVAILABLE naming etcd; a CA that did not issue etcd's certificate fails
// the same way. Flags that ask for TLS with an http:// endpoint are a usage error.
import { execFileSync } from 'node:child_process';
import { status } from '@grpc/grpc-js';
import { type VsmClient, VsmError, connect, pb } from '@vsm/client';
import { AGENT_MAIN, SERVICE_MAIN, type ChildService, spawnService } from '../support/child-service';
import { EtcdCluster, etcdUnavailable } from '../support/etcd';
import { gateDescribe, kvmUnavailableReason } from '../support/kvm-gate';
import { type Ca, type KeyPair, SERVER_SANS, issue, makeCa, opensslAvailable, tempDir } from '../support/tls';
import { healthStatus } from '../support/server';
import { waitFor } from '../support/wait';

jest.setTimeout(120_000);

const why = etcdUnavailable() ?? kvmUnavailableReason() ?? (opensslAvailable() ? undefined : 'openssl not found (scripts/ensure-setup.js installs it)');

const NOT_SERVING = 2;

gateDescribe(why)('fleet mode with TLS to etcd (client certificates required)', () => {
  let etcd: EtcdCluster;
  let ca: Ca;
  let client: KeyPair;
  let otherCa: Ca;
  const procs: ChildService[] = [];
  const clients: VsmClient[] = [];
  let https: string;

  beforeAll(async () => {
    const dir = tempDir('vsm-etcd-tls-');
    ca = makeCa(dir, 'etcd-ca');
    otherCa = makeCa(dir, 'other-ca');
    const server = issue(ca, dir, 'etcd-server', SERVER_SANS);
    client = issue(ca, dir, 'vsm-client', [], 'vsm');
    etcd = await EtcdCluster.start(1, { tls: { cert: server.cert, key: server.key, ca: ca.cert, clientCert: client.cert, clientKey: client.key } });
    https = etcd.endpoints;
    expect(https).toMatch(/^https:\/\//);
  }, 120_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    await Promise.all(procs.map((p) => p.stop()));
    await etcd?.stop();
  });

  const tlsFlags = () => ['--etcd-endpoints', https, '--etcd-ca', ca.cert, '--etcd-cert', client.cert, '--etcd-key', client.key];

  it('an agent and a replica with --etcd-ca/--etcd-cert/--etcd-key register, place and record over TLS', async () => {
    const agent = await spawnService([...tlsFlags(), '--agent-name', 'tls-agent', '--lease-ttl', '3'], { main: AGENT_MAIN, name: 'vsm-kvm-agent (tls)' });
    procs.push(agent);
    const replica = await spawnService(['--backend', 'agent', ...tlsFlags()], { name: 'vsm-service (tls)' });
    procs.push(replica);
    const c = connect(replica.address, { retries: 0 });
    clients.push(c);
    await waitFor(
      'the agent READY through the replica',
      async () =>
        (await c.fleet.listAgents({}).catch(() => ({ agents: [] as pb.Agent[] }))).agents.some(
          (a) => a.name === 'agents/tls-agent' && a.state === pb.AgentState.AGENT_STATE_READY,
        ),
      60_000,
      100,
    );
    const p = await c.partitions.createPartition({ partitionId: 'over-tls', partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: 1n << 20n }) });
    expect(p.agent).toBe('tls-agent');
    expect((await c.vps.getVirtualProcessor({ name: 'partitions/over-tls/vps/0' })).name).toBe('partitions/over-tls/vps/0');
    // The record is in etcd (read with etcdctl over TLS with a client certificate).
    const rec = execFileSync('etcdctl', [...etcd.etcdctlFlags, '--endpoints', https, 'get', '--print-value-only', '/vsm/partitions/over-tls']).toString();
    expect(JSON.parse(rec)).toMatchObject({ id: 'over-tls', agent: 'tls-agent', state: 'ACTIVE' });
    // Without a client certificate etcd refuses (so the data is not readable without one).
    expect(() =>
      execFileSync('etcdctl', ['--cacert', ca.cert, '--endpoints', https, '--command-timeout=2s', 'get', '/vsm/partitions/over-tls'], { stdio: 'pipe' }),
    ).toThrow();
  });

  const refused = async (name: string, flags: string[]) => {
    let retried = false;
    const r = await spawnService(['--backend', 'agent', ...flags], {
      name,
      onStdoutLine: (l) => {
        if (/etcd unreachable; retrying/.test(l)) retried = true;
      },
    });
    procs.push(r);
    const c = connect(r.address, { retries: 0 });
    clients.push(c);
    await waitFor(`${name}: the retry log line`, () => retried, 60_000, 100);
    expect(await healthStatus(r.address)).toBe(NOT_SERVING);
    const e = await c.partitions.listPartitions({}).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(VsmError);
    expect((e as VsmError).code).toBe(status.UNAVAILABLE);
    expect((e as VsmError).message).toMatch(/etcd .*not connected yet/);
  };

  it('a replica without a client certificate is refused by etcd: NOT_SERVING, UNAVAILABLE naming etcd, retrying', async () => {
    await refused('vsm-service (no client cert)', ['--etcd-endpoints', https, '--etcd-ca', ca.cert]);
  });

  it('a replica that does not trust etcd’s CA is refused the same way', async () => {
    await refused('vsm-service (wrong CA)', ['--etcd-endpoints', https, '--etcd-ca', otherCa.cert, '--etcd-cert', client.cert, '--etcd-key', client.key]);
  });

  it('TLS flags with a plaintext http:// endpoint, or a certificate without its key, are usage errors (exit 2)', () => {
    const plain = https.replace('https://', 'http://');
    for (const args of [
      ['--etcd-endpoints', plain, '--etcd-ca', ca.cert],
      ['--etcd-endpoints', https, '--etcd-ca', ca.cert, '--etcd-cert', client.cert],
      ['--etcd-endpoints', https, '--etcd-ca', '/nonexistent/ca.pem'],
    ]) {
      let code: number | null = 0;
      let stderr = '';
      try {
        execFileSync(process.execPath, [SERVICE_MAIN, '--listen', '127.0.0.1:0', '--backend', 'agent', ...args], { stdio: 'pipe', timeout: 30_000 });
      } catch (e) {
        code = (e as { status: number | null }).status;
        stderr = String((e as { stderr: Buffer }).stderr);
      }
      expect(code).toBe(2);
      expect(stderr).toMatch(/--etcd/);
    }
  });
});
