// vsmctl snapshot export / import (#17): a partition streamed to a file and back, a full snapshot
// plus an incremental one imported as a chain, and the errors a user meets (a damaged file, an
// existing id, an incremental export against an old base) as exit codes and messages.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { pb } from '@vsm/client';
import { GiB, type Harness, startHarness } from '../support/server';
import { type Run, assertBuilt, vsmctl } from './support';

jest.setTimeout(120_000);
let h: Harness;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsmctl-snap-'));
beforeAll(async () => {
  assertBuilt();
  h = await startHarness();
});
afterAll(async () => {
  await h?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});
const cli = (args: string[]): Promise<Run> => vsmctl(['--address', h.address, ...args], { timeoutMs: 60_000 });
const file = (n: string) => path.join(dir, n);

test('export to a file, an incremental export, import of the chain; the copy reads the same', async () => {
  const name = 'partitions/cli-snap';
  await h.client.partitions.createPartition({ partitionId: 'cli-snap', partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
  await h.client.memory.writeGpa({ name, gpa: 0x10000n, data: Buffer.alloc(3 * 4096, 7) });
  const full = await cli(['--json', 'snapshot', 'export', 'cli-snap', file('full.vsnap')]);
  expect(full.stderr).toBe('');
  expect(full.code).toBe(0);
  const fullOut = JSON.parse(full.stdout) as { snapshotId: string; memoryPages: string };
  expect(fullOut.memoryPages).toBe('3');
  expect(fs.existsSync(file('full.vsnap.partial'))).toBe(false);
  await h.client.memory.writeGpa({ name, gpa: 0x20000n, data: Buffer.from('after the full snapshot') });
  const inc = await cli(['--json', 'snapshot', 'export', 'cli-snap', file('inc.vsnap'), '--base', fullOut.snapshotId]);
  expect(inc.code).toBe(0);
  expect(JSON.parse(inc.stdout)).toMatchObject({ baseSnapshotId: fullOut.snapshotId, memoryPages: '1' });
  const imp = await cli(['snapshot', 'import', file('full.vsnap'), file('inc.vsnap'), '--id', 'cli-snap-copy']);
  expect(imp.stderr).toBe('');
  expect(imp.stdout).toMatch(/partitions\/cli-snap-copy imported/);
  for (const gpa of [0x10000n, 0x20000n]) {
    const [a, b] = [
      await h.client.memory.readGpa({ name, gpa, length: 64 }),
      await h.client.memory.readGpa({ name: 'partitions/cli-snap-copy', gpa, length: 64 }),
    ];
    expect(b.data).toEqual(a.data);
  }
  // The same import again: the id is taken (server error, exit 3), nothing else changes.
  const again = await cli(['snapshot', 'import', file('full.vsnap'), '--id', 'cli-snap-copy']);
  expect(again.code).toBe(3);
  expect(again.stderr).toMatch(/ALREADY_EXISTS.*cli-snap-copy already exists/);
  // An incremental export against a base that is no longer the last one.
  const stale = await cli(['snapshot', 'export', 'cli-snap', file('stale.vsnap'), '--base', fullOut.snapshotId]);
  expect(stale.code).toBe(3);
  expect(stale.stderr).toMatch(/FAILED_PRECONDITION SNAPSHOT_BASE_MISMATCH/);
  expect(fs.existsSync(file('stale.vsnap'))).toBe(false);
  expect(fs.existsSync(file('stale.vsnap.partial'))).toBe(false);
});

test('a truncated file is refused and creates nothing', async () => {
  await h.client.partitions.createPartition({ partitionId: 'cli-snap-t', partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 0 } as pb.Partition });
  await h.client.memory.writeGpa({ name: 'partitions/cli-snap-t', gpa: 0n, data: Buffer.alloc(8 * 4096, 1) });
  expect((await cli(['snapshot', 'export', 'cli-snap-t', file('t.vsnap')])).code).toBe(0);
  const whole = fs.readFileSync(file('t.vsnap'));
  fs.writeFileSync(file('cut.vsnap'), whole.subarray(0, whole.length - 100));
  const r = await cli(['snapshot', 'import', file('cut.vsnap'), '--id', 'cli-snap-t-copy']);
  expect(r.code).not.toBe(0);
  expect(r.stderr).toMatch(/truncated/);
  const list = await h.client.partitions.listPartitions({ pageSize: 1000 });
  expect(list.partitions.map((p) => p.name)).not.toContain('partitions/cli-snap-t-copy');
});
