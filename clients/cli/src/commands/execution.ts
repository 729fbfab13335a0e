// vsmctl guests that run (ExecutionService): run (create, load, start, copy the console, delete; exit
// with the guest's code), console (follow a guest's console), load, start, stop, pause, resume.
//
// `vsmctl run` exits as QEMU with `-device isa-debug-exit,iobase=0xf4` does, so kvm-unit-tests' run
// scripts read it unchanged (scripts/arch-run.bash, scripts/vmm.bash qemu_fixup_return_code,
// scripts/runtime.bash):
//   (code << 1) | 1   the guest wrote `code` to port 0xf4 (kvm-unit-tests exit(): 0 -> 1 = pass,
//                     1 -> 3 = fail, abort() -> 127); the shell keeps the low 8 bits
//   124               --timeout passed (the guest was stopped; runtime.bash: "timeout")
//   125               the guest did not exit through port 0xf4: it crashed (triple fault, an exit
//                     the VMM cannot handle, a monitor's CRASH) or was stopped from outside; the
//                     reason is on stderr
//   130               interrupted (SIGINT/SIGTERM, as a shell reports 128 + SIGINT)
//   3 / 4             a server error / the server not reachable (vsmctl's usual codes); 2 usage
// The partition is deleted however run ends.
import * as crypto from 'node:crypto';
import { type Command, Option } from 'commander';
import { pb, VsmError } from '@vsm/client';
import { type Cli, type Ctx, readFile } from '../context';
import { EXIT, ExitCode } from '../exit';
import { type Json, formatSize, hex, safeEnum, shortEnum, toJson } from '../format';
import { MAX_VP, arg, countArg, partitionCommand, sizeArg, u64Arg } from '../options';
import { UsageError, partitionId } from '../parse';

/** Exit codes of `vsmctl run` beyond the guest's own (see the top of this file). */
export const RUN_EXIT = { TIMEOUT: 124, NO_DEBUG_EXIT: 125, INTERRUPTED: 130 } as const;
/** `vsmctl run`'s exit status for a guest that wrote `code` to the debug-exit port (QEMU isa-debug-exit). */
export const debugExitStatus = (code: number): number => ((code << 1) | 1) & 0xff;

const DEFAULT_RUN_MEMORY = 256n << 20n;
const FORMATS = {
  auto: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_AUTO,
  flat: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_FLAT,
  elf64: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_ELF64,
  multiboot: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_MULTIBOOT,
} as const;
const ENTRY_MODES = {
  real16: pb.GuestEntryMode.GUEST_ENTRY_MODE_REAL16,
  protected32: pb.GuestEntryMode.GUEST_ENTRY_MODE_PROTECTED32,
  long64: pb.GuestEntryMode.GUEST_ENTRY_MODE_LONG64,
} as const;

export const runStateText = (s: number): string => shortEnum(safeEnum(pb.runStateToJSON)(s), 'RUN_STATE_').toLowerCase().replace(/_/g, '-');
const formatText = (f: number): string => shortEnum(safeEnum(pb.guestImageFormatToJSON)(f), 'GUEST_IMAGE_FORMAT_').toLowerCase();
const entryModeText = (m: number): string => shortEnum(safeEnum(pb.guestEntryModeToJSON)(m), 'GUEST_ENTRY_MODE_').toLowerCase();

/** A partition's run as one line: `running`, `stopped (exit code 0x1: ...)`. */
export function runText(p: pb.Partition): string {
  const state = runStateText(p.runState);
  const detail = [p.exitCode !== undefined ? `exit code ${hex(p.exitCode)}` : '', p.endReason].filter(Boolean).join(': ');
  return detail ? `${state} (${detail})` : state;
}
const partitionRunJson = (p: pb.Partition): Json => ({
  name: p.name,
  runState: runStateText(p.runState),
  exitCode: p.exitCode ?? null,
  endReason: p.endReason || null,
  endTime: p.endTimeUnixMs !== undefined ? new Date(Number(p.endTimeUnixMs)).toISOString() : null,
});
const endJson = (e: pb.GuestRunEnd): Json => ({
  state: runStateText(e.state),
  exitCode: e.exitCode ?? null,
  reason: e.reason,
  vpIndex: e.vpIndex ?? null,
  endTime: new Date(Number(e.endTimeUnixMs)).toISOString(),
});
const endText = (e: pb.GuestRunEnd): string =>
  `${runStateText(e.state)}${e.exitCode !== undefined ? ` with exit code ${hex(e.exitCode)}` : ''}${e.reason ? `: ${e.reason}` : ''}${e.vpIndex !== undefined ? ` (VP ${e.vpIndex})` : ''}`;

/** The image options `run` and `load` share. */
interface ImageOptions {
  format?: keyof typeof FORMATS;
  loadGpa?: bigint;
  entry?: bigint;
  entryMode?: keyof typeof ENTRY_MODES;
  append?: string;
}
const imageOptions = (cmd: Command): Command =>
  cmd
    .addOption(new Option('--format <format>', 'image format (auto: multiboot, else ELF64)').choices(Object.keys(FORMATS)).default('auto'))
    .option('--load-gpa <gpa>', 'flat images: the GPA the bytes are loaded at', u64Arg('--load-gpa'))
    .option('--entry <gpa>', 'flat images: the entry GPA (default --load-gpa)', u64Arg('--entry'))
    .addOption(new Option('--entry-mode <mode>', 'flat images: the CPU mode at entry (default long64)').choices(Object.keys(ENTRY_MODES)))
    .option('--append <args>', 'kernel command line (multiboot: as qemu -append passes it)');

function loadRequest(name: string, image: Buffer, o: ImageOptions): Partial<pb.LoadGuestImageRequest> {
  const flat = o.format === 'flat';
  if (!flat && (o.loadGpa !== undefined || o.entry !== undefined || o.entryMode !== undefined))
    throw new UsageError('--load-gpa, --entry and --entry-mode are for --format flat');
  if (flat && o.loadGpa === undefined) throw new UsageError('--format flat needs --load-gpa');
  return {
    name,
    image,
    format: FORMATS[o.format ?? 'auto'],
    loadGpa: o.loadGpa,
    entryPoint: o.entry,
    entryMode: o.entryMode ? ENTRY_MODES[o.entryMode] : pb.GuestEntryMode.GUEST_ENTRY_MODE_UNSPECIFIED,
    commandLine: o.append ?? '',
  };
}

function readImage(path: string): Buffer {
  const image = readFile(path, 'image');
  if (image.length === 0) throw new UsageError(`image ${path} is empty`);
  return image;
}

/** `--timeout <seconds>` of `run` (the global --timeout is the per-call deadline in ms). */
const secondsArg = arg((s: string) => {
  const n = Number(s);
  if (!/^\d+(\.\d+)?$/.test(s) || !(n > 0) || n > 86_400 * 365) throw new UsageError(`--timeout ${JSON.stringify(s)}: give seconds, a number > 0`);
  return n;
});

export function register(program: Command, { run }: Cli): void {
  imageOptions(program.command('run'))
    .description(
      "run a guest image like qemu -kernel: create a partition, load the image, start it, copy its console to stdout, delete the partition; exit with the guest's debug-exit status",
    )
    .argument('<image>', 'guest image file (multiboot v1, ELF64 x86-64, or flat with --format flat)')
    .option('--vps <n>', 'virtual processors (default 1)', countArg('--vps', MAX_VP))
    .option('--memory <size>', 'guest memory (default 256MiB)', sizeArg('--memory'))
    .option('--device <name>', 'a device for the guest (repeatable): hyperv-testdev', (s: string, prev?: string[]) => [...(prev ?? []), s])
    // `--timeout` after `run` is run's own (seconds); main() hands it over as --guest-timeout
    // (runArguments), since the global --timeout (per-call deadline, ms) is recognised anywhere.
    .option('--timeout <seconds>', 'stop the guest after this many seconds (exit 124)')
    .addOption(new Option('--guest-timeout <seconds>').hideHelp().argParser(secondsArg))
    .option('--name <id>', 'partition id (default: run-<random>)', arg(partitionId))
    .addHelpText(
      'after',
      `
Exit status (as QEMU's isa-debug-exit, which kvm-unit-tests' run scripts expect):
  (code << 1) | 1   the guest wrote code to port 0xf4 (exit(0) -> 1 = pass, exit(1) -> 3 = fail)
  124               --timeout passed (the guest was stopped)
  125               the guest crashed or was stopped from outside (the reason is on stderr)
  130               interrupted (Ctrl-C)
  2 / 3 / 4         usage error / server error / server not reachable
The partition is deleted in every case.`,
    )
    .action(run(async (ctx, image: string, o: RunOptions) => runGuest(ctx, image, o)));

  program
    .command('console')
    .description("follow a guest's console (COM1) from the oldest kept byte until its run ends or Ctrl-C")
    .argument(
      '<partition>',
      'partitions/ID or ID',
      arg((s: string) => `partitions/${partitionId(s)}`),
    )
    .option('--from <offset>', 'start at this console offset (default: the oldest byte still kept)', u64Arg('--from'))
    .action(
      run(async (ctx, name: string, o: { from?: bigint }) => {
        const end = await followConsole(ctx, name, o.from ?? 0n, new AbortController().signal, true);
        if (end && !ctx.json) ctx.note(`vsmctl: the guest ${endText(end)}`);
      }),
    );

  imageOptions(
    partitionCommand(program, 'load', 'load a guest image into a partition (LoadGuestImage); start it with vsmctl start').argument(
      '<image>',
      'guest image file',
    ),
  ).action(
    run(async (ctx, name: string, image: string, o: ImageOptions) => {
      const r = await ctx.client.execution.loadGuestImage(loadRequest(name, readImage(image), o));
      ctx.emit(
        {
          name,
          format: formatText(r.format),
          entryPoint: r.entryPoint.toString(),
          entryMode: entryModeText(r.entryMode),
          segments: toJson(r.segments),
          bootInfoGpa: r.bootInfoGpa?.toString() ?? null,
        },
        () =>
          [
            `loaded ${image} into ${name} as ${formatText(r.format)}: entry ${hex(r.entryPoint)} (${entryModeText(r.entryMode)})${r.bootInfoGpa !== undefined ? `, boot information at ${hex(r.bootInfoGpa)}` : ''}`,
            ...r.segments.map((s) => `  ${hex(s.gpa, 8)}  ${formatSize(s.size)} (${s.size} bytes)`),
          ].join('\n'),
      );
    }),
  );

  const control = [
    [
      'start',
      'start a loaded guest (StartPartition): every VP runs on its own thread',
      (ctx: Ctx, name: string) => ctx.client.execution.startPartition({ name }),
    ],
    ['pause', 'pause a running guest (PausePartition)', (ctx: Ctx, name: string) => ctx.client.execution.pausePartition({ name })],
    ['resume', 'resume a paused guest (ResumePartition)', (ctx: Ctx, name: string) => ctx.client.execution.resumePartition({ name })],
    ['stop', 'stop a guest and wait until its VPs ended (StopPartition)', (ctx: Ctx, name: string) => ctx.client.execution.stopPartition({ name })],
  ] as const;
  for (const [verb, description, call] of control) {
    partitionCommand(program, verb, description).action(
      run(async (ctx, name: string) => {
        const p = await call(ctx, name);
        ctx.emit(partitionRunJson(p), () => `${name}: ${runText(p)}`);
      }),
    );
  }
}

/**
 * Copies a guest's console to stdout (raw bytes; with --json one object per chunk) until the run's
 * end message, the stream's end or `signal`. Returns the end, if it came. Bytes the server no longer
 * kept (a gap in the offsets) are reported on stderr.
 */
async function followConsole(ctx: Ctx, name: string, fromOffset: bigint, signal: AbortSignal, interruptible: boolean): Promise<pb.GuestRunEnd | undefined> {
  const ac = new AbortController();
  const abort = () => ac.abort();
  signal.addEventListener('abort', abort, { once: true });
  const stop = () => ac.abort();
  if (interruptible) {
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  }
  let next = fromOffset;
  try {
    for await (const m of ctx.client.execution.streamConsole({ name, fromOffset }, ac.signal)) {
      const k = m.kind;
      if (k?.$case === 'chunk') {
        if (k.value.offset > next && next > 0n)
          ctx.note(`vsmctl: ${k.value.offset - next} console bytes were no longer kept (offsets ${next}..${k.value.offset - 1n})`);
        next = k.value.offset + BigInt(k.value.data.length);
        if (ctx.json) ctx.line({ offset: k.value.offset.toString(), text: Buffer.from(k.value.data).toString('latin1') }, () => '');
        else await write(ctx.io.stdout, k.value.data);
      } else if (k?.$case === 'end') {
        if (ctx.json) ctx.line({ end: endJson(k.value) }, () => '');
        return k.value;
      }
    }
    return undefined;
  } finally {
    signal.removeEventListener('abort', abort);
    if (interruptible) {
      process.removeListener('SIGINT', stop);
      process.removeListener('SIGTERM', stop);
    }
  }
}

/** Writes console bytes, waiting when stdout is full (a slow reader slows only this stream). */
function write(out: NodeJS.WritableStream, data: Uint8Array): Promise<void> {
  return new Promise((resolve) => {
    if (out.write(Buffer.from(data))) resolve();
    else out.once('drain', () => resolve());
  });
}

type RunOptions = ImageOptions & { vps?: number; memory?: bigint; device?: string[]; guestTimeout?: number; name?: string };

/** Global options that take a value (cli.ts), to find the command word in an argument list. */
const GLOBAL_VALUE_OPTIONS = new Set(['--address', '--ca', '--cert', '--key', '--token', '--timeout']);

/**
 * The arguments with `run`'s own `--timeout <seconds>` renamed `--guest-timeout` (commander would
 * give it to the global --timeout, the per-call deadline in ms, which it recognises after the command
 * word too). Only `--timeout` after the command word `run` is renamed.
 */
export function runArguments(args: readonly string[]): string[] {
  const out = [...args];
  let i = 0;
  for (; i < out.length; i++) {
    const a = out[i]!;
    if (a === '--') return out;
    if (GLOBAL_VALUE_OPTIONS.has(a)) i++;
    else if (!a.startsWith('-')) break;
  }
  if (out[i] !== 'run') return out;
  for (let j = i + 1; j < out.length && out[j] !== '--'; j++) {
    if (out[j] === '--timeout') out[j] = '--guest-timeout';
    else if (out[j]!.startsWith('--timeout=')) out[j] = `--guest-timeout=${out[j]!.slice('--timeout='.length)}`;
  }
  return out;
}

async function runGuest(ctx: Ctx, imagePath: string, o: RunOptions): Promise<void> {
  const image = readImage(imagePath);
  const id = o.name ?? `run-${crypto.randomBytes(4).toString('hex')}`;
  const name = `partitions/${id}`;
  const load = loadRequest(name, image, o);
  const c = ctx.client;
  await c.partitions.createPartition({
    partitionId: id,
    partition: pb.Partition.fromPartial({ vpCount: o.vps ?? 1, memoryBytes: o.memory ?? DEFAULT_RUN_MEMORY, devices: o.device ?? [] }),
  });
  const ac = new AbortController();
  let why: 'timeout' | 'interrupted' | undefined;
  const interrupt = () => {
    why ??= 'interrupted';
    ac.abort();
  };
  process.once('SIGINT', interrupt);
  process.once('SIGTERM', interrupt);
  const timer =
    o.guestTimeout !== undefined
      ? setTimeout(() => {
          why ??= 'timeout';
          ac.abort();
        }, o.guestTimeout * 1000)
      : undefined;
  try {
    await c.execution.loadGuestImage(load);
    // Follow the console from its first byte before starting, so nothing the guest writes is missed.
    const consoleDone = followConsole(ctx, name, 0n, ac.signal, false);
    consoleDone.catch(() => undefined);
    if (!ac.signal.aborted) await c.execution.startPartition({ name });
    const end = await consoleDone;
    if (why === 'timeout') {
      await c.execution.stopPartition({ name }).catch(() => undefined);
      throw new ExitCode(RUN_EXIT.TIMEOUT, `vsmctl: timeout: the guest ran for ${o.guestTimeout} s (--timeout) and was stopped`);
    }
    if (why === 'interrupted') throw new ExitCode(RUN_EXIT.INTERRUPTED, 'vsmctl: interrupted; the guest was stopped and its partition deleted');
    if (!end) throw new ExitCode(EXIT.SERVER, 'vsmctl: the console stream ended before the guest did');
    if (end.exitCode !== undefined) throw new ExitCode(debugExitStatus(end.exitCode), '');
    throw new ExitCode(RUN_EXIT.NO_DEBUG_EXIT, `vsmctl: the guest ${endText(end)}`);
  } finally {
    if (timer) clearTimeout(timer);
    process.removeListener('SIGINT', interrupt);
    process.removeListener('SIGTERM', interrupt);
    await c.partitions.deletePartition({ name }).catch((e: unknown) => {
      if (!(e instanceof VsmError && e.reason === 'HV_STATUS_INVALID_PARTITION_ID'))
        ctx.note(`vsmctl: could not delete ${name}: ${e instanceof Error ? e.message : String(e)}`);
    });
  }
}
