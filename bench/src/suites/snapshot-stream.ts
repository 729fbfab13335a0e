// Streamed snapshots at real size (issue #17): the service's RSS while a partition with 1 GiB of
// written RAM and 1,000,000 protection ranges is exported through ExportPartition, measured from
// outside on the real service in its own process (/proc/<pid>/status: the kernel's peak VmHWM over
// exactly the export, plus samples), once from the RSS as it is and once from a baseline taken right
// after two full collections in the service (SIGUSR2 in servers/vsm-snapshot-server.ts); then the
// export streamed straight into ImportPartition (a copy) and the copy exported again: the two
// exports' chunks must hash the same (byte-identical round trip) or the suite fails (full runs only;
// quick runs make one export of each kind, and test/e2e/snapshot-stream-scale.test.ts checks the
// round trip and the bound on both backends).
import { createHash } from 'node:crypto';
import { type VsmClient, connect, pb } from '@vsm/client';
import type { Suite } from '../api';
import { watchRss } from '../lib/memprobe';

const MiB = 1 << 20;
const RAM_BYTES = 1 << 30;
const RANGES = 1_000_000;
const FIRST_RANGE_PAGE = 0x40000; // ranges over 1 GiB .. 9 GiB, every other page
const PER_CALL = 65_536; // ranges per ModifyVtlProtectionMask

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A page's bytes: its number and a pattern, so a page in the wrong place shows. */
function fillPages(buf: Buffer, firstPage: number): void {
  for (let k = 0; k * 4096 < buf.length; k++) {
    const page = firstPage + k;
    buf.fill((page & 0x7f) | 0x80, k * 4096, (k + 1) * 4096); // never a zero page (those are not stored)
    buf.writeUInt32LE(page, k * 4096);
  }
}

/** SHA-256 of every protection and memory chunk of an export (what a copy must reproduce), and what it counted. */
async function* digesting(chunks: AsyncIterable<pb.SnapshotChunk>, out: { digest?: string; pages: number; ranges: number; bytes: number }) {
  const h = createHash('sha256');
  for await (const chunk of chunks) {
    const x = chunk.chunk;
    if (x?.$case === 'protections') {
      out.ranges += x.value.ranges.length;
      h.update(pb.ProtectionRangesChunk.encode(x.value).finish());
    } else if (x?.$case === 'memory') {
      for (const r of x.value.runs) {
        out.pages += r.data.length / 4096;
        out.bytes += r.data.length;
      }
      h.update(pb.MemoryChunk.encode(x.value).finish());
    }
    yield chunk;
  }
  out.digest = h.digest('hex');
}

async function drain(it: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of it);
}

async function build(c: VsmClient, id: string): Promise<string> {
  const p = await c.partitions.createPartition({
    partitionId: id,
    partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: 16n << 30n, maximumVtl: 1 }),
  });
  const buf = Buffer.alloc(MiB);
  for (let off = 0; off < RAM_BYTES; off += MiB) {
    fillPages(buf, off / 4096);
    await c.memory.writeGpa({ name: p.name, gpa: BigInt(off), data: buf });
  }
  await c.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
  await c.vtl.enableVpVtl({ name: `${p.name}/vps/0`, targetVtl: 1 });
  await c.vps.setVpRegisters({
    name: `${p.name}/vps/0`,
    vtl: 1,
    registers: [{ name: pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, value: { value: { $case: 'reg64', value: 1n | (0xfn << 1n) } } }],
  });
  for (let k = 0; k < RANGES; k += PER_CALL) {
    const n = Math.min(PER_CALL, RANGES - k);
    const ranges = Array.from({ length: n }, (_, i) => ({ startPage: BigInt(FIRST_RANGE_PAGE + 2 * (k + i)), pageCount: 1n }));
    await c.intercepts.modifyVtlProtectionMask({ name: p.name, protectingVtl: 1, mapFlags: (k / PER_CALL) % 2 ? 0x1 : 0x3, ranges });
  }
  return p.name;
}

export const suite: Suite = {
  name: 'snapshot-stream',
  description: 'ExportPartition / ImportPartition of 1 GiB of RAM + 10^6 protection ranges: the service process RSS growth',
  figures: [
    {
      id: 'snapshot.export_1gib_1m.rss_growth_mib',
      kind: 'rate',
      unit: 'MiB',
      better: 'lower',
      description: 'service RSS growth (kernel peak VmHWM over the export − RSS at its start, no collection first) while 1 GiB + 10^6 ranges are exported',
    },
    {
      id: 'snapshot.export_1gib_1m.rss_growth_gc_mib',
      kind: 'rate',
      unit: 'MiB',
      better: 'lower',
      description: 'the same from a baseline taken right after two full collections in the service',
    },
    {
      id: 'snapshot.export_1gib_1m.exported_mib',
      kind: 'rate',
      unit: 'MiB',
      description: 'RAM bytes the export delivered (the baseline of the RSS ratio: 64 MiB per 1,024 MiB)',
    },
    { id: 'snapshot.export_1gib_1m.mib_s', kind: 'rate', unit: 'MiB/s', description: 'export throughput, RAM bytes per second, client hashing every chunk' },
    {
      id: 'snapshot.copy_1gib_1m.mib_s',
      kind: 'rate',
      unit: 'MiB/s',
      description: 'an export streamed straight into ImportPartition (a copy in the same service), RAM bytes per second',
    },
  ],
  ratios: [
    {
      figure: 'snapshot.export_1gib_1m.rss_growth_mib',
      baseline: 'snapshot.export_1gib_1m.exported_mib',
      target: { op: '<', value: 64 / 1024 },
      description: 'RSS growth < 64 MiB for a 1 GiB export',
    },
    {
      figure: 'snapshot.export_1gib_1m.rss_growth_gc_mib',
      baseline: 'snapshot.export_1gib_1m.exported_mib',
      target: { op: '<', value: 64 / 1024 },
      description: 'the same from a collected baseline',
    },
  ],
  budget: { quickSec: 170, fullSec: 600 },
  async run(ctx) {
    const server = await ctx.forkServer('servers/vsm-snapshot-server.js', { execArgv: ['--expose-gc'] });
    const c = connect(server.address, { deadlineMs: 900_000 });
    try {
      const t0 = Date.now();
      const name = await build(c, 'snap-src');
      ctx.log(`built 1 GiB + ${RANGES} ranges in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      let digest: string | undefined;
      // Quick: one export of each kind (a full-size export takes 6 s here unloaded, over a minute at
      // load average 10); full: every repeat, then the round trip.
      for (let r = 0; r < ctx.pick(1, ctx.repeats); r++) {
        for (const gc of [false, true]) {
          if (gc) {
            process.kill(server.pid, 'SIGUSR2');
            await sleep(500);
            await c.partitions.listPartitions({}); // served after the collections
          }
          const out = { pages: 0, ranges: 0, bytes: 0 } as { digest?: string; pages: number; ranges: number; bytes: number };
          const w = watchRss(server.pid);
          const t = process.hrtime.bigint();
          await drain(digesting(c.snapshots.exportPartition({ name }), out));
          const secs = Number(process.hrtime.bigint() - t) / 1e9;
          const m = w.stop();
          const growth = (m.peak - w.baseline) / MiB;
          ctx.log(
            `export${gc ? ' (collected first)' : ''}: ${out.pages} pages, ${out.ranges} ranges in ${secs.toFixed(1)} s; RSS ${(w.baseline / MiB).toFixed(0)} -> peak ${(m.peak / MiB).toFixed(0)} MiB (+${growth.toFixed(1)}; ${m.samples} samples, VmHWM ${m.hwmReset ? 'reset' : 'not resettable'})`,
          );
          if (out.pages !== RAM_BYTES / 4096 || out.ranges !== RANGES) throw new Error(`the export held ${out.pages} pages and ${out.ranges} ranges`);
          if (digest && out.digest !== digest) throw new Error('two exports of the same partition differ');
          digest = out.digest;
          ctx.recordRate(gc ? 'snapshot.export_1gib_1m.rss_growth_gc_mib' : 'snapshot.export_1gib_1m.rss_growth_mib', growth);
          if (!gc) {
            ctx.recordRate('snapshot.export_1gib_1m.exported_mib', out.bytes / MiB);
            ctx.recordRate('snapshot.export_1gib_1m.mib_s', out.bytes / MiB / secs);
          }
        }
      }
      if (ctx.pick(true, false)) {
        ctx.skipFigure('snapshot.copy_1gib_1m.mib_s', 'full runs only (quick: the e2e test checks the round trip)');
        return;
      }
      // The round trip: the export streamed into an import, then the copy's own export hashed.
      const copied = { pages: 0, ranges: 0, bytes: 0 } as { digest?: string; pages: number; ranges: number; bytes: number };
      const t1 = process.hrtime.bigint();
      const copy = await c.snapshots.importPartition(digesting(c.snapshots.exportPartition({ name }), copied), { partitionId: 'snap-copy' });
      const secs = Number(process.hrtime.bigint() - t1) / 1e9;
      ctx.recordRate('snapshot.copy_1gib_1m.mib_s', copied.bytes / MiB / secs);
      const again = { pages: 0, ranges: 0, bytes: 0 } as { digest?: string; pages: number; ranges: number; bytes: number };
      await drain(digesting(c.snapshots.exportPartition({ name: copy.name }), again));
      ctx.log(`copy in ${secs.toFixed(1)} s; the copy's export ${again.digest === digest ? 'is byte-identical' : 'DIFFERS'}`);
      if (again.digest !== digest || again.pages !== RAM_BYTES / 4096 || again.ranges !== RANGES) throw new Error('the imported copy differs from its source');
    } finally {
      c.close();
      await server.stop();
    }
  },
};
