// Security: what the service binary (services/vsm-service/dist/main.js, built by `tsc -b`) accepts
// at start-up. Plaintext on a non-loopback address is refused before anything is bound; the
// README's default (plaintext on 127.0.0.1) keeps working; TLS flags serve TLS.
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SERVICE_MAIN, assertServiceBuilt, envWithoutVsm } from '../support/child-service';
import { connect } from '@vsm/client';
import { SERVER_SANS, issue, makeCa, tempDir } from '../support/tls';

const ROOT = path.resolve(__dirname, '../..');
const MAIN = SERVICE_MAIN;
const env = envWithoutVsm;

beforeAll(assertServiceBuilt);

/** Runs main.js until it exits (or until `until` matches its stdout, then SIGTERM). */
function run(args: string[], until?: RegExp): Promise<{ code: number | null; stdout: string; stderr: string; child: ChildProcess }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], { cwd: ROOT, env: env(), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      if (until?.test(stdout)) {
        until = undefined; // once: a second SIGTERM would skip the graceful shutdown
        child.kill('SIGTERM');
      }
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, child });
    });
  });
}

test.each([['0.0.0.0:0'], ['[::]:0'], ['10.1.2.3:50051'], ['example.com:50051']])(
  'plaintext on %s is refused at start-up (exit 2, nothing bound)',
  async (listen) => {
    const r = await run(['--listen', listen]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(
      `refusing to serve plaintext on the non-loopback address ${listen}: configure TLS (--tls-cert FILE --tls-key FILE), or pass --insecure-allow-remote`,
    );
    expect(r.stdout).not.toMatch(/listening/);
  },
);

test('the same through VSM_LISTEN', async () => {
  const child = spawn(process.execPath, [MAIN], { cwd: ROOT, env: { ...env(), VSM_LISTEN: '0.0.0.0:0' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const code = await new Promise((r) => child.on('close', r));
  expect(code).toBe(2);
  expect(stderr).toMatch(/refusing to serve plaintext/);
});

test('loopback plaintext is the default and works (README npm start)', async () => {
  const r = await run(['--listen', '127.0.0.1:0'], /vsm-service listening/);
  const line = r.stdout.split('\n').find((l) => l.includes('vsm-service listening'));
  expect(JSON.parse(line!)).toMatchObject({ transport: 'plaintext', authorization: false });
  expect(r.code).toBe(0); // graceful SIGTERM
});

test('client certificates without a policy, or a broken policy file, are refused', async () => {
  const dir = tempDir();
  try {
    const r = await run(['--tls-cert', 'c', '--tls-key', 'k', '--tls-ca', 'ca']);
    expect([r.code, r.stderr]).toEqual([2, expect.stringMatching(/client certificate authentication needs --authz-policy FILE/)]);
    fs.writeFileSync(path.join(dir, 'p.json'), '{"principals": {"x": {"tokens": ["secret"]}}}');
    const r2 = await run(['--authz-policy', path.join(dir, 'p.json')]);
    expect(r2.code).toBe(1);
    expect(r2.stderr).toMatch(/vsm-service failed to start: .*p\.json: principals\.x\.tokens: tokens are stored as "sha256:/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('--tls-cert/--tls-key serve TLS', async () => {
  const dir = tempDir();
  try {
    const ca = makeCa(dir);
    const srv = issue(ca, dir, 'server', SERVER_SANS);
    const child = spawn(process.execPath, [MAIN, '--listen', '127.0.0.1:0', '--tls-cert', srv.cert, '--tls-key', srv.key], {
      cwd: ROOT,
      env: env(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    const port = await new Promise<number>((resolve, reject) => {
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        const m = /"listen":"127\.0\.0\.1:(\d+)"/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      child.on('close', () => reject(new Error(`exited: ${out}`)));
    });
    expect(out).toMatch(/"transport":"tls \(client certificates: none\)"/);
    const c = connect(`localhost:${port}`, { tls: { ca: ca.certPem }, retries: 0 });
    expect((await c.partitions.getCapabilities({})).backend).toBe('emulator');
    c.close();
    child.kill('SIGTERM');
    expect(await new Promise((r) => child.on('close', r))).toBe(0);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
