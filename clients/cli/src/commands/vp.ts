// vsmctl vp: a virtual processor and its registers.
import type { Command } from 'commander';
import { pb } from '@vsm/client';
import type { Cli } from '../context';
import { entryReason, fields, registerJson, registerValueText, safeEnum, shortEnum, toJson, vtlSet } from '../format';
import { arg, listArg, vpCommand, vtlArg } from '../options';
import { parseRegisterName, parseRegisterValue, tlfsRegisterName, vpName } from '../parse';

/** A VP and its VSM status (vp get, vtl status of one VP). */
export function vpFields(vp: pb.VirtualProcessor): string {
  const s = vp.vtlStatus;
  return fields([
    ['name', vp.name],
    ['VP index', String(vp.vpIndex)],
    ['active VTL', s ? String(s.activeVtl) : '-'],
    ['enabled VTLs', s ? vtlSet(s.enabledVtlSet) : '-'],
    ['last entry reason', s ? entryReason(s.lastEntryReason) : '-'],
    ['intercept suspended', s?.interceptSuspended ? `yes, on intercept ${s.suspendedInterceptId} (waiting for a monitor's answer)` : 'no'],
    ...(vp.runState
      ? [['run state', shortEnum(safeEnum(pb.vpRunStateToJSON)(vp.runState), 'VP_RUN_STATE_').toLowerCase().replace(/_/g, '-')] as [string, string]]
      : []),
  ]);
}

export function register(program: Command, { run }: Cli): void {
  const vp = program.command('vp').description('virtual processors and their registers');
  vpCommand(vp, 'get', 'show a VP and its VSM status').action(
    run(async (ctx, part: string, idx: number) => {
      const v = await ctx.client.vps.getVirtualProcessor({ name: vpName(part, idx) });
      ctx.emit(toJson(v), () => vpFields(v));
    }),
  );
  vpCommand(vp, 'regs', 'read registers of one VTL of a VP (all modelled registers when no names are given)')
    .argument('[names...]', 'registers: rip, rax, cr3, HvX64RegisterRip, HvRegisterVsmCodePageOffsets, ...', listArg(parseRegisterName))
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
  vpCommand(vp, 'set-reg', 'write one register of one VTL of a VP (host side)')
    .argument('<name>', 'register (rip, rax, cr3, HvX64RegisterRip, ...)', arg(parseRegisterName))
    .argument('<value>', 'value: hex or decimal; segments base=..,limit=..,selector=..,attributes=..; tables base=..,limit=..')
    .option('--vtl <n>', "VTL whose register to write (default: the VP's active VTL)", vtlArg)
    .action(
      run(async (ctx, part: string, idx: number, reg: number, text: string, o: { vtl?: number }) => {
        const name = vpName(part, idx);
        const assoc: pb.RegisterAssoc = { name: reg, value: parseRegisterValue(reg, text) };
        await ctx.client.vps.setVpRegisters({ name, vtl: o.vtl, registers: [assoc] });
        ctx.emit(
          { name, vtl: o.vtl ?? null, registers: [registerJson(assoc)] },
          () => `${name}  ${o.vtl === undefined ? 'active VTL' : `VTL ${o.vtl}`}: ${tlfsRegisterName(reg)} = ${registerValueText(assoc)}`,
        );
      }),
    );
}
