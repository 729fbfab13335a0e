// tlfs layer: VSM layouts. HvRegisterVsm* bitfields (tlfs-vsm.md §3), HV_INITIAL_VP_CONTEXT and the
// VSM hypercall inputs (tlfs-hypercalls.md §2.4-2.7), HV_VP_VTL_CONTROL inside HV_VP_ASSIST_PAGE
// (tlfs-vsm.md §5.2) and the hypercall page contents (tlfs-hypercalls.md §1.7). Each structure is one
// layout (./layout.ts) that drives its encoder and decoder; the exported encode/decode functions are
// thin names over them.
import { HvRegisterValueLayout, HvX64SegmentRegisterLayout, HvX64TableRegisterLayout } from './registers';
import { at, bitfield, bits, bitsOf, bytes, type CodecValue, flag, seq, struct, u32, u64, u8, ubig, uint } from './layout';

/** Highest VTL this implementation supports (OpenHCL uses VTL2). HV_VTL is 0..15 architecturally. */
export const HV_MAX_SUPPORTED_VTL = 2;
export const HV_PARTITION_ID_SELF = 0xffff_ffff_ffff_ffffn;
export const HV_VP_INDEX_SELF = 0xffff_fffe;

/** HV_VTL_ENTRY_REASON (tlfs-vsm.md §5.1). */
export const HvVtlEntryReason = {
  HvVtlEntryReserved: 0,
  HvVtlEntryVtlCall: 1,
  HvVtlEntryInterrupt: 2,
  HvVtlEntryIntercept: 3,
} as const;

/** HV_INPUT_VTL (tlfs-hypercalls.md §2.2). */
export const HvInputVtlLayout = bitfield('HV_INPUT_VTL', 8, {
  targetVtl: bits(3, 0), // TargetVtl
  useTargetVtl: flag(4), // UseTargetVtl
  rsvdZ: bits(7, 5), // RsvdZ
});
export type HvInputVtl = CodecValue<typeof HvInputVtlLayout>;
export const decodeInputVtl = (b: number): HvInputVtl => HvInputVtlLayout.unpack(b);
export const encodeInputVtl = (v: Partial<HvInputVtl>): number => HvInputVtlLayout.pack(v);

/**
 * HvRegisterVsmCapabilities (tlfs-vsm.md §3.1). The TLFS draws the fields MSB-first; Microsoft's own
 * implementation code (and OpenVMM reading the real hypervisor) packs them LSB-first. We use the
 * implementation packing; which one real Hyper-V uses for guest VTL0/1 is unconfirmed.
 */
export const HvRegisterVsmCapabilitiesLayout = bitfield('HvRegisterVsmCapabilities', 64, {
  dr6Shared: flag(0), // Dr6Shared
  mbecVtlMask: bits(16, 1), // MbecVtlMask
  denyLowerVtlStartup: flag(17), // DenyLowerVtlStartup
  interceptPageAvailable: flag(27), // intercept_page_available (implementations)
});
export type HvRegisterVsmCapabilities = CodecValue<typeof HvRegisterVsmCapabilitiesLayout>;
export const encodeVsmCapabilities = (c: HvRegisterVsmCapabilities): bigint => HvRegisterVsmCapabilitiesLayout.pack(c);

/** HvRegisterVsmPartitionStatus (tlfs-vsm.md §3.2); 63:36 ReservedZ. */
export const HvRegisterVsmPartitionStatusLayout = bitfield('HvRegisterVsmPartitionStatus', 64, {
  enabledVtlSet: bits(15, 0), // EnabledVtlSet
  maximumVtl: bits(19, 16), // MaximumVtl
  mbecEnabledVtlSet: bits(35, 20), // MbecEnabledVtlSet
});
export const encodeVsmPartitionStatus = (enabledVtlSet: number, maximumVtl: number, mbecEnabledVtlSet: number): bigint =>
  HvRegisterVsmPartitionStatusLayout.pack({ enabledVtlSet, maximumVtl, mbecEnabledVtlSet });

/** HvRegisterVsmVpStatus (tlfs-vsm.md §3.3); 15:5 and 63:32 ReservedZ. */
export const HvRegisterVsmVpStatusLayout = bitfield('HvRegisterVsmVpStatus', 64, {
  activeVtl: bits(3, 0), // ActiveVtl
  activeMbecEnabled: flag(4), // ActiveMbecEnabled
  enabledVtlSet: bits(31, 16), // EnabledVtlSet
});
export const encodeVsmVpStatus = (activeVtl: number, activeMbecEnabled: boolean, enabledVtlSet: number): bigint =>
  HvRegisterVsmVpStatusLayout.pack({ activeVtl, activeMbecEnabled, enabledVtlSet });

/** HvRegisterVsmPartitionConfig (tlfs-vsm.md §3.4); bits 8:7 and 63:10 ReservedZ. */
export const HvRegisterVsmPartitionConfigLayout = bitfield('HvRegisterVsmPartitionConfig', 64, {
  enableVtlProtection: flag(0), // EnableVtlProtection (write-once)
  defaultVtlProtectionMask: bits(4, 1), // DefaultVtlProtectionMask
  zeroMemoryOnReset: flag(5), // ZeroMemoryOnReset
  denyLowerVtlStartup: flag(6), // DenyLowerVtlStartup
  interceptVpStartup: flag(9), // InterceptVpStartup
});
export type HvRegisterVsmPartitionConfig = CodecValue<typeof HvRegisterVsmPartitionConfigLayout>;
/** Bits the TLFS defines; everything else is ReservedZ (bits 7, 8, 63:10). */
export const VSM_PARTITION_CONFIG_DEFINED = HvRegisterVsmPartitionConfigLayout.definedMask;
export const decodeVsmPartitionConfig = (v: bigint): HvRegisterVsmPartitionConfig => HvRegisterVsmPartitionConfigLayout.unpack(v);
export const encodeVsmPartitionConfig = (c: HvRegisterVsmPartitionConfig): bigint => HvRegisterVsmPartitionConfigLayout.pack(c);

/** HvRegisterVsmVpSecureConfigVtlN (tlfs-vsm.md §3.5); 63:2 ReservedZ. */
export const HvRegisterVsmVpSecureConfigLayout = bitfield('HvRegisterVsmVpSecureConfigVtlN', 64, {
  mbecEnabled: flag(0), // MbecEnabled
  tlbLocked: flag(1), // TlbLocked
});
export const VSM_VP_SECURE_CONFIG_DEFINED = HvRegisterVsmVpSecureConfigLayout.definedMask;

/** HvRegisterVsmVina (tlfs-vsm.md §3.7); 63:11 ReservedP. */
export const HvRegisterVsmVinaLayout = bitfield('HvRegisterVsmVina', 64, {
  vector: bits(7, 0), // Vector
  enabled: flag(8), // Enabled
  autoReset: flag(9), // AutoReset
  autoEoi: flag(10), // AutoEoi
});
export const VSM_VINA_DEFINED = HvRegisterVsmVinaLayout.definedMask;

/** HV_MAP_GPA_FLAGS protection bits (tlfs-vsm.md §7.1). */
export const HvMapGpaFlags = {
  HV_MAP_GPA_READABLE: 0x1,
  HV_MAP_GPA_WRITABLE: 0x2,
  HV_MAP_GPA_KERNEL_EXECUTABLE: 0x4,
  HV_MAP_GPA_USER_EXECUTABLE: 0x8,
} as const;

/** HvCallEnablePartitionVtl input, 16 bytes (tlfs-hypercalls.md §2.4). */
export const HvEnablePartitionVtlInputLayout = struct('HvCallEnablePartitionVtl input', 16, {
  targetPartitionId: at(0, u64, 'TargetPartitionId'),
  targetVtl: at(8, u8, 'TargetVtl'),
  flags: at(9, u8, 'Flags'), // HV_ENABLE_PARTITION_VTL_FLAGS: bit 0 EnableMbec
  rsvdZ: at(10, ubig(6), 'RsvdZ'),
});
export type HvEnablePartitionVtlInput = CodecValue<typeof HvEnablePartitionVtlInputLayout>;
export const HV_ENABLE_PARTITION_VTL_INPUT_SIZE = HvEnablePartitionVtlInputLayout.size;
export const decodeEnablePartitionVtlInput = (b: Buffer): HvEnablePartitionVtlInput => HvEnablePartitionVtlInputLayout.decode(b);
export const encodeEnablePartitionVtlInput = (i: HvEnablePartitionVtlInput): Buffer => HvEnablePartitionVtlInputLayout.encode(i);

/** HV_INITIAL_VP_CONTEXT x64, 224 bytes (tlfs-hypercalls.md §2.5): fields back to back from +0. */
export const HvInitialVpContextLayout = struct('HV_INITIAL_VP_CONTEXT', 224, {
  rip: seq(u64, 'Rip'),
  rsp: seq(u64, 'Rsp'),
  rflags: seq(u64, 'Rflags'),
  cs: seq(HvX64SegmentRegisterLayout, 'Cs'),
  ds: seq(HvX64SegmentRegisterLayout, 'Ds'),
  es: seq(HvX64SegmentRegisterLayout, 'Es'),
  fs: seq(HvX64SegmentRegisterLayout, 'Fs'),
  gs: seq(HvX64SegmentRegisterLayout, 'Gs'),
  ss: seq(HvX64SegmentRegisterLayout, 'Ss'),
  tr: seq(HvX64SegmentRegisterLayout, 'Tr'),
  ldtr: seq(HvX64SegmentRegisterLayout, 'Ldtr'),
  idtr: seq(HvX64TableRegisterLayout, 'Idtr'),
  gdtr: seq(HvX64TableRegisterLayout, 'Gdtr'),
  efer: seq(u64, 'Efer'),
  cr0: seq(u64, 'Cr0'),
  cr3: seq(u64, 'Cr3'),
  cr4: seq(u64, 'Cr4'),
  msrCrPat: seq(u64, 'MsrCrPat'),
});
export type HvInitialVpContext = CodecValue<typeof HvInitialVpContextLayout>;
export const HV_INITIAL_VP_CONTEXT_SIZE = HvInitialVpContextLayout.size;
export const encodeInitialVpContext = (c: HvInitialVpContext, out?: Buffer, base = 0): Buffer => HvInitialVpContextLayout.encode(c, out, base);
export const decodeInitialVpContext = (b: Buffer, base = 0): HvInitialVpContext => HvInitialVpContextLayout.decode(b, base);

/** HvCallEnableVpVtl x64 input, 240 bytes (tlfs-hypercalls.md §2.5). */
export const HvEnableVpVtlInputLayout = struct('HvCallEnableVpVtl input', 240, {
  targetPartitionId: at(0, u64, 'TargetPartitionId'),
  vpIndex: at(8, u32, 'VpIndex'),
  targetVtl: at(12, u8, 'TargetVtl'),
  rsvdZ: at(13, uint(3), 'RsvdZ'),
  vpVtlContext: at(16, HvInitialVpContextLayout, 'VpVtlContext'),
});
export type HvEnableVpVtlInput = CodecValue<typeof HvEnableVpVtlInputLayout>;
export const HV_ENABLE_VP_VTL_INPUT_SIZE = HvEnableVpVtlInputLayout.size;
export const decodeEnableVpVtlInput = (b: Buffer): HvEnableVpVtlInput => HvEnableVpVtlInputLayout.decode(b);
export const encodeEnableVpVtlInput = (i: HvEnableVpVtlInput): Buffer => HvEnableVpVtlInputLayout.encode(i);

/** HvCallGetVpRegisters / HvCallSetVpRegisters header, 16 bytes (tlfs-hypercalls.md §2.7). */
export const HvVpRegistersHeaderLayout = struct('HvCallGet/SetVpRegisters header', 16, {
  partitionId: at(0, u64, 'PartitionId'),
  vpIndex: at(8, u32, 'VpIndex'),
  targetVtl: at(12, u8, 'TargetVtl'), // HV_INPUT_VTL
  rsvdZ: at(13, uint(3), 'RsvdZ'),
});
export type HvVpRegistersHeader = CodecValue<typeof HvVpRegistersHeaderLayout>;
export const HV_VP_REGISTERS_HEADER_SIZE = HvVpRegistersHeaderLayout.size;
export const decodeVpRegistersHeader = (b: Buffer): HvVpRegistersHeader => HvVpRegistersHeaderLayout.decode(b);
export const encodeVpRegistersHeader = (h: HvVpRegistersHeader): Buffer => HvVpRegistersHeaderLayout.encode(h);

/** HV_REGISTER_ASSOC, 32 bytes (tlfs-hypercalls.md §2.7): the HvCallSetVpRegisters rep element. */
export const HvRegisterAssocLayout = struct('HV_REGISTER_ASSOC', 32, {
  name: at(0, u32, 'Name'), // HV_REGISTER_NAME
  rsvdZ: at(4, bytes(12), 'RsvdZ'),
  value: at(16, HvRegisterValueLayout, 'Value'),
});
export type HvRegisterAssoc = CodecValue<typeof HvRegisterAssocLayout>;
export const HV_REGISTER_ASSOC_SIZE = HvRegisterAssocLayout.size;

/** HV_VP_VTL_CONTROL, 24 bytes (tlfs-vsm.md §5.2); +5..+7 ReservedZ. */
export const HvVpVtlControlLayout = struct('HV_VP_VTL_CONTROL', 24, {
  entryReason: at(0, u32, 'EntryReason'), // HV_VTL_ENTRY_REASON
  vinaStatus: at(4, bitsOf(u8, 0, 0), 'VinaStatus.VinaAsserted'), // 7:1 RsvdZ
  vtlReturnX64Rax: at(8, u64, 'VtlReturnX64Rax'),
  vtlReturnX64Rcx: at(16, u64, 'VtlReturnX64Rcx'),
});
export type HvVpVtlControl = CodecValue<typeof HvVpVtlControlLayout>;
export const HV_VP_VTL_CONTROL_SIZE = HvVpVtlControlLayout.size;
export const encodeVpVtlControl = (c: HvVpVtlControl): Buffer => HvVpVtlControlLayout.encode(c);
export const decodeVpVtlControl = (b: Buffer, base = 0): HvVpVtlControl => HvVpVtlControlLayout.decode(b, base);

/**
 * HV_VP_ASSIST_PAGE, one 4096-byte page per VP per VTL (tlfs-vsm.md §5.2): the parts the model uses.
 * InterceptMessage (+112, an HV_MESSAGE) is OpenVMM/Linux, not TLFS.
 */
export const HvVpAssistPageLayout = struct('HV_VP_ASSIST_PAGE', 4096, {
  apicAssist: at(0, u32, 'ApicAssist'),
  vtlControl: at(8, HvVpVtlControlLayout, 'VtlControl'),
  interceptMessage: at(112, bytes(256), 'InterceptMessage'),
});
/** Byte offsets inside HV_VP_ASSIST_PAGE, from the layouts above. */
export const HvVpAssistPage = {
  VtlControl: HvVpAssistPageLayout.offsetOf('vtlControl'),
  EntryReason: HvVpAssistPageLayout.offsetOf('vtlControl') + HvVpVtlControlLayout.offsetOf('entryReason'),
  VinaStatus: HvVpAssistPageLayout.offsetOf('vtlControl') + HvVpVtlControlLayout.offsetOf('vinaStatus'),
  VtlReturnX64Rax: HvVpAssistPageLayout.offsetOf('vtlControl') + HvVpVtlControlLayout.offsetOf('vtlReturnX64Rax'),
  VtlReturnX64Rcx: HvVpAssistPageLayout.offsetOf('vtlControl') + HvVpVtlControlLayout.offsetOf('vtlReturnX64Rcx'),
  // The x86 view of the same 16 bytes (a union in HV_VP_VTL_CONTROL, tlfs-vsm.md §5.2):
  // VtlReturnX86Eax, VtlReturnX86Ecx over VtlReturnX64Rax; VtlReturnX86Edx over VtlReturnX64Rcx.
  VtlReturnX86Eax: HvVpAssistPageLayout.offsetOf('vtlControl') + HvVpVtlControlLayout.offsetOf('vtlReturnX64Rax'),
  VtlReturnX86Ecx: HvVpAssistPageLayout.offsetOf('vtlControl') + HvVpVtlControlLayout.offsetOf('vtlReturnX64Rax') + 4,
  VtlReturnX86Edx: HvVpAssistPageLayout.offsetOf('vtlControl') + HvVpVtlControlLayout.offsetOf('vtlReturnX64Rcx'),
  InterceptMessage: HvVpAssistPageLayout.offsetOf('interceptMessage'),
} as const;

/**
 * Hypercall page contents. The TLFS leaves the bytes to the hypervisor (tlfs-hypercalls.md §1.7);
 * we follow OpenVMM's layout: page filled with INT3 (0xCC), VMCALL (Intel `0F 01 C1`) or VMMCALL
 * (AMD `0F 01 D9`) + RET at 0, and the VTL call/return stubs that load RCX with the call code and
 * move the caller's control input from RCX to RAX.
 */
export type X64Vendor = 'intel' | 'amd';
export const VMCALL = [0x0f, 0x01, 0xc1] as const;
export const VMMCALL = [0x0f, 0x01, 0xd9] as const;
export const HypercallPageOffsets = {
  hypercall: 0x00,
  vtlCall32: 0x04,
  vtlCall64: 0x0f,
  vtlReturn32: 0x1b,
  vtlReturn64: 0x26,
} as const;

export function buildHypercallPage(vendor: X64Vendor): Buffer {
  const call = vendor === 'amd' ? VMMCALL : VMCALL;
  const page = Buffer.alloc(4096, 0xcc);
  const put = (off: number, bytes: readonly number[]) => Buffer.from(bytes).copy(page, off);
  put(HypercallPageOffsets.hypercall, [...call, 0xc3]); // vmcall; ret
  put(HypercallPageOffsets.vtlCall32, [0x89, 0xc1, 0xb8, 0x11, 0, 0, 0, ...call, 0xc3]); // mov ecx,eax; mov eax,0x11; vmcall; ret
  put(HypercallPageOffsets.vtlCall64, [0x48, 0x89, 0xc8, 0xb9, 0x11, 0, 0, 0, ...call, 0xc3]); // mov rax,rcx; mov ecx,0x11; vmcall; ret
  put(HypercallPageOffsets.vtlReturn32, [0x89, 0xc1, 0xb8, 0x12, 0, 0, 0, ...call, 0xc3]); // mov ecx,eax; mov eax,0x12; vmcall; ret
  put(HypercallPageOffsets.vtlReturn64, [0x48, 0x89, 0xc8, 0xb9, 0x12, 0, 0, 0, ...call, 0xc3]); // mov rax,rcx; mov ecx,0x12; vmcall; ret
  return page;
}

/** HvRegisterVsmCodePageOffsets (tlfs-vsm.md §3.6); 63:24 ReservedZ. */
export const HvRegisterVsmCodePageOffsetsLayout = bitfield('HvRegisterVsmCodePageOffsets', 64, {
  vtlCallOffset: bits(11, 0), // VtlCallOffset
  vtlReturnOffset: bits(23, 12), // VtlReturnOffset
});
export const encodeVsmCodePageOffsets = (vtlCall: number, vtlReturn: number): bigint =>
  HvRegisterVsmCodePageOffsetsLayout.pack({ vtlCallOffset: vtlCall, vtlReturnOffset: vtlReturn });
export const VSM_CODE_PAGE_OFFSETS_64 = encodeVsmCodePageOffsets(HypercallPageOffsets.vtlCall64, HypercallPageOffsets.vtlReturn64);
