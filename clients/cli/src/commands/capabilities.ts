// vsmctl capabilities (what the serving backend implements) and registers (the register names
// vsmctl understands, offline).
import type { Command } from 'commander';
import { pb } from '@vsm/client';
import type { Cli } from '../context';
import { architectureText, fields, formatSize, hex, table, toJson } from '../format';
import { allRegisters, tlfsRegisterName } from '../parse';

const HYPERCALLS: Record<number, string> = {
  0x0002: 'HvCallFlushVirtualAddressSpace',
  0x0003: 'HvCallFlushVirtualAddressList',
  0x0008: 'HvCallNotifyLongSpinWait',
  0x000b: 'HvCallSendSyntheticClusterIpi',
  0x000c: 'HvCallModifyVtlProtectionMask',
  0x000d: 'HvCallEnablePartitionVtl',
  0x000f: 'HvCallEnableVpVtl',
  0x0011: 'HvCallVtlCall',
  0x0012: 'HvCallVtlReturn',
  0x0013: 'HvCallFlushVirtualAddressSpaceEx',
  0x0014: 'HvCallFlushVirtualAddressListEx',
  0x0015: 'HvCallSendSyntheticClusterIpiEx',
  0x0050: 'HvCallGetVpRegisters',
  0x0051: 'HvCallSetVpRegisters',
  0x0052: 'HvCallTranslateVirtualAddress',
  0x005c: 'HvCallPostMessage',
  0x005d: 'HvCallSignalEvent',
  0x00ac: 'HvCallTranslateVirtualAddressEx',
};

export function register(program: Command, { run }: Cli): void {
  program
    .command('capabilities')
    .description('show what the serving backend implements')
    .action(
      run(async (ctx) => {
        const c = await ctx.client.partitions.getCapabilities({});
        ctx.emit(toJson(c), () => {
          const feats = c.features.map((f) => `  ${f.name.padEnd(24)} ${f.supported ? 'yes' : `no${f.reason ? `  (${f.reason})` : ''}`}`);
          const calls = c.hypercallCodes.map((n) => `  ${hex(n, 4)}  ${HYPERCALLS[n] ?? ''}`.trimEnd());
          return [
            fields([
              ['backend', c.backend],
              ['architectures', c.architectures.map(architectureText).join(', ')],
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
          () =>
            table(
              ['TLFS NAME', 'API NAME', 'VALUE'],
              regs.map((r) => [tlfsRegisterName(r), pb.hvRegisterNameToJSON(r), hex(r, 8)]),
            ) + '\nShort forms work too: rip, rax, cr3, guest-os-id, vsm-code-page-offsets, ...',
        );
      }),
    );
}
