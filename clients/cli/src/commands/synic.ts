// vsmctl synic: a VP's SynIC as the host sees it: post messages, signal event flags, queue depths.
import type { Command } from 'commander';
import type { Cli } from '../context';
import { count, hex, table } from '../format';
import { arg, indexArg, vpCommand, vtlArg } from '../options';
import { UsageError, parseHexBytes, parseU32, vpName } from '../parse';

/** HV_MESSAGE_MAX_PAYLOAD_BYTE_COUNT. */
const MAX_MESSAGE_PAYLOAD = 240;

/** `synic <name> <partition> <vp> --vtl N`, and --sint for the commands that address one SINT. */
const synicCommand = (parent: Command, name: string, description: string, sint: boolean): Command => {
  const cmd = vpCommand(parent, name, description).requiredOption('--vtl <n>', sint ? 'VTL whose SynIC receives it' : 'VTL', vtlArg);
  return sint ? cmd.requiredOption('--sint <n>', 'SINT 0..15', indexArg('--sint', 15)) : cmd;
};

export function register(program: Command, { run }: Cli): void {
  const synic = program.command('synic').description("a VP's SynIC as the host sees it: post messages, signal event flags, queue depths");
  synicCommand(synic, 'post', "post an HV_MESSAGE to SINTn of a VP's VTL (PostMessage): into the SIM slot, or queued behind a busy one", true)
    .requiredOption(
      '--type <type>',
      'HV_MESSAGE_TYPE: non-zero, bit 31 clear (hex or decimal)',
      arg((s) => parseU32(s, '--type')),
    )
    .option('--payload <hex>', `payload bytes (at most ${MAX_MESSAGE_PAYLOAD})`, arg(parseHexBytes))
    .action(
      run(async (ctx, part: string, idx: number, o: { vtl: number; sint: number; type: number; payload?: Buffer }) => {
        if (o.type === 0 || o.type & 0x80000000)
          throw new UsageError(`--type 0x${o.type.toString(16)}: message types are non-zero with bit 31 clear (the hypervisor's own types are reserved)`);
        const payload = o.payload ?? Buffer.alloc(0);
        if (payload.length > MAX_MESSAGE_PAYLOAD) throw new UsageError(`--payload has ${payload.length} bytes; at most ${MAX_MESSAGE_PAYLOAD}`);
        const name = vpName(part, idx);
        const r = await ctx.client.synic.postMessage({ name, vtl: o.vtl, sint: o.sint, messageType: o.type, payload });
        ctx.emit(
          { name, vtl: o.vtl, sint: o.sint, messageType: o.type, payload: payload.toString('hex'), delivered: r.delivered },
          () =>
            `posted message type ${hex(o.type, 8)} (${count(payload.length, 'byte')}) to SINT${o.sint} of ${name} VTL ${o.vtl}: ` +
            (r.delivered
              ? 'delivered into the SIM slot'
              : 'queued behind the occupied SIM slot (MessagePending set; it arrives after the slot is cleared and EOM written)'),
        );
      }),
    );
  synicCommand(synic, 'signal', 'set an event flag of SINTn in the SIEF page (SignalEvent)', true)
    .requiredOption('--flag <n>', 'event flag 0..2047', indexArg('--flag', 2047))
    .action(
      run(async (ctx, part: string, idx: number, o: { vtl: number; sint: number; flag: number }) => {
        const name = vpName(part, idx);
        const r = await ctx.client.synic.signalEvent({ name, vtl: o.vtl, sint: o.sint, flag: o.flag });
        ctx.emit(
          { name, vtl: o.vtl, sint: o.sint, flag: o.flag, newlySet: r.newlySet },
          () =>
            `event flag ${o.flag} of SINT${o.sint} (${name} VTL ${o.vtl}): ${r.newlySet ? 'newly set (an interrupt would be raised)' : 'was already set (no new interrupt)'}`,
        );
      }),
    );
  synicCommand(synic, 'state', "messages queued behind each SINT's SIM slot (GetSynicState)", false).action(
    run(async (ctx, part: string, idx: number, o: { vtl: number }) => {
      const name = vpName(part, idx);
      const r = await ctx.client.synic.getSynicState({ name, vtl: o.vtl });
      const total = r.queued.reduce((a, b) => a + b, 0);
      ctx.emit({ name, vtl: o.vtl, queued: r.queued }, () =>
        [
          `${name} VTL ${o.vtl}: ${count(total, 'message')} queued behind SIM slots (at most 16 per SINT)`,
          table(['SINT', ...r.queued.map((_, i) => String(i))], [['QUEUED', ...r.queued.map(String)]]),
        ].join('\n'),
      );
    }),
  );
}
