// vsmctl msr: guest RDMSR/WRMSR on a VP, in its active VTL.
import type { Command } from 'commander';
import type { Cli } from '../context';
import { hex64, toJson } from '../format';
import { arg, u64Arg, vpCommand } from '../options';
import { outcomeText } from '../outcome';
import { msrLabel, parseMsr, vpName } from '../parse';
import { HvMsr } from '@vsm/core';

const GUEST_OS_ID = HvMsr.HV_X64_MSR_GUEST_OS_ID;

export function register(program: Command, { run }: Cli): void {
  const msr = program.command('msr').description('guest RDMSR/WRMSR on a VP (in its active VTL)');
  vpCommand(msr, 'read', 'the VP executes RDMSR')
    .argument('<msr>', `MSR number (0x${GUEST_OS_ID.toString(16)}, ${GUEST_OS_ID}) or name (HV_X64_MSR_GUEST_OS_ID, hypercall)`, arg(parseMsr))
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
  vpCommand(msr, 'write', 'the VP executes WRMSR')
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
}
