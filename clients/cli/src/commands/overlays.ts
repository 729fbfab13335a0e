// vsmctl overlays: the GPA overlay pages placed in a partition.
import type { Command } from 'commander';
import type { Cli } from '../context';
import { hex64, overlayKind, table, toJson } from '../format';
import { partitionCommand, vtlArg } from '../options';

export function register(program: Command, { run }: Cli): void {
  const overlays = program.command('overlays').description('GPA overlay pages');
  partitionCommand(overlays, 'list', 'list placed overlay pages with their stacking position')
    .option('--vtl <n>', 'only this VTL', vtlArg)
    .action(
      run(async (ctx, name: string, o: { vtl?: number }) => {
        const r = await ctx.client.memory.listOverlays({ name, vtl: o.vtl });
        ctx.emit({ name, ...(toJson(r) as object) }, () => {
          if (!r.overlays.length) return `no overlays${o.vtl !== undefined ? ` in VTL ${o.vtl}` : ''} (view generation ${r.viewGeneration})`;
          const rows = r.overlays.map((x) => [
            hex64(x.gpa),
            overlayKind(x.kind),
            String(x.vtl),
            x.vpIndex === undefined ? 'all' : String(x.vpIndex),
            x.stackPosition === 0 ? '0 (top)' : String(x.stackPosition),
            x.readOnly ? 'read-only' : 'read-write',
          ]);
          return `${table(['GPA', 'KIND', 'VTL', 'VP', 'STACK', 'GUEST ACCESS'], rows)}\nview generation ${r.viewGeneration}`;
        });
      }),
    );
}
