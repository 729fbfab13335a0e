// Test support for the Hyper-V enlightenment tests: a partition whose platform has a fake reference
// clock (moves only when told), records every raiseInterrupt and counts onTimerChange calls, with
// VP 0's VTL0 SynIC set up as kvm-unit-tests does (SIM and SIEF pages, SCONTROL enabled).
import { HvMsr, Partition, type PlatformHooks, type Vtl } from '@vsm/core';
import { decodeHvMessageHeader } from '../src/tlfs/message';

export const SIM_GPA = 0x10000n;
export const SIEF_GPA = 0x11000n;

export interface Raised {
  vp: number;
  vtl: Vtl;
  vector: number;
  autoEoi: boolean;
}

export function hvHarness(opts: { vpCount?: number; maximumVtl?: number; synic?: boolean } = {}) {
  const clock = { now: 1_000_000n };
  const raised: Raised[] = [];
  const counters = { timerChanges: 0 };
  const platform: PlatformHooks = {
    referenceClock: { now100ns: () => clock.now },
    raiseInterrupt: (vp, vtl, vector, o) => void raised.push({ vp, vtl, vector, autoEoi: o.autoEoi }),
    onTimerChange: () => void counters.timerChanges++,
  };
  const p = new Partition({
    id: 'hv',
    architecture: 'x64',
    vpCount: opts.vpCount ?? 2,
    memoryBytes: 1n << 20n,
    maximumVtl: opts.maximumVtl ?? 1,
    labels: {},
    platform,
  });
  const vp = p.vp(0);
  const wrmsr = (msr: number, value: bigint, v = vp) => {
    const r = p.writeMsr(v, msr, value);
    if (r.exception !== undefined) throw new Error(`WRMSR 0x${msr.toString(16)} <- 0x${value.toString(16)}: #${r.exception}`);
  };
  const rdmsr = (msr: number, v = vp) => p.readMsr(v, msr).value;
  if (opts.synic ?? true) {
    wrmsr(HvMsr.HV_X64_MSR_SIMP, SIM_GPA | 1n);
    wrmsr(HvMsr.HV_X64_MSR_SIEFP, SIEF_GPA | 1n);
    wrmsr(HvMsr.HV_X64_MSR_SCONTROL, 1n);
  }
  /** The SIM slot of SINTn of VP 0 VTL0, as the guest sees it. */
  const slot = (sint: number) => p.readView(0, 0, SIM_GPA + BigInt(256 * sint), 256);
  const slotHeader = (sint: number) => decodeHvMessageHeader(slot(sint));
  /** The guest consumes SINTn's slot (MessageType = 0), as kvm-unit-tests does before EOM. */
  const clearSlot = (sint: number) => p.writeView(0, 0, SIM_GPA + BigInt(256 * sint), Buffer.alloc(4));
  const eom = (v = vp) => wrmsr(HvMsr.HV_X64_MSR_EOM, 0n, v);
  const sintMsr = (sint: number) => HvMsr.HV_X64_MSR_SINT0 + sint;
  return { p, vp, clock, raised, counters, wrmsr, rdmsr, slot, slotHeader, clearSlot, eom, sintMsr };
}
