// Secure interrupts from the core's own sources (tlfs-vsm.md §9.1, §10; rules/interrupts.ts): a VTL1
// synthetic timer firing while the VP runs VTL0 (direct mode and message mode), each VTL's own
// STIMERs and reference TSC page, and the platform-APIC mode (a running guest): the switch waits for
// the platform's instruction boundary (onInterruptPending -> deliverInterrupts).
import { HvMsr, HvStimerConfigLayout, type Partition, type PlatformHooks, deliverInterrupts, longModeContext, stimerExpire } from '@vsm/core';
import { HvRegisterName as R, reg64 } from '../src/tlfs/registers';
import { loadInitialContext } from '../src/rules/enablement';
import { vtlCall, vtlReturn } from '../src/vtl-switch';
import { hvHarness } from './hyperv-harness';

const cfg = HvStimerConfigLayout.pack;
const INTERRUPT = 2; // HvVtlEntryInterrupt

/** VP 0 with VTL1 enabled, VTL0 in long mode (so it can VtlCall), VTL1's SynIC at 0x20000/0x21000. */
function setup(platform?: Partial<PlatformHooks>) {
  const h = hvHarness({ vpCount: 2 });
  const { p, vp } = h;
  if (platform) Object.assign(p.spec.platform!, platform);
  p.enablePartitionVtl('host', 1, 0);
  p.enableVpVtl('host', 0, 1, longModeContext());
  loadInitialContext(vp, 0, longModeContext());
  p.setRegisters(
    vp,
    1,
    [
      { name: R.HvRegisterSipp, value: reg64(0x20000n | 1n) },
      { name: R.HvRegisterSifp, value: reg64(0x21000n | 1n) },
      { name: R.HvRegisterScontrol, value: reg64(1n) },
      { name: R.HvRegisterSint0 + 3, value: reg64(0x63n) },
    ],
    'host',
  );
  return h;
}

test('a VTL1 direct-mode synthetic timer firing while VP 0 runs VTL0 enters VTL1 (entry reason Interrupt)', () => {
  const h = setup();
  const { p, vp } = h;
  expect(vtlCall(p, vp, 0n).activeVtl).toBe(1);
  // VTL1's STIMER0: direct mode, vector 0x61, one-shot at +10 µs. VTL0's STIMER0 is another timer.
  h.wrmsr(HvMsr.HV_X64_MSR_STIMER0_COUNT, h.clock.now + 100n);
  h.wrmsr(HvMsr.HV_X64_MSR_STIMER0_CONFIG, cfg({ enable: true, directMode: true, apicVector: 0x61 }));
  expect(vtlReturn(p, vp, 1n).activeVtl).toBe(0);
  expect(h.rdmsr(HvMsr.HV_X64_MSR_STIMER0_CONFIG)).toBe(0n);
  h.raised.length = 0;
  h.clock.now += 100n;
  stimerExpire(p, h.clock.now);
  expect(h.raised).toEqual([{ vp: 0, vtl: 1, vector: 0x61, autoEoi: false }]);
  expect([vp.activeVtl, vp.vtls.get(1).entryReason]).toEqual([1, INTERRUPT]);
  expect(p.interruptState(vp, 1)).toMatchObject({ pendingVectors: [], inServiceVectors: [0x61] });
  // VTL1 EOIs and returns: nothing pending, VTL0 runs on.
  h.wrmsr(0x40000070, 0n);
  const back = vtlReturn(p, vp, 1n);
  expect([back.activeVtl, back.reentry]).toEqual([0, undefined]);
});

test("a VTL1 message-mode timer (VTL1's SINT3) preempts VTL0; VTL0's own SynIC and reference TSC page are apart", () => {
  const h = setup();
  const { p, vp } = h;
  // VTL0's reference TSC page at 0x30000, VTL1's at 0x31000 (each VTL has its own, tlfs-vsm.md §9.1).
  h.wrmsr(HvMsr.HV_X64_MSR_REFERENCE_TSC, 0x30000n | 1n);
  vtlCall(p, vp, 0n);
  expect(h.rdmsr(HvMsr.HV_X64_MSR_REFERENCE_TSC)).toBe(0n);
  h.wrmsr(HvMsr.HV_X64_MSR_REFERENCE_TSC, 0x31000n | 1n);
  h.wrmsr(HvMsr.HV_X64_MSR_STIMER1_COUNT, h.clock.now + 50n);
  h.wrmsr(HvMsr.HV_X64_MSR_STIMER1_CONFIG, cfg({ enable: true, sintx: 3 }));
  vtlReturn(p, vp, 1n);
  expect(h.rdmsr(HvMsr.HV_X64_MSR_REFERENCE_TSC)).toBe(0x30000n | 1n);
  h.raised.length = 0;
  h.clock.now += 50n;
  stimerExpire(p, h.clock.now);
  expect(h.raised).toEqual([{ vp: 0, vtl: 1, vector: 0x63, autoEoi: false }]);
  expect([vp.activeVtl, vp.vtls.get(1).entryReason]).toEqual([1, INTERRUPT]);
  // The HvMessageTimerExpired is in VTL1's SIM slot 3, not in VTL0's.
  expect(p.readView(1, 0, 0x20000n + 3n * 256n, 4).readUInt32LE(0)).toBe(0x80000010);
  expect(h.slotHeader(3).messageType).toBe(0);
});

test('platform APICs (a running guest): the switch waits for the platform; deliverInterrupts makes it', () => {
  const asked: number[] = [];
  let lapicPending = false;
  const h = setup({ platformApic: () => true, interruptPending: () => lapicPending, onInterruptPending: (i) => void asked.push(i) });
  const { p, vp } = h;
  vtlCall(p, vp, 0n);
  h.wrmsr(HvMsr.HV_X64_MSR_STIMER0_COUNT, h.clock.now + 10n);
  h.wrmsr(HvMsr.HV_X64_MSR_STIMER0_CONFIG, cfg({ enable: true, directMode: true, apicVector: 0x61 }));
  vtlReturn(p, vp, 1n);
  h.clock.now += 10n;
  stimerExpire(p, h.clock.now);
  // Raised on the platform's LAPIC; VP 0 still in VTL0 until the platform stops it at a boundary.
  expect(h.raised).toContainEqual({ vp: 0, vtl: 1, vector: 0x61, autoEoi: false });
  expect([vp.activeVtl, asked]).toEqual([0, [0]]);
  expect(p.interruptState(vp, 1).pendingVectors).toEqual([]); // the LAPIC holds it, not the core
  // At the boundary the core asks the LAPIC.
  lapicPending = false;
  expect(deliverInterrupts(p, vp)).toBeUndefined();
  lapicPending = true;
  expect(deliverInterrupts(p, vp)).toMatchObject({ fromVtl: 0, toVtl: 1, entryReason: INTERRUPT });
  // VtlReturn re-evaluates through the LAPIC: still pending -> re-entered at once.
  const r = vtlReturn(p, vp, 1n);
  expect(r.vtlSwitch).toMatchObject({ fromVtl: 1, toVtl: 0 });
  expect(r.reentry).toMatchObject({ fromVtl: 0, toVtl: 1, entryReason: INTERRUPT });
  lapicPending = false;
  expect(vtlReturn(p, vp, 1n)).toMatchObject({ activeVtl: 0 });
});

test('VTL1 enabled in the partition but not on the VP: a VTL0 timer interrupt is taken by the running VTL0', () => {
  const h = hvHarness({ vpCount: 1 });
  const p: Partition = h.p;
  p.enablePartitionVtl('host', 1, 0);
  h.wrmsr(HvMsr.HV_X64_MSR_STIMER0_COUNT, h.clock.now + 1n);
  h.wrmsr(HvMsr.HV_X64_MSR_STIMER0_CONFIG, cfg({ enable: true, directMode: true, apicVector: 0x70 }));
  stimerExpire(p, h.clock.now + 1n);
  expect(h.vp.activeVtl).toBe(0);
  expect(p.interruptState(h.vp, 0).inServiceVectors).toEqual([0x70]);
});
