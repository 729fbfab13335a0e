// vsmctl memory: read, write and execute guest physical memory (as the host, or as a guest access by
// a VP), and VTL protections (protect, protections).
import * as fs from 'node:fs';
import type { Command } from 'commander';
import { VsmError, type pb } from '@vsm/client';
import type { Cli } from '../context';
import { type Json, count, formatSize, hex, hex64, hexdump, table, toJson } from '../format';
import { guestAccess, notCompletedText } from '../guest';
import { HOST_CHUNK, arg, indexArg, listArg, partitionCommand, sizeArg, u64Arg, vpArg, vpCommand, vtlArg } from '../options';
import { stopped } from '../outcome';
import { UsageError, parseHexBytes, vpName } from '../parse';
import { type Pages, gpaRange, maskLabel, maskText, parseMapFlags, parsePageRange, planProtectCalls } from '../protect';

/** Largest ReadMemory/WriteMemory (guest) transfer. */
const GUEST_CHUNK = 1 << 16;
/** ExecuteMemory fetches 1..16 bytes (one instruction). */
const MAX_FETCH = 16;

/**
 * Where a read or write goes: the host (RAM, or a VTL's view for reads), or with --guest a guest
 * access by that VP through its active VTL's view, in smaller chunks.
 */
function accessor(name: string, guest: number | undefined) {
  const vp = guest !== undefined ? vpName(name, guest) : undefined;
  return { vp, chunk: vp ? GUEST_CHUNK : HOST_CHUNK, resource: vp ?? name };
}

/** The outcome of the last guest access, under "outcome" in JSON. */
const outcomeJson = (o: pb.GuestActionOutcome | undefined): { outcome?: Json } => (o ? { outcome: toJson(o) } : {});

/** GPAs of `count` pages from page `start`: `0x...-0x...`. */
const pagesGpaText = (start: bigint, n: bigint): string => `${hex64(start << 12n)}-${hex64(((start + n) << 12n) - 1n)}`;

async function* fileChunks(path: string, chunk: number): AsyncGenerator<Buffer> {
  const fh = await fs.promises.open(path, 'r');
  try {
    for (;;) {
      const buf = Buffer.alloc(chunk);
      const { bytesRead } = await fh.read(buf, 0, chunk, null);
      if (bytesRead === 0) return;
      yield buf.subarray(0, bytesRead);
    }
  } finally {
    await fh.close();
  }
}

/** The bytes of `memory write`: hex on the command line, or @FILE (read in chunks). */
function writeSource(dataArg: string, chunk: number): { total: number; source: AsyncIterable<Buffer> | Iterable<Buffer> } {
  if (!dataArg.startsWith('@')) {
    const data = parseHexBytes(dataArg);
    return { total: data.length, source: Array.from({ length: Math.ceil(data.length / chunk) }, (_, i) => data.subarray(i * chunk, (i + 1) * chunk)) };
  }
  const path = dataArg.slice(1);
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch (e) {
    throw new UsageError(`cannot read ${path}: ${(e as Error).message}`);
  }
  if (!st.isFile()) throw new UsageError(`${path} is not a file`);
  if (st.size === 0) throw new UsageError(`${path} is empty`);
  return { total: st.size, source: fileChunks(path, chunk) };
}

export function register(program: Command, { run }: Cli): void {
  const memory = program.command('memory').description('read, write and execute guest physical memory; VTL protections');
  partitionCommand(memory, 'read', 'read memory: RAM (host view), as a VTL sees it (--vtl), or as a guest access by a VP (--guest)')
    .argument('<gpa>', 'guest physical address (hex or decimal)', u64Arg('GPA'))
    .argument('<length>', 'bytes to read (4096, 0x1000, 64KiB)', sizeArg('length'))
    .option('--vtl <n>', 'host read of what VTL n sees (its overlays on top of RAM)', vtlArg)
    .option('--guest <vp>', "guest access: the VP reads through its active VTL's view (subject to higher VTLs' protections)", vpArg)
    .option('--output <file>', 'write the raw bytes to FILE instead of a hexdump')
    .action(
      run(async (ctx, name: string, gpa: bigint, length: bigint, o: { vtl?: number; guest?: number; output?: string }) => {
        if (o.vtl !== undefined && o.guest !== undefined)
          throw new UsageError("--vtl and --guest exclude each other (a guest access uses the VP's active VTL)");
        if (length < 1n) throw new UsageError('length must be at least 1');
        if (length > 256n << 20n) throw new UsageError('length must be at most 256 MiB');
        const total = Number(length);
        const { vp, chunk, resource } = accessor(name, o.guest);
        const parts: Buffer[] = [];
        let outcome: pb.GuestActionOutcome | undefined;
        await ctx.withProgress('reading', total, total > chunk, async (progress) => {
          for (let got = 0; got < total; ) {
            const n = Math.min(chunk, total - got);
            const at = gpa + BigInt(got);
            if (vp) {
              const r = await guestAccess(ctx, vp, () => ctx.client.guest.readMemory({ name: vp, gpa: at, length: n }));
              outcome = r.outcome;
              if (stopped(r.outcome) || r.data.length === 0) break;
              parts.push(Buffer.from(r.data));
            } else {
              const r = await ctx.client.memory.readGpa({ name, gpa: at, length: n, vtlView: o.vtl });
              parts.push(Buffer.from(r.data));
            }
            got += n;
            progress.update(got);
          }
        });
        const data = Buffer.concat(parts);
        const view = o.guest !== undefined ? `guest access by VP ${o.guest}` : o.vtl !== undefined ? `VTL ${o.vtl} view` : 'RAM';
        if (o.output) {
          fs.writeFileSync(o.output, data);
        }
        const failed = stopped(outcome) ? outcome : undefined;
        ctx.emit(
          {
            name: resource,
            gpa: gpa.toString(),
            length: data.length,
            view: o.guest !== undefined ? 'guest' : o.vtl !== undefined ? `vtl${o.vtl}` : 'ram',
            ...(o.output ? { output: o.output } : { data: data.toString('hex') }),
            ...outcomeJson(outcome),
          },
          () => {
            const head = o.output ? `read ${data.length} bytes at ${hex64(gpa)} (${view}) into ${o.output}` : data.length ? hexdump(data, gpa) : '';
            const tail = failed
              ? notCompletedText(`guest read at ${hex64(gpa + BigInt(data.length))}`, failed, o.guest!, `read stopped after ${data.length} bytes`)
              : '';
            return [head, tail].filter(Boolean).join('\n');
          },
        );
      }),
    );
  partitionCommand(memory, 'write', 'write memory: RAM (host, never into an overlay), or as a guest access by a VP (--guest)')
    .argument('<gpa>', 'guest physical address (hex or decimal)', u64Arg('GPA'))
    .argument('<data>', 'hex bytes (deadbeef, "de ad be ef") or @FILE')
    .option('--guest <vp>', "guest access: the VP writes through its active VTL's view (subject to higher VTLs' protections)", vpArg)
    .action(
      run(async (ctx, name: string, gpa: bigint, dataArg: string, o: { guest?: number }) => {
        const { vp, chunk, resource } = accessor(name, o.guest);
        const { total, source } = writeSource(dataArg, chunk);
        let done = 0;
        let outcome: pb.GuestActionOutcome | undefined;
        await ctx.withProgress(`writing ${dataArg.startsWith('@') ? dataArg.slice(1) : 'data'}`, total, total > chunk, async (progress) => {
          for await (const part of source) {
            const at = gpa + BigInt(done);
            if (vp) {
              const r = await guestAccess(ctx, vp, () => ctx.client.guest.writeMemory({ name: vp, gpa: at, data: part }));
              outcome = r.outcome;
              if (stopped(r.outcome)) break;
            } else {
              await ctx.client.memory.writeGpa({ name, gpa: at, data: part });
            }
            done += part.length;
            progress.update(done);
          }
        });
        const failed = stopped(outcome) ? outcome : undefined;
        const where = o.guest !== undefined ? `as VP ${o.guest} (VTL ${outcome?.activeVtl ?? '-'} view)` : 'into RAM';
        ctx.emit({ name: resource, gpa: gpa.toString(), bytesWritten: done, ...outcomeJson(outcome) }, () =>
          failed
            ? notCompletedText(`guest write at ${hex64(gpa + BigInt(done))}`, failed, o.guest!, `${done} of ${total} bytes written before it`)
            : `wrote ${done} bytes at ${hex64(gpa)} ${where}`,
        );
      }),
    );
  vpCommand(memory, 'exec', "guest instruction fetch (ExecuteMemory): the VP fetches LEN bytes at GPA through its active VTL's view")
    .argument('<gpa>', 'guest physical address (hex or decimal)', u64Arg('GPA'))
    .argument('[length]', `bytes fetched, 1..${MAX_FETCH} (default ${MAX_FETCH})`, indexArg('length', MAX_FETCH))
    .action(
      run(async (ctx, part: string, idx: number, gpa: bigint, len: number | undefined) => {
        const length = len ?? MAX_FETCH;
        if (length < 1) throw new UsageError(`length must be 1..${MAX_FETCH} (one instruction fetch)`);
        const name = vpName(part, idx);
        const r = await guestAccess(ctx, name, () => ctx.client.guest.executeMemory({ name, gpa, length }));
        const o = r.outcome;
        const data = Buffer.from(r.data);
        ctx.emit({ name, gpa: gpa.toString(), length, data: data.toString('hex'), ...outcomeJson(o) }, () => {
          if (o && stopped(o)) return notCompletedText(`instruction fetch at ${hex64(gpa)} by VP ${idx}`, o, idx, 'nothing fetched');
          const bytes = Array.from(data, (b) => b.toString(16).padStart(2, '0')).join(' ');
          return `fetched ${count(data.length, 'byte')} at ${hex64(gpa)} as VP ${idx} (VTL ${o?.activeVtl ?? '-'}): ${bytes}`;
        });
      }),
    );
  partitionCommand(memory, 'protect', "set a VTL's protection mask on pages (ModifyVtlProtectionMask as the host); the VTL must have set EnableVtlProtection")
    .requiredOption('--vtl <n>', 'protecting VTL (1..maximum VTL): its mask restricts every lower VTL', vtlArg)
    .requiredOption(
      '--flags <flags>',
      'what lower VTLs may do: r, rw, rx, rwx, none, or HV_MAP_GPA_FLAGS as a number (0x1 read, 0x2 write, 0x4 kernel exec, 0x8 user exec)',
      arg(parseMapFlags),
    )
    .option('--gpa <gpa>', 'first GPA (page aligned), with --size', u64Arg('--gpa'))
    .option('--size <size>', 'bytes from --gpa, whole 4 KiB pages (4KiB, 2MiB, 1GiB)', sizeArg('--size'))
    .option('--pages <start:count...>', 'page ranges: first page number (GPA >> 12) and page count, e.g. 0x40:16 (repeatable)', listArg(parsePageRange))
    .addHelpText('after', '\nRequests with more than 65536 ranges or 4 GiB are sent in several calls, with progress on a TTY.')
    .action(
      run(async (ctx, name: string, o: { vtl: number; flags: number; gpa?: bigint; size?: bigint; pages?: Pages[] }) => {
        if (o.pages && (o.gpa !== undefined || o.size !== undefined)) throw new UsageError('--pages excludes --gpa/--size (give one or the other)');
        if (!o.pages && (o.gpa === undefined || o.size === undefined)) throw new UsageError('give --gpa GPA --size SIZE, or --pages START:COUNT');
        if (o.vtl < 1) throw new UsageError('--vtl must be 1 or higher (VTL 0 protects nothing: a VTL restricts the VTLs below it)');
        const ranges = o.pages ?? [gpaRange(o.gpa!, o.size!)];
        const calls = planProtectCalls(ranges);
        const totalPages = ranges.reduce((a, r) => a + r.count, 0n);
        if (calls.length > 1) {
          // All ranges are checked before the first call, as the server does for a single call.
          const p = await ctx.client.partitions.getPartition({ name });
          const pages = p.memoryBytes >> 12n;
          for (const r of ranges) {
            if (r.start + r.count > pages)
              throw new UsageError(
                `pages 0x${r.start.toString(16)}+${r.count} are beyond the partition's memory (${formatSize(p.memoryBytes)}, ${pages} pages)`,
              );
          }
        }
        let changed = 0n;
        let done = 0n;
        let generation = 0n;
        await ctx.withProgress(
          `VTL ${o.vtl} ${maskText(o.flags)}`,
          Number(totalPages),
          calls.length > 1,
          async (progress) => {
            for (const [i, batch] of calls.entries()) {
              try {
                const r = await ctx.client.intercepts.modifyVtlProtectionMask({ name, protectingVtl: o.vtl, mapFlags: o.flags, ranges: batch });
                changed += r.pagesChanged;
                generation = r.viewGeneration;
              } catch (e) {
                if (e instanceof VsmError && i > 0) {
                  throw new VsmError(
                    e.code,
                    e.reason,
                    e.domain,
                    e.metadata,
                    `${e.message} (call ${i + 1} of ${calls.length}; the calls before it changed ${changed} pages, which keep the new mask)`,
                  );
                }
                throw e;
              }
              done += batch.reduce((a, r) => a + r.pageCount, 0n);
              progress.update(Number(done), `call ${i + 1} of ${calls.length}`);
            }
          },
          (n) => `${n} pages`,
        );
        const what = ranges.length === 1 ? pagesGpaText(ranges[0]!.start, ranges[0]!.count) : `${ranges.length} ranges`;
        ctx.emit(
          {
            name,
            protectingVtl: o.vtl,
            mapFlags: o.flags,
            mask: maskText(o.flags),
            ranges: ranges.map((r) => ({ startPage: r.start.toString(), pageCount: r.count.toString() })),
            calls: calls.length,
            pagesChanged: changed.toString(),
            viewGeneration: generation.toString(),
          },
          () =>
            `VTL ${o.vtl} now allows lower VTLs ${maskLabel(o.flags)} on ${count(changed, 'page')} (${what}) of ${name}` +
            `${calls.length > 1 ? ` in ${calls.length} calls` : ''}; view generation ${generation}`,
        );
      }),
    );
  partitionCommand(memory, 'protections', 'the protection ranges a VTL has set (GetVtlProtections) and its default mask')
    .requiredOption('--vtl <n>', 'protecting VTL (1..)', vtlArg)
    .action(
      run(async (ctx, name: string, o: { vtl: number }) => {
        const r = await ctx.client.intercepts.getVtlProtections({ name, protectingVtl: o.vtl });
        const json = toJson(r) as { [k: string]: Json };
        ctx.emit(
          {
            name,
            protectingVtl: o.vtl,
            ...json,
            defaultMask: maskText(r.defaultMapFlags),
            ranges: r.ranges.map((x) => ({ ...(toJson(x) as { [k: string]: Json }), mask: maskText(x.mapFlags) })),
          },
          () => {
            if (!r.protectionEnabled)
              return `${name}: VTL ${o.vtl} has not set EnableVtlProtection, so it restricts nothing (view generation ${r.viewGeneration})`;
            const head = `${name}: VTL ${o.vtl} protections enabled; default mask ${maskLabel(r.defaultMapFlags)} outside the ranges; view generation ${r.viewGeneration}`;
            if (!r.ranges.length) return `${head}\nno explicit ranges`;
            const rows = r.ranges.map((x) => {
              const s = x.pages?.startPage ?? 0n;
              const c = x.pages?.pageCount ?? 0n;
              return [hex(s), String(c), pagesGpaText(s, c), maskLabel(x.mapFlags)];
            });
            return `${head}\n${table(['START PAGE', 'PAGES', 'GPA RANGE', 'MASK'], rows)}`;
          },
        );
      }),
    );
}
