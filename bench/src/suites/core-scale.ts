// Core scale figures, in process (no gRPC): protection changes over 1,048,576 pages (as one range
// and as the guest's rep hypercalls), access checks with 10,000 protected ranges against one range,
// and the memory held by 1,000 idle partitions with 4 VPs each.
import * as core from '@vsm/core';
import type { Suite } from '../api';
import { measureInChild } from '../lib/memprobe';

function protectedPartition(memoryBytes: bigint) {
  const p = new core.Partition({ id: 'scale', architecture: 'x64', vpCount: 1, memoryBytes, maximumVtl: 1, labels: {} });
  p.enablePartitionVtl('host', 1, 0);
  p.enableVpVtl('host', 0, 1, core.longModeContext());
  p.setRegisters(p.vps[0]!, 1, [{ name: core.HvRegisterName.HvRegisterVsmPartitionConfig, value: core.reg64(1n | (0xfn << 1n)) }], 'host');
  return p;
}

export const suite: Suite = {
  name: 'core-scale',
  description: 'core protections and memory at scale, in process',
  figures: [
    {
      id: 'core.protect.1m_pages.range',
      kind: 'latency',
      unit: 'us',
      description: 'ModifyVtlProtectionMask of 1,048,576 contiguous pages as one range (host path)',
    },
    {
      id: 'core.protect.1m_pages.hypercalls',
      kind: 'latency',
      unit: 'us',
      description: 'the same 1,048,576 pages through HvCallModifyVtlProtectionMask rep hypercalls of 510 pages each (2,057 calls)',
    },
    {
      id: 'core.access_check.1_range',
      kind: 'latency',
      unit: 'us',
      description: 'protection lookup for a guest access, 1 protected range (mean of 10,000 lookups per sample)',
    },
    {
      id: 'core.access_check.10k_ranges',
      kind: 'latency',
      unit: 'us',
      description: 'protection lookup with 10,000 disjoint protected ranges (mean of 10,000 lookups per sample)',
    },
    {
      id: 'core.guest_read.1_range',
      kind: 'latency',
      unit: 'us',
      description: 'a whole 8-byte guest read (overlay + protection checks + copy), 1 protected range elsewhere (mean of 10,000)',
    },
    {
      id: 'core.guest_read.10k_ranges',
      kind: 'latency',
      unit: 'us',
      description: 'the same guest read with 10,000 disjoint protected ranges (mean of 10,000)',
    },
    {
      id: 'core.protect.1m_pages.ranges_held',
      kind: 'rate',
      unit: 'ranges',
      better: 'lower',
      description: 'ranges stored after protecting 1,048,576 pages page by page through hypercalls',
    },
    {
      id: 'core.idle_1000x4.mib',
      kind: 'rate',
      unit: 'MiB',
      better: 'lower',
      description: 'memory added by 1,000 idle partitions with 4 VPs each: max(RSS growth, heap+buffers growth), in a fresh process',
    },
  ],
  ratios: [
    { figure: 'core.access_check.10k_ranges.p50', baseline: 'core.access_check.1_range.p50', target: { op: '<=', value: 2 }, description: 'lookup alone' },
    { figure: 'core.guest_read.10k_ranges.p50', baseline: 'core.guest_read.1_range.p50', target: { op: '<=', value: 2 }, description: 'a whole guest access' },
  ],
  budget: { quickSec: 60, fullSec: 180 },
  async run(ctx) {
    const pages = 1_048_576;
    for (let r = 0; r < ctx.repeats; r++) {
      const p = protectedPartition(8n << 30n);
      ctx.recordLatency(
        'core.protect.1m_pages.range',
        await ctx.sampleLatency(
          async () => {
            p.modifyVtlProtectionMask('host', 1, 0x1, [{ start: 0x100n, count: BigInt(pages) }]);
          },
          { warmup: 2, samples: ctx.pick(10, 50) },
        ),
      );
    }
    // The guest path: rep hypercalls with page lists, as a VTL1 kernel would issue them.
    for (let r = 0; r < ctx.repeats; r++) {
      const p = protectedPartition(8n << 30n);
      const vp = p.vps[0]!;
      vp.activeVtl = 1;
      const R = core.HvRegisterName;
      const per = 510;
      const input = Buffer.alloc(16 + 8 * per);
      input.writeBigUInt64LE(core.HV_PARTITION_ID_SELF, 0);
      input.writeUInt32LE(0x1, 8);
      let mapsAfter = 0;
      ctx.recordLatency(
        'core.protect.1m_pages.hypercalls',
        await ctx.sampleLatency(
          async () => {
            for (let done = 0; done < pages; done += per) {
              const n = Math.min(per, pages - done);
              for (let i = 0; i < n; i++) input.writeBigUInt64LE(BigInt(0x100 + done + i), 16 + 8 * i);
              p.memory.write(0x10000n, input.subarray(0, 16 + 8 * n));
              p.setReg(vp, R.HvX64RegisterRcx, core.encodeHypercallInput({ callCode: 0x0c, repCount: n }));
              p.setReg(vp, R.HvX64RegisterRdx, 0x10000n);
              const o = core.executeVmcall(p, vp);
              if (core.decodeHypercallResult(o.resultValue).status !== 0) throw new Error('ModifyVtlProtectionMask failed');
            }
            mapsAfter = p.protections.get(1)!.rangeCount;
          },
          { warmup: 0, samples: ctx.pick(3, 10) },
        ),
      );
      ctx.recordRate('core.protect.1m_pages.ranges_held', mapsAfter);
    }
    // Access checks.
    const lookups = 10_000;
    for (const [id, ranges] of [
      ['core.access_check.1_range', 1],
      ['core.access_check.10k_ranges', 10_000],
    ] as const) {
      const p = protectedPartition(1n << 30n);
      for (let i = 0; i < ranges; i++) p.modifyVtlProtectionMask('host', 1, 0x3, [{ start: BigInt(i * 8), count: 4n }]);
      const vp = p.vps[0]!;
      let sink = 0;
      for (let r = 0; r < ctx.repeats; r++) {
        const s = await ctx.sampleLatency(
          async () => {
            for (let i = 0; i < lookups; i++) sink += core.violatingVtl(p, vp, 0, (i * 7919) % (ranges * 8), 'write') ?? 0;
          },
          { warmup: 5, samples: ctx.pick(30, 200) },
        );
        ctx.recordLatency(
          id,
          s.map((x) => x / lookups),
        );
      }
      const readId = id === 'core.access_check.1_range' ? 'core.guest_read.1_range' : 'core.guest_read.10k_ranges';
      for (let r = 0; r < ctx.repeats; r++) {
        const s = await ctx.sampleLatency(
          async () => {
            // Readable pages (mask R|W) spread over the protected region: every read passes the check.
            for (let i = 0; i < lookups; i++) sink += core.guestAccess(p, vp, 'read', BigInt(((i * 7919) % ranges) * 8) << 12n, 8).status.length;
          },
          { warmup: 5, samples: ctx.pick(30, 200) },
        );
        ctx.recordLatency(
          readId,
          s.map((x) => x / lookups),
        );
      }
      if (sink < 0) throw new Error('unreachable');
    }
    // Idle partitions, in a fresh process: the growth of the process RSS (the target is service RSS).
    for (let r = 0; r < ctx.repeats; r++) {
      const g = measureInChild(
        `for (let i = 0; i < 1000; i++) keep.push(new core.Partition({ id: 'idle' + i, architecture: 'x64', vpCount: 4, memoryBytes: 4n << 30n, maximumVtl: 1, labels: {} }));`,
      );
      ctx.recordRate('core.idle_1000x4.mib', Math.max(g.rssBytes, g.heapBytes) / (1 << 20));
    }
  },
};
