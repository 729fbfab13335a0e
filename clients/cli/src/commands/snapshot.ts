// vsmctl snapshot: streamed snapshots to and from files (ExportPartition / ImportPartition, #17).
// `export` writes the stream a chunk at a time (to FILE.partial, renamed once the trailer is in and
// fsynced: an interrupted export leaves no file that looks whole); `import` sends one or more files
// in order (a full snapshot, then its incremental ones) a chunk at a time. Memory stays bounded
// whatever the partition size.
import * as fs from 'node:fs';
import type { Command } from 'commander';
import { type pb, readSnapshotFiles, writeSnapshotFile } from '@vsm/client';
import type { Cli } from '../context';
import { formatSize } from '../format';
import { UsageError, partitionId, partitionName } from '../parse';

export function register(program: Command, { run }: Cli): void {
  const snap = program.command('snapshot').description('stream a partition’s complete state to a file and back (any size; incremental)');

  snap
    .command('export <partition> <file>')
    .description('ExportPartition into FILE (full, or with --base only the RAM pages written since that snapshot)')
    .option('--base <snapshot-id>', 'incremental: the id of the last snapshot exported from this partition')
    .option('--chunk-bytes <n>', 'RAM bytes per chunk (at most 1 MiB)', (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 4096 || n > 1 << 20) throw new UsageError('--chunk-bytes must be 4096..1048576');
      return n;
    })
    .action(
      run(async (ctx, partition: string, file: string, o: { base?: string; chunkBytes?: number }) => {
        const name = partitionName(partition);
        const partial = `${file}.partial`;
        let header: pb.SnapshotHeader | undefined;
        let trailer: pb.SnapshotTrailer | undefined;
        async function* chunks() {
          for await (const c of ctx.client.snapshots.exportPartition({ name, baseSnapshotId: o.base ?? '', chunkBytes: o.chunkBytes ?? 0 })) {
            if (c.chunk?.$case === 'header') header = c.chunk.value;
            if (c.chunk?.$case === 'trailer') trailer = c.chunk.value;
            yield c;
          }
        }
        try {
          await writeSnapshotFile(partial, chunks());
          if (!header || !trailer) throw new Error('the export ended without its trailer');
          fs.renameSync(partial, file);
        } catch (e) {
          fs.rmSync(partial, { force: true });
          throw e;
        }
        const bytes = fs.statSync(file).size;
        ctx.emit(
          {
            file,
            snapshotId: header.snapshotId,
            baseSnapshotId: header.baseSnapshotId,
            memoryPages: String(trailer.memoryPages),
            protectionRanges: String(trailer.protectionRanges),
            bytes,
            sha256: Buffer.from(trailer.sha256).toString('hex'),
          },
          () =>
            [
              `${name} -> ${file} (${formatSize(BigInt(bytes))})`,
              `snapshot ${header!.snapshotId}${header!.baseSnapshotId ? ` (incremental to ${header!.baseSnapshotId})` : ' (full)'}`,
              `${trailer!.memoryPages} RAM pages, ${trailer!.protectionRanges} protection ranges`,
            ].join('\n'),
        );
      }),
    );

  snap
    .command('import <file...>')
    .description('ImportPartition from FILEs: a full snapshot, then its incremental ones in order')
    .option('--id <partition-id>', 'id of the new partition (default: generated)')
    .action(
      run(async (ctx, files: string[], o: { id?: string }) => {
        for (const f of files) if (!fs.existsSync(f)) throw new UsageError(`no such file: ${f}`);
        const p = await ctx.client.snapshots.importPartition(readSnapshotFiles(files), { partitionId: o.id ? partitionId(o.id) : '' });
        ctx.emit({ name: p.name, files }, () => `${p.name} imported from ${files.join(', ')}`);
      }),
    );
}
