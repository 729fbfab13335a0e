// Issue #17's done-when figures for streamed snapshots: a partition with 1 GiB of written RAM and
// 1,000,000 protection ranges exports to a file and imports back through the real gRPC server, on
// the emulator and on KVM; the service's RSS grows by less than 64 MiB during the export; the copy is
// byte-identical (every page and range, compared by streaming both partitions' exports). The test
// runs the server in this process, so the RSS sampled is the service's (and this client's, which
// holds one chunk at a time).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { createHash } from 'node:crypto';
import pino from 'pino';
import { connect, pb, readSnapshotFiles, type VsmClient, writeSnapshotFile } from '@vsm/client';
import { type CoreBackend, KvmBackend, CoreBackend as Emulator, type RunningServer, startServer } from '@vsm/vsm-v1';
import { kvmUnavailableReason } from '../support/kvm-gate';

jest.setTimeout(1_800_000);

/** A full garbage collection (V8's gc, exposed for this process). */
function collectGarbage(): void {
  v8.setFlagsFromString('--expose-gc');
  (vm.runInNewContext('gc') as () => void)();
}

const MiB = 1 << 20;
const RAM_BYTES = 1 << 30;
const RANGES = 1_000_000;
const RSS_BUDGET = 64 * MiB;
const FIRST_RANGE_PAGE = 0x40000; // protections over 1 GiB .. 9 GiB, every other page
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-snapscale-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A page's bytes: its number and a pattern, so a page in the wrong place shows. */
function fillPages(buf: Buffer, firstPage: number): void {
  for (let k = 0; k * 4096 < buf.length; k++) {
    const page = firstPage + k;
    buf.fill(page & 0xff, k * 4096, (k + 1) * 4096);
    buf.writeUInt32LE(page, k * 4096);
    buf.writeUInt32LE(page ^ 0x5a5a5a5a, k * 4096 + 4092);
  }
}

/** Everything of a partition's export but the header's source name and time: SHA-256 of the chunks. */
async function contentDigest(c: VsmClient, name: string): Promise<{ digest: string; header: unknown; pages: bigint; ranges: bigint }> {
  const h = createHash('sha256');
  let header: unknown;
  let pages = 0n;
  let ranges = 0n;
  for await (const chunk of c.snapshots.exportPartition({ name })) {
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

function suite(label: string, make: () => CoreBackend, skip?: string) {
  const d = skip ? describe.skip : describe;
  if (skip) console.log(`${label}: skipped: ${skip}`);
  d(`${label}: 1 GiB of RAM and 10^6 protection ranges`, () => {
    let srv: RunningServer;
    let c: VsmClient;
    let backend: CoreBackend;
    beforeAll(async () => {
      backend = make();
      srv = await startServer({ listen: '127.0.0.1:0', backend, logger: pino({ level: 'silent' }), shutdownGraceMs: 500 });
      c = connect(srv.address, { deadlineMs: 600_000 });
    });
    afterAll(async () => {
      c?.close();
      await srv?.shutdown('test');
    });

    test('exports to a file with the service RSS growing < 64 MiB, imports back byte-identical', async () => {
      const id = `scale-${label}`;
      const name = `partitions/${id}`;
      await c.partitions.createPartition({ partitionId: id, partition: { vpCount: 1, memoryBytes: 16n << 30n, maximumVtl: 1 } as pb.Partition });
      // 1 GiB written (straight into the partition's RAM: the API would take 1,024 WriteGpa calls).
      const p = backend.manager.get(id);
      const buf = Buffer.alloc(MiB);
      for (let off = 0; off < RAM_BYTES; off += MiB) {
        fillPages(buf, off / 4096);
        p.memory.write(BigInt(off), buf);
      }
      // 10^6 single-page ranges through the API (65,536 per call).
      await c.vtl.enablePartitionVtl({ name, targetVtl: 1 });
      await c.vtl.enableVpVtl({ name: `${name}/vps/0`, targetVtl: 1 });
      await c.vps.setVpRegisters({
        name: `${name}/vps/0`,
        vtl: 1,
        registers: [{ name: pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, value: { value: { $case: 'reg64', value: 1n | (0xfn << 1n) } } }],
      });
      for (let k = 0; k < RANGES; k += 65536) {
        const n = Math.min(65536, RANGES - k);
        const ranges = Array.from({ length: n }, (_, i) => ({ startPage: BigInt(FIRST_RANGE_PAGE + 2 * (k + i)), pageCount: 1n }));
        await c.intercepts.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: (k / 65536) % 2 ? 0x1 : 0x3, ranges });
      }
      // Too large for the unary SavePartition, which says which RPC to use.
      const tooLarge = await c.snapshots.savePartition({ name }).then(
        () => undefined,
        (e: { code: number; message: string }) => e,
      );
      expect(tooLarge?.code).toBe(8); // RESOURCE_EXHAUSTED
      expect(tooLarge?.message).toMatch(/stream it with ExportPartition/);
      // Export to a file, sampling the RSS at every chunk.
      const file = path.join(dir, `${label}.vsnap`);
      // A clean baseline: the garbage of the set-up above collected first.
      collectGarbage();
      const rss0 = process.memoryUsage().rss;
      let peak = rss0;
      const held = () => {
        const m = process.memoryUsage();
        return m.heapUsed + m.arrayBuffers;
      };
      const held0 = held();
      let heldPeak = held0;
      let chunks = 0;
      const t0 = Date.now();
      async function* sampled() {
        for await (const ch of c.snapshots.exportPartition({ name, chunkBytes: Number(process.env.CB ?? 0) })) {
          chunks++;
          const mu = process.memoryUsage();
          if (mu.rss > peak && process.env.CB_DEBUG)
            console.log(
              chunks,
              ch.chunk?.$case,
              (mu.rss / MiB).toFixed(0),
              (mu.heapUsed / MiB).toFixed(0),
              (mu.external / MiB).toFixed(0),
              (mu.arrayBuffers / MiB).toFixed(0),
            );
          peak = Math.max(peak, mu.rss);
          heldPeak = Math.max(heldPeak, mu.heapUsed + mu.arrayBuffers);
          yield ch;
        }
      }
      await writeSnapshotFile(file, sampled());
      const exportMs = Date.now() - t0;
      const growth = peak - rss0;
      const size = fs.statSync(file).size;
      console.log(
        `${label}: export of 1 GiB + 10^6 ranges: ${chunks} chunks, ${(size / MiB).toFixed(0)} MiB file, ${exportMs} ms, RSS ${(rss0 / MiB).toFixed(0)} MiB -> peak ${(peak / MiB).toFixed(0)} MiB (growth ${(growth / MiB).toFixed(1)} MiB); JS heap + buffers in use, garbage included: +${((heldPeak - held0) / MiB).toFixed(1)} MiB at most`,
      );
      expect(size).toBeGreaterThan(RAM_BYTES);
      expect(growth).toBeLessThan(RSS_BUDGET);
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

suite('emulator', () => new Emulator());
suite('kvm', () => new KvmBackend(), kvmUnavailableReason());
