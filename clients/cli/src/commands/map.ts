// vsmctl map: a picture of the GPA space per VTL (overlays, non-zero RAM, VTL protections); the
// drawing is ../map.ts.
import type { Command } from 'commander';
import { VsmError } from '@vsm/client';
import type { Cli } from '../context';
import { GRPC } from '../exit';
import { colorEnabled, formatSize, hex64, painter } from '../format';
import { type MapInput, type MapProtections, PAGE, mapJson, renderMap } from '../map';
import { HOST_CHUNK, countArg, partitionCommand, u64Arg, vtlArg } from '../options';
import { UsageError } from '../parse';

const MAX_MAP_PAGES = 1 << 16;

export function register(program: Command, { run }: Cli): void {
  partitionCommand(program, 'map', 'picture of the GPA space per VTL: overlay pages (kind, stacking), non-zero RAM pages and VTL protections')
    .option('--vtl <n>', 'only this VTL and the protections that apply to it (default: every enabled VTL)', vtlArg)
    .option('--from <gpa>', 'first GPA of the window (rounded down to a page)', u64Arg('--from'))
    .option('--pages <n>', `pages in the window (default 256, at most ${MAX_MAP_PAGES})`, countArg('--pages', MAX_MAP_PAGES))
    .action(
      run(async (ctx, name: string, o: { vtl?: number; from?: bigint; pages?: number }) => {
        const p = await ctx.client.partitions.getPartition({ name });
        const from = ((o.from ?? 0n) / BigInt(PAGE)) * BigInt(PAGE);
        if (from >= p.memoryBytes) throw new UsageError(`--from ${hex64(from)} is beyond the partition's memory (${formatSize(p.memoryBytes)})`);
        const avail = Number((p.memoryBytes - from) / BigInt(PAGE));
        const pages = Math.min(o.pages ?? 256, avail);
        const vtls = o.vtl !== undefined ? [o.vtl] : Array.from({ length: 16 }, (_, i) => i).filter((i) => p.enabledVtlSet & (1 << i));
        const ov = await ctx.client.memory.listOverlays({ name, vtl: o.vtl });
        const nonZero: boolean[] = [];
        // ListOverlays counts overlay changes; ReadGpa reports the whole view's (protections too).
        let generation = ov.viewGeneration;
        const bytes = pages * PAGE;
        await ctx.withProgress('sampling RAM', bytes, bytes > HOST_CHUNK, async (progress) => {
          for (let off = 0; off < bytes; off += HOST_CHUNK) {
            const n = Math.min(HOST_CHUNK, bytes - off);
            const r = await ctx.client.memory.readGpa({ name, gpa: from + BigInt(off), length: n });
            if (r.viewGeneration > generation) generation = r.viewGeneration;
            const d = Buffer.from(r.data);
            for (let pg = 0; pg < n / PAGE; pg++) {
              const page = d.subarray(pg * PAGE, (pg + 1) * PAGE);
              nonZero.push(page.some((b) => b !== 0));
            }
            progress.update(off + n);
          }
        });
        // Protections of every enabled protecting VTL (with --vtl N: those above N, which restrict VTL N).
        const protections: MapProtections[] = [];
        for (let v = 1; v < 16; v++) {
          if (!(p.enabledVtlSet & (1 << v)) || (o.vtl !== undefined && v <= o.vtl)) continue;
          try {
            const r = await ctx.client.intercepts.getVtlProtections({ name, protectingVtl: v });
            protections.push({ vtl: v, protectionEnabled: r.protectionEnabled, defaultMapFlags: r.defaultMapFlags, ranges: r.ranges });
          } catch (e) {
            if (e instanceof VsmError && e.code === GRPC.UNIMPLEMENTED) break; // an older server
            throw e;
          }
        }
        const inp: MapInput = { partition: p, from, nonZero, overlays: ov.overlays, viewGeneration: generation, vtls, protections };
        ctx.emit(mapJson(inp), () => renderMap(inp, painter(colorEnabled(ctx.io.stdout, ctx.io.env))));
      }),
    );
}
