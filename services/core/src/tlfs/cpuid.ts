// tlfs layer: the hypervisor CPUID leaves 0x40000000..0x4000000A (TLFS feature-discovery.md,
// "Hypervisor CPUID leaves"; tlfs-intercepts.md §7.2, §7.3 for the bits; tlfs-vsm.md §2 for VSM
// detection) and what this core reports in them. The report is built from one table of features
// (HYPERV_FEATURES), so the CPUID bits a guest sees and the feature names the service reports
// (vsm.v1 GetCapabilities) come from the same source; only what the core implements is set.
import { bitfield, bits, flag } from './layout';

export const HvCpuidLeaf = {
  /** Max leaf and vendor signature "Microsoft Hv". */
  HvCpuidFunctionHvVendorAndMaxFunction: 0x40000000,
  /** Interface signature "Hv#1". */
  HvCpuidFunctionHvInterface: 0x40000001,
  /** Hypervisor version. */
  HvCpuidFunctionMsHvVersion: 0x40000002,
  /** Partition privileges (EAX, EBX), features (ECX, EDX). */
  HvCpuidFunctionMsHvFeatures: 0x40000003,
  /** Implementation recommendations. */
  HvCpuidFunctionMsHvEnlightenmentInformation: 0x40000004,
  /** Implementation limits. */
  HvCpuidFunctionMsHvImplementationLimits: 0x40000005,
  /** Hardware features in use. */
  HvCpuidFunctionMsHvHardwareFeatures: 0x40000006,
  /** CPU management features (root partition only). */
  HvCpuidFunctionMsHvCpuManagementFeatures: 0x40000007,
  /** Shared virtual memory features. */
  HvCpuidFunctionMsHvSvmFeatures: 0x40000008,
  /** Nested hypervisor feature identification. */
  HvCpuidFunctionMsHvNestedVirtFeatures: 0x40000009,
  /** Nested virtualization features (VMX/SVM optimizations). */
  HvCpuidFunctionMsHvNestedVirtOptimizations: 0x4000000a,
} as const;
export const HV_CPUID_MAX_LEAF = HvCpuidLeaf.HvCpuidFunctionMsHvNestedVirtOptimizations;

/** "Microsoft Hv" in EBX, ECX, EDX of 0x40000000 (tlfs-intercepts.md §7.2). */
export const HV_CPUID_VENDOR_MICROSOFT_HV = { ebx: 0x7263694d, ecx: 0x666f736f, edx: 0x76482074 } as const;
/** "Hv#1" in EAX of 0x40000001: the Microsoft hypervisor interface (implies GUEST_OS_ID, HYPERCALL, VP_INDEX). */
export const HV_CPUID_INTERFACE_HV1 = 0x31237648;

/**
 * HV_PARTITION_PRIVILEGE_MASK (tlfs-intercepts.md §7.3): CPUID 0x40000003 EAX = bits 31:0, EBX =
 * bits 63:32. Only the named bits are laid out here; the rest stay reserved (0).
 */
export const HvPartitionPrivilegeMaskLayout = bitfield('HV_PARTITION_PRIVILEGE_MASK', 64, {
  accessVpRunTimeReg: flag(0), // AccessVpRunTimeReg
  accessPartitionReferenceCounter: flag(1), // AccessPartitionReferenceCounter
  accessSynicRegs: flag(2), // AccessSynicRegs
  accessSyntheticTimerRegs: flag(3), // AccessSyntheticTimerRegs
  accessIntrCtrlRegs: flag(4), // AccessIntrCtrlRegs
  accessHypercallMsrs: flag(5), // AccessHypercallMsrs
  accessVpIndex: flag(6), // AccessVpIndex
  accessResetReg: flag(7), // AccessResetReg
  accessStatsReg: flag(8), // AccessStatsReg
  accessPartitionReferenceTsc: flag(9), // AccessPartitionReferenceTsc
  accessGuestIdleReg: flag(10), // AccessGuestIdleReg
  accessFrequencyRegs: flag(11), // AccessFrequencyRegs
  accessDebugRegs: flag(12), // AccessDebugRegs
  accessReenlightenmentControls: flag(13), // AccessReenlightenmentControls
  createPartitions: flag(32), // CreatePartitions
  accessPartitionId: flag(33), // AccessPartitionId
  accessMemoryPool: flag(34), // AccessMemoryPool
  postMessages: flag(36), // PostMessages
  signalEvents: flag(37), // SignalEvents
  createPort: flag(38), // CreatePort
  connectPort: flag(39), // ConnectPort
  accessStats: flag(40), // AccessStats
  debugging: flag(43), // Debugging
  cpuManagement: flag(44), // CpuManagement
  accessVsm: flag(48), // AccessVsm
  accessVpRegisters: flag(49), // AccessVpRegisters
  enableExtendedHypercalls: flag(52), // EnableExtendedHypercalls
  startVirtualProcessor: flag(53), // StartVirtualProcessor
});
export type HvPartitionPrivilegeMask = ReturnType<typeof HvPartitionPrivilegeMaskLayout.unpack>;

/** CPUID 0x40000003 EDX: hypervisor features (tlfs-intercepts.md §7.2). */
export const HvFeaturesEdxLayout = bitfield('CPUID 0x40000003 EDX', 32, {
  guestDebuggingAvailable: flag(1),
  performanceMonitorsAvailable: flag(2),
  cpuDynamicPartitioningAvailable: flag(3),
  xmmRegistersForFastHypercallAvailable: flag(4), // XMM fast hypercall input
  guestIdleAvailable: flag(5),
  hypervisorSleepStateSupportAvailable: flag(6),
  numaDistanceQueryAvailable: flag(7),
  frequencyRegsAvailable: flag(8), // timer frequency MSRs
  syntheticMachineCheckAvailable: flag(9),
  guestCrashRegsAvailable: flag(10),
  debugRegsAvailable: flag(11),
  npiep1Available: flag(12),
  disableHypervisorAvailable: flag(13),
  extendedGvaRangesForFlushVirtualAddressListAvailable: flag(14),
  fastHypercallOutputAvailable: flag(15), // XMM fast hypercall output
  sintPollingModeAvailable: flag(17),
  hypercallMsrLockAvailable: flag(18),
  directSyntheticTimers: flag(19), // Linux/kvm-unit-tests: HV_STIMER_DIRECT_MODE_AVAILABLE
  registerPatAvailable: flag(20), // PAT register available for VSM
  registerBndcfgsAvailable: flag(21), // BNDCFGS register available for VSM
  syntheticTimeUnhaltedTimerAvailable: flag(23),
  lbrAvailable: flag(26),
});
export type HvFeaturesEdx = ReturnType<typeof HvFeaturesEdxLayout.unpack>;

/** CPUID 0x40000004 EAX: implementation recommendations (tlfs-intercepts.md §7.2). */
export const HvEnlightenmentInformationEaxLayout = bitfield('CPUID 0x40000004 EAX', 32, {
  useHypercallForAddressSpaceSwitch: flag(0),
  useHypercallForLocalFlush: flag(1),
  useHypercallForRemoteFlushAndLocalFlushEntire: flag(2),
  useApicMsrs: flag(3),
  useHvRegisterForReset: flag(4),
  useRelaxedTiming: flag(5),
  useDmaRemapping: flag(6),
  useInterruptRemapping: flag(7),
  useX2ApicMsrs: flag(8),
  deprecateAutoEoi: flag(9),
  useSyntheticClusterIpi: flag(10),
  useExProcessorMasks: flag(11),
  nested: flag(12),
  useIntForMbecSystemCalls: flag(13),
  useVmcsEnlightenments: flag(14),
  useSyncedTimeline: flag(15),
  useDirectLocalFlushEntire: flag(17),
  noNonArchitecturalCoreSharing: flag(18),
});
/** CPUID 0x40000004 EBX: spinlock retries before notifying; 0xFFFFFFFF = never notify. */
export const HV_SPINLOCK_RETRIES_NEVER_NOTIFY = 0xffff_ffff;

/** CPUID 0x40000002: the hypervisor version. */
export const HvVersionEbxLayout = bitfield('CPUID 0x40000002 EBX', 32, {
  minorVersion: bits(15, 0),
  majorVersion: bits(31, 16),
});
export const HvVersionEdxLayout = bitfield('CPUID 0x40000002 EDX', 32, {
  serviceNumber: bits(23, 0),
  serviceBranch: bits(31, 24),
});

/** What the platform offers besides the core (the caller of hypervCpuidLeaves says). */
export interface HypervCpuidOptions {
  /** Virtual processors of the partition (CPUID 0x40000005 EAX). */
  vpCount: number;
  /**
   * The platform supplies PlatformHooks.referenceClock.tscPage, so the reference TSC page is
   * valid (TscSequence != 0): AccessPartitionReferenceTsc.
   */
  referenceTsc: boolean;
  /**
   * The platform calls stimerExpire from a host timer (PlatformHooks.onTimerChange): the synthetic
   * timers run. Default true; false hides AccessSyntheticTimerRegs and direct mode.
   */
  syntheticTimers?: boolean;
  /**
   * The platform delivers PlatformHooks.raiseInterrupt to the VP's APIC (default true). Without it
   * SynIC interrupts never arrive, so SynIC, timers and connections are not offered.
   */
  interrupts?: boolean;
  /** CPUID 0x40000002 (default all zero: no Microsoft build is claimed). */
  version?: { buildNumber: number; majorVersion: number; minorVersion: number; servicePack: number; serviceBranch: number; serviceNumber: number };
}

export interface CpuidLeaf {
  leaf: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

/**
 * One enlightenment the core implements: its name for capability reports (the QEMU/libvirt 'hv-*'
 * spelling where one exists), the TLFS name of its CPUID bit, where that bit is, and when it is set.
 */
export interface HypervFeature {
  readonly name: string;
  readonly tlfsName: string;
  readonly leaf: number;
  readonly register: 'eax' | 'ebx' | 'ecx' | 'edx';
  readonly bit: number;
  /** What it needs from the platform (always implemented by the core otherwise). */
  readonly needs?: (o: Required<Pick<HypervCpuidOptions, 'referenceTsc' | 'syntheticTimers' | 'interrupts'>>) => boolean;
  readonly what: string;
}

const F = HvCpuidLeaf.HvCpuidFunctionMsHvFeatures;
const priv = (field: keyof HvPartitionPrivilegeMask): { register: 'eax' | 'ebx'; bit: number } => {
  const bit = HvPartitionPrivilegeMaskLayout.mask(field).toString(2).length - 1;
  return bit < 32 ? { register: 'eax', bit } : { register: 'ebx', bit: bit - 32 };
};
const edx = (field: keyof HvFeaturesEdx): { register: 'edx'; bit: number } => ({ register: 'edx', bit: Math.log2(HvFeaturesEdxLayout.mask(field)) });
const R4 = HvCpuidLeaf.HvCpuidFunctionMsHvEnlightenmentInformation;
const rec = (field: keyof ReturnType<typeof HvEnlightenmentInformationEaxLayout.unpack>): { register: 'eax'; bit: number } => ({
  register: 'eax',
  bit: Math.log2(HvEnlightenmentInformationEaxLayout.mask(field)),
});

/**
 * Every CPUID bit this core can report, in leaf/register/bit order. Not listed (never reported):
 * AccessVpRunTimeReg (HV_X64_MSR_VP_RUNTIME is not modelled), AccessIntrCtrlRegs (the EOI/ICR/TPR
 * MSRs are not modelled; the VP assist page MSR works regardless), AccessResetReg,
 * AccessFrequencyRegs and frequency MSRs (the core's constants are the emulator's, not the host
 * TSC's), StartVirtualProcessor (HvCallStartVirtualProcessor is not implemented), PAT/BNDCFGS
 * for VSM, and the remote/local flush recommendations (0x40000004 EAX bits 1, 2): the flush hypercalls
 * are answered but flush no TLB, so guests must keep their own shootdowns.
 */
export const HYPERV_FEATURES: readonly HypervFeature[] = [
  { name: 'hv-time', tlfsName: 'AccessPartitionReferenceCounter', leaf: F, ...priv('accessPartitionReferenceCounter'), what: 'HV_X64_MSR_TIME_REF_COUNT' },
  {
    name: 'hv-synic',
    tlfsName: 'AccessSynicRegs',
    leaf: F,
    ...priv('accessSynicRegs'),
    needs: (o) => o.interrupts,
    what: 'SCONTROL, SVERSION, SIEFP, SIMP, EOM, SINT0-15',
  },
  {
    name: 'hv-stimer',
    tlfsName: 'AccessSyntheticTimerRegs',
    leaf: F,
    ...priv('accessSyntheticTimerRegs'),
    needs: (o) => o.interrupts && o.syntheticTimers,
    what: 'STIMER0-3 CONFIG/COUNT',
  },
  { name: 'hv-hypercall', tlfsName: 'AccessHypercallMsrs', leaf: F, ...priv('accessHypercallMsrs'), what: 'GUEST_OS_ID, HYPERCALL' },
  { name: 'hv-vpindex', tlfsName: 'AccessVpIndex', leaf: F, ...priv('accessVpIndex'), what: 'VP_INDEX' },
  {
    name: 'hv-reference-tsc',
    tlfsName: 'AccessPartitionReferenceTsc',
    leaf: F,
    ...priv('accessPartitionReferenceTsc'),
    needs: (o) => o.referenceTsc,
    what: 'REFERENCE_TSC and a valid HV_REFERENCE_TSC_PAGE',
  },
  { name: 'hv-post-message', tlfsName: 'PostMessages', leaf: F, ...priv('postMessages'), needs: (o) => o.interrupts, what: 'HvCallPostMessage' },
  { name: 'hv-signal-event', tlfsName: 'SignalEvents', leaf: F, ...priv('signalEvents'), needs: (o) => o.interrupts, what: 'HvCallSignalEvent' },
  { name: 'hv-vsm', tlfsName: 'AccessVsm', leaf: F, ...priv('accessVsm'), what: 'VSM (with AccessVpRegisters and AccessSynicRegs, tlfs-vsm.md §2)' },
  { name: 'hv-vp-registers', tlfsName: 'AccessVpRegisters', leaf: F, ...priv('accessVpRegisters'), what: 'HvCallGetVpRegisters, HvCallSetVpRegisters' },
  {
    name: 'hv-sint-polling',
    tlfsName: 'SintPollingModeAvailable',
    leaf: F,
    ...edx('sintPollingModeAvailable'),
    needs: (o) => o.interrupts,
    what: 'SINTx.Polling',
  },
  { name: 'hv-hypercall-msr-lock', tlfsName: 'HypercallMsrLockAvailable', leaf: F, ...edx('hypercallMsrLockAvailable'), what: 'HV_X64_MSR_HYPERCALL.Locked' },
  {
    name: 'hv-stimer-direct',
    tlfsName: 'DirectSyntheticTimers',
    leaf: F,
    ...edx('directSyntheticTimers'),
    needs: (o) => o.interrupts && o.syntheticTimers,
    what: 'STIMERx_CONFIG.DirectMode',
  },
  {
    name: 'hv-xmm-input',
    tlfsName: 'XmmRegistersForFastHypercallAvailable',
    leaf: F,
    ...edx('xmmRegistersForFastHypercallAvailable'),
    what: 'XMM fast hypercall input: RDX, R8, XMM0-5 (112 bytes)',
  },
  {
    name: 'hv-xmm-output',
    tlfsName: 'FastHypercallOutputAvailable',
    leaf: F,
    ...edx('fastHypercallOutputAvailable'),
    what: 'XMM fast hypercall output in the registers after the input (e.g. HvCallGetVpRegisters)',
  },
  {
    name: 'hv-ipi',
    tlfsName: 'UseSyntheticClusterIpi',
    leaf: R4,
    ...rec('useSyntheticClusterIpi'),
    needs: (o) => o.interrupts,
    what: 'HvCallSendSyntheticClusterIpi(Ex) recommended over the APIC ICR',
  },
  {
    name: 'hv-ex-processor-masks',
    tlfsName: 'UseExProcessorMasks',
    leaf: R4,
    ...rec('useExProcessorMasks'),
    what: 'the Ex flush and IPI calls with an HV_VP_SET',
  },
];

function withDefaults(opts: HypervCpuidOptions) {
  return { referenceTsc: opts.referenceTsc, syntheticTimers: opts.syntheticTimers ?? true, interrupts: opts.interrupts ?? true };
}

/** The features of HYPERV_FEATURES that are on for these options (the names a capability report lists). */
export function hypervFeatures(opts: HypervCpuidOptions): HypervFeature[] {
  const o = withDefaults(opts);
  return HYPERV_FEATURES.filter((f) => !f.needs || f.needs(o));
}

/**
 * CPUID leaves 0x40000000..0x4000000A as this core answers them: only what it implements is set
 * (see HYPERV_FEATURES); leaves 0x40000006..0x4000000A are zero (no hardware features in use are
 * claimed, no root/SVM/nested features). Throws RangeError for a vpCount that is not a positive
 * integer below 2^32.
 */
export function hypervCpuidLeaves(opts: HypervCpuidOptions): CpuidLeaf[] {
  if (!Number.isInteger(opts.vpCount) || opts.vpCount < 1 || opts.vpCount > 0xffff_ffff)
    throw new RangeError(`vpCount ${opts.vpCount} is not a positive 32-bit integer`);
  const v = opts.version ?? { buildNumber: 0, majorVersion: 0, minorVersion: 0, servicePack: 0, serviceBranch: 0, serviceNumber: 0 };
  const leaves: CpuidLeaf[] = [];
  for (let leaf = HvCpuidLeaf.HvCpuidFunctionHvVendorAndMaxFunction; leaf <= HV_CPUID_MAX_LEAF; leaf++) leaves.push({ leaf, eax: 0, ebx: 0, ecx: 0, edx: 0 });
  const at = (leaf: number) => leaves[leaf - HvCpuidLeaf.HvCpuidFunctionHvVendorAndMaxFunction]!;
  Object.assign(at(HvCpuidLeaf.HvCpuidFunctionHvVendorAndMaxFunction), { eax: HV_CPUID_MAX_LEAF, ...HV_CPUID_VENDOR_MICROSOFT_HV });
  at(HvCpuidLeaf.HvCpuidFunctionHvInterface).eax = HV_CPUID_INTERFACE_HV1;
  Object.assign(at(HvCpuidLeaf.HvCpuidFunctionMsHvVersion), {
    eax: v.buildNumber >>> 0,
    ebx: HvVersionEbxLayout.pack({ majorVersion: v.majorVersion, minorVersion: v.minorVersion }) >>> 0,
    ecx: v.servicePack >>> 0,
    edx: HvVersionEdxLayout.pack({ serviceBranch: v.serviceBranch, serviceNumber: v.serviceNumber }) >>> 0,
  });
  for (const f of hypervFeatures(opts)) {
    const l = at(f.leaf);
    l[f.register] = (l[f.register] | (1 << f.bit)) >>> 0;
  }
  at(HvCpuidLeaf.HvCpuidFunctionMsHvEnlightenmentInformation).ebx = HV_SPINLOCK_RETRIES_NEVER_NOTIFY;
  at(HvCpuidLeaf.HvCpuidFunctionMsHvImplementationLimits).eax = opts.vpCount >>> 0;
  return leaves;
}
