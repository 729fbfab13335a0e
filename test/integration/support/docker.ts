// Integration-test support: the Docker engine, image builds, free loopback ports.
//
// These tests never skip for a missing engine: without one they FAIL, saying how to get one
// (deploy/scripts/ensure-docker.sh, deploy/scripts/build-base-image.sh). Only the KVM-specific
// checks are gated by the shared KVM gate (test/support/kvm-gate.ts): skipped with the reason in
// their names on a host without /dev/kvm, failed instead when VSM_REQUIRE_KVM=1.
import { execFile, execFileSync } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { kvmUnavailableReason } from '../../support/kvm-gate';

export const repoRoot = path.resolve(__dirname, '../../..');
export const SERVICE_IMAGE = `vsm-service:${process.env.VSM_IMAGE_TAG ?? 'local'}`;
export const AGENT_IMAGE = `vsm-kvm-agent:${process.env.VSM_IMAGE_TAG ?? 'local'}`;
export const BUILD_TIMEOUT_MS = 15 * 60_000;

// What deploy/scripts/docker-env.sh exports, for runs that did not source it: the reaper image
// cannot be pulled, and this machine's /.dockerenv would send testcontainers looking for the
// (absent) bridge network's gateway. Read lazily by testcontainers, so setting them here works.
process.env.TESTCONTAINERS_RYUK_DISABLED ??= 'true';
process.env.TESTCONTAINERS_HOST_OVERRIDE ??= 'localhost';

/** Throws (fails the suite) unless a Docker engine answers. */
export function requireEngine(): string {
  try {
    return execFileSync('docker', ['info', '--format', '{{.ServerVersion}}'], { encoding: 'utf8', timeout: 30_000, stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(
      `No Docker engine answers (docker info: ${(err.stderr || err.message).trim()}).\n` +
        'Integration tests need one and do not skip: run deploy/scripts/ensure-docker.sh and ' +
        'deploy/scripts/build-base-image.sh (or deploy/scripts/ci-integration.sh, which does both).',
    );
  }
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command (no shell), never throws for a non-zero exit. */
export function run(cmd: string, args: string[], opts: { timeoutMs?: number; cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      { cwd: opts.cwd ?? repoRoot, env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 << 20 },
      (err, stdout, stderr) => {
        if (err && typeof (err as NodeJS.ErrnoException).code === 'string') return reject(err); // spawn failure (ENOENT...)
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
      },
    );
  });
}

const built = new Map<string, Promise<number>>();

/**
 * `docker build --network host -t TAG -f DOCKERFILE .` in the repository (legacy builder; the
 * build cache makes a rebuild of an unchanged tree take seconds). testcontainers'
 * GenericContainer.fromDockerfile() is not used: it cannot pass `--network host` (its build
 * options have no network mode, and without it `npm install` in the build has no network
 * here), it tars the whole context (node_modules included) before applying .dockerignore, and it
 * does not report build errors. Returns the build time in ms.
 */
export function buildImage(tag: string, dockerfile: string): Promise<number> {
  let p = built.get(tag);
  if (!p) {
    p = (async () => {
      const t0 = Date.now();
      const r = await run('docker', ['build', '--network', 'host', '-t', tag, '-f', dockerfile, '.'], { timeoutMs: BUILD_TIMEOUT_MS });
      if (r.code !== 0) {
        const out = (r.stdout + r.stderr).split('\n').slice(-40).join('\n');
        throw new Error(`docker build of ${tag} (${dockerfile}) failed with exit ${r.code}:\n${out}`);
      }
      const ms = Date.now() - t0;
      console.log(`[integration] built ${tag} from ${dockerfile} in ${(ms / 1000).toFixed(1)} s`);
      return ms;
    })();
    built.set(tag, p);
  }
  return p;
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** The probe the images use, run from the host against ADDRESS: true when SERVING. */
export async function healthy(address: string): Promise<boolean> {
  const r = await run(process.execPath, [path.join(repoRoot, 'deploy/healthcheck.js'), address], { timeoutMs: 15_000 });
  return r.code === 0;
}

/**
 * Listening TCP sockets on PORT from /proc/net/tcp{,6} of a network namespace (with host
 * networking: the host's): the local addresses, e.g. ['127.0.0.1'].
 */
export function listenAddresses(procNetTcp: string, port: number): string[] {
  const out: string[] = [];
  for (const line of procNetTcp.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 4 || f[3] !== '0A') continue; // 0A = TCP_LISTEN
    const [hexAddr, hexPort] = f[1]!.split(':');
    if (parseInt(hexPort!, 16) !== port) continue;
    if (hexAddr!.length === 8) {
      out.push(Buffer.from(hexAddr!, 'hex').reverse().join('.'));
    } else {
      out.push(`[${hexAddr}]`);
    }
  }
  return out;
}

/** Why /dev/kvm cannot be used on this host, or undefined when it can be handed to a container. */
export function kvmUnavailable(): string | undefined {
  return kvmUnavailableReason({ hostAccess: false });
}
