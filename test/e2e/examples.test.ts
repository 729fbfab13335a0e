// The client examples run against a started service and do what they say.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { type Harness, startHarness } from '../support/server';

const run = promisify(execFile);
const dir = path.resolve(__dirname, '../../clients/typescript/examples/dist');
let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h.stop();
});

test.each(['quickstart', 'intercept-monitor'])(
  'example %s runs to completion',
  async (name) => {
    const file = path.join(dir, `${name}.js`);
    if (!fs.existsSync(file)) throw new Error(`${file} is missing: build first (npm test builds)`);
    const { stdout } = await run(process.execPath, [file, '--address', h.address], { timeout: 60_000 });
    if (name === 'intercept-monitor') {
      expect(stdout).toContain('INTERCEPT_ACTION_ALLOW');
      expect(stdout).toContain('guest wrote "first"; the page now holds "first"');
      expect(stdout).toContain('guest wrote "second"; the page now holds "first"');
    } else {
      expect(stdout).toMatch(/created partitions\//);
    }
  },
  90_000,
);
