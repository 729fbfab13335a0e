// Runs jest as a child process on a fixture file (self-tests of the test support: the process guard,
// the KVM gate). Returns the exit code and the combined output; with `json`, also each test's result.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '../..');
const JEST = require.resolve('jest/bin/jest');
export const FIXTURE_CONFIG = path.join(__dirname, 'fixtures/jest.config.js');

export interface JestChildResult {
  code: number | null;
  out: string;
  tests: { name: string; status: string; failure: string }[];
}

export function runJestOnFixture(fixture: string, env: NodeJS.ProcessEnv, opts: { json?: boolean; timeoutMs?: number } = {}): Promise<JestChildResult> {
  const dir = opts.json ? fs.mkdtempSync(path.join(os.tmpdir(), 'jest-child-')) : undefined;
  const json = dir ? path.join(dir, 'result.json') : undefined;
  const args = [JEST, '--config', FIXTURE_CONFIG, '--runInBand', '--ci', '--colors=false', ...(json ? ['--json', `--outputFile=${json}`] : []), fixture];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: ROOT, env: { ...env, FORCE_COLOR: '0' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      out += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 100_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      let tests: JestChildResult['tests'] = [];
      if (json && dir) {
        try {
          const result = JSON.parse(fs.readFileSync(json, 'utf8')) as {
            testResults: { assertionResults: { fullName: string; status: string; failureMessages: string[] }[] }[];
          };
          tests = result.testResults.flatMap((f) =>
            f.assertionResults.map((a) => ({ name: a.fullName, status: a.status, failure: a.failureMessages.join('\n') })),
          );
        } catch (e) {
          out += `\n(no jest JSON result: ${(e as Error).message})`;
        }
        fs.rmSync(dir, { recursive: true, force: true });
      }
      resolve({ code, out, tests });
    });
  });
}
