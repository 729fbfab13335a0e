// vsmctl: the command tree (commander) and every command's implementation on top of @vsm/client.
// Exit codes: 0 ok, 2 usage error, 3 server error, 4 server unreachable (UNAVAILABLE or
// DEADLINE_EXCEEDED), 1 anything unexpected.
import * as fs from 'node:fs';
import { Argument, Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { ConnectOptions, VsmClient, VsmError, connect, pb } from '@vsm/client';
import {
  Json, colorEnabled, safeEnum, entryReason, fields, formatSize, hex, hex64, hexdump, overlayKind, painter, registerJson,
  registerValueText, shortEnum, table, toJson, vtlSet,
} from './format';
import { MapInput, MapProtections, PAGE, mapJson, renderMap } from './map';
import { interceptEventText, interceptLines, outcomeText, resumedLines, stopped, switchText } from './outcome';
import {
  UsageError, allRegisters, msrLabel, parseCount, parseHexBytes, parseIndex, parseLabel, parseMsr, parseRegisterName,
  parseRegisterValue, parseSize, parseU32, parseU64, partitionId, partitionName, tlfsRegisterName, vpName,
} from './parse';
import { Progress } from './progress';
import {
  ACTIONS, Pages, ROUTES, accessMaskText, accessTypeText, actionText, gpaRange, maskLabel, maskText, parseAccessMask,
  parseMapFlags, parsePageRange, planProtectCalls, routeText,
} from './protect';

export const EXIT = { OK: 0, INTERNAL: 1, USAGE: 2, SERVER: 3, UNAVAILABLE: 4 } as const;

const GRPC_DEADLINE_EXCEEDED = 4;
const GRPC_UNIMPLEMENTED = 12;
const GRPC_UNAVAILABLE = 14;
/** How often a guest access that has not come back checks whether its VP waits for a monitor. */
const WAIT_POLL_MS = 750;
/** HV_MESSAGE_MAX_PAYLOAD_BYTE_COUNT. */
const MAX_MESSAGE_PAYLOAD = 240;
/** Largest ReadGpa/WriteGpa (host) and ReadMemory/WriteMemory (guest) transfers. */
const HOST_CHUNK = 1 << 20;
const GUEST_CHUNK = 1 << 16;
const MAX_MAP_PAGES = 1 << 16;
/** ExecuteMemory fetches 1..16 bytes (one instruction). */
const MAX_FETCH = 16;
const MAX_VP = 4096;
const MAX_VTL = 15;

const HYPERCALLS: Record<number, string> = {
  0x000c: 'HvCallModifyVtlProtectionMask',
  0x000d: 'HvCallEnablePartitionVtl',
  0x000f: 'HvCallEnableVpVtl',
  0x0011: 'HvCallVtlCall',
  0x0012: 'HvCallVtlReturn',
  0x0050: 'HvCallGetVpRegisters',
  0x0051: 'HvCallSetVpRegisters',
  0x005c: 'HvCallPostMessage',
  0x005d: 'HvCallSignalEvent',
};

export interface Io {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
}

interface Globals {
  address: string;
  tls?: boolean;
  ca?: string;
  cert?: string;
  key?: string;
  token?: string;
  timeout?: number;
  json?: boolean;
}

/** Per-invocation state: the global options and a lazily opened client. */
class Ctx {
  private c?: VsmClient;
  constructor(readonly g: Globals, readonly io: Io) {}

  get client(): VsmClient {
    if (!this.c) {
      const o: ConnectOptions = {};
      if (this.g.timeout !== undefined) o.deadlineMs = this.g.timeout;
      if (this.g.token) o.token = this.g.token;
      if (this.g.ca || this.g.cert || this.g.key) {
        if (!!this.g.cert !== !!this.g.key) throw new UsageError('--cert and --key go together (client certificate and its private key)');
        o.tls = { ca: this.g.ca ? readFile(this.g.ca, '--ca') : undefined, cert: this.g.cert ? readFile(this.g.cert, '--cert') : undefined, key: this.g.key ? readFile(this.g.key, '--key') : undefined };
      } else if (this.g.tls) o.tls = true;
      this.c = connect(this.g.address, o);
    }
    return this.c;
  }
  get json(): boolean {
    return this.g.json === true;
  }
  out(text: string): void {
    this.io.stdout.write(text.endsWith('\n') ? text : text + '\n');
  }
  emit(json: Json, human: () => string): void {
    this.out(this.json ? JSON.stringify(json, null, 2) : human());
  }
  note(text: string): void {
    this.io.stderr.write(text + '\n');
  }
  close(): void {
    this.c?.close();
    this.c = undefined;
  }
}

function readFile(path: string, what: string): Buffer {
  try {
    return fs.readFileSync(path);
  } catch (e) {
    throw new UsageError(`cannot read ${what} ${path}: ${(e as Error).message}`);
  }
}

/** Adapts a vsmctl parser to commander (UsageError -> InvalidArgumentError -> exit 2). */
function arg<T>(f: (s: string, prev?: T) => T): (s: string, prev: T) => T {
  return (s: string, prev?: T) => {
    try {
      return f(s, prev);
    } catch (e) {
      if (e instanceof UsageError) throw new InvalidArgumentError(e.message);
      throw e;
    }
  };
}
const vpArg = arg((s) => parseIndex(s, 'VP index', MAX_VP));
const vtlArg = arg((s) => parseIndex(s, 'VTL', MAX_VTL));
const partArg = arg(partitionName);
const u64Arg = (what: string) => arg((s) => parseU64(s, what));

function partitionFields(p: pb.Partition): string {
  const labels = Object.entries(p.labels).map(([k, v]) => `${k}=${v}`).join(', ');
  return fields([
    ['name', p.name],
    ['architecture', shortEnum(safeEnum(pb.architectureToJSON)(p.architecture), 'ARCHITECTURE_').toLowerCase()],
    ['VPs', String(p.vpCount)],
    ['memory', `${formatSize(p.memoryBytes)} (${p.memoryBytes} bytes)`],
    ['maximum VTL', String(p.maximumVtl)],
    ['enabled VTLs', vtlSet(p.enabledVtlSet)],
    ['state', shortEnum(safeEnum(pb.partitionStateToJSON)(p.state), 'PARTITION_STATE_').toLowerCase()],
    ['created', p.createTimeUnixMs ? new Date(Number(p.createTimeUnixMs)).toISOString() : '-'],
    ['request id', p.requestId || '-'],
    ['labels', labels || '-'],
  ]);
}

function vpFields(vp: pb.VirtualProcessor): string {
  const s = vp.vtlStatus;
  return fields([
    ['name', vp.name],
    ['VP index', String(vp.vpIndex)],
    ['active VTL', s ? String(s.activeVtl) : '-'],
    ['enabled VTLs', s ? vtlSet(s.enabledVtlSet) : '-'],
    ['last entry reason', s ? entryReason(s.lastEntryReason) : '-'],
    ['intercept suspended', s?.interceptSuspended ? `yes, on intercept ${s.suspendedInterceptId} (waiting for a monitor's answer)` : 'no'],
  ]);
}

/** Reads HvRegisterVsmCodePageOffsets of the VP's active VTL: [VtlCall offset, VtlReturn offset]. */
async function codePageOffsets(c: VsmClient, vp: string): Promise<[number, number]> {
  const r = await c.vps.getVpRegisters({ name: vp, names: [pb.HvRegisterName.HV_REGISTER_NAME_VSM_CODE_PAGE_OFFSETS] });
  const v = r.registers[0]?.value?.value;
  if (v?.$case !== 'reg64') throw new Error('HvRegisterVsmCodePageOffsets did not come back as a 64-bit value');
  return [Number(v.value & 0xfffn), Number((v.value >> 12n) & 0xfffn)];
}

/** A guest access gave up (its gRPC deadline) while the VP still waits for a monitor's answer. */
class StillSuspended extends VsmError {
  constructor(e: VsmError, readonly vp: string, readonly interceptId: bigint) {
    const part = vp.replace(/\/vps\/\d+$/, '').replace(/^partitions\//, '');
    super(
      e.code,
      e.reason,
      e.domain,
      e.metadata,
      `${vp} is still suspended on intercept ${interceptId}, waiting for a monitor's answer; vsmctl stopped waiting (--timeout) but the intercept stays pending ` +
        `(vsmctl intercepts pending ${part}; answer it with vsmctl intercepts watch ${part} --reply ACTION)`,
    );
  }
}

/**
 * Runs a guest memory access. On the monitor route the server holds the call until a monitor
 * answers: after WAIT_POLL_MS vsmctl checks the VP and says on stderr that it waits (once); when the
 * call's deadline passes meanwhile, the error says the VP is still suspended.
 */
async function guestAccess<T>(ctx: Ctx, vp: string, call: () => Promise<T>): Promise<T> {
  let finished = false;
  let noted = false;
  const suspendedOn = async (): Promise<bigint | undefined> => {
    const v = await ctx.client.vps.getVirtualProcessor({ name: vp }, { deadlineMs: 5000 });
    return v.vtlStatus?.interceptSuspended ? v.vtlStatus.suspendedInterceptId : undefined;
  };
  const timer = setInterval(() => {
    if (noted) return;
    suspendedOn().then(
      (id) => {
        if (id === undefined || finished || noted) return;
        noted = true;
        const part = vp.replace(/\/vps\/\d+$/, '').replace(/^partitions\//, '');
        ctx.note(`waiting: ${vp} is suspended on intercept ${id} until a monitor answers (route MONITOR); e.g. vsmctl intercepts watch ${part} --reply allow`);
      },
      () => undefined,
    );
  }, WAIT_POLL_MS);
  try {
    return await call();
  } catch (e) {
    if (e instanceof VsmError && e.code === GRPC_DEADLINE_EXCEEDED) {
      const id = await suspendedOn().catch(() => undefined);
      if (id !== undefined) throw new StillSuspended(e, vp, id);
    }
    throw e;
  } finally {
    finished = true;
    clearInterval(timer);
  }
}

/** Text for a guest access that did not complete (exception, intercept, crash), with `what` like "guest write at 0x..". */
function notCompletedText(what: string, o: pb.GuestActionOutcome, vp: number, progress: string): string {
  if (o.intercept) return [`${what}: INTERCEPTED; ${progress}`, ...interceptLines(o, vp).map((l) => `  ${l}`)].join('\n');
  if (o.partitionCrashed) return `${what}: the partition was stopped (a monitor answered CRASH); ${progress}`;
  return `${what}: ${o.exception ? 'REFUSED, ' : ''}${outcomeText(o)}; ${progress}`;
}

/** VtlCall / VtlReturn: the switch (or why none), then what became of an intercepted access. */
function vtlActionText(label: string, o: pb.GuestActionOutcome | undefined, vp: number): string {
  const head = o?.vtlSwitch ? switchText(o.vtlSwitch) : `${outcomeText(o)}${o?.exception ? '; no switch' : ''}`;
  const more = o ? (o.resumedAccess ? resumedLines(o, vp) : o.intercept ? interceptLines(o, vp) : []) : [];
  return [`${label}: ${head}`, ...more].join('\n');
}

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

export function buildProgram(io: Io, state: { ctx?: Ctx }): Command {
  const program = new Command();
  program
    .name('vsmctl')
    .description('Command line for vsm-service (Hyper-V style Virtual Secure Mode over gRPC, API vsm.v1)')
    .version('0.1.0', '-V, --version')
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s) })
    .showHelpAfterError('(add --help for usage)')
    .option('--address <host:port>', 'server address (env VSM_ADDRESS)', io.env.VSM_ADDRESS || '127.0.0.1:50051')
    .option('--tls', 'use TLS with the system roots')
    .option('--ca <file>', 'TLS: CA certificate (PEM); implies --tls')
    .option('--cert <file>', 'TLS: client certificate (PEM); implies --tls')
    .option('--key <file>', 'TLS: client private key (PEM); implies --tls')
    .option('--token <token>', 'bearer token (env VSM_TOKEN)', io.env.VSM_TOKEN || undefined)
    .option('--timeout <ms>', 'deadline per call in ms (default 10000)', arg((s) => parseCount(s, '--timeout', 86_400_000)))
    .option('--json', 'machine-readable JSON output (64-bit values as decimal strings, bytes as hex)')
    .addHelpText(
      'after',
      `
Examples:
  vsmctl partitions create --id demo --vp-count 2 --memory 1GiB --max-vtl 2
  vsmctl msr write demo 0 HV_X64_MSR_HYPERCALL 0x1001
  vsmctl vtl enable demo 1 && vsmctl vtl enable-vp demo 0 1 && vsmctl vtl call demo 0
  vsmctl memory protect demo --vtl 1 --flags r --pages 0x40:1 && vsmctl intercepts route demo monitor
  vsmctl intercepts watch demo --reply allow
  vsmctl map demo

Exit codes: 0 ok, 2 usage error, 3 server error (error: CODE HV_STATUS: message),
4 server not reachable (UNAVAILABLE or DEADLINE_EXCEEDED). Guest exceptions (#GP, #UD)
and intercepts are results, printed with exit code 0 (and under "outcome" with --json).`,
    );

  /** Wraps a command implementation: creates the context from the global options. */
  const run = <A extends unknown[]>(fn: (ctx: Ctx, ...a: A) => Promise<void>) =>
    async (...a: unknown[]) => {
      const cmd = a[a.length - 1] as Command;
      state.ctx ??= new Ctx(cmd.optsWithGlobals() as Globals, io);
      await fn(state.ctx, ...([...cmd.processedArgs, cmd.opts()] as A));
    };

  // ---- partitions ------------------------------------------------------------------------------

  const partitions = program.command('partitions').description('create, list, get and delete partitions');
  partitions
    .command('create')
    .description('create a partition')
    .requiredOption('--vp-count <n>', 'number of virtual processors', arg((s) => parseCount(s, '--vp-count', MAX_VP)))
    .requiredOption('--memory <size>', 'guest physical address space size (1GiB, 512MiB, 4096, 0x1000)', arg((s) => parseSize(s, '--memory')))
    .option('--id <id>', 'partition id ([a-z0-9-], becomes partitions/ID; default: chosen by the server)', arg(partitionId))
    .option('--max-vtl <n>', 'highest VTL the partition may enable (0..2)', vtlArg)
    .addOption(new Option('--arch <arch>', 'architecture').choices(['x64', 'arm64']))
    .option('--label <key=value...>', 'labels (repeatable)', arg((s: string, prev?: Record<string, string>) => parseLabel(s, prev)))
    .option('--request-id <id>', 'idempotency key: a retry with the same key returns the same partition')
    .action(
      run(async (ctx, o: { vpCount: number; memory: bigint; id?: string; maxVtl?: number; arch?: string; label?: Record<string, string>; requestId?: string }) => {
        const p = await ctx.client.partitions.createPartition({
          partitionId: o.id ?? '',
          requestId: o.requestId ?? '',
          partition: pb.Partition.fromPartial({
            vpCount: o.vpCount,
            memoryBytes: o.memory,
            maximumVtl: o.maxVtl ?? 0,
            labels: o.label ?? {},
            architecture: o.arch === 'arm64' ? pb.Architecture.ARCHITECTURE_ARM64 : o.arch === 'x64' ? pb.Architecture.ARCHITECTURE_X64 : pb.Architecture.ARCHITECTURE_UNSPECIFIED,
          }),
        });
        ctx.emit(toJson(p), () => `created ${p.name} (${p.vpCount} VP${p.vpCount === 1 ? '' : 's'}, ${formatSize(p.memoryBytes)}, maximum VTL ${p.maximumVtl})`);
      }),
    );
  partitions
    .command('list')
    .description('list partitions (one page, or --all)')
    .option('--page-size <n>', 'partitions per page (server default 50, maximum 1000)', arg((s) => parseCount(s, '--page-size', 1000)))
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
            p.name, String(p.vpCount), formatSize(p.memoryBytes), String(p.maximumVtl), vtlSet(p.enabledVtlSet),
            shortEnum(safeEnum(pb.partitionStateToJSON)(p.state), 'PARTITION_STATE_').toLowerCase(),
            p.createTimeUnixMs ? new Date(Number(p.createTimeUnixMs)).toISOString().replace(/\.\d+Z$/, 'Z') : '-',
            Object.entries(p.labels).map(([k, v]) => `${k}=${v}`).join(',') || '-',
          ]);
          const t = table(['NAME', 'VPS', 'MEMORY', 'MAX VTL', 'VTLS', 'STATE', 'CREATED', 'LABELS'], rows);
          return token ? `${t}\nmore: --page-token ${token} (or --all)` : t;
        });
      }),
    );
  partitions
    .command('get')
    .description('show one partition')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .action(
      run(async (ctx, name: string) => {
        const p = await ctx.client.partitions.getPartition({ name });
        ctx.emit(toJson(p), () => partitionFields(p));
      }),
    );
  partitions
    .command('delete')
    .description('delete a partition and all its state')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .action(
      run(async (ctx, name: string) => {
        await ctx.client.partitions.deletePartition({ name });
        ctx.emit({ name, deleted: true }, () => `deleted ${name}`);
      }),
    );

  // ---- capabilities / registers ------------------------------------------------------------------

  program
    .command('capabilities')
    .description("show what the serving backend implements")
    .action(
      run(async (ctx) => {
        const c = await ctx.client.partitions.getCapabilities({});
        ctx.emit(toJson(c), () => {
          const feats = c.features.map((f) => `  ${f.name.padEnd(24)} ${f.supported ? 'yes' : `no${f.reason ? `  (${f.reason})` : ''}`}`);
          const calls = c.hypercallCodes.map((n) => `  ${hex(n, 4)}  ${HYPERCALLS[n] ?? ''}`.trimEnd());
          return [
            fields([
              ['backend', c.backend],
              ['architectures', c.architectures.map((a) => shortEnum(safeEnum(pb.architectureToJSON)(a), 'ARCHITECTURE_').toLowerCase()).join(', ')],
              ['max VPs', String(c.maxVpCount)],
              ['max memory', `${formatSize(c.maxMemoryBytes)} (${c.maxMemoryBytes} bytes)`],
              ['max VTL', String(c.maxVtl)],
            ]),
            'hypercalls:',
            ...calls,
            'features:',
            ...feats,
          ].join('\n');
        });
      }),
    );
  program
    .command('registers')
    .description('list the register names vsmctl understands (offline)')
    .action(
      run(async (ctx) => {
        const regs = allRegisters();
        ctx.emit(
          regs.map((r) => ({ name: pb.hvRegisterNameToJSON(r), tlfsName: tlfsRegisterName(r), value: r })),
          () => table(['TLFS NAME', 'API NAME', 'VALUE'], regs.map((r) => [tlfsRegisterName(r), pb.hvRegisterNameToJSON(r), hex(r, 8)])) + '\nShort forms work too: rip, rax, cr3, guest-os-id, vsm-code-page-offsets, ...',
        );
      }),
    );

  // ---- virtual processors ------------------------------------------------------------------------

  const vp = program.command('vp').description('virtual processors and their registers');
  vp.command('get')
    .description('show a VP and its VSM status')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<vp>', 'VP index', vpArg)
    .action(
      run(async (ctx, part: string, idx: number) => {
        const v = await ctx.client.vps.getVirtualProcessor({ name: vpName(part, idx) });
        ctx.emit(toJson(v), () => vpFields(v));
      }),
    );
  vp.command('regs')
    .description('read registers of one VTL of a VP (all modelled registers when no names are given)')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<vp>', 'VP index', vpArg)
    .argument('[names...]', 'registers: rip, rax, cr3, HvX64RegisterRip, HvRegisterVsmCodePageOffsets, ...', arg((s: string, prev?: number[]) => [...(prev ?? []), parseRegisterName(s)]))
    .option('--vtl <n>', "VTL whose registers to read (default: the VP's active VTL)", vtlArg)
    .action(
      run(async (ctx, part: string, idx: number, names: number[] | undefined, o: { vtl?: number }) => {
        const name = vpName(part, idx);
        const r = await ctx.client.vps.getVpRegisters({ name, vtl: o.vtl, names: names ?? [] });
        ctx.emit({ name, vtl: r.vtl, registers: r.registers.map(registerJson) }, () => {
          const w = Math.max(...r.registers.map((a) => tlfsRegisterName(a.name).length), 8);
          return [`${name}  VTL ${r.vtl}`, ...r.registers.map((a) => `${tlfsRegisterName(a.name).padEnd(w)}  ${registerValueText(a)}`)].join('\n');
        });
      }),
    );
  vp.command('set-reg')
    .description('write one register of one VTL of a VP (host side)')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<vp>', 'VP index', vpArg)
    .argument('<name>', 'register (rip, rax, cr3, HvX64RegisterRip, ...)', arg(parseRegisterName))
    .argument('<value>', 'value: hex or decimal; segments base=..,limit=..,selector=..,attributes=..; tables base=..,limit=..')
    .option('--vtl <n>', "VTL whose register to write (default: the VP's active VTL)", vtlArg)
    .action(
      run(async (ctx, part: string, idx: number, reg: number, text: string, o: { vtl?: number }) => {
        const name = vpName(part, idx);
        const assoc: pb.RegisterAssoc = { name: reg, value: parseRegisterValue(reg, text) };
        await ctx.client.vps.setVpRegisters({ name, vtl: o.vtl, registers: [assoc] });
        ctx.emit({ name, vtl: o.vtl ?? null, registers: [registerJson(assoc)] }, () => `${name}  ${o.vtl === undefined ? 'active VTL' : `VTL ${o.vtl}`}: ${tlfsRegisterName(reg)} = ${registerValueText(assoc)}`);
      }),
    );

  // ---- VTLs --------------------------------------------------------------------------------------

  const vtl = program.command('vtl').description('enable VTLs, VtlCall/VtlReturn, watch transitions');
  vtl.command('enable')
    .description('enable a VTL for the partition (EnablePartitionVtl, as the host)')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<vtl>', 'VTL to enable (1..maximum VTL)', vtlArg)
    .option('--mbec', 'enable mode-based execute control for the VTL')
    .action(
      run(async (ctx, name: string, target: number, o: { mbec?: boolean }) => {
        const r = await ctx.client.vtl.enablePartitionVtl({ name, targetVtl: target, enableMbec: o.mbec === true });
        ctx.emit({ name, targetVtl: target, enabledVtlSet: r.enabledVtlSet }, () => `enabled VTL ${target} for ${name}; partition VTLs now ${vtlSet(r.enabledVtlSet)}`);
      }),
    );
  vtl.command('enable-vp')
    .description('enable a VTL on one VP (EnableVpVtl, as the host; default initial context)')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<vp>', 'VP index', vpArg)
    .argument('<vtl>', 'VTL to enable on the VP', vtlArg)
    .action(
      run(async (ctx, part: string, idx: number, target: number) => {
        const r = await ctx.client.vtl.enableVpVtl({ name: vpName(part, idx), targetVtl: target });
        const v = r.vp!;
        ctx.emit(toJson(v), () => `enabled VTL ${target} on ${v.name}; VP VTLs now ${vtlSet(v.vtlStatus?.enabledVtlSet ?? 0)}, active VTL ${v.vtlStatus?.activeVtl ?? '-'}`);
      }),
    );
  vtl.command('status')
    .description('VSM status of the partition and its VPs (or one VP)')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('[vp]', 'only this VP', vpArg)
    .action(
      run(async (ctx, name: string, idx: number | undefined) => {
        if (idx !== undefined) {
          const v = await ctx.client.vps.getVirtualProcessor({ name: vpName(name, idx) });
          ctx.emit(toJson(v), () => vpFields(v));
          return;
        }
        const p = await ctx.client.partitions.getPartition({ name });
        const vps: pb.VirtualProcessor[] = [];
        for (let i = 0; i < p.vpCount; i++) vps.push(await ctx.client.vps.getVirtualProcessor({ name: vpName(name, i) }));
        ctx.emit({ name, maximumVtl: p.maximumVtl, enabledVtlSet: p.enabledVtlSet, vps: toJson(vps) }, () =>
          [
            `${name}: maximum VTL ${p.maximumVtl}, enabled VTLs ${vtlSet(p.enabledVtlSet)}`,
            table(
              ['VP', 'ACTIVE VTL', 'ENABLED VTLS', 'LAST ENTRY'],
              vps.map((v) => [String(v.vpIndex), String(v.vtlStatus?.activeVtl ?? '-'), vtlSet(v.vtlStatus?.enabledVtlSet ?? 0), v.vtlStatus ? entryReason(v.vtlStatus.lastEntryReason) : '-']),
            ),
          ].join('\n'),
        );
      }),
    );
  vtl.command('call')
    .description("VtlCall: the VP calls its hypercall page at the VtlCall offset (HvRegisterVsmCodePageOffsets), RCX = 0")
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<vp>', 'VP index', vpArg)
    .action(
      run(async (ctx, part: string, idx: number) => {
        const name = vpName(part, idx);
        const [offset] = await codePageOffsets(ctx.client, name);
        const r = await ctx.client.guest.callHypercallPage({ name, offset, rcx: 0n });
        ctx.emit({ name, offset, ...(toJson(r) as object) }, () => vtlActionText(`VtlCall (hypercall page +${hex(offset, 2)})`, r.outcome, idx));
      }),
    );
  vtl.command('return')
    .description('VtlReturn: the VP calls its hypercall page at the VtlReturn offset (RCX = 0, or 1 with --fast); reports what became of an intercepted access (resumed_access)')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<vp>', 'VP index', vpArg)
    .option('--fast', 'fast return (RAX/RCX of the lower VTL are not restored)')
    .action(
      run(async (ctx, part: string, idx: number, o: { fast?: boolean }) => {
        const name = vpName(part, idx);
        const [, offset] = await codePageOffsets(ctx.client, name);
        const r = await ctx.client.guest.callHypercallPage({ name, offset, rcx: o.fast ? 1n : 0n });
        ctx.emit({ name, offset, fast: o.fast === true, ...(toJson(r) as object) }, () => vtlActionText(`VtlReturn${o.fast ? ' (fast)' : ''} (hypercall page +${hex(offset, 2)})`, r.outcome, idx));
      }),
    );
  vtl.command('watch')
    .description('stream VTL transitions until Ctrl-C (--json: one JSON object per line)')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .option('--vp <n>', 'only this VP', vpArg)
    .action(
      run(async (ctx, name: string, o: { vp?: number }) => {
        const ac = new AbortController();
        const stop = () => ac.abort();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
        if (io.stderr.isTTY && !ctx.json) ctx.note(`watching ${name}${o.vp !== undefined ? ` VP ${o.vp}` : ''} for VTL transitions (Ctrl-C to stop)`);
        try {
          for await (const ev of ctx.client.vtl.watchTransitions({ name, vpIndex: o.vp }, ac.signal)) {
            const e = ev.event;
            if (!e) continue;
            if (ctx.json) {
              ctx.out(JSON.stringify({ name, ...(toJson(ev) as object) }));
            } else if (e.$case === 'transition') {
              const t = e.value;
              const when = new Date(Number(t.timeUnixUs / 1000n)).toISOString();
              const what = t.isReturn ? `return${t.fastReturn ? ' (fast)' : ''}` : entryReason(t.entryReason);
              ctx.out(`#${t.sequence}  ${when}  vp ${t.vpIndex}  VTL ${t.fromVtl} -> VTL ${t.toVtl}  ${what}`);
            } else {
              ctx.out(`lagged: missed ${e.value.missed} transition(s) from #${e.value.firstMissedSequence} (the watcher fell behind)`);
            }
          }
        } finally {
          process.removeListener('SIGINT', stop);
          process.removeListener('SIGTERM', stop);
        }
      }),
    );

  // ---- MSRs --------------------------------------------------------------------------------------

  const msr = program.command('msr').description('guest RDMSR/WRMSR on a VP (in its active VTL)');
  msr
    .command('read')
    .description('the VP executes RDMSR')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<vp>', 'VP index', vpArg)
    .argument('<msr>', 'MSR number (0x40000000, 1073741824) or name (HV_X64_MSR_GUEST_OS_ID, hypercall)', arg(parseMsr))
    .action(
      run(async (ctx, part: string, idx: number, n: number) => {
        const name = vpName(part, idx);
        const r = await ctx.client.guest.readMsr({ name, msr: n });
        ctx.emit({ name, msr: n, ...(toJson(r) as object) }, () =>
          r.outcome?.exception
            ? `RDMSR ${msrLabel(n)}: ${outcomeText(r.outcome)}; no value`
            : `${msrLabel(n)} = ${hex64(r.value)}  (VTL ${r.outcome?.activeVtl ?? '-'})`,
        );
      }),
    );
  msr
    .command('write')
    .description('the VP executes WRMSR')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<vp>', 'VP index', vpArg)
    .argument('<msr>', 'MSR number or name', arg(parseMsr))
    .argument('<value>', 'value (hex or decimal)', u64Arg('MSR value'))
    .action(
      run(async (ctx, part: string, idx: number, n: number, value: bigint) => {
        const name = vpName(part, idx);
        const r = await ctx.client.guest.writeMsr({ name, msr: n, value });
        ctx.emit({ name, msr: n, value: value.toString(), ...(toJson(r) as object) }, () =>
          r.outcome?.exception
            ? `WRMSR ${msrLabel(n)} <- ${hex64(value)}: REFUSED, ${outcomeText(r.outcome)}; nothing was written`
            : `${msrLabel(n)} <- ${hex64(value)}  (VTL ${r.outcome?.activeVtl ?? '-'})`,
        );
      }),
    );

  // ---- overlays ----------------------------------------------------------------------------------

  program
    .command('overlays')
    .description('GPA overlay pages')
    .command('list')
    .description('list placed overlay pages with their stacking position')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .option('--vtl <n>', 'only this VTL', vtlArg)
    .action(
      run(async (ctx, name: string, o: { vtl?: number }) => {
        const r = await ctx.client.memory.listOverlays({ name, vtl: o.vtl });
        ctx.emit({ name, ...(toJson(r) as object) }, () => {
          if (!r.overlays.length) return `no overlays${o.vtl !== undefined ? ` in VTL ${o.vtl}` : ''} (view generation ${r.viewGeneration})`;
          const rows = r.overlays.map((x) => [hex64(x.gpa), overlayKind(x.kind), String(x.vtl), x.vpIndex === undefined ? 'all' : String(x.vpIndex), x.stackPosition === 0 ? '0 (top)' : String(x.stackPosition), x.readOnly ? 'read-only' : 'read-write']);
          return `${table(['GPA', 'KIND', 'VTL', 'VP', 'STACK', 'GUEST ACCESS'], rows)}\nview generation ${r.viewGeneration}`;
        });
      }),
    );

  // ---- memory ------------------------------------------------------------------------------------

  const memory = program.command('memory').description('read, write and execute guest physical memory; VTL protections');
  memory
    .command('read')
    .description('read memory: RAM (host view), as a VTL sees it (--vtl), or as a guest access by a VP (--guest)')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<gpa>', 'guest physical address (hex or decimal)', u64Arg('GPA'))
    .argument('<length>', 'bytes to read (4096, 0x1000, 64KiB)', arg((s) => parseSize(s, 'length')))
    .option('--vtl <n>', 'host read of what VTL n sees (its overlays on top of RAM)', vtlArg)
    .option('--guest <vp>', "guest access: the VP reads through its active VTL's view (subject to higher VTLs' protections)", vpArg)
    .option('--output <file>', 'write the raw bytes to FILE instead of a hexdump')
    .action(
      run(async (ctx, name: string, gpa: bigint, length: bigint, o: { vtl?: number; guest?: number; output?: string }) => {
        if (o.vtl !== undefined && o.guest !== undefined) throw new UsageError('--vtl and --guest exclude each other (a guest access uses the VP\'s active VTL)');
        if (length < 1n) throw new UsageError('length must be at least 1');
        if (length > 256n << 20n) throw new UsageError('length must be at most 256 MiB');
        const total = Number(length);
        const chunk = o.guest !== undefined ? GUEST_CHUNK : HOST_CHUNK;
        const parts: Buffer[] = [];
        let got = 0;
        let outcome: pb.GuestActionOutcome | undefined;
        const progress = new Progress('reading', total, process.stderr, io.stderr.isTTY === true && total > chunk);
        try {
          while (got < total) {
            const n = Math.min(chunk, total - got);
            const at = gpa + BigInt(got);
            if (o.guest !== undefined) {
              const vp = vpName(name, o.guest);
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
        } finally {
          progress.finish();
        }
        const data = Buffer.concat(parts);
        const view = o.guest !== undefined ? `guest access by VP ${o.guest}` : o.vtl !== undefined ? `VTL ${o.vtl} view` : 'RAM';
        if (o.output) {
          fs.writeFileSync(o.output, data);
        }
        const failed = stopped(outcome) ? outcome : undefined;
        ctx.emit(
          {
            name: o.guest !== undefined ? vpName(name, o.guest) : name,
            gpa: gpa.toString(),
            length: data.length,
            view: o.guest !== undefined ? 'guest' : o.vtl !== undefined ? `vtl${o.vtl}` : 'ram',
            ...(o.output ? { output: o.output } : { data: data.toString('hex') }),
            ...(outcome ? { outcome: toJson(outcome) } : {}),
          },
          () => {
            const head = o.output ? `read ${data.length} bytes at ${hex64(gpa)} (${view}) into ${o.output}` : data.length ? hexdump(data, gpa) : '';
            const tail = failed ? notCompletedText(`guest read at ${hex64(gpa + BigInt(data.length))}`, failed, o.guest!, `read stopped after ${data.length} bytes`) : '';
            return [head, tail].filter(Boolean).join('\n');
          },
        );
      }),
    );
  memory
    .command('write')
    .description('write memory: RAM (host, never into an overlay), or as a guest access by a VP (--guest)')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<gpa>', 'guest physical address (hex or decimal)', u64Arg('GPA'))
    .argument('<data>', 'hex bytes (deadbeef, "de ad be ef") or @FILE')
    .option('--guest <vp>', "guest access: the VP writes through its active VTL's view (subject to higher VTLs' protections)", vpArg)
    .action(
      run(async (ctx, name: string, gpa: bigint, dataArg: string, o: { guest?: number }) => {
        const chunk = o.guest !== undefined ? GUEST_CHUNK : HOST_CHUNK;
        let total: number;
        let source: AsyncIterable<Buffer> | Iterable<Buffer>;
        if (dataArg.startsWith('@')) {
          const path = dataArg.slice(1);
          let st: fs.Stats;
          try {
            st = fs.statSync(path);
          } catch (e) {
            throw new UsageError(`cannot read ${path}: ${(e as Error).message}`);
          }
          if (!st.isFile()) throw new UsageError(`${path} is not a file`);
          if (st.size === 0) throw new UsageError(`${path} is empty`);
          total = st.size;
          source = fileChunks(path, chunk);
        } else {
          const data = parseHexBytes(dataArg);
          total = data.length;
          source = Array.from({ length: Math.ceil(data.length / chunk) }, (_, i) => data.subarray(i * chunk, (i + 1) * chunk));
        }
        let done = 0;
        let outcome: pb.GuestActionOutcome | undefined;
        const progress = new Progress(`writing ${dataArg.startsWith('@') ? dataArg.slice(1) : 'data'}`, total, process.stderr, io.stderr.isTTY === true && total > chunk);
        try {
          for await (const part of source) {
            const at = gpa + BigInt(done);
            if (o.guest !== undefined) {
              const vp = vpName(name, o.guest);
              const r = await guestAccess(ctx, vp, () => ctx.client.guest.writeMemory({ name: vp, gpa: at, data: part }));
              outcome = r.outcome;
              if (stopped(r.outcome)) break;
            } else {
              await ctx.client.memory.writeGpa({ name, gpa: at, data: part });
            }
            done += part.length;
            progress.update(done);
          }
        } finally {
          progress.finish();
        }
        const failed = stopped(outcome) ? outcome : undefined;
        const where = o.guest !== undefined ? `as VP ${o.guest} (VTL ${outcome?.activeVtl ?? '-'} view)` : 'into RAM';
        ctx.emit(
          { name: o.guest !== undefined ? vpName(name, o.guest) : name, gpa: gpa.toString(), bytesWritten: done, ...(outcome ? { outcome: toJson(outcome) } : {}) },
          () =>
            failed
              ? notCompletedText(`guest write at ${hex64(gpa + BigInt(done))}`, failed, o.guest!, `${done} of ${total} bytes written before it`)
              : `wrote ${done} bytes at ${hex64(gpa)} ${where}`,
        );
      }),
    );
  memory
    .command('exec')
    .description('guest instruction fetch (ExecuteMemory): the VP fetches LEN bytes at GPA through its active VTL\'s view')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<vp>', 'VP index', vpArg)
    .argument('<gpa>', 'guest physical address (hex or decimal)', u64Arg('GPA'))
    .argument('[length]', `bytes fetched, 1..${MAX_FETCH} (default ${MAX_FETCH})`, arg((s) => parseIndex(s, 'length', MAX_FETCH)))
    .action(
      run(async (ctx, part: string, idx: number, gpa: bigint, len: number | undefined) => {
        const length = len ?? MAX_FETCH;
        if (length < 1) throw new UsageError(`length must be 1..${MAX_FETCH} (one instruction fetch)`);
        const name = vpName(part, idx);
        const r = await guestAccess(ctx, name, () => ctx.client.guest.executeMemory({ name, gpa, length }));
        const o = r.outcome;
        const data = Buffer.from(r.data);
        ctx.emit({ name, gpa: gpa.toString(), length, data: data.toString('hex'), ...(o ? { outcome: toJson(o) } : {}) }, () => {
          if (o && stopped(o)) return notCompletedText(`instruction fetch at ${hex64(gpa)} by VP ${idx}`, o, idx, 'nothing fetched');
          const bytes = Array.from(data, (b) => b.toString(16).padStart(2, '0')).join(' ');
          return `fetched ${data.length} byte${data.length === 1 ? '' : 's'} at ${hex64(gpa)} as VP ${idx} (VTL ${o?.activeVtl ?? '-'}): ${bytes}`;
        });
      }),
    );
  memory
    .command('protect')
    .description("set a VTL's protection mask on pages (ModifyVtlProtectionMask as the host); the VTL must have set EnableVtlProtection")
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .requiredOption('--vtl <n>', 'protecting VTL (1..maximum VTL): its mask restricts every lower VTL', vtlArg)
    .requiredOption('--flags <flags>', 'what lower VTLs may do: r, rw, rx, rwx, none, or HV_MAP_GPA_FLAGS as a number (0x1 read, 0x2 write, 0x4 kernel exec, 0x8 user exec)', arg(parseMapFlags))
    .option('--gpa <gpa>', 'first GPA (page aligned), with --size', u64Arg('--gpa'))
    .option('--size <size>', 'bytes from --gpa, whole 4 KiB pages (4KiB, 2MiB, 1GiB)', arg((s) => parseSize(s, '--size')))
    .option('--pages <start:count...>', 'page ranges: first page number (GPA >> 12) and page count, e.g. 0x40:16 (repeatable)', arg((s: string, prev?: Pages[]) => [...(prev ?? []), parsePageRange(s)]))
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
            if (r.start + r.count > pages) throw new UsageError(`pages 0x${r.start.toString(16)}+${r.count} are beyond the partition's memory (${formatSize(p.memoryBytes)}, ${pages} pages)`);
          }
        }
        const progress = new Progress(`VTL ${o.vtl} ${maskText(o.flags)}`, Number(totalPages), process.stderr, io.stderr.isTTY === true && calls.length > 1, (n) => `${n} pages`);
        let changed = 0n;
        let done = 0n;
        let generation = 0n;
        try {
          for (const [i, batch] of calls.entries()) {
            try {
              const r = await ctx.client.intercepts.modifyVtlProtectionMask({ name, protectingVtl: o.vtl, mapFlags: o.flags, ranges: batch });
              changed += r.pagesChanged;
              generation = r.viewGeneration;
            } catch (e) {
              if (e instanceof VsmError && i > 0) {
                throw new VsmError(e.code, e.reason, e.domain, e.metadata, `${e.message} (call ${i + 1} of ${calls.length}; the calls before it changed ${changed} pages, which keep the new mask)`);
              }
              throw e;
            }
            done += batch.reduce((a, r) => a + r.pageCount, 0n);
            progress.update(Number(done), `call ${i + 1} of ${calls.length}`);
          }
        } finally {
          progress.finish();
        }
        const what =
          ranges.length === 1
            ? `${hex64(ranges[0]!.start << 12n)}-${hex64(((ranges[0]!.start + ranges[0]!.count) << 12n) - 1n)}`
            : `${ranges.length} ranges`;
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
            `VTL ${o.vtl} now allows lower VTLs ${maskLabel(o.flags)} on ${changed} page${changed === 1n ? '' : 's'} (${what}) of ${name}` +
            `${calls.length > 1 ? ` in ${calls.length} calls` : ''}; view generation ${generation}`,
        );
      }),
    );
  memory
    .command('protections')
    .description('the protection ranges a VTL has set (GetVtlProtections) and its default mask')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .requiredOption('--vtl <n>', 'protecting VTL (1..)', vtlArg)
    .action(
      run(async (ctx, name: string, o: { vtl: number }) => {
        const r = await ctx.client.intercepts.getVtlProtections({ name, protectingVtl: o.vtl });
        const json = toJson(r) as { [k: string]: Json };
        ctx.emit(
          { name, protectingVtl: o.vtl, ...json, defaultMask: maskText(r.defaultMapFlags), ranges: r.ranges.map((x) => ({ ...(toJson(x) as { [k: string]: Json }), mask: maskText(x.mapFlags) })) },
          () => {
            if (!r.protectionEnabled) return `${name}: VTL ${o.vtl} has not set EnableVtlProtection, so it restricts nothing (view generation ${r.viewGeneration})`;
            const head = `${name}: VTL ${o.vtl} protections enabled; default mask ${maskLabel(r.defaultMapFlags)} outside the ranges; view generation ${r.viewGeneration}`;
            if (!r.ranges.length) return `${head}\nno explicit ranges`;
            const rows = r.ranges.map((x) => {
              const s = x.pages?.startPage ?? 0n;
              const c = x.pages?.pageCount ?? 0n;
              return [hex(s), String(c), `${hex64(s << 12n)}-${hex64(((s + c) << 12n) - 1n)}`, maskLabel(x.mapFlags)];
            });
            return `${head}\n${table(['START PAGE', 'PAGES', 'GPA RANGE', 'MASK'], rows)}`;
          },
        );
      }),
    );

  // ---- map ---------------------------------------------------------------------------------------

  program
    .command('map')
    .description('picture of the GPA space per VTL: overlay pages (kind, stacking), non-zero RAM pages and VTL protections')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .option('--vtl <n>', 'only this VTL and the protections that apply to it (default: every enabled VTL)', vtlArg)
    .option('--from <gpa>', 'first GPA of the window (rounded down to a page)', u64Arg('--from'))
    .option('--pages <n>', `pages in the window (default 256, at most ${MAX_MAP_PAGES})`, arg((s) => parseCount(s, '--pages', MAX_MAP_PAGES)))
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
        const progress = new Progress('sampling RAM', bytes, process.stderr, io.stderr.isTTY === true && bytes > HOST_CHUNK);
        try {
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
        } finally {
          progress.finish();
        }
        // Protections of every enabled protecting VTL (with --vtl N: those above N, which restrict VTL N).
        const protections: MapProtections[] = [];
        for (let v = 1; v < 16; v++) {
          if (!(p.enabledVtlSet & (1 << v)) || (o.vtl !== undefined && v <= o.vtl)) continue;
          try {
            const r = await ctx.client.intercepts.getVtlProtections({ name, protectingVtl: v });
            protections.push({ vtl: v, protectionEnabled: r.protectionEnabled, defaultMapFlags: r.defaultMapFlags, ranges: r.ranges });
          } catch (e) {
            if (e instanceof VsmError && e.code === GRPC_UNIMPLEMENTED) break; // an older server
            throw e;
          }
        }
        const inp: MapInput = { partition: p, from, nonZero, overlays: ov.overlays, viewGeneration: generation, vtls, protections };
        ctx.emit(mapJson(inp), () => renderMap(inp, painter(colorEnabled(io.stdout, io.env))));
      }),
    );

  // ---- intercepts ----------------------------------------------------------------------------------

  const intercepts = program.command('intercepts').description('memory intercepts: where they go, which wait for an answer, and a monitor that watches and answers them');
  intercepts
    .command('route')
    .description('choose where memory intercepts go (SetInterceptRoute), and what happens to monitor intercepts nobody answers')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .addArgument(
      new Argument('<route>', 'higher-vtl: the protecting VTL handles them (default); monitor: external monitors answer, the VP waits; both: the VTL handles them, monitors observe')
        .choices(Object.keys(ROUTES)),
    )
    .option('--deadline-ms <ms>', 'apply --deadline-action to an intercept no monitor answered within MS (1..86400000; default: wait forever)', arg((s) => parseCount(s, '--deadline-ms', 86_400_000)))
    .addOption(new Option('--deadline-action <action>', 'what the deadline does (with --deadline-ms)').choices(Object.keys(ACTIONS)))
    .action(
      run(async (ctx, name: string, route: string, o: { deadlineMs?: number; deadlineAction?: string }) => {
        if ((o.deadlineMs === undefined) !== (o.deadlineAction === undefined)) throw new UsageError('--deadline-ms and --deadline-action go together');
        const r = await ctx.client.intercepts.setInterceptRoute({
          name,
          route: ROUTES[route]!,
          answerDeadlineMs: o.deadlineMs !== undefined ? BigInt(o.deadlineMs) : undefined,
          deadlineAction: o.deadlineAction ? ACTIONS[o.deadlineAction]! : pb.InterceptAction.INTERCEPT_ACTION_UNSPECIFIED,
        });
        ctx.emit({ name, ...(toJson(r) as object) }, () => {
          const where: Record<string, string> = {
            'higher-vtl': "to the protecting VTL (route HIGHER_VTL): the message goes to its SINT0 and the VP enters it",
            monitor: 'to external monitors (route MONITOR): the VP waits at the instruction for an answer',
            both: 'to the protecting VTL, with an observe-only copy for monitors (route BOTH)',
          };
          const deadline =
            r.answerDeadlineMs !== undefined
              ? `an intercept no monitor answered within ${r.answerDeadlineMs} ms gets ${actionText(r.deadlineAction)}`
              : 'intercepts waiting for a monitor wait until one answers (no deadline)';
          return `${name}: intercepts go ${where[routeText(r.route)] ?? `by route ${r.route}`}; ${deadline}`;
        });
      }),
    );
  intercepts
    .command('pending')
    .description("intercepts waiting for a monitor's answer (ListPendingIntercepts), oldest first")
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .action(
      run(async (ctx, name: string) => {
        const r = await ctx.client.intercepts.listPendingIntercepts({ name });
        ctx.emit({ name, intercepts: toJson(r.intercepts) }, () => {
          if (!r.intercepts.length) return `no intercepts of ${name} wait for an answer`;
          const rows = r.intercepts.map((e) => [String(e.interceptId), String(e.vpIndex), String(e.vtl), accessTypeText(e.accessType), hex64(e.gpa), String(e.length), hex64(e.rip), String(e.protectingVtl), String(e.viewGeneration)]);
          const n = r.intercepts.length;
          return `${n} intercept${n === 1 ? '' : 's'} of ${name} wait${n === 1 ? 's' : ''} for a monitor's answer:\n${table(['ID', 'VP', 'VTL', 'ACCESS', 'GPA', 'LEN', 'RIP', 'BY VTL', 'GENERATION'], rows)}`;
        });
      }),
    );
  intercepts
    .command('watch')
    .description('an external monitor (Monitor stream): prints intercepts as they happen and, with --reply, answers each one that needs a reply')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .option('--vp <n>', 'only intercepts of this VP', vpArg)
    .option('--vtl <n>', 'only accesses made in this VTL', vtlArg)
    .option('--gpa-start <gpa>', 'only GPAs >= this', u64Arg('--gpa-start'))
    .option('--gpa-end <gpa>', 'only GPAs < this', u64Arg('--gpa-end'))
    .option('--access <kinds>', 'only these accesses: r,w,x (read, write, execute; default all)', arg(parseAccessMask))
    .addOption(new Option('--reply <action>', 'answer every intercept that needs a reply (route MONITOR) with this action').choices(Object.keys(ACTIONS)))
    .option('--skip-data <hex>', 'with --reply skip: the bytes a skipped read returns (zero-filled to its length)', arg(parseHexBytes))
    .option('--check-generation', "with --reply: send the intercept's view generation, so the answer is refused (STALE_GENERATION) when protections or overlays changed since the fault")
    .option('--count <n>', 'exit after N intercepts (and the answers to them)', arg((s) => parseCount(s, '--count', 1_000_000_000)))
    .addHelpText(
      'after',
      `
Without --reply the monitor only watches: intercepts that need an answer stay pending for other
monitors (vsmctl intercepts pending). Intercepts still unanswered when a monitor subscribes are
delivered to it first (flagged redelivered when an earlier monitor saw them). Ctrl-C exits 0.`,
    )
    .action(
      run(
        async (
          ctx,
          name: string,
          o: { vp?: number; vtl?: number; gpaStart?: bigint; gpaEnd?: bigint; access?: number; reply?: string; skipData?: Buffer; checkGeneration?: boolean; count?: number },
        ) => {
          if (o.skipData && o.reply !== 'skip') throw new UsageError('--skip-data goes with --reply skip');
          if (o.checkGeneration && !o.reply) throw new UsageError('--check-generation goes with --reply');
          if (o.gpaStart !== undefined && o.gpaEnd !== undefined && o.gpaEnd <= o.gpaStart) throw new UsageError('--gpa-end must be above --gpa-start');
          const action = o.reply ? ACTIONS[o.reply]! : undefined;
          const ac = new AbortController();
          const stop = () => ac.abort();
          process.once('SIGINT', stop);
          process.once('SIGTERM', stop);
          const m = ctx.client.intercepts.monitor(ac.signal);
          const line = (j: Json, human: () => string) => ctx.out(ctx.json ? JSON.stringify(j) : human());
          const filters = [
            o.vp !== undefined ? `VP ${o.vp}` : 'any VP',
            o.vtl !== undefined ? `accesses in VTL ${o.vtl}` : 'any VTL',
            o.gpaStart !== undefined || o.gpaEnd !== undefined ? `GPA ${o.gpaStart !== undefined ? hex64(o.gpaStart) : 'start'}..${o.gpaEnd !== undefined ? hex64(o.gpaEnd) : 'end'}` : 'any GPA',
          ].join(', ');
          const answering = action !== undefined ? `answering ${actionText(action)}${o.checkGeneration ? ' with generation check' : ''}` : 'watching only, not answering';
          let seen = 0;
          let full = false;
          const outstanding = new Set<bigint>();
          try {
            m.send({
              kind: { $case: 'subscribe', value: { name, vpIndex: o.vp, vtl: o.vtl, gpaStart: o.gpaStart, gpaEnd: o.gpaEnd, accessMask: o.access ?? 0 } },
            });
            if (io.stderr.isTTY && !ctx.json) ctx.note(`watching intercepts of ${name} (Ctrl-C to stop)`);
            for await (const r of m.events) {
              const k = r.kind;
              if (!k) continue;
              if (k.$case === 'subscription') {
                line({ name, subscription: toJson(k.value) }, () => `subscribed to intercepts of ${name}: ${accessMaskText(k.value.accessMask)}; ${filters}; ${answering}; view generation ${k.value.viewGeneration}`);
              } else if (k.$case === 'intercept') {
                if (full) continue; // after --count: not ours to print or answer
                const e = k.value;
                seen++;
                line({ name, intercept: toJson(e) }, () => interceptEventText(e));
                if (action !== undefined && e.needsReply) {
                  m.send({
                    kind: {
                      $case: 'reply',
                      value: { interceptId: e.interceptId, action, data: action === pb.InterceptAction.INTERCEPT_ACTION_SKIP ? (o.skipData ?? Buffer.alloc(0)) : Buffer.alloc(0), viewGeneration: o.checkGeneration ? e.viewGeneration : undefined },
                    },
                  });
                  outstanding.add(e.interceptId);
                }
                if (o.count !== undefined && seen >= o.count) full = true;
              } else if (k.$case === 'replyResult') {
                const x = k.value;
                outstanding.delete(x.interceptId);
                const status = safeEnum(pb.replyStatusToJSON)(x.status);
                line(
                  { name, replyResult: { interceptId: x.interceptId.toString(), status, detail: x.detail, viewGeneration: x.viewGeneration.toString() }, action: action !== undefined ? safeEnum(pb.interceptActionToJSON)(action) : null },
                  () => `  reply ${action !== undefined ? actionText(action) : ''} to intercept ${x.interceptId}: ${shortEnum(status, 'REPLY_STATUS_')}${x.detail ? ` (${x.detail})` : ''}; view generation ${x.viewGeneration}`,
                );
              }
              if (full && outstanding.size === 0) break;
            }
          } finally {
            process.removeListener('SIGINT', stop);
            process.removeListener('SIGTERM', stop);
            m.cancel();
          }
        },
      ),
    );

  // ---- SynIC ------------------------------------------------------------------------------------

  const synic = program.command('synic').description("a VP's SynIC as the host sees it: post messages, signal event flags, queue depths");
  synic
    .command('post')
    .description('post an HV_MESSAGE to SINTn of a VP\'s VTL (PostMessage): into the SIM slot, or queued behind a busy one')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<vp>', 'VP index', vpArg)
    .requiredOption('--vtl <n>', 'VTL whose SynIC receives it', vtlArg)
    .requiredOption('--sint <n>', 'SINT 0..15', arg((s) => parseIndex(s, '--sint', 15)))
    .requiredOption('--type <type>', 'HV_MESSAGE_TYPE: non-zero, bit 31 clear (hex or decimal)', arg((s) => parseU32(s, '--type')))
    .option('--payload <hex>', `payload bytes (at most ${MAX_MESSAGE_PAYLOAD})`, arg(parseHexBytes))
    .action(
      run(async (ctx, part: string, idx: number, o: { vtl: number; sint: number; type: number; payload?: Buffer }) => {
        if (o.type === 0 || o.type & 0x80000000) throw new UsageError(`--type 0x${o.type.toString(16)}: message types are non-zero with bit 31 clear (the hypervisor's own types are reserved)`);
        const payload = o.payload ?? Buffer.alloc(0);
        if (payload.length > MAX_MESSAGE_PAYLOAD) throw new UsageError(`--payload has ${payload.length} bytes; at most ${MAX_MESSAGE_PAYLOAD}`);
        const name = vpName(part, idx);
        const r = await ctx.client.synic.postMessage({ name, vtl: o.vtl, sint: o.sint, messageType: o.type, payload });
        ctx.emit(
          { name, vtl: o.vtl, sint: o.sint, messageType: o.type, payload: payload.toString('hex'), delivered: r.delivered },
          () =>
            `posted message type ${hex(o.type, 8)} (${payload.length} byte${payload.length === 1 ? '' : 's'}) to SINT${o.sint} of ${name} VTL ${o.vtl}: ` +
            (r.delivered ? 'delivered into the SIM slot' : 'queued behind the occupied SIM slot (MessagePending set; it arrives after the slot is cleared and EOM written)'),
        );
      }),
    );
  synic
    .command('signal')
    .description('set an event flag of SINTn in the SIEF page (SignalEvent)')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<vp>', 'VP index', vpArg)
    .requiredOption('--vtl <n>', 'VTL whose SynIC receives it', vtlArg)
    .requiredOption('--sint <n>', 'SINT 0..15', arg((s) => parseIndex(s, '--sint', 15)))
    .requiredOption('--flag <n>', 'event flag 0..2047', arg((s) => parseIndex(s, '--flag', 2047)))
    .action(
      run(async (ctx, part: string, idx: number, o: { vtl: number; sint: number; flag: number }) => {
        const name = vpName(part, idx);
        const r = await ctx.client.synic.signalEvent({ name, vtl: o.vtl, sint: o.sint, flag: o.flag });
        ctx.emit({ name, vtl: o.vtl, sint: o.sint, flag: o.flag, newlySet: r.newlySet }, () =>
          `event flag ${o.flag} of SINT${o.sint} (${name} VTL ${o.vtl}): ${r.newlySet ? 'newly set (an interrupt would be raised)' : 'was already set (no new interrupt)'}`,
        );
      }),
    );
  synic
    .command('state')
    .description("messages queued behind each SINT's SIM slot (GetSynicState)")
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<vp>', 'VP index', vpArg)
    .requiredOption('--vtl <n>', 'VTL', vtlArg)
    .action(
      run(async (ctx, part: string, idx: number, o: { vtl: number }) => {
        const name = vpName(part, idx);
        const r = await ctx.client.synic.getSynicState({ name, vtl: o.vtl });
        const total = r.queued.reduce((a, b) => a + b, 0);
        ctx.emit({ name, vtl: o.vtl, queued: r.queued }, () =>
          [
            `${name} VTL ${o.vtl}: ${total} message${total === 1 ? '' : 's'} queued behind SIM slots (at most 16 per SINT)`,
            table(['SINT', ...r.queued.map((_, i) => String(i))], [['QUEUED', ...r.queued.map(String)]]),
          ].join('\n'),
        );
      }),
    );

  return program;
}

/** Prints an error and returns the exit code for it. */
export function report(e: unknown, io: Io, address: string): number {
  if (e instanceof CommanderError) return e.exitCode === 0 ? EXIT.OK : EXIT.USAGE; // commander printed it
  if (e instanceof UsageError) {
    io.stderr.write(`error: ${e.message}\n`);
    return EXIT.USAGE;
  }
  if (e instanceof VsmError) {
    const head = [e.codeName, e.reason].filter(Boolean).join(' ');
    const unreachable = e.code === GRPC_UNAVAILABLE || e.code === GRPC_DEADLINE_EXCEEDED;
    const hint = unreachable && !(e instanceof StillSuspended) ? ` (server at ${address} not reachable${e.code === GRPC_DEADLINE_EXCEEDED ? ' in time' : ''})` : '';
    io.stderr.write(`error: ${head}: ${e.message}${hint}\n`);
    return unreachable ? EXIT.UNAVAILABLE : EXIT.SERVER;
  }
  io.stderr.write(`error: ${e instanceof Error ? e.message : String(e)}\n`);
  return EXIT.INTERNAL;
}

/** Runs vsmctl with user arguments (no `node script` prefix) and returns the exit code. */
export async function main(args: string[], io: Io = { stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  const state: { ctx?: Ctx } = {};
  const program = buildProgram(io, state);
  try {
    await program.parseAsync(args, { from: 'user' });
    return EXIT.OK;
  } catch (e) {
    return report(e, io, state.ctx?.g.address ?? (program.opts() as Globals).address ?? '?');
  } finally {
    state.ctx?.close();
  }
}
