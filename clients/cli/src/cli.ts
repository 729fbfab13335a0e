// vsmctl: the command tree (commander) and every command's implementation on top of @vsm/client.
// Exit codes: 0 ok, 2 usage error, 3 server error, 4 server unreachable (UNAVAILABLE or
// DEADLINE_EXCEEDED), 1 anything unexpected.
import * as fs from 'node:fs';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { ConnectOptions, VsmClient, VsmError, connect, pb } from '@vsm/client';
import {
  Json, colorEnabled, safeEnum, entryReason, exceptionName, fields, formatSize, hex, hex64, hexdump, overlayKind, painter, registerJson,
  registerValueText, shortEnum, table, toJson, vtlSet,
} from './format';
import { MapInput, PAGE, mapJson, renderMap } from './map';
import {
  UsageError, allRegisters, msrLabel, parseCount, parseHexBytes, parseIndex, parseLabel, parseMsr, parseRegisterName,
  parseRegisterValue, parseSize, parseU64, partitionId, partitionName, tlfsRegisterName, vpName,
} from './parse';
import { Progress } from './progress';

export const EXIT = { OK: 0, INTERNAL: 1, USAGE: 2, SERVER: 3, UNAVAILABLE: 4 } as const;

const GRPC_DEADLINE_EXCEEDED = 4;
const GRPC_UNAVAILABLE = 14;
/** Largest ReadGpa/WriteGpa (host) and ReadMemory/WriteMemory (guest) transfers. */
const HOST_CHUNK = 1 << 20;
const GUEST_CHUNK = 1 << 16;
const MAX_MAP_PAGES = 1 << 16;
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

/** Fields of GuestActionOutcome that newer servers may set (read loosely: older clients lack them). */
interface OutcomeExtras {
  partitionCrashed?: boolean;
  intercept?: { interceptId?: bigint; protectingVtl?: number; gpa?: bigint; heldBack?: boolean };
}

function outcomeText(o: pb.GuestActionOutcome | undefined): string {
  if (!o) return 'no outcome';
  const x = o as pb.GuestActionOutcome & OutcomeExtras;
  if (x.partitionCrashed) return `the partition was stopped (crashed); VP in VTL ${o.activeVtl}`;
  if (x.intercept) {
    const i = x.intercept;
    return `intercepted by VTL ${i.protectingVtl ?? '?'} at ${i.gpa !== undefined ? hex64(i.gpa) : '?'} (intercept ${i.interceptId ?? '?'}${i.heldBack ? ', held back: SINT0 queue full' : ''}); VP in VTL ${o.activeVtl}`;
  }
  if (o.exception) return `${exceptionName(o.exception)} raised in VTL ${o.activeVtl}`;
  if (o.vtlSwitch) {
    const r = o.vtlSwitch.fromVtl < o.vtlSwitch.toVtl ? `, entry reason ${entryReason(o.vtlSwitch.entryReason)}` : '';
    return `switched VTL ${o.vtlSwitch.fromVtl} -> VTL ${o.vtlSwitch.toVtl}${r}`;
  }
  return `completed in VTL ${o.activeVtl}`;
}

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
    ['intercept suspended', s?.interceptSuspended ? 'yes' : 'no'],
  ]);
}

/** Reads HvRegisterVsmCodePageOffsets of the VP's active VTL: [VtlCall offset, VtlReturn offset]. */
async function codePageOffsets(c: VsmClient, vp: string): Promise<[number, number]> {
  const r = await c.vps.getVpRegisters({ name: vp, names: [pb.HvRegisterName.HV_REGISTER_NAME_VSM_CODE_PAGE_OFFSETS] });
  const v = r.registers[0]?.value?.value;
  if (v?.$case !== 'reg64') throw new Error('HvRegisterVsmCodePageOffsets did not come back as a 64-bit value');
  return [Number(v.value & 0xfffn), Number((v.value >> 12n) & 0xfffn)];
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
  vsmctl map demo

Exit codes: 0 ok, 2 usage error, 3 server error (error: CODE HV_STATUS: message),
4 server not reachable (UNAVAILABLE or DEADLINE_EXCEEDED). Guest exceptions (#GP, #UD)
are results, printed with exit code 0 (and under "outcome" with --json).`,
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
        ctx.emit({ name, offset, ...(toJson(r) as object) }, () => `VtlCall (hypercall page +${hex(offset, 2)}): ${outcomeText(r.outcome)}${r.outcome?.exception ? '; no switch' : ''}`);
      }),
    );
  vtl.command('return')
    .description('VtlReturn: the VP calls its hypercall page at the VtlReturn offset (RCX = 0, or 1 with --fast)')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<vp>', 'VP index', vpArg)
    .option('--fast', 'fast return (RAX/RCX of the lower VTL are not restored)')
    .action(
      run(async (ctx, part: string, idx: number, o: { fast?: boolean }) => {
        const name = vpName(part, idx);
        const [, offset] = await codePageOffsets(ctx.client, name);
        const r = await ctx.client.guest.callHypercallPage({ name, offset, rcx: o.fast ? 1n : 0n });
        ctx.emit({ name, offset, fast: o.fast === true, ...(toJson(r) as object) }, () => `VtlReturn${o.fast ? ' (fast)' : ''} (hypercall page +${hex(offset, 2)}): ${outcomeText(r.outcome)}${r.outcome?.exception ? '; no switch' : ''}`);
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

  const memory = program.command('memory').description('read and write guest physical memory');
  memory
    .command('read')
    .description('read memory: RAM (host view), as a VTL sees it (--vtl), or as a guest access by a VP (--guest)')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .argument('<gpa>', 'guest physical address (hex or decimal)', u64Arg('GPA'))
    .argument('<length>', 'bytes to read (4096, 0x1000, 64KiB)', arg((s) => parseSize(s, 'length')))
    .option('--vtl <n>', 'host read of what VTL n sees (its overlays on top of RAM)', vtlArg)
    .option('--guest <vp>', "guest access: the VP reads through its active VTL's view", vpArg)
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
              const r = await ctx.client.guest.readMemory({ name: vpName(name, o.guest), gpa: at, length: n });
              outcome = r.outcome;
              if (r.outcome?.exception || r.data.length === 0) break;
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
        const failed = outcome?.exception ? outcome : undefined;
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
            const tail = failed ? `guest read at ${hex64(gpa + BigInt(data.length))}: ${outcomeText(failed)}; read stopped after ${data.length} bytes` : '';
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
    .option('--guest <vp>', "guest access: the VP writes through its active VTL's view", vpArg)
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
              const r = await ctx.client.guest.writeMemory({ name: vpName(name, o.guest), gpa: at, data: part });
              outcome = r.outcome;
              if (r.outcome?.exception) break;
            } else {
              await ctx.client.memory.writeGpa({ name, gpa: at, data: part });
            }
            done += part.length;
            progress.update(done);
          }
        } finally {
          progress.finish();
        }
        const failed = outcome?.exception ? outcome : undefined;
        const where = o.guest !== undefined ? `as VP ${o.guest} (VTL ${outcome?.activeVtl ?? '-'} view)` : 'into RAM';
        ctx.emit(
          { name: o.guest !== undefined ? vpName(name, o.guest) : name, gpa: gpa.toString(), bytesWritten: done, ...(outcome ? { outcome: toJson(outcome) } : {}) },
          () =>
            failed
              ? `guest write at ${hex64(gpa + BigInt(done))}: REFUSED, ${outcomeText(failed)}; ${done} of ${total} bytes written before it`
              : `wrote ${done} bytes at ${hex64(gpa)} ${where}`,
        );
      }),
    );

  // ---- map ---------------------------------------------------------------------------------------

  program
    .command('map')
    .description('picture of the GPA space per VTL: overlay pages (kind, stacking) and non-zero RAM pages')
    .argument('<partition>', 'partitions/ID or ID', partArg)
    .option('--vtl <n>', 'only this VTL (default: every enabled VTL)', vtlArg)
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
        const bytes = pages * PAGE;
        const progress = new Progress('sampling RAM', bytes, process.stderr, io.stderr.isTTY === true && bytes > HOST_CHUNK);
        try {
          for (let off = 0; off < bytes; off += HOST_CHUNK) {
            const n = Math.min(HOST_CHUNK, bytes - off);
            const r = await ctx.client.memory.readGpa({ name, gpa: from + BigInt(off), length: n });
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
        const inp: MapInput = { partition: p, from, nonZero, overlays: ov.overlays, viewGeneration: ov.viewGeneration, vtls };
        ctx.emit(mapJson(inp), () => renderMap(inp, painter(colorEnabled(io.stdout, io.env))));
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
    const hint = unreachable ? ` (server at ${address} not reachable${e.code === GRPC_DEADLINE_EXCEEDED ? ' in time' : ''})` : '';
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
