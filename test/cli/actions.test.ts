// vsmctl actions: a JSON Lines file of guest actions streamed through RunGuestActions (compiled CLI
// as a child process against a server started here): answers per line (human and --json), per-VP
// order, a failing action's error with exit 3, a bad file with exit 2.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pb } from '@vsm/client';
import { HvMsr } from '@vsm/core';
import { type Harness, startHarness } from '../support/server';
import { tempDir } from '../support/tls';
import { setupVtl1Partition, VTL1_LAYOUT } from '../security/support';
import { waitFor } from '../support/wait';
import { CLI, ROOT, type Run, assertBuilt, childEnv, vsmctl } from './support';

jest.setTimeout(60_000);

let h: Harness;
let dir: string;
beforeAll(async () => {
  assertBuilt();
  h = await startHarness();
  dir = tempDir('vsmctl-actions-');
});
afterAll(async () => {
  await h?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

const cli = (args: string[]): Promise<Run> => vsmctl(['--address', h.address, ...args]);
const file = (name: string, lines: unknown[]) => {
  const f = path.join(dir, name);
  fs.writeFileSync(f, lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n'));
  return f;
};

test('a file of actions on two VPs: one answer each, per-VP order kept, --json lines; a failed action gives exit 3 with its error', async () => {
  const p = await h.client.partitions.createPartition({
    partitionId: 'cli-actions',
    partition: pb.Partition.fromPartial({ vpCount: 2, memoryBytes: 64n << 20n }),
  });
  const vp = (i: number) => `${p.name}/vps/${i}`;
  const f = file('ok.jsonl', [
    '# guest OS id on both VPs, then memory',
    { sequence: '10', writeMsr: { name: vp(0), msr: `0x${HvMsr.HV_X64_MSR_GUEST_OS_ID.toString(16)}`, value: '0x1234' } },
    { sequence: '11', readMsr: { name: vp(0), msr: HvMsr.HV_X64_MSR_GUEST_OS_ID } },
    { sequence: '20', write_memory: { name: vp(1), gpa: '0x5000', data: Buffer.from('hi!').toString('base64') } },
    { sequence: '21', readMemory: { name: vp(1), gpa: '0x5000', length: 3 } },
    '',
  ]);
  const r = await cli(['actions', f]);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const lines = r.stdout.trim().split('\n');
  expect(lines).toHaveLength(4);
  expect(lines.find((l) => l.startsWith('#11 '))).toMatch(/readMsr: .* value 0x0*1234/);
  expect(lines.find((l) => l.startsWith('#21 '))).toMatch(/data 686921/);
  // Per VP, in file order.
  const at = (s: string) => lines.findIndex((l) => l.startsWith(`${s} `));
  expect(at('#10')).toBeLessThan(at('#11'));
  expect(at('#20')).toBeLessThan(at('#21'));

  const j = await cli(['actions', f, '--json', '--in-flight', '1']);
  expect(j.code).toBe(0);
  const objs = j.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  expect(objs.map((o) => o.sequence)).toEqual(['10', '11', '20', '21']); // one in flight: file order
  expect(objs[1].readMsr.value).toBe(String(0x1234));

  const bad = file('bad-vp.jsonl', [{ readMsr: { name: vp(5), msr: 0x40000000 } }, { readMsr: { name: vp(0), msr: 0x40000000 } }]);
  const e = await cli(['actions', bad]);
  expect(e.code).toBe(3);
  expect(e.stdout).toMatch(/#1 ERROR HV_STATUS_INVALID_VP_INDEX: /);
  expect(e.stdout).toMatch(/#2 readMsr: /); // the stream went on
  expect(e.stderr).toMatch(/1 of 2 actions failed/);
});

test('a bad file: exit 2 naming the line, nothing sent', async () => {
  const notJson = file('nj.jsonl', ['{"readMsr":{}}', '{oops']);
  const r = await cli(['actions', notJson]);
  expect(r.code).toBe(2);
  expect(r.stderr).toMatch(/nj\.jsonl:2: not JSON/);
  const noAction = file('na.jsonl', ['{"sequence":"3"}']);
  const r2 = await cli(['actions', noAction]);
  expect(r2.code).toBe(2);
  expect(r2.stderr).toMatch(/na\.jsonl:1: no action/);
  const r3 = await cli(['actions', path.join(dir, 'missing.jsonl')]);
  expect(r3.code).toBe(2);
  const r4 = await cli(['actions', notJson, '--in-flight', '0']);
  expect(r4.code).toBe(2);
});

test('intercepts watch --batch --reply allow answers the intercepts of a stream of writes on two VPs (one replies message per batch)', async () => {
  const P = await setupVtl1Partition(h.client, 'cli-actions-batch', 2, Buffer.from('s'));
  await h.client.intercepts.setInterceptRoute({ name: P.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
  const watch = spawn(
    process.execPath,
    [CLI, '--address', h.address, 'intercepts', 'watch', P.name.split('/')[1]!, '--batch', '--reply', 'allow', '--count', '2', '--json'],
    {
      cwd: ROOT,
      env: childEnv(),
      stdio: 'pipe',
    },
  );
  let out = '';
  watch.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  const exited = new Promise<number | null>((res) => watch.on('close', (code) => res(code)));
  await waitFor('the watch subscribed', () => out.includes('"subscription"'));
  const f = file(
    'protected.jsonl',
    P.vps.map((vp, i) => ({
      writeMemory: { name: vp, gpa: `0x${(VTL1_LAYOUT.secretGpa + BigInt(i)).toString(16)}`, data: Buffer.from([0x61 + i]).toString('base64') },
    })),
  );
  const r = await cli(['actions', f]);
  expect(r.code).toBe(0);
  expect(r.stdout.trim().split('\n')).toHaveLength(2);
  expect(await exited).toBe(0);
  const lines = out
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  expect(lines.filter((l) => l.intercept)).toHaveLength(2);
  const results = lines.filter((l) => l.replyResult);
  expect(results.map((l) => l.replyResult.status)).toEqual(['REPLY_STATUS_APPLIED', 'REPLY_STATUS_APPLIED']);
  expect(Buffer.from((await h.client.memory.readGpa({ name: P.name, gpa: VTL1_LAYOUT.secretGpa, length: 2 })).data).toString()).toBe('ab');
});
