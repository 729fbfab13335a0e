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

  test('profile kvm: agent with /dev/kvm and no capability, service --backend agent pointed at it', async () => {
    const c = await composeConfig('kvm', { VSM_SERVICE_PORT: '50998', VSM_AGENT_PORT: '50997' });
    expect(Object.keys(c.services).sort()).toEqual(['vsm-kvm-agent', 'vsm-service']);
    const a = c.services['vsm-kvm-agent'];
    expect(a.devices).toEqual([expect.objectContaining({ source: '/dev/kvm', target: '/dev/kvm' })]);
    expect(a.environment.VSM_LISTEN).toBe('127.0.0.1:50997');
    const s = c.services['vsm-service'];
    expect(s.environment).toMatchObject({ VSM_LISTEN: '127.0.0.1:50998', VSM_BACKEND: 'agent', VSM_AGENTS: '127.0.0.1:50997' });
    expect(s.depends_on['vsm-kvm-agent'].condition).toBe('service_healthy');
    expect(s.volumes).toBeUndefined(); // the agents hold the partitions; --state-dir is refused with them
    expect(s.environment.VSM_STATE_DIR).toBeUndefined();
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
      expect([ctx, s.healthcheck?.test]).toEqual([ctx, ['CMD', 'node', '/app/deploy/healthcheck.js']]);
      expect([ctx, String(s.environment.VSM_LISTEN)]).toEqual([ctx, expect.stringMatching(/^127\.0\.0\.1:\d+$/)]);
    }
    expect(c.networks ?? {}).toEqual({});
  });
});
