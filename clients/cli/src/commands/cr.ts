// vsmctl cr: guest MOV to CR0/CR4 on a VP, in its active VTL (GuestService.WriteControlRegister). A
// higher VTL's HvX64RegisterCrInterceptControl (with the Cr0/Cr4 masks) turns a write that changes a
// locked bit into a register intercept: the write does not take effect.
import type { Command } from 'commander';
import { pb } from '@vsm/client';
import type { Cli } from '../context';
import { hex64, toJson } from '../format';
import { arg, u64Arg, vpCommand } from '../options';
import { outcomeText } from '../outcome';
import { UsageError, vpName } from '../parse';

const REGISTERS: Record<string, pb.ControlRegister> = {
  cr0: pb.ControlRegister.CONTROL_REGISTER_CR0,
  cr4: pb.ControlRegister.CONTROL_REGISTER_CR4,
};

function parseCr(text: string): pb.ControlRegister {
  const r = REGISTERS[text.toLowerCase()];
  if (r === undefined) throw new UsageError(`register: expected cr0 or cr4, got '${text}'`);
  return r;
}

export function register(program: Command, { run }: Cli): void {
  const cr = program.command('cr').description('guest MOV to CR0/CR4 on a VP (in its active VTL)');
  vpCommand(cr, 'write', 'the VP executes MOV to CR0 or CR4')
    .argument('<register>', 'cr0 or cr4', arg(parseCr))
    .argument('<value>', 'value (hex or decimal)', u64Arg('control register value'))
    .action(
      run(async (ctx, part: string, idx: number, reg: pb.ControlRegister, value: bigint) => {
        const name = vpName(part, idx);
        const r = await ctx.client.guest.writeControlRegister({ name, register: reg, value });
        const label = reg === pb.ControlRegister.CONTROL_REGISTER_CR0 ? 'CR0' : 'CR4';
        ctx.emit({ name, register: label, value: value.toString(), ...(toJson(r) as object) }, () =>
          r.outcome?.exception || r.outcome?.intercept
            ? `MOV ${label} <- ${hex64(value)}: NOT WRITTEN, ${outcomeText(r.outcome)}`
            : `${label} <- ${hex64(value)}  (VTL ${r.outcome?.activeVtl ?? '-'})`,
        );
      }),
    );
}
