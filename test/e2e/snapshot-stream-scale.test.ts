// Issue #17's done-when figures for streamed snapshots: a partition with 1 GiB of written RAM and
// 1,000,000 protection ranges exports to a file and imports back through the real service, on the
// emulator and through `vsm-service --backend agent` to a real KVM agent; the RSS of every process the
// export goes through (the emulator's vsm-service; the agent and the vsm-service that relays its
// stream) grows by less than 64 MiB during the export; the copy is byte-identical (every page and
// range, compared by streaming both partitions' exports). The agent variant, instead of importing the
// file back, checks the file's content against the partition and MIGRATES the partition to a second
// agent (MigratePartition through the same vsm-service, whose RSS growth during the migration has the
// same bound), then compares the migrated partition's export with the source's. The service (and the agent) run as child processes, so the
// RSS measured is theirs alone, from outside: the kernel's peak (VmHWM, reset through
// /proc/<pid>/clear_refs right before the export) against the RSS at its start, with no collection
// forced (the process as it runs in production). This process is only the client.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { connect, pb, readSnapshotFiles, type VsmClient, writeSnapshotFile } from '@vsm/client';
import { staticOwner } from '@vsm/vsm-v1';
import { AGENT_MAIN, type ChildService, spawnService } from '../support/child-service';
import { kvmUnavailableReason } from '../support/kvm-gate';

jest.setTimeout(1_800_000);

const MiB = 1 << 20;
const RAM_BYTES = 1 << 30;
const RANGES = 1_000_000;
const RSS_BUDGET = 64 * MiB;
const FIRST_RANGE_PAGE = 0x40000; // protections over 1 GiB .. 9 GiB, every other page
const PER_CALL = 65_536;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-snapscale-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A page's bytes: its number and a pattern (never all zero), so a page in the wrong place shows. */
function fillPages(buf: Buffer, firstPage: number): void {
  for (let k = 0; k * 4096 < buf.length; k++) {
    const page = firstPage + k;
    buf.fill((page & 0x7f) | 0x80, k * 4096, (k + 1) * 4096);
    buf.writeUInt32LE(page, k * 4096);
    buf.writeUInt32LE(page ^ 0x5a5a5a5a, k * 4096 + 4092);
  }
}

/** RSS and peak RSS (VmHWM) of a process, bytes. */
function procRss(pid: number): { rss: number; hwm: number } {
  const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)![1]) * 1024;
  return { rss: kib('VmRSS'), hwm: kib('VmHWM') };
}

/** Watches a process's RSS from now: the kernel's peak since a reset of VmHWM, and samples every 20 ms. */
function watchRss(pid: number) {
  fs.writeFileSync(`/proc/${pid}/clear_refs`, '5'); // resets VmHWM to the current RSS
  const baseline = procRss(pid).rss;
  let peak = baseline;
  const t = setInterval(() => {
    peak = Math.max(peak, procRss(pid).rss);
  }, 20);
  return {
    baseline,
    stop() {
      clearInterval(t);
      const now = procRss(pid);
      return Math.max(peak, now.rss, now.hwm) - baseline;
    },
  };
}

/** Everything of a partition's export (or a snapshot file) but the header's source name and time: SHA-256 of the chunks. */
async function contentDigest(c: VsmClient, name: string): Promise<{ digest: string; header: unknown; pages: bigint; ranges: bigint }> {
  return chunksDigest(c.snapshots.exportPartition({ name }));
}
async function chunksDigest(chunks: AsyncIterable<pb.SnapshotChunk>): Promise<{ digest: string; header: unknown; pages: bigint; ranges: bigint }> {
  const h = createHash('sha256');
  let header: unknown;
  let pages = 0n;
  let ranges = 0n;
  for await (const chunk of chunks) {
    const x = chunk.chunk;
    if (x?.$case === 'header') header = { ...x.value.snapshot, sourceName: '', savedTimeUnixMs: 0n, memory: [], protections: x.value.snapshot?.protections };
    else if (x?.$case === 'protections') {
      ranges += BigInt(x.value.ranges.length);
      h.update(pb.ProtectionRangesChunk.encode(x.value).finish());
    } else if (x?.$case === 'memory') {
      for (const r of x.value.runs) pages += BigInt(r.data.length / 4096);
      h.update(pb.MemoryChunk.encode(x.value).finish());
    }
  }
  return { digest: h.digest('hex'), header, pages, ranges };
}

const mib = (b: number) => (b / MiB).toFixed(1);

interface Procs {
  address: string;
  /** Processes whose RSS growth is bounded: those the export goes through. */
  measured: ChildService[];
  /** Processes whose RSS growth is only reported. */
  observed: ChildService[];
  all: ChildService[];
  /** Agent variant: the agents' addresses (the partition is created on the first, migrated to the second). */
  agents?: string[];
  /** Agent variant: the vsm-service that relays the migration (its RSS growth is bounded). */
  relay?: ChildService;
}

/**
 * Agent variant, after the export: the file holds exactly the partition (digests compared), then the
 * partition migrates to the second agent through the service (its RSS watched: < 64 MiB) and its
 * export there is the same as before the move.
 */
async function migrateAndCompare(c: VsmClient, name: string, file: string, procs: Procs): Promise<void> {
  const before = await contentDigest(c, name);
  expect(before.pages).toBe(BigInt(RAM_BYTES / 4096));
  expect(before.ranges).toBe(BigInt(RANGES));
  expect(await chunksDigest(readSnapshotFiles([file]))).toEqual(before);
  const relay = procs.relay!;
  const w = watchRss(relay.child.pid!);
  let last: pb.MigrationProgress | undefined;
  for await (const m of c.snapshots.migratePartition({ name, targetAgent: procs.agents![1] })) last = m;
  const growth = w.stop();
  const res = last?.result;
  console.log(
    `agent: migration of 1 GiB + 10^6 ranges to the second agent: total ${res?.totalMs} ms, downtime ${res?.downtimeMs} ms, ${res?.rounds} rounds, ${mib(Number(res?.bytesSent ?? 0))} MiB sent; RSS growth of ${relay.name} (relaying) ${mib(w.baseline)} MiB +${mib(growth)} MiB`,
  );
  expect(last?.phase).toBe(pb.MigrationPhase.MIGRATION_PHASE_DONE);
  expect(res?.targetAgent).toBe(procs.agents![1]);
  expect(growth).toBeLessThan(RSS_BUDGET);
  // Byte-identical after the move: every page and range, and the VSM state.
  expect(await contentDigest(c, name)).toEqual(before);
  for (const gpa of [0n, 0x12345000n, BigInt(RAM_BYTES - 4096)]) {
    const x = await c.memory.readGpa({ name, gpa, length: 4096 });
    expect(x.data.readUInt32LE(0)).toBe(Number(gpa / 4096n));
  }
  await c.partitions.deletePartition({ name });
}

/** `start` gives the service to call and the processes to measure. */
function suite(label: string, start: () => Promise<Procs>, skip?: string) {
  const d = skip ? describe.skip : describe;
  if (skip) console.log(`${label}: skipped: ${skip}`);
  d(`${label}: 1 GiB of RAM and 10^6 protection ranges`, () => {
    let procs: Procs;
    let c: VsmClient;
    beforeAll(async () => {
      procs = await start();
      c = connect(procs.address, { deadlineMs: 900_000 });
    }, 120_000);
    afterAll(async () => {
      c?.close();
      for (const p of [...(procs?.all ?? [])].reverse()) await p.stop();
    });

    test('exports to a file with the RSS growing < 64 MiB, imports back (agent: migrates) byte-identical', async () => {
      let id = `scale-${label}`;
      if (procs.agents) for (let i = 0; staticOwner(id, procs.agents) !== 0; i++) id = `scale-${label}-${i}`;
      const p = await c.partitions.createPartition({ partitionId: id, partition: { vpCount: 1, memoryBytes: 10n << 30n, maximumVtl: 1 } as pb.Partition });
      const name = p.name;
      // 1 GiB written through the API (1,024 WriteGpa calls of 1 MiB).
      const buf = Buffer.alloc(MiB);
      for (let off = 0; off < RAM_BYTES; off += MiB) {
        fillPages(buf, off / 4096);
        await c.memory.writeGpa({ name, gpa: BigInt(off), data: buf });
      }
      // 10^6 single-page ranges (65,536 per call).
      await c.vtl.enablePartitionVtl({ name, targetVtl: 1 });
      await c.vtl.enableVpVtl({ name: `${name}/vps/0`, targetVtl: 1 });
      await c.vps.setVpRegisters({
        name: `${name}/vps/0`,
        vtl: 1,
        registers: [{ name: pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, value: { value: { $case: 'reg64', value: 1n | (0xfn << 1n) } } }],
      });
      for (let k = 0; k < RANGES; k += PER_CALL) {
        const n = Math.min(PER_CALL, RANGES - k);
        const ranges = Array.from({ length: n }, (_, i) => ({ startPage: BigInt(FIRST_RANGE_PAGE + 2 * (k + i)), pageCount: 1n }));
        await c.intercepts.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: (k / PER_CALL) % 2 ? 0x1 : 0x3, ranges });
      }
      // Too large for the unary SavePartition, which says which RPC to use.
      const tooLarge = await c.snapshots.savePartition({ name }).then(
        () => undefined,
        (e: { code: number; message: string }) => e,
      );
      expect(tooLarge?.code).toBe(8); // RESOURCE_EXHAUSTED
      expect(tooLarge?.message).toMatch(/stream it with ExportPartition/);
      // Export to a file, the processes' RSS watched from outside.
      const file = path.join(dir, `${label}.vsnap`);
      const watches = [...procs.measured, ...procs.observed].map((s) => ({ s, w: watchRss(s.child.pid!), bounded: procs.measured.includes(s) }));
      const t0 = Date.now();
      await writeSnapshotFile(file, c.snapshots.exportPartition({ name }));
      const exportMs = Date.now() - t0;
      const growth = watches.map(({ s, w, bounded }) => ({ name: s.name, bounded, baseline: w.baseline, growth: w.stop() }));
      const size = fs.statSync(file).size;
      console.log(
        `${label}: export of 1 GiB + 10^6 ranges: ${mib(size)} MiB file in ${exportMs} ms; RSS growth (peak VmHWM − RSS at the start, no collection forced): ${growth.map((g) => `${g.name}${g.bounded ? '' : ' (reported only)'} ${mib(g.baseline)} MiB +${mib(g.growth)} MiB`).join(', ')}`,
      );
      expect(size).toBeGreaterThan(RAM_BYTES);
      for (const g of growth) if (g.bounded) expect(g.growth).toBeLessThan(RSS_BUDGET);
      if (procs.agents) {
        await migrateAndCompare(c, name, file, procs);
        return;
      }
      // Import from the file, streamed.
      const t1 = Date.now();
      const copy = await c.snapshots.importPartition(readSnapshotFiles([file]), { partitionId: `${id}-copy` });
      console.log(`${label}: import ${Date.now() - t1} ms`);
      // Byte-identical: every page and range, and the VSM state.
      const [a, b] = [await contentDigest(c, name), await contentDigest(c, copy.name)];
      expect(a.pages).toBe(BigInt(RAM_BYTES / 4096));
      expect(a.ranges).toBe(BigInt(RANGES));
      expect(b).toEqual(a);
      // Spot checks through the public API.
      for (const gpa of [0n, 0x12345000n, BigInt(RAM_BYTES - 4096)]) {
        const [x, y] = [await c.memory.readGpa({ name, gpa, length: 4096 }), await c.memory.readGpa({ name: copy.name, gpa, length: 4096 })];
        expect(y.data).toEqual(x.data);
        expect(x.data.readUInt32LE(0)).toBe(Number(gpa / 4096n));
      }
      await c.partitions.deletePartition({ name: copy.name });
      await c.partitions.deletePartition({ name });
    });
  });
}

suite('emulator', async () => {
  const svc = await spawnService([], { name: 'vsm-service' });
  return { address: svc.address, measured: [svc], observed: [], all: [svc] };
});
suite(
  'agent',
  async () => {
    // The agent accounts each partition's whole RAM size as resident: room for the partition.
    const agent = await spawnService(['--max-resident-bytes', String(20 * 2 ** 30)], { main: AGENT_MAIN, name: 'vsm-kvm-agent' });
    const target = await spawnService(['--max-resident-bytes', String(20 * 2 ** 30)], { main: AGENT_MAIN, name: 'vsm-kvm-agent (migration target)' });
    const agents = [agent.address, target.address];
    const svc = await spawnService(['--backend', 'agent', '--agent', agents.join(',')], { name: 'vsm-service' });
    return { address: svc.address, measured: [agent, svc], observed: [], all: [agent, target, svc], agents, relay: svc };
  },
  kvmUnavailableReason(),
);
