// vsmctl vtl: enable VTLs (partition, VP), VSM status, VtlCall/VtlReturn through the hypercall
// page, and the stream of VTL transitions.
import type { Command } from 'commander';
import { type VsmClient, pb } from '@vsm/client';
import { type Cli, untilInterrupted } from '../context';
import { entryReason, hex, table, toJson, vtlSet } from '../format';
import { partitionCommand, vpArg, vpCommand, vtlArg } from '../options';
import { interceptLines, outcomeText, resumedLines, switchText } from '../outcome';
import { vpName } from '../parse';
import { vpFields } from './vp';

/** Reads HvRegisterVsmCodePageOffsets of the VP's active VTL: [VtlCall offset, VtlReturn offset]. */
async function codePageOffsets(c: VsmClient, vp: string): Promise<[number, number]> {
  const r = await c.vps.getVpRegisters({ name: vp, names: [pb.HvRegisterName.HV_REGISTER_NAME_VSM_CODE_PAGE_OFFSETS] });
  const v = r.registers[0]?.value?.value;
  if (v?.$case !== 'reg64') throw new Error('HvRegisterVsmCodePageOffsets did not come back as a 64-bit value');
  return [Number(v.value & 0xfffn), Number((v.value >> 12n) & 0xfffn)];
}

/** VtlCall / VtlReturn: the switch (or why none), then what became of an intercepted access. */
function vtlActionText(label: string, o: pb.GuestActionOutcome | undefined, vp: number): string {
  const head = o?.vtlSwitch ? switchText(o.vtlSwitch) : `${outcomeText(o)}${o?.exception ? '; no switch' : ''}`;
  const more = o ? (o.resumedAccess ? resumedLines(o, vp) : o.intercept ? interceptLines(o, vp) : []) : [];
  return [`${label}: ${head}`, ...more].join('\n');
}

export function register(program: Command, { run }: Cli): void {
  const vtl = program.command('vtl').description('enable VTLs, VtlCall/VtlReturn, watch transitions');
  partitionCommand(vtl, 'enable', 'enable a VTL for the partition (EnablePartitionVtl, as the host)')
    .argument('<vtl>', 'VTL to enable (1..maximum VTL)', vtlArg)
    .option('--mbec', 'enable mode-based execute control for the VTL')
    .action(
      run(async (ctx, name: string, target: number, o: { mbec?: boolean }) => {
        const r = await ctx.client.vtl.enablePartitionVtl({ name, targetVtl: target, enableMbec: o.mbec === true });
        ctx.emit(
          { name, targetVtl: target, enabledVtlSet: r.enabledVtlSet },
          () => `enabled VTL ${target} for ${name}; partition VTLs now ${vtlSet(r.enabledVtlSet)}`,
        );
      }),
    );
  vpCommand(vtl, 'enable-vp', 'enable a VTL on one VP (EnableVpVtl, as the host; default initial context)')
    .argument('<vtl>', 'VTL to enable on the VP', vtlArg)
    .action(
      run(async (ctx, part: string, idx: number, target: number) => {
        const r = await ctx.client.vtl.enableVpVtl({ name: vpName(part, idx), targetVtl: target });
        const v = r.vp!;
        ctx.emit(
          toJson(v),
          () => `enabled VTL ${target} on ${v.name}; VP VTLs now ${vtlSet(v.vtlStatus?.enabledVtlSet ?? 0)}, active VTL ${v.vtlStatus?.activeVtl ?? '-'}`,
        );
      }),
    );
  partitionCommand(vtl, 'status', 'VSM status of the partition and its VPs (or one VP)')
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
              vps.map((v) => [
                String(v.vpIndex),
                String(v.vtlStatus?.activeVtl ?? '-'),
                vtlSet(v.vtlStatus?.enabledVtlSet ?? 0),
                v.vtlStatus ? entryReason(v.vtlStatus.lastEntryReason) : '-',
              ]),
            ),
          ].join('\n'),
        );
      }),
    );
  vpCommand(vtl, 'call', 'VtlCall: the VP calls its hypercall page at the VtlCall offset (HvRegisterVsmCodePageOffsets), RCX = 0').action(
    run(async (ctx, part: string, idx: number) => {
      const name = vpName(part, idx);
      const [offset] = await codePageOffsets(ctx.client, name);
      const r = await ctx.client.guest.callHypercallPage({ name, offset, rcx: 0n });
      ctx.emit({ name, offset, ...(toJson(r) as object) }, () => vtlActionText(`VtlCall (hypercall page +${hex(offset, 2)})`, r.outcome, idx));
    }),
  );
  vpCommand(
    vtl,
    'return',
    'VtlReturn: the VP calls its hypercall page at the VtlReturn offset (RCX = 0, or 1 with --fast); reports what became of an intercepted access (resumed_access)',
  )
    .option('--fast', 'fast return (RAX/RCX of the lower VTL are not restored)')
    .action(
      run(async (ctx, part: string, idx: number, o: { fast?: boolean }) => {
        const name = vpName(part, idx);
        const [, offset] = await codePageOffsets(ctx.client, name);
        const r = await ctx.client.guest.callHypercallPage({ name, offset, rcx: o.fast ? 1n : 0n });
        ctx.emit({ name, offset, fast: o.fast === true, ...(toJson(r) as object) }, () =>
          vtlActionText(`VtlReturn${o.fast ? ' (fast)' : ''} (hypercall page +${hex(offset, 2)})`, r.outcome, idx),
        );
      }),
    );
  partitionCommand(vtl, 'watch', 'stream VTL transitions until Ctrl-C (--json: one JSON object per line)')
    .option('--vp <n>', 'only this VP', vpArg)
    .action(
      run(async (ctx, name: string, o: { vp?: number }) => {
        await untilInterrupted(async (signal) => {
          ctx.watching(`${name}${o.vp !== undefined ? ` VP ${o.vp}` : ''} for VTL transitions`);
          for await (const ev of ctx.client.vtl.watchTransitions({ name, vpIndex: o.vp }, signal)) {
            const e = ev.event;
            if (!e) continue;
            // The stream is registered: a JSON reader can start the work it wants to watch; text
            // output starts with the first transition.
            if (e.$case === 'subscribed' && !ctx.json) continue;
            ctx.line({ name, ...(toJson(ev) as object) }, () => {
              if (e.$case === 'subscribed') return '';
              if (e.$case !== 'transition')
                return `lagged: missed ${e.value.missed} transition(s) from #${e.value.firstMissedSequence} (the watcher fell behind)`;
              const t = e.value;
              const when = new Date(Number(t.timeUnixUs / 1000n)).toISOString();
              const what = t.isReturn ? `return${t.fastReturn ? ' (fast)' : ''}` : entryReason(t.entryReason);
              return `#${t.sequence}  ${when}  vp ${t.vpIndex}  VTL ${t.fromVtl} -> VTL ${t.toVtl}  ${what}`;
            });
          }
        });
      }),
    );
}
