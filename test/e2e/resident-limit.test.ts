// Issue 19 finding 8: a service-wide cap on resident guest RAM. The emulator's sparse memory
// allocates a page on its first non-zero write; all partitions of the process share one account,
// and a write that would allocate beyond --max-resident-bytes is refused RESOURCE_EXHAUSTED /
// HV_STATUS_INSUFFICIENT_MEMORY with nothing written (a multi-page write is checked before any of
// its pages is allocated). DeletePartition gives the pages back; RestorePartition of a snapshot
// larger than what is left is refused. The real process takes the flag (and VSM_MAX_RESIDENT_BYTES)
// and reports the limit at start-up.
import * as os from 'node:os';
import pino from 'pino';
import { status } from '@grpc/grpc-js';
import { connect, pb, type VsmClient } from '@vsm/client';
import { CoreBackend, KvmBackend, type RunningServer, parseConfig, startServer } from '@vsm/vsm-v1';
import { GiB, failure } from '../support/server';
import { spawnService } from '../support/child-service';
import { kvmTest } from '../support/kvm-gate';

const MiB = 1 << 20;
const PAGE = 4096;
const LIMIT = 8 * MiB;
const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });

let srv: RunningServer;
let c: VsmClient;
let backend: CoreBackend;

beforeAll(async () => {
  backend = new CoreBackend({ maxResidentBytes: BigInt(LIMIT) });
  srv = await startServer({ listen: '127.0.0.1:0', backend, logger: pino({ level: 'silent' }), shutdownGraceMs: 500 });
  c = connect(srv.address, { deadlineMs: 20_000 });
});
afterAll(async () => {
  c.close();
  await srv.shutdown('test');
});

const create = (id: string) => c.partitions.createPartition({ partitionId: id, partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
const filled = (n: number, seed: number) => Buffer.alloc(n, (seed % 255) + 1);
const exhausted = (e: { code: number; reason?: string }) => ({ code: status[e.code], reason: e.reason });
const EXHAUSTED = { code: 'RESOURCE_EXHAUSTED', reason: 'HV_STATUS_INSUFFICIENT_MEMORY' };
const resident = () => backend.manager.resident.usedBytes;

/** Writes 64 KiB (16 fresh pages) at a time into `name` until the service refuses; returns the bytes written. */
async function fillUntilRefused(name: string, base: bigint): Promise<{ written: number; refusedAt: bigint }> {
  let written = 0;
  for (let i = 0; i < 10_000; i++) {
    const gpa = base + BigInt(i) * 65536n;
    try {
      await c.memory.writeGpa({ name, gpa, data: filled(65536, i) });
      written += 65536;
    } catch (e) {
      expect(exhausted(e as { code: number; reason: string })).toEqual(EXHAUSTED);
      return { written, refusedAt: gpa };
    }
  }
  throw new Error('never refused');
}

test('WriteGpa of distinct pages is refused at the limit, the refused write leaves nothing, other partitions share the account, delete frees it', async () => {
  const a = await create('res-a');
  const b = await create('res-b');
  // One page first, so that the limit falls in the middle of a 16-page write.
  await c.memory.writeGpa({ name: a.name, gpa: 0n, data: Buffer.from('first page') });
  const { written, refusedAt } = await fillUntilRefused(a.name, 0x100000n);
  expect(written + PAGE).toBeLessThanOrEqual(LIMIT);
  expect(written + PAGE).toBeGreaterThan(LIMIT - 65536);
  expect(resident()).toBe(written + PAGE);
  // The refused 64 KiB write: 15 of its 16 pages would still have fitted; none of it landed.
  const after = await c.memory.readGpa({ name: a.name, gpa: refusedAt, length: 65536 });
  expect(Buffer.from(after.data).equals(Buffer.alloc(65536))).toBe(true);
  expect(resident()).toBe(written + PAGE);
  // What fits still works: rewriting resident pages, writing zeros (allocates nothing), one more page.
  await c.memory.writeGpa({ name: a.name, gpa: 0x100000n, data: Buffer.from('rewritten') });
  await c.memory.writeGpa({ name: a.name, gpa: 0x7000000n, data: Buffer.alloc(65536) });
  const left = LIMIT - resident();
  for (let i = 0; i < left / PAGE; i++) await c.memory.writeGpa({ name: b.name, gpa: BigInt(i) * 8192n, data: Buffer.from('b') });
  expect(resident()).toBe(LIMIT);
  // The limit is service-wide: partition B is refused now too, and its refused page stays zero.
  const e = await failure(c.memory.writeGpa({ name: b.name, gpa: 0x40000000n - 4096n, data: Buffer.from('no room') }));
  expect(exhausted(e)).toEqual(EXHAUSTED);
  expect(e.message).toMatch(/limit/);
  expect(Buffer.from((await c.memory.readGpa({ name: b.name, gpa: 0x40000000n - 4096n, length: 7 })).data).equals(Buffer.alloc(7))).toBe(true);
  // DeletePartition gives A's pages back: B's write now succeeds.
  await c.partitions.deletePartition({ name: a.name });
  expect(resident()).toBe(LIMIT - written - PAGE);
  await c.memory.writeGpa({ name: b.name, gpa: 0x40000000n - 4096n, data: Buffer.from('room now') });
  expect(Buffer.from((await c.memory.readGpa({ name: b.name, gpa: 0x40000000n - 4096n, length: 8 })).data).toString()).toBe('room now');
  await c.partitions.deletePartition({ name: b.name });
  expect(resident()).toBe(0);
}, 120_000);

test('a guest WriteMemory across pages is refused whole at the limit', async () => {
  const p = await create('res-guest');
  const vp0 = `${p.name}/vps/0`;
  await c.memory.writeGpa({ name: p.name, gpa: 0n, data: Buffer.from('first page') });
  const { refusedAt } = await fillUntilRefused(p.name, 0x1000000n);
  // Fill the account up to exactly one free page.
  while (LIMIT - resident() > PAGE) await c.memory.writeGpa({ name: p.name, gpa: 0x20000000n + BigInt(resident()), data: Buffer.from('x') });
  expect(LIMIT - resident()).toBe(PAGE);
  // A guest store of 3 pages that needs 3 fresh pages (1 would fit): refused, no byte written.
  const gpa = 0x30000000n + 100n;
  const e = await failure(c.guest.writeMemory({ name: vp0, gpa, data: filled(3 * PAGE, 7) }));
  expect(exhausted(e)).toEqual(EXHAUSTED);
  expect(Buffer.from((await c.memory.readGpa({ name: p.name, gpa, length: 3 * PAGE })).data).equals(Buffer.alloc(3 * PAGE))).toBe(true);
  expect(LIMIT - resident()).toBe(PAGE);
  // One that needs one fresh page completes.
  const ok = await c.guest.writeMemory({ name: vp0, gpa: 0x30000000n, data: Buffer.from('fits') });
  expect(ok.outcome?.exception ?? 0).toBe(0);
  expect(resident()).toBe(LIMIT);
  expect(refusedAt).toBeGreaterThan(0n);
  await c.partitions.deletePartition({ name: p.name });
  expect(resident()).toBe(0);
}, 120_000);

test('RestorePartition of a snapshot larger than the remaining budget is refused and creates nothing', async () => {
  const src = await create('res-src');
  await c.vtl.enablePartitionVtl({ name: src.name, targetVtl: 1 });
  await c.vtl.enableVpVtl({ name: `${src.name}/vps/0`, targetVtl: 1 });
  await c.vps.setVpRegisters({
    name: `${src.name}/vps/0`,
    vtl: 1,
    registers: [r64(pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))],
  });
  for (let i = 0; i < 64; i++) await c.memory.writeGpa({ name: src.name, gpa: BigInt(i) * 65536n, data: filled(65536, i) }); // 4 MiB
  const snap = await c.snapshots.savePartition({ name: src.name });
  expect(snap.memory.length).toBe(1024);
  const names = async () => (await c.partitions.listPartitions({})).partitions.map((p) => p.name);
  const before = await names();
  // 4 MiB resident, 4 MiB left: a 4 MiB snapshot fits exactly...
  const copy = await c.snapshots.restorePartition({ snapshot: snap, partitionId: 'res-copy' });
  expect(resident()).toBe(LIMIT);
  // ... a second one does not, and nothing is created (not even under a generated id).
  for (const partitionId of ['res-copy2', '']) {
    const e = await failure(c.snapshots.restorePartition({ snapshot: snap, partitionId }));
    expect(exhausted(e)).toEqual(EXHAUSTED);
  }
  expect(await names()).toEqual([...before, copy.name]);
  expect(resident()).toBe(LIMIT);
  // The restored copy holds the same bytes; deleting the source makes room for another copy.
  expect(Buffer.from((await c.memory.readGpa({ name: copy.name, gpa: 63n * 65536n, length: 16 })).data).equals(filled(16, 63))).toBe(true);
  await c.partitions.deletePartition({ name: src.name });
  const copy2 = await c.snapshots.restorePartition({ snapshot: snap, partitionId: 'res-copy2' });
  await c.partitions.deletePartition({ name: copy.name });
  await c.partitions.deletePartition({ name: copy2.name });
  expect(resident()).toBe(0);
}, 120_000);

describe('configuration', () => {
  test('--max-resident-bytes and VSM_MAX_RESIDENT_BYTES take byte counts with K/M/G/T; the default is half of the machine RAM', () => {
    expect(parseConfig(['--max-resident-bytes', '512M'], {}).limits.maxResidentBytes).toBe(512n << 20n);
    expect(parseConfig(['--max-resident-bytes=2GiB'], {}).limits.maxResidentBytes).toBe(2n << 30n);
    expect(parseConfig([], { VSM_MAX_RESIDENT_BYTES: '8388608' }).limits.maxResidentBytes).toBe(8n << 20n);
    expect(parseConfig(['--max-resident-bytes', '1G'], { VSM_MAX_RESIDENT_BYTES: '8M' }).limits.maxResidentBytes).toBe(1n << 30n);
    expect(parseConfig([], {}).limits.maxResidentBytes).toBe((BigInt(os.totalmem()) / 2n) & ~4095n);
    for (const bad of ['lots', '-1', '100', '4097', '1.5G']) expect(() => parseConfig(['--max-resident-bytes', bad], {})).toThrow(/--max-resident-bytes/);
  });

  test('the real process applies the flag and reports the limit at start-up', async () => {
    const svc = await spawnService(['--max-resident-bytes', '8M']);
    const client = connect(svc.address, { deadlineMs: 20_000 });
    try {
      const line = svc
        .stdout()
        .split('\n')
        .find((l) => l.includes('resident guest RAM limit'));
      expect(line && JSON.parse(line).maxResidentBytes).toBe(LIMIT);
      const p = await client.partitions.createPartition({ partitionId: 'proc', partition: { vpCount: 1, memoryBytes: GiB } as pb.Partition });
      let n = 0;
      let refused: { code: number; reason: string } | undefined;
      for (; n < 200 && !refused; n++) {
        await client.memory.writeGpa({ name: p.name, gpa: BigInt(n) * BigInt(MiB), data: filled(MiB, n) }).catch((e) => {
          refused = e;
        });
      }
      expect(refused && exhausted(refused)).toEqual(EXHAUSTED);
      expect(n).toBe(LIMIT / MiB + 1); // eight 1 MiB writes fit, the ninth is refused
      await client.partitions.deletePartition({ name: p.name });
      const q = await client.partitions.createPartition({ partitionId: 'proc2', partition: { vpCount: 1, memoryBytes: GiB } as pb.Partition });
      await client.memory.writeGpa({ name: q.name, gpa: 0n, data: filled(MiB, 1) });
      // And the default when no flag is given: half of the machine's RAM.
      const svc2 = await spawnService([], { env: { VSM_MAX_RESIDENT_BYTES: '' } });
      try {
        const line2 = svc2
          .stdout()
          .split('\n')
          .find((l) => l.includes('resident guest RAM limit'));
        expect(line2 && JSON.parse(line2).maxResidentBytes).toBe(Number((BigInt(os.totalmem()) / 2n) & ~4095n));
      } finally {
        await svc2.stop();
      }
    } finally {
      client.close();
      await svc.stop();
    }
  }, 120_000);
});

// The KVM agent's guest RAM is one memfd mapped for the whole GPA space: the guest itself touches
// its pages through KVM, with no write the agent could refuse first. So the agent counts a
// partition's whole memory_bytes when it is created.
kvmTest(
  'KVM agent: memory_bytes of every partition counts against the limit at create and restore (needs /dev/kvm)',
  async () => {
    const agent = new KvmBackend({ limits: { maxResidentBytes: 3n * 64n * BigInt(MiB) } });
    const agentSrv = await startServer({ listen: '127.0.0.1:0', backend: agent, logger: pino({ level: 'silent' }), shutdownGraceMs: 500 });
    const a = connect(agentSrv.address, { deadlineMs: 30_000 });
    try {
      const mk = (id: string) =>
        a.partitions.createPartition({ partitionId: id, partition: { vpCount: 1, memoryBytes: 64n * BigInt(MiB), maximumVtl: 1 } as pb.Partition });
      await mk('k1');
      await mk('k2');
      const snap = await a.snapshots.savePartition({ name: 'partitions/k1' });
      await a.snapshots.restorePartition({ snapshot: snap, partitionId: 'k3' });
      expect(exhausted(await failure(mk('k4')))).toEqual(EXHAUSTED);
      expect(exhausted(await failure(a.snapshots.restorePartition({ snapshot: snap, partitionId: 'k4' })))).toEqual(EXHAUSTED);
      expect((await a.partitions.listPartitions({})).partitions.map((p) => p.name)).toEqual(['partitions/k1', 'partitions/k2', 'partitions/k3']);
      await a.partitions.deletePartition({ name: 'partitions/k2' });
      await mk('k4');
    } finally {
      a.close();
      await agentSrv.shutdown('test');
      await agent.close();
    }
  },
  120_000,
);
