// tlfs layer: VSM layouts. HvRegisterVsm* bitfields (tlfs-vsm.md §3), HV_INITIAL_VP_CONTEXT and the
// VSM hypercall inputs (tlfs-hypercalls.md §2.4-2.7), HV_VP_VTL_CONTROL inside HV_VP_ASSIST_PAGE
// (tlfs-vsm.md §5.2) and the hypercall page contents (tlfs-hypercalls.md §1.7).
import {
  HvX64SegmentRegister,
  HvX64TableRegister,
  readSegmentRegister,
  readTableRegister,
  writeSegmentRegister,
  writeTableRegister,
} from './registers';

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

/** HV_INPUT_VTL (tlfs-hypercalls.md §2.2): 3:0 TargetVtl, 4 UseTargetVtl, 7:5 RsvdZ. */
export interface HvInputVtl {
  targetVtl: number;
  useTargetVtl: boolean;
  rsvdZ: number;
}
export const decodeInputVtl = (b: number): HvInputVtl => ({ targetVtl: b & 0xf, useTargetVtl: (b & 0x10) !== 0, rsvdZ: b >> 5 });
export const encodeInputVtl = (v: Partial<HvInputVtl>): number => ((v.targetVtl ?? 0) & 0xf) | (v.useTargetVtl ? 0x10 : 0) | (((v.rsvdZ ?? 0) & 7) << 5);

/**
 * HvRegisterVsmCapabilities (tlfs-vsm.md §3.1). The TLFS draws the fields MSB-first; Microsoft's own
 * implementation code (and OpenVMM reading the real hypervisor) packs them LSB-first. We use the
 * implementation packing; which one real Hyper-V uses for guest VTL0/1 is unconfirmed.
 */
export interface HvRegisterVsmCapabilities {
  dr6Shared: boolean; // bit 0
  mbecVtlMask: number; // bits 16:1
  denyLowerVtlStartup: boolean; // bit 17
  interceptPageAvailable: boolean; // bit 27
}
export const encodeVsmCapabilities = (c: HvRegisterVsmCapabilities): bigint =>
  (c.dr6Shared ? 1n : 0n) | (BigInt(c.mbecVtlMask & 0xffff) << 1n) | (c.denyLowerVtlStartup ? 1n << 17n : 0n) | (c.interceptPageAvailable ? 1n << 27n : 0n);

/** HvRegisterVsmPartitionStatus (tlfs-vsm.md §3.2): 15:0 EnabledVtlSet, 19:16 MaximumVtl, 35:20 MbecEnabledVtlSet. */
export const encodeVsmPartitionStatus = (enabledVtlSet: number, maximumVtl: number, mbecEnabledVtlSet: number): bigint =>
  BigInt(enabledVtlSet & 0xffff) | (BigInt(maximumVtl & 0xf) << 16n) | (BigInt(mbecEnabledVtlSet & 0xffff) << 20n);

/** HvRegisterVsmVpStatus (tlfs-vsm.md §3.3): 3:0 ActiveVtl, 4 ActiveMbecEnabled, 31:16 EnabledVtlSet. */
export const encodeVsmVpStatus = (activeVtl: number, activeMbecEnabled: boolean, enabledVtlSet: number): bigint =>
  BigInt(activeVtl & 0xf) | (activeMbecEnabled ? 1n << 4n : 0n) | (BigInt(enabledVtlSet & 0xffff) << 16n);

/** HvRegisterVsmPartitionConfig (tlfs-vsm.md §3.4). */
export interface HvRegisterVsmPartitionConfig {
  enableVtlProtection: boolean; // bit 0 (write-once)
  defaultVtlProtectionMask: number; // bits 4:1
  zeroMemoryOnReset: boolean; // bit 5
  denyLowerVtlStartup: boolean; // bit 6
  interceptVpStartup: boolean; // bit 9
}
/** Bits the TLFS defines; everything else is ReservedZ (bits 7, 8, 63:10). */
export const VSM_PARTITION_CONFIG_DEFINED = 0x27fn;
export function decodeVsmPartitionConfig(v: bigint): HvRegisterVsmPartitionConfig {
  return {
    enableVtlProtection: (v & 1n) !== 0n,
    defaultVtlProtectionMask: Number((v >> 1n) & 0xfn),
    zeroMemoryOnReset: (v & (1n << 5n)) !== 0n,
    denyLowerVtlStartup: (v & (1n << 6n)) !== 0n,
    interceptVpStartup: (v & (1n << 9n)) !== 0n,
  };
}
export function encodeVsmPartitionConfig(c: HvRegisterVsmPartitionConfig): bigint {
  return (
    (c.enableVtlProtection ? 1n : 0n) |
    (BigInt(c.defaultVtlProtectionMask & 0xf) << 1n) |
    (c.zeroMemoryOnReset ? 1n << 5n : 0n) |
    (c.denyLowerVtlStartup ? 1n << 6n : 0n) |
    (c.interceptVpStartup ? 1n << 9n : 0n)
  );
}

/** HvRegisterVsmVpSecureConfigVtlN (tlfs-vsm.md §3.5): bit 0 MbecEnabled, bit 1 TlbLocked, 63:2 ReservedZ. */
export const VSM_VP_SECURE_CONFIG_DEFINED = 0x3n;

/** HvRegisterVsmVina (tlfs-vsm.md §3.7): 7:0 Vector, 8 Enabled, 9 AutoReset, 10 AutoEoi, 63:11 ReservedP. */
export const VSM_VINA_DEFINED = 0x7ffn;

/** HV_MAP_GPA_FLAGS protection bits (tlfs-vsm.md §7.1). */
export const HvMapGpaFlags = {
  HV_MAP_GPA_READABLE: 0x1,
  HV_MAP_GPA_WRITABLE: 0x2,
  HV_MAP_GPA_KERNEL_EXECUTABLE: 0x4,
  HV_MAP_GPA_USER_EXECUTABLE: 0x8,
} as const;

/** HvCallEnablePartitionVtl input, 16 bytes (tlfs-hypercalls.md §2.4). */
export interface HvEnablePartitionVtlInput {
  targetPartitionId: bigint; // +0
  targetVtl: number; // +8
  flags: number; // +9: bit 0 EnableMbec
  rsvdZ: bigint; // +10, 6 bytes
}
export const HV_ENABLE_PARTITION_VTL_INPUT_SIZE = 16;
export function decodeEnablePartitionVtlInput(b: Buffer): HvEnablePartitionVtlInput {
  return { targetPartitionId: b.readBigUInt64LE(0), targetVtl: b[8]!, flags: b[9]!, rsvdZ: b.readUIntLE(10, 6) === 0 ? 0n : 1n };
}
export function encodeEnablePartitionVtlInput(i: HvEnablePartitionVtlInput): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(i.targetPartitionId, 0);
  b[8] = i.targetVtl;
  b[9] = i.flags;
  return b;
}

/** HV_INITIAL_VP_CONTEXT x64, 224 bytes (tlfs-hypercalls.md §2.5). */
export interface HvInitialVpContext {
  rip: bigint;
  rsp: bigint;
  rflags: bigint;
  cs: HvX64SegmentRegister;
  ds: HvX64SegmentRegister;
  es: HvX64SegmentRegister;
  fs: HvX64SegmentRegister;
  gs: HvX64SegmentRegister;
  ss: HvX64SegmentRegister;
  tr: HvX64SegmentRegister;
  ldtr: HvX64SegmentRegister;
  idtr: HvX64TableRegister;
  gdtr: HvX64TableRegister;
  efer: bigint;
  cr0: bigint;
  cr3: bigint;
  cr4: bigint;
  msrCrPat: bigint;
}
export const HV_INITIAL_VP_CONTEXT_SIZE = 224;
const SEGMENTS = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldtr'] as const;

const writeSegment = writeSegmentRegister;
const readSegment = readSegmentRegister;
const writeTable = writeTableRegister;
const readTable = readTableRegister;

export function encodeInitialVpContext(c: HvInitialVpContext, out: Buffer = Buffer.alloc(HV_INITIAL_VP_CONTEXT_SIZE), base = 0): Buffer {
  out.writeBigUInt64LE(c.rip, base + 0);
  out.writeBigUInt64LE(c.rsp, base + 8);
  out.writeBigUInt64LE(c.rflags, base + 16);
  SEGMENTS.forEach((s, i) => writeSegment(out, base + 24 + i * 16, c[s]));
  writeTable(out, base + 152, c.idtr);
  writeTable(out, base + 168, c.gdtr);
  out.writeBigUInt64LE(c.efer, base + 184);
  out.writeBigUInt64LE(c.cr0, base + 192);
  out.writeBigUInt64LE(c.cr3, base + 200);
  out.writeBigUInt64LE(c.cr4, base + 208);
  out.writeBigUInt64LE(c.msrCrPat, base + 216);
  return out;
}
export function decodeInitialVpContext(b: Buffer, base = 0): HvInitialVpContext {
  const seg = Object.fromEntries(SEGMENTS.map((s, i) => [s, readSegment(b, base + 24 + i * 16)])) as Record<(typeof SEGMENTS)[number], HvX64SegmentRegister>;
  return {
    rip: b.readBigUInt64LE(base + 0),
    rsp: b.readBigUInt64LE(base + 8),
    rflags: b.readBigUInt64LE(base + 16),
    ...seg,
    idtr: readTable(b, base + 152),
    gdtr: readTable(b, base + 168),
    efer: b.readBigUInt64LE(base + 184),
    cr0: b.readBigUInt64LE(base + 192),
    cr3: b.readBigUInt64LE(base + 200),
    cr4: b.readBigUInt64LE(base + 208),
    msrCrPat: b.readBigUInt64LE(base + 216),
  };
}

/** HvCallEnableVpVtl x64 input, 240 bytes (tlfs-hypercalls.md §2.5). */
export interface HvEnableVpVtlInput {
  targetPartitionId: bigint; // +0
  vpIndex: number; // +8
  targetVtl: number; // +12
  rsvdZ: number; // +13, 3 bytes
  vpVtlContext: HvInitialVpContext; // +16
}
export const HV_ENABLE_VP_VTL_INPUT_SIZE = 240;
export function decodeEnableVpVtlInput(b: Buffer): HvEnableVpVtlInput {
  return { targetPartitionId: b.readBigUInt64LE(0), vpIndex: b.readUInt32LE(8), targetVtl: b[12]!, rsvdZ: b.readUIntLE(13, 3), vpVtlContext: decodeInitialVpContext(b, 16) };
}
export function encodeEnableVpVtlInput(i: HvEnableVpVtlInput): Buffer {
  const b = Buffer.alloc(HV_ENABLE_VP_VTL_INPUT_SIZE);
  b.writeBigUInt64LE(i.targetPartitionId, 0);
  b.writeUInt32LE(i.vpIndex >>> 0, 8);
  b[12] = i.targetVtl;
  b.writeUIntLE(i.rsvdZ, 13, 3);
  encodeInitialVpContext(i.vpVtlContext, b, 16);
  return b;
}

/** HvCallGetVpRegisters / HvCallSetVpRegisters header, 16 bytes (tlfs-hypercalls.md §2.7). */
export interface HvVpRegistersHeader {
  partitionId: bigint; // +0
  vpIndex: number; // +8
  targetVtl: number; // +12 HV_INPUT_VTL
  rsvdZ: number; // +13, 3 bytes
}
export const HV_VP_REGISTERS_HEADER_SIZE = 16;
/** HV_REGISTER_ASSOC: +0 Name (4), +4 RsvdZ (12), +16 Value (16). */
export const HV_REGISTER_ASSOC_SIZE = 32;
export function decodeVpRegistersHeader(b: Buffer): HvVpRegistersHeader {
  return { partitionId: b.readBigUInt64LE(0), vpIndex: b.readUInt32LE(8), targetVtl: b[12]!, rsvdZ: b.readUIntLE(13, 3) };
}
export function encodeVpRegistersHeader(h: HvVpRegistersHeader): Buffer {
  const b = Buffer.alloc(HV_VP_REGISTERS_HEADER_SIZE);
  b.writeBigUInt64LE(h.partitionId, 0);
  b.writeUInt32LE(h.vpIndex >>> 0, 8);
  b[12] = h.targetVtl;
  b.writeUIntLE(h.rsvdZ, 13, 3);
  return b;
}

/**
 * HV_VP_ASSIST_PAGE offsets (tlfs-vsm.md §5.2). HV_VP_VTL_CONTROL is at +8:
 * EntryReason @8 (u32), VinaStatus @12 (u8), VtlReturnX64Rax @16, VtlReturnX64Rcx @24.
 */
export const HvVpAssistPage = {
  VtlControl: 8,
  EntryReason: 8,
  VinaStatus: 12,
  VtlReturnX64Rax: 16,
  VtlReturnX64Rcx: 24,
  InterceptMessage: 112,
} as const;
export const HV_VP_VTL_CONTROL_SIZE = 24;

export interface HvVpVtlControl {
  entryReason: number;
  vinaStatus: number;
  vtlReturnX64Rax: bigint;
  vtlReturnX64Rcx: bigint;
}
export function encodeVpVtlControl(c: HvVpVtlControl): Buffer {
  const b = Buffer.alloc(HV_VP_VTL_CONTROL_SIZE);
  b.writeUInt32LE(c.entryReason >>> 0, 0);
  b[4] = c.vinaStatus & 1;
  b.writeBigUInt64LE(c.vtlReturnX64Rax, 8);
  b.writeBigUInt64LE(c.vtlReturnX64Rcx, 16);
  return b;
}
export function decodeVpVtlControl(b: Buffer, base = 0): HvVpVtlControl {
  return {
    entryReason: b.readUInt32LE(base),
    vinaStatus: b[base + 4]! & 1,
    vtlReturnX64Rax: b.readBigUInt64LE(base + 8),
    vtlReturnX64Rcx: b.readBigUInt64LE(base + 16),
  };
}

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

/** HvRegisterVsmCodePageOffsets (tlfs-vsm.md §3.6): 11:0 VtlCallOffset, 23:12 VtlReturnOffset. */
export const encodeVsmCodePageOffsets = (vtlCall: number, vtlReturn: number): bigint => BigInt(vtlCall & 0xfff) | (BigInt(vtlReturn & 0xfff) << 12n);
export const VSM_CODE_PAGE_OFFSETS_64 = encodeVsmCodePageOffsets(HypercallPageOffsets.vtlCall64, HypercallPageOffsets.vtlReturn64);
