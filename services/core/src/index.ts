// @vsm/core public surface: VSM semantics with no I/O. This list is the whole of it: what the
// service, the KVM agent, the CLI, the benchmarks and the tests outside the core use, grouped by
// subject, plus the types that appear in those signatures. Everything else is internal: the rule
// modules (rules/*.ts) are reached through the Partition facade's methods.
// Subpath export: '@vsm/core/hypercalls' (the hypercall dispatcher and handler types, for writing
// and testing handlers).

// ---- partitions: the facade, their typed state, the manager, limits, time ------------------------
export { Partition, longModeContext } from './partition';
export type { Architecture, PartitionSpec } from './state/partition';
export { VirtualProcessor, RegisterFile } from './state/vp';
export type { PendingAccess } from './state/vp';
export { PartitionManager } from './manager';
export type { CreateRequest, ManagerOptions, PartitionPlatform } from './manager';
export { DEFAULT_LIMITS } from './limits';
export type { Limits } from './limits';
export { systemClock } from './clock';
export type { Clock } from './clock';

// ---- VTLs -------------------------------------------------------------------------------------
export { VTLS, isVtl } from './vtl-array';
export type { Vtl, VtlSet } from './vtl-array';
export type { VtlSwitchEvent, VtlTransitionRecord } from './outcomes';

// ---- guest actions: the engine seam and what actions produce ----------------------------------
export { EngineError, STORE_GP, engineOf } from './engine';
export type { GuestEngine } from './engine';
export { X64Exception } from './outcomes';
export type { AccessOutcome, GuestOutcome, ResumedAccess, X64ExceptionVector } from './outcomes';
export { executeVmcall, hypercallInputIsFast, implementedHypercalls } from './hypercalls';
export type { HypercallOutcome } from './hypercalls';
export type { HypercallCallSite } from './vtl-switch';
export { vtlReturn } from './vtl-switch';
export { deliverInterrupts } from './rules/interrupts';
export type { VtlInterruptState } from './rules/interrupts';
export { callHypercallPage } from './stub';
export type { HypercallPageCode, HypercallPageEvent, StubOutcome } from './stub';

// ---- memory: guest RAM, accesses under VTL protections, intercepts -----------------------------
export { SparseMemory } from './memory';
export type { GuestRam, HypercallPageLayout, PlatformHooks } from './platform';
export { accessibleTo, answerIntercept, guestAccess, interceptAccess, mbecInForce, violatingVtl } from './access';
export { pagingEnabled, translateGva } from './rules/paging';
export type { TranslateAccess, TranslateRequest, TranslateResult } from './rules/paging';
export { ProtectionMap } from './protections';
export type { AccessKind } from './protections';
export { IdMap } from './id-map';
export { ANSWERED_KEPT, MAX_INTERCEPT_DEADLINE_MS } from './intercepts';
export type { InterceptAction, InterceptRoute } from './intercepts';
export type { InterceptRecord } from './outcomes';

// ---- overlays and SynIC -----------------------------------------------------------------------
export type { OverlayKind } from './overlay-kinds';
export type { Overlay } from './overlays';
export { SYNIC_QUEUE_LIMIT } from './synic';
export type { PlaceResult, PostResult, SynicView } from './synic';
export { createConnection, deleteConnection, listConnections } from './rules/connections';
export type { ConnectionSpec } from './rules/connections';
export type { SynicConnection } from './state/partition';
export { sintRouteCreate, sintRouteDestroy, sintRouteSet } from './rules/testdev';

// ---- time and synthetic timers (the platform runs the one host timer) ---------------------------
export type { ReferenceClock } from './platform';
export { publishReferenceTscPages, referenceTime } from './rules/time';
export { stimerExpire, stimerNextDeadline } from './rules/stimers';
export type { SyntheticTimer } from './state/vp';

// ---- Hyper-V CPUID leaves and the enlightenments they advertise ---------------------------------
export { HYPERV_FEATURES, HvCpuidLeaf, hypervCpuidLeaves, hypervFeatures } from './tlfs/cpuid';
export type { CpuidLeaf, HypervCpuidOptions, HypervFeature } from './tlfs/cpuid';

// ---- snapshots --------------------------------------------------------------------------------
export { CORE_SNAPSHOT_VERSION, snapshotPartition } from './snapshot';
export type { CoreSnapshot, RegisterEntry } from './snapshot-types';
export { type CoreExport, PartitionImport, beginExport } from './snapshot-stream';
export { PageBitmap, RamFreeze, RamTracking, type WriteLog } from './ram-tracking';

// ---- TLFS definitions used outside the core (tlfs/: one definition per TLFS structure) ----------
export { HvError, HvStatus, hvFail } from './tlfs/status';
export type { HvStatusName } from './tlfs/status';
export { HvRegisterName, reg64, reg128ToSegment, reg128ToTable, registerInfo, segmentToReg128, tableToReg128 } from './tlfs/registers';
export type { HvX64SegmentRegister, HvX64TableRegister, Reg128, RegisterInfo } from './tlfs/registers';
export { HV_SYNIC_STIMER_COUNT, HvMsr, HvMsrNames, HvStimerConfigLayout } from './tlfs/msr';
export { HvReferenceTscPageLayout } from './tlfs/time';
export { decodeHypercallInput, decodeHypercallResult, encodeHypercallInput } from './tlfs/hypercall';
export { HV_MAX_SUPPORTED_VTL, HV_PARTITION_ID_SELF, HypercallPageOffsets, buildHypercallPage, encodeEnableVpVtlInput } from './tlfs/vsm';
export type { HvInitialVpContext, X64Vendor } from './tlfs/vsm';
export {
  HV_EVENT_FLAGS_COUNT,
  HV_MESSAGE_MAX_PAYLOAD_BYTE_COUNT,
  HvInputPostMessageLayout,
  HvMessageType,
  HvSignalEventInputLayout,
  HvTimerMessagePayloadLayout,
  decodeMemoryInterceptMessage,
  encodeHvMessage,
  encodePostMessageInput,
  encodeSignalEventInput,
  hvMessageTypeOf,
  interceptMessageIpOf,
} from './tlfs/message';

// ---- address translation, TLB flushes, IPIs (issue #16) -------------------------------------------
export {
  HvTranslateGvaControlFlagsLayout,
  HvTranslateGvaResultCode,
  HvTranslateGvaResultLayout,
  HvTranslateVirtualAddressExOutputLayout,
  HvTranslateVirtualAddressInputLayout,
  HvTranslateVirtualAddressOutputLayout,
} from './tlfs/translate';
export type { HvTranslateGvaControlFlags, HvTranslateGvaResult } from './tlfs/translate';
export {
  HvFlushFlags,
  HvFlushVirtualAddressSpaceExInputLayout,
  HvFlushVirtualAddressSpaceInputLayout,
  HvGenericSetFormat,
  HvNotifyLongSpinWaitInputLayout,
  HvSendSyntheticClusterIpiExInputLayout,
  HvSendSyntheticClusterIpiInputLayout,
} from './tlfs/flush-ipi';
export { HV_XMM_FAST_BLOCK_BYTES, fastBlockBytes, fastInputRegisters } from './hypercalls/xmm';
export { resolveActionAddress } from './memory-actions';
export type { ActionAddress } from './memory-actions';
