// Static checks of the Dockerfiles and docker-compose.yml against this environment's rules
// (deploy/README.md): host networking everywhere, loopback only, no privilege, the local base
// image only, shared build stages. Compose is read through `docker compose config` (the CLI
// plugin, no engine needed) so anchors, merges and variables are resolved as Compose does.
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot, run } from './support/docker';

// biome-ignore lint/suspicious/noExplicitAny: a parsed document walked by path in assertions; its schema is Compose's, not ours
type Obj = Record<string, any>;
const read = (f: string) => fs.readFileSync(path.join(repoRoot, f), 'utf8');
const DOCKERFILES = ['deploy/service.Dockerfile', 'deploy/agent.Dockerfile'];
const buildStages = (text: string) => text.slice(text.indexOf('# ---- manifests'), text.indexOf('# ---- runtime'));

async function composeConfig(profile: string, env: Record<string, string> = {}): Promise<Obj> {
  const r = await run('docker', ['compose', '--profile', profile, 'config', '--format', 'json'], { env: { ...process.env, ...env } });
  if (r.code !== 0)
    throw new Error(`docker compose --profile ${profile} config failed (is the compose plugin installed? deploy/scripts/ensure-docker.sh):\n${r.stderr}`);
  return JSON.parse(r.stdout) as Obj;
}

describe('Dockerfiles', () => {
  test('service and agent share byte-identical manifests/deps/build stages (one build cache)', () => {
    const [a, b] = DOCKERFILES.map((f) => buildStages(read(f)));
    expect(a!.length).toBeGreaterThan(500);
    expect(b).toBe(a);
  });

  test.each(DOCKERFILES)('%s: FROM node:20-bookworm-slim only, runtime as node, gRPC HEALTHCHECK, runtime check', (f) => {
    const text = read(f);
    const froms = [...text.matchAll(/^FROM\s+(\S+)/gm)].map((m) => m[1]);
    expect(new Set(froms)).toEqual(new Set(['node:20-bookworm-slim']));
    const runtime = text.slice(text.indexOf('# ---- runtime'));
    expect(runtime).toMatch(/^USER node$/m);
    expect(runtime).toMatch(/^HEALTHCHECK .*\n\s+CMD \["node", "\/app\/deploy\/healthcheck.js"\]/m);
    expect(runtime).toMatch(/^ENV NODE_ENV=production \\\n\s+VSM_LISTEN=127\.0\.0\.1:\d+/m);
    expect(runtime).toMatch(/^RUN node \/app\/deploy\/verify-runtime.js \/app$/m);
  });
});

describe('docker-compose.yml', () => {
  test('profile emulator: only the emulator service, host network, loopback, hardened, state volume', async () => {
    const c = await composeConfig('emulator', { VSM_SERVICE_PORT: '50999' });
    expect(Object.keys(c.services)).toEqual(['vsm-service-emulator']);
    const s = c.services['vsm-service-emulator'];
    expect(s.environment).toMatchObject({ VSM_LISTEN: '127.0.0.1:50999', VSM_BACKEND: 'emulator', VSM_STATE_DIR: '/var/lib/vsm' });
    expect(s.volumes).toEqual([expect.objectContaining({ type: 'volume', source: 'vsm-state', target: '/var/lib/vsm' })]);
    expect(c.volumes).toHaveProperty('vsm-state');
  });

  test('profile kvm: etcd, the agent with /dev/kvm and no capability registered in it, service --backend agent in fleet mode', async () => {
    const c = await composeConfig('kvm', { VSM_SERVICE_PORT: '50998', VSM_AGENT_PORT: '50997', VSM_ETCD_PORT: '50996', VSM_ETCD_PEER_PORT: '50995' });
    expect(Object.keys(c.services).sort()).toEqual(['etcd', 'vsm-kvm-agent', 'vsm-service']);
    // etcd (#14): built locally from deploy/etcd.Dockerfile, loopback client and peer URLs on the given ports, data in a volume.
    const e = c.services.etcd;
    expect(e.build.dockerfile).toBe('deploy/etcd.Dockerfile');
    expect(e.environment).toMatchObject({
      ETCD_LISTEN_CLIENT_URLS: 'http://127.0.0.1:50996',
      ETCD_ADVERTISE_CLIENT_URLS: 'http://127.0.0.1:50996',
      ETCD_LISTEN_PEER_URLS: 'http://127.0.0.1:50995',
      ETCD_INITIAL_CLUSTER: 'vsm-etcd=http://127.0.0.1:50995',
    });
    expect(e.volumes).toEqual([expect.objectContaining({ type: 'volume', source: 'vsm-etcd', target: '/var/lib/etcd' })]);
    const a = c.services['vsm-kvm-agent'];
    expect(a.devices).toEqual([expect.objectContaining({ source: '/dev/kvm', target: '/dev/kvm' })]);
    expect(a.environment).toMatchObject({ VSM_LISTEN: '127.0.0.1:50997', VSM_ETCD_ENDPOINTS: 'http://127.0.0.1:50996', VSM_ADVERTISE: '127.0.0.1:50997' });
    expect(a.depends_on.etcd.condition).toBe('service_healthy');
    const s = c.services['vsm-service'];
    expect(s.environment).toMatchObject({ VSM_LISTEN: '127.0.0.1:50998', VSM_BACKEND: 'agent', VSM_ETCD_ENDPOINTS: 'http://127.0.0.1:50996' });
    expect(s.environment.VSM_AGENTS).toBeUndefined(); // --agent and --etcd-endpoints exclude each other
    expect(s.depends_on['vsm-kvm-agent'].condition).toBe('service_healthy');
    expect(s.depends_on.etcd.condition).toBe('service_healthy');
    // The agents hold the partitions (--state-dir is refused with them); the volume holds the fleet's checkpoints.
    expect(s.environment.VSM_STATE_DIR).toBeUndefined();
    expect(s.environment.VSM_CHECKPOINT_DIR).toBe('/var/lib/vsm');
    expect(s.volumes).toEqual([expect.objectContaining({ type: 'volume', source: 'vsm-checkpoints', target: '/var/lib/vsm' })]);
  });

  test('etcd.Dockerfile: the local base image only, Debian packages, runs as etcd, etcdctl healthcheck', () => {
    const text = read('deploy/etcd.Dockerfile');
    expect([...text.matchAll(/^FROM\s+(\S+)/gm)].map((m) => m[1])).toEqual(['node:20-bookworm-slim']);
    expect(text).toMatch(/apt-get install -y --no-install-recommends etcd-server etcd-client/);
    expect(text).toMatch(/^USER etcd$/m);
    expect(text).toMatch(/^HEALTHCHECK .*\n\s+CMD \["etcdctl", "--command-timeout=3s", "endpoint", "health"\]/m);
    expect(text).toMatch(/ETCD_LISTEN_CLIENT_URLS=http:\/\/127\.0\.0\.1:2379/);
  });

  test.each(['emulator', 'kvm'])('profile %s: every service host-networked, built with network host, init, healthcheck, no privilege', async (profile) => {
    const c = await composeConfig(profile);
    for (const [name, s] of Object.entries(c.services as Obj)) {
      const ctx = `${profile}/${name}`;
      expect([ctx, s.network_mode]).toEqual([ctx, 'host']);
      expect([ctx, s.build?.network]).toEqual([ctx, 'host']);
      expect([ctx, s.init]).toEqual([ctx, true]);
      expect([ctx, s.ports]).toEqual([ctx, undefined]);
      expect([ctx, s.privileged]).toEqual([ctx, undefined]);
      expect([ctx, s.cap_add]).toEqual([ctx, undefined]);
      expect([ctx, s.cap_drop]).toEqual([ctx, ['ALL']]);
      // etcd has no Node app: etcdctl probes it; the vsm images probe grpc.health.v1.
      const probe = name === 'etcd' ? ['CMD', 'etcdctl', '--command-timeout=3s', 'endpoint', 'health'] : ['CMD', 'node', '/app/deploy/healthcheck.js'];
      expect([ctx, s.healthcheck?.test]).toEqual([ctx, probe]);
      expect([ctx, s.read_only]).toEqual([ctx, true]);
      expect([ctx, String(s.environment.VSM_LISTEN)]).toEqual([ctx, expect.stringMatching(/^127\.0\.0\.1:\d+$/)]);
    }
    expect(c.networks ?? {}).toEqual({});
  });
});
