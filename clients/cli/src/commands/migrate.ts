// vsmctl migrate: live migration of a partition to another agent (MigratePartition, #17). One line per
// round as the service reports it (pre-copy while the guest runs, then the switch-over), then the
// result: where it runs now, the downtime and the total time. Ctrl-C cancels: the partition stays on
// its agent, its guest running.
import type { Command } from 'commander';
import { pb } from '@vsm/client';
import type { Cli } from '../context';
import { approxSize } from '../format';
import { arg } from '../options';
import { UsageError, parseCount, partitionName } from '../parse';

const PHASE: Record<number, string> = {
  [pb.MigrationPhase.MIGRATION_PHASE_PRECOPY]: 'pre-copy',
  [pb.MigrationPhase.MIGRATION_PHASE_SWITCHOVER]: 'switch-over (guest paused)',
  [pb.MigrationPhase.MIGRATION_PHASE_DONE]: 'done',
};

export function register(program: Command, { run }: Cli): void {
  program
    .command('migrate <partition>')
    .description('move a partition, its guest running, to another KVM agent (vsm-service --backend agent)')
    .requiredOption('--to <agent>', 'the target agent: its address, or agents/ADDRESS as `vsmctl agents` lists it')
    .option(
      '--max-rounds <n>',
      'pre-copy rounds after the full copy (default 8, at most 64)',
      arg((v) => parseCount(v, '--max-rounds', 64)),
    )
    .option(
      '--max-dirty-pages <n>',
      'switch over once a round leaves at most this many pages (default 64)',
      arg((v) => parseCount(v, '--max-dirty-pages', 0xffff_ffff)),
    )
    .option(
      '--chunk-bytes <n>',
      'RAM bytes per chunk (at most 1 MiB)',
      arg((v) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 4096 || n > 1 << 20) throw new UsageError('--chunk-bytes must be 4096..1048576');
        return n;
      }),
    )
    .action(
      run(async (ctx, partition: string, o: { to: string; maxRounds?: number; maxDirtyPages?: number; chunkBytes?: number }) => {
        const name = partitionName(partition);
        const ac = new AbortController();
        const onSigint = () => ac.abort();
        process.once('SIGINT', onSigint);
        let result: pb.MigrationResult | undefined;
        try {
          for await (const m of ctx.client.snapshots.migratePartition(
            { name, targetAgent: o.to, maxRounds: o.maxRounds ?? 0, maxDirtyPages: o.maxDirtyPages ?? 0, chunkBytes: o.chunkBytes ?? 0 },
            ac.signal,
          )) {
            if (m.result) {
              result = m.result;
              continue;
            }
            ctx.line(
              {
                round: m.round,
                phase: PHASE[m.phase] ?? String(m.phase),
                pagesSent: String(m.pagesSent),
                bytesSent: String(m.bytesSent),
                dirtyPages: String(m.dirtyPages),
                elapsedMs: String(m.elapsedMs),
              },
              () =>
                `round ${m.round} ${PHASE[m.phase] ?? m.phase}: ${m.pagesSent} pages (${approxSize(Number(m.bytesSent))}) at ${m.elapsedMs} ms${m.round > 0 && m.phase === pb.MigrationPhase.MIGRATION_PHASE_PRECOPY ? `, ${m.dirtyPages} written since the round before` : ''}`,
            );
          }
        } finally {
          process.off('SIGINT', onSigint);
        }
        if (ac.signal.aborted) throw new Error(`cancelled: ${name} stays where it was`);
        if (!result) throw new Error('the migration ended without a result');
        const r = result;
        ctx.line(
          {
            name,
            sourceAgent: r.sourceAgent,
            targetAgent: r.targetAgent,
            runState: r.partition ? pb.RunState[r.partition.runState] : '',
            downtimeMs: String(r.downtimeMs),
            totalMs: String(r.totalMs),
            rounds: r.rounds,
            pagesSent: String(r.pagesSent),
            bytesSent: String(r.bytesSent),
          },
          () =>
            `${name} moved ${r.sourceAgent} -> ${r.targetAgent}: downtime ${r.downtimeMs} ms, total ${r.totalMs} ms, ${r.rounds} rounds, ${r.pagesSent} pages (${approxSize(Number(r.bytesSent))})`,
        );
      }),
    );
}
