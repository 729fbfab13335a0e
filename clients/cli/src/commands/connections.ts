// vsmctl connections: host-made SynIC connections (ExecutionService Create/Delete/ListConnections):
// a ConnectionId that guest code's HvCallPostMessage (message) or HvCallSignalEvent (event) reaches
// SINTn of a VP's VTL through.
import { type Command, Option } from 'commander';
import { pb } from '@vsm/client';
import type { Cli } from '../context';
import { type Json, hex, table } from '../format';
import { MAX_VP, arg, indexArg, partitionCommand, vtlArg } from '../options';
import { UsageError, parseU32 } from '../parse';

/** HV_CONNECTION_ID is 24 bits. */
const MAX_CONNECTION_ID = 0xffffff;
const KINDS = { message: pb.ConnectionKind.CONNECTION_KIND_MESSAGE, event: pb.ConnectionKind.CONNECTION_KIND_EVENT } as const;
const connectionIdArg = arg((s: string) => {
  const n = parseU32(s, 'connection id');
  if (n > MAX_CONNECTION_ID) throw new UsageError(`connection id ${s} is not a 24-bit HV_CONNECTION_ID`);
  return n;
});

const kindText = (k: number): string => (k === KINDS.message ? 'message' : k === KINDS.event ? 'event' : String(k));
const connectionJson = (c: pb.Connection): Json => ({
  connectionId: c.connectionId,
  kind: kindText(c.kind),
  vpIndex: c.vpIndex,
  sint: c.sint,
  vtl: c.vtl,
  flagNumber: c.flagNumber,
  flagCount: c.flagCount,
});
const flagsText = (c: pb.Connection): string =>
  c.kind === KINDS.event ? (c.flagCount === 1 ? String(c.flagNumber) : `${c.flagNumber}..${c.flagNumber + c.flagCount - 1}`) : '-';

export function register(program: Command, { run }: Cli): void {
  const connections = program.command('connections').description('host-made SynIC connections: guest HvCallPostMessage / HvCallSignalEvent targets');
  partitionCommand(connections, 'create', "create a connection: ConnectionId -> SINTn of a VP's VTL")
    .argument('<connection-id>', 'HV_CONNECTION_ID (24 bits; hex or decimal)', connectionIdArg)
    .addOption(new Option('--kind <kind>', 'port kind').choices(Object.keys(KINDS)).makeOptionMandatory())
    .requiredOption('--vp <n>', 'target VP index', indexArg('--vp', MAX_VP))
    .requiredOption('--sint <n>', 'target SINT 0..15', indexArg('--sint', 15))
    .option('--vtl <n>', 'target VTL (default 0)', vtlArg)
    .option('--flag-number <n>', "event: the port's base flag (default 0)", indexArg('--flag-number', 2047))
    .option('--flag-count <n>', "event: the port's number of flags (default 1)", indexArg('--flag-count', 2048))
    .action(
      run(
        async (
          ctx,
          name: string,
          connectionId: number,
          o: { kind: keyof typeof KINDS; vp: number; sint: number; vtl?: number; flagNumber?: number; flagCount?: number },
        ) => {
          const c = await ctx.client.execution.createConnection({
            name,
            connectionId,
            kind: KINDS[o.kind],
            vpIndex: o.vp,
            sint: o.sint,
            vtl: o.vtl,
            flagNumber: o.flagNumber,
            flagCount: o.flagCount,
          });
          ctx.emit(
            connectionJson(c),
            () =>
              `created ${kindText(c.kind)} connection ${hex(c.connectionId)} -> VP ${c.vpIndex} VTL ${c.vtl} SINT${c.sint}${c.kind === KINDS.event ? ` flags ${flagsText(c)}` : ''} in ${name}`,
          );
        },
      ),
    );
  partitionCommand(connections, 'delete', 'delete a connection')
    .argument('<connection-id>', 'HV_CONNECTION_ID', connectionIdArg)
    .action(
      run(async (ctx, name: string, connectionId: number) => {
        await ctx.client.execution.deleteConnection({ name, connectionId });
        ctx.emit({ name, connectionId, deleted: true }, () => `deleted connection ${hex(connectionId)} of ${name}`);
      }),
    );
  partitionCommand(connections, 'list', "list a partition's connections").action(
    run(async (ctx, name: string) => {
      const { connections: all } = await ctx.client.execution.listConnections({ name });
      ctx.emit({ name, connections: all.map(connectionJson) }, () =>
        all.length
          ? table(
              ['ID', 'KIND', 'VP', 'VTL', 'SINT', 'FLAGS'],
              all.map((c) => [hex(c.connectionId), kindText(c.kind), String(c.vpIndex), String(c.vtl), String(c.sint), flagsText(c)]),
            )
          : `no connections in ${name}`,
      );
    }),
  );
}
