// Hyper-V CPUID leaves 0x40000000..0x4000000A (tlfs-intercepts.md §7.2, §7.3) as the core reports
// them, the partition reference time from PlatformHooks.referenceClock (HV_X64_MSR_TIME_REF_COUNT)
// and a valid HV_REFERENCE_TSC_PAGE (tlfs-overlays-synic.md §4.4), and golden bytes for the new
// layouts (timer message payload, HV_INPUT_POST_MESSAGE, HV_INPUT_SIGNAL_EVENT, STIMER config).
import {
  HvInputPostMessageLayout,
  HvMsr,
  HvReferenceTscPageLayout,
  HvStimerConfigLayout,
  HvTimerMessagePayloadLayout,
  HvRegisterName as R,
  Partition,
  type PlatformHooks,
  encodePostMessageInput,
  encodeSignalEventInput,
  hypervCpuidLeaves,
  hypervFeatures,
  publishReferenceTscPages,
} from '@vsm/core';
import { HvPartitionPrivilegeMaskLayout, HvFeaturesEdxLayout } from '../src/tlfs/cpuid';
import { nextTscSequence, signedTscOffset } from '../src/tlfs/time';

const hex = (...parts: string[]) => Buffer.from(parts.join(''), 'hex');
const le32 = (...regs: number[]) =>
  Buffer.concat(
    regs.map((r) => {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(r >>> 0);
      return b;
    }),
  ).toString('latin1');

describe('CPUID leaves', () => {
  test('golden values with every platform feature on (vpCount 4, reference TSC page valid)', () => {
    const leaves = hypervCpuidLeaves({ vpCount: 4, referenceTsc: true });
    expect(leaves.map((l) => l.leaf)).toEqual([
      0x40000000, 0x40000001, 0x40000002, 0x40000003, 0x40000004, 0x40000005, 0x40000006, 0x40000007, 0x40000008, 0x40000009, 0x4000000a,
    ]);
    const [vendor, iface, version, features, recommendations, limits, ...rest] = leaves;
    expect(vendor).toEqual({ leaf: 0x40000000, eax: 0x4000000a, ebx: 0x7263694d, ecx: 0x666f736f, edx: 0x76482074 });
    expect(le32(vendor!.ebx, vendor!.ecx, vendor!.edx)).toBe('Microsoft Hv');
    expect(iface).toEqual({ leaf: 0x40000001, eax: 0x31237648, ebx: 0, ecx: 0, edx: 0 });
    expect(le32(iface!.eax)).toBe('Hv#1');
    expect(version).toEqual({ leaf: 0x40000002, eax: 0, ebx: 0, ecx: 0, edx: 0 });
    // EAX: AccessPartitionReferenceCounter(1) AccessSynicRegs(2) AccessSyntheticTimerRegs(3)
    // AccessHypercallMsrs(5) AccessVpIndex(6) AccessPartitionReferenceTsc(9);
    // EBX: PostMessages(4) SignalEvents(5) AccessVsm(16) AccessVpRegisters(17);
    // EDX: XMM fast input(4) XMM fast output(15) SINT polling(17) hypercall MSR lock(18) direct synthetic timers(19).
    expect(features).toEqual({ leaf: 0x40000003, eax: 0x26e, ebx: 0x30030, ecx: 0, edx: 0xe8010 });
    // EAX: UseSyntheticClusterIpi(10) UseExProcessorMasks(11); no flush recommendations (the flush hypercalls flush no TLB).
    expect(recommendations).toEqual({ leaf: 0x40000004, eax: 0xc00, ebx: 0xffffffff, ecx: 0, edx: 0 });
    expect(limits).toEqual({ leaf: 0x40000005, eax: 4, ebx: 0, ecx: 0, edx: 0 });
    for (const l of rest) expect([l.eax, l.ebx, l.ecx, l.edx]).toEqual([0, 0, 0, 0]);
  });

  test('what kvm-unit-tests checks (x86/hyperv.h) is there', () => {
    const f = hypervCpuidLeaves({ vpCount: 2, referenceTsc: false })[3]!;
    expect(f.eax & (1 << 1)).not.toBe(0); // HV_X64_MSR_TIME_REF_COUNT_AVAILABLE
    expect(f.eax & (1 << 2)).not.toBe(0); // HV_X64_MSR_SYNIC_AVAILABLE
    expect(f.eax & (1 << 3)).not.toBe(0); // HV_X64_MSR_SYNTIMER_AVAILABLE
    expect(f.edx & (1 << 19)).not.toBe(0); // HV_STIMER_DIRECT_MODE_AVAILABLE
    expect(f.eax & (1 << 9)).toBe(0); // no reference TSC page without the platform's parameters
  });

  test('only what the platform backs: no interrupts -> no SynIC, timers, connections, polling', () => {
    const f = hypervCpuidLeaves({ vpCount: 1, referenceTsc: false, interrupts: false })[3]!;
    expect(f).toEqual({ leaf: 0x40000003, eax: 0x62, ebx: 0x30000, ecx: 0, edx: 0x48010 });
    const noTimers = hypervCpuidLeaves({ vpCount: 1, referenceTsc: true, syntheticTimers: false })[3]!;
    expect(noTimers.eax & (1 << 3)).toBe(0);
    expect(noTimers.edx & (1 << 19)).toBe(0);
  });

  test('version leaf and limits come from the options; a bad vpCount is refused', () => {
    const l = hypervCpuidLeaves({
      vpCount: 0xffff_ffff,
      referenceTsc: false,
      version: { buildNumber: 0x3839, majorVersion: 10, minorVersion: 0, servicePack: 1, serviceBranch: 2, serviceNumber: 3 },
    });
    expect(l[2]).toEqual({ leaf: 0x40000002, eax: 0x3839, ebx: 0x000a0000, ecx: 1, edx: 0x02000003 });
    expect(l[5]!.eax).toBe(0xffff_ffff);
    for (const vpCount of [0, -1, 1.5, 2 ** 32, Number.NaN]) expect(() => hypervCpuidLeaves({ vpCount, referenceTsc: false })).toThrow(RangeError);
  });

  test('feature names (capability report) come from the same table as the bits', () => {
    expect(hypervFeatures({ vpCount: 1, referenceTsc: true }).map((f) => f.name)).toEqual([
      'hv-time',
      'hv-synic',
      'hv-stimer',
      'hv-hypercall',
      'hv-vpindex',
      'hv-reference-tsc',
      'hv-post-message',
      'hv-signal-event',
      'hv-vsm',
      'hv-vp-registers',
      'hv-sint-polling',
      'hv-hypercall-msr-lock',
      'hv-stimer-direct',
      'hv-xmm-input',
      'hv-xmm-output',
      'hv-ipi',
      'hv-ex-processor-masks',
    ]);
    const leaves = hypervCpuidLeaves({ vpCount: 1, referenceTsc: true });
    for (const f of hypervFeatures({ vpCount: 1, referenceTsc: true })) {
      const l = leaves.find((x) => x.leaf === f.leaf)!;
      expect([f.tlfsName, (l[f.register] >>> f.bit) & 1]).toEqual([f.tlfsName, 1]);
    }
    expect(hypervFeatures({ vpCount: 1, referenceTsc: false, interrupts: false }).map((f) => f.name)).toEqual([
      'hv-time',
      'hv-hypercall',
      'hv-vpindex',
      'hv-vsm',
      'hv-vp-registers',
      'hv-hypercall-msr-lock',
      'hv-xmm-input',
      'hv-xmm-output',
      'hv-ex-processor-masks',
    ]);
  });

  test('HV_PARTITION_PRIVILEGE_MASK and 0x40000003 EDX bit positions (tlfs-intercepts.md §7.2, §7.3)', () => {
    expect(HvPartitionPrivilegeMaskLayout.pack({ accessSynicRegs: true, accessVsm: true, accessVpRegisters: true })).toBe(
      (1n << 2n) | (1n << 48n) | (1n << 49n),
    );
    expect(HvPartitionPrivilegeMaskLayout.mask('postMessages')).toBe(1n << 36n);
    expect(HvPartitionPrivilegeMaskLayout.mask('startVirtualProcessor')).toBe(1n << 53n);
    expect(HvFeaturesEdxLayout.mask('xmmRegistersForFastHypercallAvailable')).toBe(1 << 4);
    expect(HvFeaturesEdxLayout.mask('directSyntheticTimers')).toBe(1 << 19);
  });
});

describe('golden bytes of the new layouts', () => {
  test('HV_TIMER_MESSAGE_PAYLOAD (tlfs-overlays-synic.md §5.7)', () => {
    const v = { timerIndex: 3, expirationTime: 0x1122_3344_5566_7788n, deliveryTime: 0x0102_0304_0506_0708n };
    const b = HvTimerMessagePayloadLayout.encode(v);
    expect(b.toString('hex')).toBe('03000000' + '00000000' + '8877665544332211' + '0807060504030201');
    expect(HvTimerMessagePayloadLayout.decode(b)).toEqual(v);
  });

  test('HV_INPUT_POST_MESSAGE (tlfs-hypercalls.md §2.8)', () => {
    const b = encodePostMessageInput({ connectionId: 0x0012_3456, rsvdZ: 0, messageType: 0x1234_5678, payloadSize: 8, payload: hex('0100020000000000') });
    expect(b.length).toBe(256);
    expect(b.subarray(0, 24).toString('hex')).toBe('56341200' + '00000000' + '78563412' + '08000000' + '0100020000000000');
    expect(b.subarray(24).every((x) => x === 0)).toBe(true);
    expect(HvInputPostMessageLayout.fields.map((f) => [f.tlfsName, f.offset, f.size])).toEqual([
      ['ConnectionId', 0, 4],
      ['RsvdZ', 4, 4],
      ['MessageType', 8, 4],
      ['PayloadSize', 12, 4],
      ['Message', 16, 240],
    ]);
  });

  test('HV_INPUT_SIGNAL_EVENT (tlfs-hypercalls.md §2.9): the fast-call RDX value', () => {
    const b = encodeSignalEventInput({ connectionId: 0x21, flagNumber: 2, rsvdZ: 0 });
    expect(b.toString('hex')).toBe('21000000' + '0200' + '0000');
    expect(b.readBigUInt64LE(0)).toBe(0x21n | (2n << 32n));
  });

  test('HV_X64_MSR_STIMERx_CONFIG (tlfs-intercepts.md §7.1; Linux hv_stimer_config)', () => {
    expect(HvStimerConfigLayout.pack({ enable: true, periodic: true, lazy: true, autoEnable: true })).toBe(0xfn);
    expect(HvStimerConfigLayout.pack({ apicVector: 0xf3, directMode: true })).toBe(0x1f30n);
    expect(HvStimerConfigLayout.pack({ sintx: 0xf })).toBe(0xf_0000n);
    expect(HvStimerConfigLayout.definedMask).toBe(0xf_1fffn);
  });

  test('HV_REFERENCE_TSC_PAGE (tlfs-overlays-synic.md §4.4); TscOffset is an INT64', () => {
    const page = HvReferenceTscPageLayout.encode({ tscSequence: 0x0102_0304, tscScale: 0x1122_3344_5566_7788n, tscOffset: -2n });
    expect(page.length).toBe(4096);
    expect(page.subarray(0, 24).toString('hex')).toBe('04030201' + '00000000' + '8877665544332211' + 'feffffffffffffff');
    expect(signedTscOffset(HvReferenceTscPageLayout.decode(page).tscOffset)).toBe(-2n);
    expect([nextTscSequence(0), nextTscSequence(1), nextTscSequence(0xffff_fffe), nextTscSequence(0xffff_ffff)]).toEqual([1, 2, 1, 1]);
  });
});

describe('reference time', () => {
  const TSC_GPA = 0x5000n;
  function partition(platform?: PlatformHooks) {
    return new Partition({ id: 'time', architecture: 'x64', vpCount: 2, memoryBytes: 1n << 20n, maximumVtl: 1, labels: {}, platform });
  }

  test('HV_X64_MSR_TIME_REF_COUNT reads the platform referenceClock (asked with the VP index)', () => {
    const asked: (number | undefined)[] = [];
    let now = 123_456_789n;
    const p = partition({
      referenceClock: {
        now100ns: (vp) => {
          asked.push(vp);
          return now;
        },
      },
    });
    expect(p.readMsr(p.vp(1), HvMsr.HV_X64_MSR_TIME_REF_COUNT)).toEqual({ value: 123_456_789n });
    now += 10n;
    expect(p.getRegister(p.vp(0), 0, R.HvRegisterTimeRefCount).low).toBe(123_456_799n);
    expect(asked).toEqual([1, 0]);
  });

  test('with tscPage, enabling REFERENCE_TSC writes a valid page; moving it writes a new sequence', () => {
    const tscPage = { tscScale: 0x0a00_0000_0000_0000n, tscOffset: -5n };
    const p = partition({ referenceClock: { now100ns: () => 0n, tscPage } });
    const vp = p.vp(0);
    expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_REFERENCE_TSC, TSC_GPA | 1n)).toEqual({});
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_REFERENCE_TSC)).toEqual({ value: TSC_GPA | 1n }); // kvm-unit-tests hyperv_clock
    const a = HvReferenceTscPageLayout.decode(p.readView(0, 0, TSC_GPA, 4096));
    expect(a).toEqual({ tscSequence: 1, tscScale: tscPage.tscScale, tscOffset: BigInt.asUintN(64, -5n) });
    // Moved: the page travels and gets the next sequence number.
    p.writeMsr(vp, HvMsr.HV_X64_MSR_REFERENCE_TSC, (TSC_GPA + 0x1000n) | 1n);
    expect(HvReferenceTscPageLayout.decode(p.readView(0, 0, TSC_GPA + 0x1000n, 4096)).tscSequence).toBe(2);
    // The platform's parameters changed (e.g. after a restore): the pages are rewritten.
    tscPage.tscOffset = 7n;
    publishReferenceTscPages(p);
    expect(HvReferenceTscPageLayout.decode(p.readView(0, 0, TSC_GPA + 0x1000n, 4096))).toEqual({ tscSequence: 3, tscScale: tscPage.tscScale, tscOffset: 7n });
    // Disabled: nothing at the GPA any more; the MSR reads 0.
    p.writeMsr(vp, HvMsr.HV_X64_MSR_REFERENCE_TSC, 0n);
    expect(p.readMsr(vp, HvMsr.HV_X64_MSR_REFERENCE_TSC)).toEqual({ value: 0n });
    expect(p.overlays.find('reference-tsc', 0, null)).toBeUndefined();
  });

  test('without tscPage the page stays invalid (TscSequence 0: the guest uses the MSR)', () => {
    for (const platform of [undefined, { referenceClock: { now100ns: () => 1n } }]) {
      const p = partition(platform);
      p.writeMsr(p.vp(0), HvMsr.HV_X64_MSR_REFERENCE_TSC, TSC_GPA | 1n);
      expect(p.readView(0, 0, TSC_GPA, 24).every((x) => x === 0)).toBe(true);
    }
  });

  test('every MSR kvm-unit-tests reads answers without #GP, as KVM does', () => {
    const p = partition({ referenceClock: { now100ns: () => 42n } });
    const vp = p.vp(1);
    const read = (msr: number) => p.readMsr(vp, msr);
    expect(read(HvMsr.HV_X64_MSR_SVERSION)).toEqual({ value: 1n });
    expect(read(HvMsr.HV_X64_MSR_SIMP)).toEqual({ value: 0n });
    expect(read(HvMsr.HV_X64_MSR_SIEFP)).toEqual({ value: 0n });
    expect(read(HvMsr.HV_X64_MSR_SCONTROL)).toEqual({ value: 0n });
    for (let i = 0; i < 16; i++) expect(read(HvMsr.HV_X64_MSR_SINT0 + i)).toEqual({ value: 0x10000n });
    expect(read(HvMsr.HV_X64_MSR_EOM)).toEqual({ value: 0n });
    expect(read(HvMsr.HV_X64_MSR_VP_INDEX)).toEqual({ value: 1n });
    expect(read(HvMsr.HV_X64_MSR_TIME_REF_COUNT)).toEqual({ value: 42n });
    expect(read(HvMsr.HV_X64_MSR_REFERENCE_TSC)).toEqual({ value: 0n });
    for (let msr = HvMsr.HV_X64_MSR_STIMER0_CONFIG; msr <= HvMsr.HV_X64_MSR_STIMER3_COUNT; msr++) expect(read(msr)).toEqual({ value: 0n });
  });
});
