// Emulator figures: a guest action over gRPC against the raw grpc-js unary baseline, and core
// operations in process (no gRPC): VtlCall+VtlReturn round trip, overlay place/remove, and the
// memory held by a 64 GiB partition that touched 10 pages.
import { connect, pb } from '@vsm/client';
import * as core from '@vsm/core';
import type { Suite } from '../api';
import { measureInChild } from '../lib/memprobe';

const { HV_X64_MSR_GUEST_OS_ID, HV_X64_MSR_HYPERCALL, HV_X64_MSR_SIMP } = core.HvMsr;

export const suite: Suite = {
  name: 'emulator',
  description: 'emulator backend: guest action over gRPC, core operations in process',
  figures: [
    {
      id: 'emulator.rdmsr.unary',
      kind: 'latency',
      unit: 'us',
      description: 'ReadMsr(HV_X64_MSR_GUEST_OS_ID) guest action over gRPC, one in flight, server in its own process',
    },
    {
      id: 'emulator.rdmsr.unary.metrics',
      kind: 'latency',
      unit: 'us',
      description:
        'the same with the metrics on (a second server with --metrics-listen: every call counted and timed), measured alternately with the first in the same run',
    },
    {
      id: 'core.vtlcall_vtlreturn',
      kind: 'latency',
      unit: 'us',
      description: 'core: VtlCall + VtlReturn through the hypercall page (mean of 1000 per sample)',
    },
    {
      id: 'core.overlay_place_remove',
      kind: 'latency',
      unit: 'us',
      description: 'core: SIMP overlay placed and removed by MSR writes (mean of 1000 per sample)',
    },
    {
      id: 'core.sparse_64g_10pages_kib',
      kind: 'rate',
      unit: 'KiB',
      description: 'heap + buffers growth of a 64 GiB partition after 10 touched pages, in a fresh process (target: <= 1 MiB of RSS)',
    },
  ],
  ratios: [
    { figure: 'emulator.rdmsr.unary.p50', baseline: 'raw.unary.64B.p50', target: { op: '<=', value: 1.3 } },
    // Observability (#15): counting costs no more than 2%.
    { figure: 'emulator.rdmsr.unary.metrics.p50', baseline: 'emulator.rdmsr.unary.p50', target: { op: '<=', value: 1.02 } },
  ],
  budget: { quickSec: 40, fullSec: 150 },
  async run(ctx) {
    // Without and with metrics: two servers, sampled in alternation (ABBA per repeat, in slices) so
    // that the shared machine's drift lands on both figures alike; per figure as many samples in all as
    // the single figure had before (the suite's time budget also covers the core figures below).
    const targets = await Promise.all(
      [
        { figure: 'emulator.rdmsr.unary', args: [] },
        { figure: 'emulator.rdmsr.unary.metrics', args: ['--metrics'] },
      ].map(async (t) => {
        const server = await ctx.forkServer('servers/vsm-emulator-server.js', { args: t.args });
        const client = connect(server.address, { deadlineMs: 10_000 });
        const p = await client.partitions.createPartition({ partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: 1n << 30n }) });
        const vp = `${p.name}/vps/0`;
        await client.guest.writeMsr({ name: vp, msr: HV_X64_MSR_GUEST_OS_ID, value: 1n });
        return { ...t, client, vp };
      }),
    );
    try {
      const slices = 10;
      for (let r = 0; r < ctx.repeats; r++) {
        const samples = new Map<string, number[]>(targets.map((t) => [t.figure, []]));
        for (let s = 0; s < slices; s++)
          for (const t of s % 2 === 0 ? targets : [...targets].reverse()) {
            const got = await ctx.sampleLatency(() => t.client.guest.readMsr({ name: t.vp, msr: HV_X64_MSR_GUEST_OS_ID }), {
              warmup: ctx.pick(20, 50),
              samples: ctx.pick(50, 500),
            });
            samples.get(t.figure)!.push(...got);
          }
        for (const t of targets) ctx.recordLatency(t.figure, samples.get(t.figure)!);
      }
    } finally {
      for (const t of targets) t.client.close();
    }

    // Core, in process.
    const part = new core.Partition({ id: 'bench', architecture: 'x64', vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1, labels: {} });
    const vp = part.vps[0]!;
    part.enablePartitionVtl('host', 1, 0);
    part.enableVpVtl('host', 0, 1, core.longModeContext());
    for (const vtl of [0, 1] as const) {
      vp.activeVtl = vtl;
      part.writeMsr(vp, HV_X64_MSR_GUEST_OS_ID, 1n);
      part.writeMsr(vp, HV_X64_MSR_HYPERCALL, (vtl === 0 ? 0x1000n : 0x2000n) | 1n);
    }
    vp.activeVtl = 0;
    const R = core.HvRegisterName;
    const batch = 1000;
    for (let r = 0; r < ctx.repeats; r++) {
      const s = await ctx.sampleLatency(
        async () => {
          for (let i = 0; i < batch; i++) {
            part.setReg(vp, R.HvX64RegisterRcx, 0n);
            core.callHypercallPage(part, vp, 0x0f);
            part.setReg(vp, R.HvX64RegisterRcx, 1n);
            core.callHypercallPage(part, vp, 0x26);
          }
        },
        { warmup: 5, samples: ctx.pick(30, 200) },
      );
      ctx.recordLatency(
        'core.vtlcall_vtlreturn',
        s.map((x) => x / batch),
      );
      const o = await ctx.sampleLatency(
        async () => {
          for (let i = 0; i < batch; i++) {
            part.writeMsr(vp, HV_X64_MSR_SIMP, 0x5001n);
            part.writeMsr(vp, HV_X64_MSR_SIMP, 0x5000n);
          }
        },
        { warmup: 5, samples: ctx.pick(30, 200) },
      );
      ctx.recordLatency(
        'core.overlay_place_remove',
        o.map((x) => x / batch),
      );
    }
    // A 64 GiB partition that touched 10 pages, in a fresh process.
    for (let r = 0; r < ctx.repeats; r++) {
      const g = measureInChild(
        `const big = new core.Partition({ id: 'big', architecture: 'x64', vpCount: 1, memoryBytes: 64n << 30n, maximumVtl: 0, labels: {} }); for (let i = 0; i < 10; i++) big.memory.write(BigInt(i) * (6n << 30n), Buffer.from([1])); if (big.memory.pagesTouched !== 10) throw new Error('sparse memory touched more pages'); keep.push(big);`,
      );
      ctx.recordRate('core.sparse_64g_10pages_kib', Math.max(0, g.heapBytes) / 1024);
    }
  },
};
