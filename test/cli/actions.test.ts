// vsmctl actions: a JSON Lines file of guest actions streamed through RunGuestActions (compiled CLI
// as a child process against a server started here): answers per line (human and --json), per-VP
// order, a failing action's error with exit 3, a bad file with exit 2; --batch N sends batch messages
// of up to N actions (counted on a server of its own) and prints the same answers.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { connect, pb } from '@vsm/client';
import { HvMsr } from '@vsm/core';
import { CoreBackend, type RunningServer, type StreamSink } from '@vsm/vsm-v1';
import type { ActionAuthorizer } from '@vsm/vsm-v1/guest-action-stream';
import { type Harness, startHarness } from '../support/server';
import { tempDir } from '../support/tls';
import { setupVtl1Partition, startSecured, VTL1_LAYOUT } from '../security/support';
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

/** The emulator, counting the RunGuestActions messages it reads: per message, its batch size (0 = a single action). */
class CountingBackend extends CoreBackend {
  readonly messages: number[] = [];
  override runGuestActions(
    requests: AsyncIterable<pb.RunGuestActionsRequest>,
    sink: StreamSink<pb.RunGuestActionsResponse>,
    signal: AbortSignal,
    authorize?: ActionAuthorizer,
  ): Promise<void> {
    const seen = this.messages;
    async function* counted() {
      for await (const r of requests) {
        seen.push(r.action?.$case === 'batch' ? r.action.value.actions.length : 0);
        yield r;
      }
    }
    return super.runGuestActions(counted(), sink, signal, authorize);
  }
}

describe('--batch N', () => {
  let srv: RunningServer;
  let backend: CountingBackend;
  beforeAll(async () => {
    backend = new CountingBackend();
    ({ srv } = await startSecured({ backend }));
  });
  afterAll(() => srv.shutdown('test'));
  const run = (args: string[]) => vsmctl(['--address', srv.address, ...args]);

  test('sends batch messages of up to N actions; the same answers, one line each; a failed entry gives exit 3, the others run', async () => {
    const c = connect(srv.address);
    const p = await c.partitions.createPartition({
      partitionId: 'cli-actions-batch-n',
      partition: pb.Partition.fromPartial({ vpCount: 2, memoryBytes: 64n << 20n }),
    });
    c.close();
    const vp = (i: number) => `${p.name}/vps/${i}`;
    const lines = [
      { sequence: '10', writeMsr: { name: vp(0), msr: `0x${HvMsr.HV_X64_MSR_GUEST_OS_ID.toString(16)}`, value: '0x1234' } },
      { sequence: '11', readMsr: { name: vp(0), msr: HvMsr.HV_X64_MSR_GUEST_OS_ID } },
      { sequence: '20', write_memory: { name: vp(1), gpa: '0x5000', data: Buffer.from('hi!').toString('base64') } },
      { sequence: '21', readMemory: { name: vp(1), gpa: '0x5000', length: 3 } },
      { sequence: '30', readMsr: { name: vp(5), msr: HvMsr.HV_X64_MSR_GUEST_OS_ID } },
    ];
    const f = file('batch.jsonl', lines);
    const one = await run(['actions', f, '--json']);
    expect(backend.messages).toEqual([0, 0, 0, 0, 0]); // without --batch: one action per message, as before
    backend.messages.length = 0;
    const r = await run(['actions', f, '--json', '--batch', '2']);
    expect(r.stderr).toMatch(/1 of 5 actions failed/);
    expect(r.code).toBe(3);
    expect(backend.messages).toEqual([2, 2, 1]);
    const bySeq = (out: string) =>
      out
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
        .sort((a, b) => Number(a.sequence) - Number(b.sequence));
    const got = bySeq(r.stdout);
    expect(got.map((o) => o.sequence)).toEqual(['10', '11', '20', '21', '30']);
    expect(got[1].readMsr.value).toBe(String(0x1234));
    expect(got[3].readMemory.data).toBe(Buffer.from('hi!').toString('hex'));
    expect(got[4].error.reason).toBe('HV_STATUS_INVALID_VP_INDEX');
    expect(got).toEqual(bySeq(one.stdout)); // the same answers as one per message
    // --in-flight still caps the actions unanswered: batches of at most 1 here, in file order.
    backend.messages.length = 0;
    const h1 = await run(['actions', f, '--batch', '4', '--in-flight', '1']);
    expect(h1.code).toBe(3);
    expect(backend.messages).toEqual([1, 1, 1, 1, 1]);
    expect(
      h1.stdout
        .trim()
        .split('\n')
        .map((l) => l.split(' ')[0]),
    ).toEqual(['#10', '#11', '#20', '#21', '#30']);
  });

  test('a bad --batch, or a line that is itself a batch: exit 2, nothing sent', async () => {
    const f = file('one.jsonl', [{ readMsr: { name: 'partitions/x/vps/0', msr: 0x40000000 } }]);
    backend.messages.length = 0;
    for (const bad of ['0', '257', 'x']) {
      const r = await run(['actions', f, '--batch', bad]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/--batch must be 1\.\.256/);
    }
    const nested = file('nested.jsonl', [{ batch: { actions: [{ readMsr: { name: 'partitions/x/vps/0', msr: 0x40000000 } }] } }]);
    const r = await run(['actions', nested, '--batch', '2']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/nested\.jsonl:1: a line is one action, not a batch/);
    expect(backend.messages).toEqual([]);
  });
});

/** `vsmctl intercepts watch PARTITION ...args` running, once it printed its subscription (JSON lines). */
async function watchSubscribed(partition: string, args: string[]): Promise<{ output: () => string; exited: Promise<number | null> }> {
  const watch = spawn(process.execPath, [CLI, '--address', h.address, 'intercepts', 'watch', partition.split('/')[1]!, ...args], {
    cwd: ROOT,
    env: childEnv(),
    stdio: 'pipe',
  });
  let out = '';
  watch.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  const exited = new Promise<number | null>((res) => watch.on('close', (code) => res(code)));
  await waitFor('the watch subscribed', () => out.includes('"subscription"'));
  return { output: () => out, exited };
}

test('intercepts watch --batch --reply allow answers the intercepts of a stream of writes on two VPs (one replies message per batch)', async () => {
  const P = await setupVtl1Partition(h.client, 'cli-actions-batch', 2, Buffer.from('s'));
  await h.client.intercepts.setInterceptRoute({ name: P.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
  const { output, exited } = await watchSubscribed(P.name, ['--batch', '--reply', 'allow', '--count', '2', '--json']);
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
  const lines = output()
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  expect(lines.filter((l) => l.intercept)).toHaveLength(2);
  const results = lines.filter((l) => l.replyResult);
  expect(results.map((l) => l.replyResult.status)).toEqual(['REPLY_STATUS_APPLIED', 'REPLY_STATUS_APPLIED']);
  expect(Buffer.from((await h.client.memory.readGpa({ name: P.name, gpa: VTL1_LAYOUT.secretGpa, length: 2 })).data).toString()).toBe('ab');
});

test('intercepts watch --batch --reply allow --quiet: applied answers print nothing, the last ones before --count are confirmed; --quiet alone is a usage error', async () => {
  const bad = await cli(['intercepts', 'watch', 'x', '--quiet', '--reply', 'allow']);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toMatch(/--quiet goes with --batch and --reply/);
  const P = await setupVtl1Partition(h.client, 'cli-actions-quiet', 1, Buffer.from('s'));
  await h.client.intercepts.setInterceptRoute({ name: P.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
  const { output, exited } = await watchSubscribed(P.name, ['--batch', '--reply', 'allow', '--quiet', '--count', '3', '--json']);
  // One VP writes three times: its actions run in order, each waiting for its answer, so the three
  // intercepts come one per message; the first two answers go quiet, the third (the --count-th) not.
  const f = file(
    'quiet.jsonl',
    [0x61, 0x62, 0x63].map((b) => ({
      writeMemory: { name: P.vps[0]!, gpa: `0x${VTL1_LAYOUT.secretGpa.toString(16)}`, data: Buffer.from([b]).toString('base64') },
    })),
  );
  const r = await cli(['actions', f]);
  expect(r.code).toBe(0);
  expect(await exited).toBe(0);
  const lines = output()
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  const intercepts = lines.filter((l) => l.intercept);
  expect(intercepts).toHaveLength(3);
  const results = lines.filter((l) => l.replyResult);
  expect(results.map((l) => [l.replyResult.interceptId, l.replyResult.status])).toEqual([[intercepts[2].intercept.interceptId, 'REPLY_STATUS_APPLIED']]);
  expect(Buffer.from((await h.client.memory.readGpa({ name: P.name, gpa: VTL1_LAYOUT.secretGpa, length: 1 })).data).toString()).toBe('c');
});
