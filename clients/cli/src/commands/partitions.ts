// vsmctl partitions: create, list, get, delete; in fleet mode also checkpoint and recover.
import { type Command, Option } from 'commander';
import { pb } from '@vsm/client';
import type { Cli } from '../context';
import { architectureText, count, fields, formatSize, partitionStateText, table, toJson, vtlSet } from '../format';
import { MAX_VP, arg, countArg, partitionCommand, sizeArg, vtlArg } from '../options';
import { parseLabel, partitionId } from '../parse';
import { runText } from './execution';

const labelsText = (p: pb.Partition, sep: string): string =>
  Object.entries(p.labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(sep);

function partitionFields(p: pb.Partition): string {
  return fields([
    ['name', p.name],
    ['architecture', architectureText(p.architecture)],
    ['VPs', String(p.vpCount)],
    ['memory', `${formatSize(p.memoryBytes)} (${p.memoryBytes} bytes)`],
    ['maximum VTL', String(p.maximumVtl)],
    ['enabled VTLs', vtlSet(p.enabledVtlSet)],
    ['state', partitionStateText(p.state)],
    ['created', p.createTimeUnixMs ? new Date(Number(p.createTimeUnixMs)).toISOString() : '-'],
    ['request id', p.requestId || '-'],
    ['labels', labelsText(p, ', ') || '-'],
    ['devices', p.devices.join(', ') || '-'],
    ['run state', runText(p)],
    // Fleet mode only (vsm-service --etcd-endpoints).
    ...(p.agent
      ? ([
          ['agent', p.agent],
          ['state reason', p.stateReason || '-'],
          ['recovery policy', p.recoveryPolicy === pb.RecoveryPolicy.RECOVERY_POLICY_RESTART ? 'restart' : 'none'],
          ['checkpoint', p.checkpointTimeUnixMs !== undefined ? new Date(Number(p.checkpointTimeUnixMs)).toISOString() : '-'],
        ] as [string, string][])
      : []),
  ]);
}

export function register(program: Command, { run }: Cli): void {
  const partitions = program.command('partitions').description('create, list, get and delete partitions');
  partitions
    .command('create')
    .description('create a partition')
    .requiredOption('--vp-count <n>', 'number of virtual processors', countArg('--vp-count', MAX_VP))
    .requiredOption('--memory <size>', 'guest physical address space size (1GiB, 512MiB, 4096, 0x1000)', sizeArg('--memory'))
    .option('--id <id>', 'partition id ([a-z0-9-], becomes partitions/ID; default: chosen by the server)', arg(partitionId))
    .option('--max-vtl <n>', 'highest VTL the partition may enable (0..2)', vtlArg)
    .addOption(new Option('--arch <arch>', 'architecture').choices(['x64', 'arm64']))
    .option(
      '--label <key=value...>',
      'labels (repeatable)',
      arg((s: string, prev?: Record<string, string>) => parseLabel(s, prev)),
    )
    .option('--request-id <id>', 'idempotency key: a retry with the same key returns the same partition')
    .addOption(
      new Option('--recovery-policy <policy>', 'fleet mode: restart it on another agent from its last checkpoint when its agent is lost').choices([
        'none',
        'restart',
      ]),
    )
    .action(
      run(
        async (
          ctx,
          o: {
            vpCount: number;
            memory: bigint;
            id?: string;
            maxVtl?: number;
            arch?: string;
            label?: Record<string, string>;
            requestId?: string;
            recoveryPolicy?: string;
          },
        ) => {
          const p = await ctx.client.partitions.createPartition({
            partitionId: o.id ?? '',
            requestId: o.requestId ?? '',
            partition: pb.Partition.fromPartial({
              vpCount: o.vpCount,
              memoryBytes: o.memory,
              maximumVtl: o.maxVtl ?? 0,
              labels: o.label ?? {},
              architecture:
                o.arch === 'arm64'
                  ? pb.Architecture.ARCHITECTURE_ARM64
                  : o.arch === 'x64'
                    ? pb.Architecture.ARCHITECTURE_X64
                    : pb.Architecture.ARCHITECTURE_UNSPECIFIED,
              recoveryPolicy: o.recoveryPolicy === 'restart' ? pb.RecoveryPolicy.RECOVERY_POLICY_RESTART : pb.RecoveryPolicy.RECOVERY_POLICY_UNSPECIFIED,
            }),
          });
          ctx.emit(toJson(p), () => `created ${p.name} (${count(p.vpCount, 'VP')}, ${formatSize(p.memoryBytes)}, maximum VTL ${p.maximumVtl})`);
        },
      ),
    );
  partitions
    .command('list')
    .description('list partitions (one page, or --all)')
    .option('--page-size <n>', 'partitions per page (server default 50, maximum 1000)', countArg('--page-size', 1000))
    .option('--page-token <token>', 'continue from a previous page')
    .option('--all', 'follow next-page tokens to the end')
    .action(
      run(async (ctx, o: { pageSize?: number; pageToken?: string; all?: boolean }) => {
        const all: pb.Partition[] = [];
        let token = o.pageToken ?? '';
        for (;;) {
          const r = await ctx.client.partitions.listPartitions({ pageSize: o.pageSize ?? 0, pageToken: token });
          all.push(...r.partitions);
          token = r.nextPageToken;
          if (!o.all || !token) break;
        }
        ctx.emit({ partitions: toJson(all), nextPageToken: token }, () => {
          if (!all.length) return token ? `no partitions on this page; next page: --page-token ${token}` : 'no partitions';
          const rows = all.map((p) => [
            p.name,
            String(p.vpCount),
            formatSize(p.memoryBytes),
            String(p.maximumVtl),
            vtlSet(p.enabledVtlSet),
            partitionStateText(p.state),
            p.createTimeUnixMs ? new Date(Number(p.createTimeUnixMs)).toISOString().replace(/\.\d+Z$/, 'Z') : '-',
            labelsText(p, ',') || '-',
          ]);
          const t = table(['NAME', 'VPS', 'MEMORY', 'MAX VTL', 'VTLS', 'STATE', 'CREATED', 'LABELS'], rows);
          return token ? `${t}\nmore: --page-token ${token} (or --all)` : t;
        });
      }),
    );
  partitionCommand(partitions, 'get', 'show one partition').action(
    run(async (ctx, name: string) => {
      const p = await ctx.client.partitions.getPartition({ name });
      ctx.emit(toJson(p), () => partitionFields(p));
    }),
  );
  partitionCommand(partitions, 'delete', 'delete a partition and all its state').action(
    run(async (ctx, name: string) => {
      await ctx.client.partitions.deletePartition({ name });
      ctx.emit({ name, deleted: true }, () => `deleted ${name}`);
    }),
  );
  partitionCommand(partitions, 'checkpoint', "fleet mode: write a durable checkpoint of the partition now (into vsm-service's --checkpoint-dir)").action(
    run(async (ctx, name: string) => {
      const p = await ctx.client.fleet.checkpointPartition({ name });
      ctx.emit(toJson(p), () => `checkpointed ${p.name} on agent ${p.agent} at ${new Date(Number(p.checkpointTimeUnixMs ?? 0)).toISOString()}`);
    }),
  );
  partitionCommand(partitions, 'recover', 'fleet mode: restart an UNAVAILABLE partition (its agent lost) on another agent from its last checkpoint')
    .option('--agent <name>', 'the agent to restart it on (default: the one with the most free capacity)')
    .action(
      run(async (ctx, name: string, o: { agent?: string }) => {
        const p = await ctx.client.fleet.recoverPartition({ name, targetAgent: o.agent ?? '' });
        ctx.emit(
          toJson(p),
          () =>
            `restarted ${p.name} on agent ${p.agent} from its checkpoint of ${new Date(Number(p.checkpointTimeUnixMs ?? 0)).toISOString()} (what changed after it is lost; a guest that ran is stopped)`,
        );
      }),
    );
}
