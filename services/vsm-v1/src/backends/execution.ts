// vsm.v1 implementation, ExecutionService (proto/vsm/v1/execution.proto): what every backend shares
// — request checks (done before anything else, so bad input gets the same answer on the emulator
// and on the agent), conversions between vsm.v1 and the platform's guest session, host-made SynIC
// connections through the core, and the console stream. The KVM backend (kvm.ts) runs guests; the
// emulator (core-backend.ts) answers the guest RPCs FAILED_PRECONDITION after these checks.
import { status as Code } from '@grpc/grpc-js';
import type * as core from '@vsm/core';
import { pb } from '@vsm/api';
import type { StreamSink } from '../backend';
import { ApiError, invalidArgument } from '../errors';
import { abortLatch } from '../stop-latch';

/** Devices a partition may ask for at creation (Partition.devices). */
export const KNOWN_DEVICES = ['hyperv-testdev'] as const;
export type DeviceName = (typeof KNOWN_DEVICES)[number];
/** WriteConsole.data: 1..this many bytes. */
export const MAX_CONSOLE_WRITE = 65536;
/** LoadGuestImage.command_line: at most this many bytes (UTF-8). */
export const MAX_COMMAND_LINE = 4096;
/** Console bytes per StreamConsole message at most (kept chunks are merged up to this). */
export const CONSOLE_MESSAGE_BYTES = 64 * 1024;

/** ErrorInfo.reason of the guest RPCs on a backend that does not execute guest code. */
export const GUEST_EXECUTION_UNSUPPORTED = 'GUEST_EXECUTION_UNSUPPORTED';
export const EMULATOR_NO_EXECUTION = 'the emulator does not execute guest code; guest-execution is unsupported here, use the KVM agent';

/** FAILED_PRECONDITION / GUEST_EXECUTION_UNSUPPORTED with `why`. */
export const executionUnsupported = (why: string): ApiError => new ApiError(Code.FAILED_PRECONDITION, GUEST_EXECUTION_UNSUPPORTED, why);

/** Partition.devices checked: known names, each once. */
export function checkDevices(devices: readonly string[]): DeviceName[] {
  const seen = new Set<string>();
  for (const d of devices) {
    if (!(KNOWN_DEVICES as readonly string[]).includes(d)) throw invalidArgument(`unknown device ${JSON.stringify(d)} (known: ${KNOWN_DEVICES.join(', ')})`);
    if (seen.has(d)) throw invalidArgument(`device ${JSON.stringify(d)} is listed twice`);
    seen.add(d);
  }
  return [...seen] as DeviceName[];
}

export type GuestFormat = 'auto' | 'flat' | 'elf64' | 'multiboot';
export type GuestEntryMode = 'real16' | 'protected32' | 'long64';

/** A LoadGuestImage request as the platform's loader takes it (GuestLoadOptions + the bytes). */
export interface GuestLoad {
  image: Uint8Array;
  format: GuestFormat;
  loadGpa?: bigint;
  entry?: bigint;
  entryMode?: GuestEntryMode;
  commandLine?: string;
}

const FORMAT_FROM_PB: Partial<Record<number, GuestFormat>> = {
  [pb.GuestImageFormat.GUEST_IMAGE_FORMAT_UNSPECIFIED]: 'auto',
  [pb.GuestImageFormat.GUEST_IMAGE_FORMAT_AUTO]: 'auto',
  [pb.GuestImageFormat.GUEST_IMAGE_FORMAT_FLAT]: 'flat',
  [pb.GuestImageFormat.GUEST_IMAGE_FORMAT_ELF64]: 'elf64',
  [pb.GuestImageFormat.GUEST_IMAGE_FORMAT_MULTIBOOT]: 'multiboot',
};
export const FORMAT_TO_PB = {
  auto: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_AUTO,
  flat: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_FLAT,
  elf64: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_ELF64,
  multiboot: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_MULTIBOOT,
} as const satisfies Record<GuestFormat, pb.GuestImageFormat>;
const ENTRY_MODE_FROM_PB: Partial<Record<number, GuestEntryMode | undefined>> = {
  [pb.GuestEntryMode.GUEST_ENTRY_MODE_UNSPECIFIED]: undefined,
  [pb.GuestEntryMode.GUEST_ENTRY_MODE_REAL16]: 'real16',
  [pb.GuestEntryMode.GUEST_ENTRY_MODE_PROTECTED32]: 'protected32',
  [pb.GuestEntryMode.GUEST_ENTRY_MODE_LONG64]: 'long64',
};
export const ENTRY_MODE_TO_PB = {
  real16: pb.GuestEntryMode.GUEST_ENTRY_MODE_REAL16,
  protected32: pb.GuestEntryMode.GUEST_ENTRY_MODE_PROTECTED32,
  long64: pb.GuestEntryMode.GUEST_ENTRY_MODE_LONG64,
} as const satisfies Record<GuestEntryMode, pb.GuestEntryMode>;

/**
 * LoadGuestImage's fields checked (the image's content is the loader's to judge): an image, known
 * enum values, the flat-only fields only with FLAT (and load_gpa there), a bounded command line.
 */
export function checkLoadRequest(r: pb.LoadGuestImageRequest): GuestLoad {
  if (r.image.length === 0) throw invalidArgument('image is empty (0 bytes)');
  if (!Object.hasOwn(FORMAT_FROM_PB, r.format)) throw invalidArgument(`format ${r.format} is not a GuestImageFormat (AUTO, FLAT, ELF64, MULTIBOOT)`);
  const format = FORMAT_FROM_PB[r.format]!;
  if (!Object.hasOwn(ENTRY_MODE_FROM_PB, r.entryMode)) throw invalidArgument(`entry_mode ${r.entryMode} is not a GuestEntryMode (REAL16, PROTECTED32, LONG64)`);
  const entryMode = ENTRY_MODE_FROM_PB[r.entryMode];
  if (format !== 'flat' && (r.loadGpa !== undefined || r.entryPoint !== undefined || entryMode !== undefined)) {
    throw invalidArgument(
      `load_gpa, entry_point and entry_mode apply to format FLAT only (the ${format === 'auto' ? 'detected format' : format.toUpperCase()} image says where it goes)`,
    );
  }
  if (format === 'flat' && r.loadGpa === undefined) throw invalidArgument('format FLAT needs load_gpa');
  if (Buffer.byteLength(r.commandLine, 'utf8') > MAX_COMMAND_LINE) throw invalidArgument(`command_line is longer than ${MAX_COMMAND_LINE} bytes`);
  return { image: r.image, format, loadGpa: r.loadGpa, entry: r.entryPoint, entryMode, commandLine: r.commandLine || undefined };
}

export function checkConsoleWrite(r: pb.WriteConsoleRequest): Uint8Array {
  if (r.data.length < 1 || r.data.length > MAX_CONSOLE_WRITE) throw invalidArgument(`data must be 1..${MAX_CONSOLE_WRITE} bytes`);
  return r.data;
}

// ---- run states -------------------------------------------------------------------------------

export type GuestRunState = 'loaded' | 'running' | 'paused' | 'stopped' | 'crashed';
export type GuestVpRunState = 'running' | 'halted' | 'waiting-for-sipi' | 'suspended' | 'stopped';
export interface GuestRunEnd {
  state: 'stopped' | 'crashed';
  exitCode?: number;
  reason: string;
  vpIndex?: number;
  at: Date;
}

export const RUN_STATE_TO_PB = {
  loaded: pb.RunState.RUN_STATE_LOADED,
  running: pb.RunState.RUN_STATE_RUNNING,
  paused: pb.RunState.RUN_STATE_PAUSED,
  stopped: pb.RunState.RUN_STATE_STOPPED,
  crashed: pb.RunState.RUN_STATE_CRASHED,
} as const satisfies Record<GuestRunState, pb.RunState>;

export const VP_RUN_STATE_TO_PB = {
  running: pb.VpRunState.VP_RUN_STATE_RUNNING,
  halted: pb.VpRunState.VP_RUN_STATE_HALTED,
  'waiting-for-sipi': pb.VpRunState.VP_RUN_STATE_WAITING_FOR_SIPI,
  suspended: pb.VpRunState.VP_RUN_STATE_SUSPENDED,
  stopped: pb.VpRunState.VP_RUN_STATE_STOPPED,
} as const satisfies Record<GuestVpRunState, pb.VpRunState>;

/** The Partition fields of a guest's run (run_state, exit_code, end_reason, end_time_unix_ms). */
export type RunFields = Pick<pb.Partition, 'runState' | 'exitCode' | 'endReason' | 'endTimeUnixMs'>;
export const NOT_LOADED: RunFields = { runState: pb.RunState.RUN_STATE_NOT_LOADED, exitCode: undefined, endReason: '', endTimeUnixMs: undefined };

export function runFields(state: GuestRunState, end: GuestRunEnd | undefined): RunFields {
  return { runState: RUN_STATE_TO_PB[state], exitCode: end?.exitCode, endReason: end?.reason ?? '', endTimeUnixMs: end ? BigInt(end.at.getTime()) : undefined };
}

export function toPbRunEnd(end: GuestRunEnd): pb.GuestRunEnd {
  return { state: RUN_STATE_TO_PB[end.state], exitCode: end.exitCode, reason: end.reason, vpIndex: end.vpIndex, endTimeUnixMs: BigInt(end.at.getTime()) };
}

// ---- connections ------------------------------------------------------------------------------

const CONNECTION_KIND_FROM_PB: Partial<Record<number, 'message' | 'event'>> = {
  [pb.ConnectionKind.CONNECTION_KIND_MESSAGE]: 'message',
  [pb.ConnectionKind.CONNECTION_KIND_EVENT]: 'event',
};
/** HV_CONNECTION_ID is 24 bits (tlfs-overlays-synic.md §5.8). */
const MAX_CONNECTION_ID = 0xffffff;

/** CreateConnection's fields checked and turned into the core's spec (the core checks the rest: VP, SINT, VTL, flags, duplicates). */
export function connectionSpec(r: pb.CreateConnectionRequest): core.ConnectionSpec {
  const kind = CONNECTION_KIND_FROM_PB[r.kind];
  if (!kind) throw invalidArgument(`kind ${r.kind} is not MESSAGE or EVENT`);
  if (r.connectionId > MAX_CONNECTION_ID) throw invalidArgument(`connection_id ${r.connectionId} is not a 24-bit HV_CONNECTION_ID`);
  if (r.vtl !== undefined && r.vtl > 2) throw invalidArgument(`vtl ${r.vtl} is not 0..2`);
  if (kind === 'message' && (r.flagNumber !== undefined || r.flagCount !== undefined))
    throw invalidArgument('flag_number and flag_count apply to EVENT connections only');
  return {
    connectionId: r.connectionId,
    kind,
    vpIndex: r.vpIndex,
    sint: r.sint,
    vtl: r.vtl as core.Vtl | undefined,
    flagNumber: r.flagNumber,
    flagCount: r.flagCount,
  };
}

export function toPbConnection(c: core.SynicConnection): pb.Connection {
  return {
    connectionId: c.connectionId,
    kind: c.kind === 'message' ? pb.ConnectionKind.CONNECTION_KIND_MESSAGE : pb.ConnectionKind.CONNECTION_KIND_EVENT,
    vpIndex: c.vpIndex,
    sint: c.sint,
    vtl: c.vtl,
    flagNumber: c.flagNumber,
    flagCount: c.flagCount,
  };
}

// ---- console ----------------------------------------------------------------------------------

/** What the console stream needs of a guest's console (platform-kvm guest/console.ts ConsoleHub). */
export interface ConsoleSource {
  readonly written: bigint;
  readonly oldestKept: bigint;
  history(offset?: bigint): { offset: bigint; data: Uint8Array }[];
  subscribe(onData: (c: { offset: bigint; data: Uint8Array }) => void, onEnd: () => void, fromOffset?: bigint): () => void;
}

/**
 * StreamConsole: sends the console from `fromOffset` (default: the oldest kept byte) until the run
 * ended, then the end. Pull, not push: the hub only wakes the stream, which then reads what is kept
 * from its own position, so the guest is never held back and the stream holds no more than its
 * sink's high-water mark; a watcher slower than the hub's history loses the bytes no longer kept
 * (its next chunk's offset shows the jump).
 */
export async function followConsole(
  hub: ConsoleSource,
  fromOffset: bigint | undefined,
  end: () => GuestRunEnd | undefined,
  sink: StreamSink<pb.StreamConsoleResponse>,
  signal: AbortSignal,
): Promise<void> {
  let next = fromOffset ?? hub.oldestKept;
  let dirty = true;
  let ended = false;
  let wake: (() => void) | undefined;
  const poke = () => {
    dirty = true;
    const w = wake;
    wake = undefined;
    w?.();
  };
  const unsubscribe = hub.subscribe(poke, () => {
    ended = true;
    poke();
  });
  signal.addEventListener('abort', poke);
  const aborted = abortLatch(signal, undefined);
  try {
    while (!signal.aborted) {
      if (!dirty) {
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        continue;
      }
      dirty = false;
      const wasEnded = ended;
      if (next < hub.oldestKept) next = hub.oldestKept;
      let behind = false;
      for (const msg of mergeChunks(hub.history(next))) {
        next = msg.offset + BigInt(msg.data.length);
        if (!sink.write({ kind: { $case: 'chunk', value: msg } })) {
          behind = true;
          break;
        }
      }
      if (behind) {
        // (an abort listener per wait would stay on the signal for the stream's life)
        await aborted.race(sink.drained());
        dirty = true;
        continue;
      }
      // Everything written before the end was read above (the end comes after the last output).
      if (wasEnded) {
        const e = end();
        if (e) sink.write({ kind: { $case: 'end', value: toPbRunEnd(e) } });
        return;
      }
    }
  } finally {
    unsubscribe();
    signal.removeEventListener('abort', poke);
  }
}

/** Contiguous kept chunks merged into messages of at most CONSOLE_MESSAGE_BYTES. */
function mergeChunks(chunks: { offset: bigint; data: Uint8Array }[]): pb.ConsoleChunk[] {
  const out: pb.ConsoleChunk[] = [];
  let cur: { offset: bigint; parts: Uint8Array[]; size: number } | undefined;
  const flush = () => {
    if (cur) out.push({ offset: cur.offset, data: Buffer.concat(cur.parts) });
    cur = undefined;
  };
  for (const c of chunks) {
    for (let at = 0; at < c.data.length; ) {
      const offset = c.offset + BigInt(at);
      if (!cur || cur.offset + BigInt(cur.size) !== offset || cur.size >= CONSOLE_MESSAGE_BYTES) {
        flush();
        cur = { offset, parts: [], size: 0 };
      }
      const take = Math.min(c.data.length - at, CONSOLE_MESSAGE_BYTES - cur.size);
      cur.parts.push(c.data.subarray(at, at + take));
      cur.size += take;
      at += take;
    }
  }
  flush();
  return out;
}
