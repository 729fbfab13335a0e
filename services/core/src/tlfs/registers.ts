// tlfs layer: HV_REGISTER_NAME values and VSM scope (tlfs-hypercalls.md §2.7; private/shared lists
// from tlfs-vsm.md §9), HV_REGISTER_VALUE (128-bit) and the segment/table register layouts
// (tlfs-hypercalls.md §2.5: HV_X64_SEGMENT_REGISTER, HV_X64_TABLE_REGISTER), as layouts (./layout.ts).
import { at, type CodecValue, struct, toU64, u16, u32, u64 } from './layout';

export const HvRegisterName = {
  HvRegisterGuestOsId: 0x00090002,
  HvX64RegisterHypercall: 0x00090001,
  HvRegisterVpIndex: 0x00090003,
  HvRegisterTimeRefCount: 0x00090004,
  HvRegisterVpAssistPage: 0x00090013,
  HvRegisterReferenceTsc: 0x00090017,
  HvRegisterSint0: 0x000a0000,
  HvRegisterSint15: 0x000a000f,
  HvRegisterScontrol: 0x000a0010,
  HvRegisterSversion: 0x000a0011,
  HvRegisterSifp: 0x000a0012,
  HvRegisterSipp: 0x000a0013,
  HvRegisterEom: 0x000a0014,
  HvRegisterVsmCodePageOffsets: 0x000d0002,
  HvRegisterVsmVpStatus: 0x000d0003,
  HvRegisterVsmPartitionStatus: 0x000d0004,
  HvRegisterVsmVina: 0x000d0005,
  HvRegisterVsmCapabilities: 0x000d0006,
  HvRegisterVsmPartitionConfig: 0x000d0007,
  HvRegisterVsmVpSecureConfigVtl0: 0x000d0010,
  HvRegisterVsmVpSecureConfigVtl14: 0x000d001e,
  HvX64RegisterRax: 0x00020000,
  HvX64RegisterRcx: 0x00020001,
  HvX64RegisterRdx: 0x00020002,
  HvX64RegisterRbx: 0x00020003,
  HvX64RegisterRsp: 0x00020004,
  HvX64RegisterRbp: 0x00020005,
  HvX64RegisterRsi: 0x00020006,
  HvX64RegisterRdi: 0x00020007,
  HvX64RegisterR8: 0x00020008,
  HvX64RegisterR15: 0x0002000f,
  HvX64RegisterRip: 0x00020010,
  HvX64RegisterRflags: 0x00020011,
  HvX64RegisterXmm0: 0x00030000, // XMM0..XMM15 = 0x00030000 + n (tlfs-hypercalls.md §2.7, OpenVMM hvdef)
  HvX64RegisterXmm15: 0x0003000f,
  HvX64RegisterCr0: 0x00040000,
  HvX64RegisterCr2: 0x00040001,
  HvX64RegisterCr3: 0x00040002,
  HvX64RegisterCr4: 0x00040003,
  HvX64RegisterCr8: 0x00040004,
  HvX64RegisterDr0: 0x00050000,
  HvX64RegisterDr3: 0x00050003,
  HvX64RegisterDr6: 0x00050004,
  HvX64RegisterDr7: 0x00050005,
  HvX64RegisterEs: 0x00060000,
  HvX64RegisterCs: 0x00060001,
  HvX64RegisterSs: 0x00060002,
  HvX64RegisterDs: 0x00060003,
  HvX64RegisterFs: 0x00060004,
  HvX64RegisterGs: 0x00060005,
  HvX64RegisterLdtr: 0x00060006,
  HvX64RegisterTr: 0x00060007,
  HvX64RegisterIdtr: 0x00070000,
  HvX64RegisterGdtr: 0x00070001,
  HvX64RegisterEfer: 0x00080001,
  HvX64RegisterKernelGsBase: 0x00080002,
  HvX64RegisterPat: 0x00080004,
  HvX64RegisterSysenterCs: 0x00080005,
  HvX64RegisterSysenterEip: 0x00080006,
  HvX64RegisterSysenterEsp: 0x00080007,
  HvX64RegisterStar: 0x00080008,
  HvX64RegisterLstar: 0x00080009,
  HvX64RegisterCstar: 0x0008000a,
  HvX64RegisterSfmask: 0x0008000b,
  HvX64RegisterApicBase: 0x00080003,
  HvX64RegisterTscAux: 0x0008007b,
  HvX64RegisterXfem: 0x00040005,
  /** Secure register intercepts (tlfs-vsm.md §3.8): per VP, one instance per VTL (the intercepting VTL's). */
  HvX64RegisterCrInterceptControl: 0x000e0000,
  HvX64RegisterCrInterceptCr0Mask: 0x000e0001,
  HvX64RegisterCrInterceptCr4Mask: 0x000e0002,
  HvX64RegisterCrInterceptIa32MiscEnableMask: 0x000e0003,
} as const;

/**
 * Where a register lives under VSM (tlfs-vsm.md §9):
 * - `shared`: one value for all VTLs of the VP (GPRs except RSP, CR2, DR0-3, ...);
 * - `private`: one value per VTL (RIP, RSP, RFLAGS, CRs, segments, synthetic MSRs, ...);
 * - `vsm`: computed or validated by the VSM model (status, config, capabilities).
 * DR6 is private because HvRegisterVsmCapabilities.Dr6Shared is 0 in this implementation.
 */
export type RegisterScope = 'shared' | 'private' | 'vsm';
export type RegisterShape = 'reg64' | 'reg128' | 'segment' | 'table';

export interface RegisterInfo {
  name: number;
  /** TLFS name, e.g. "HvX64RegisterRax". */
  tlfsName: string;
  scope: RegisterScope;
  shape: RegisterShape;
  readOnly?: boolean;
  writeOnly?: boolean;
}

const N = HvRegisterName;
const table: RegisterInfo[] = [];
const add = (name: number, tlfsName: string, scope: RegisterScope, shape: RegisterShape = 'reg64', extra: Partial<RegisterInfo> = {}) =>
  table.push({ name, tlfsName, scope, shape, ...extra });

const gprs = ['Rax', 'Rcx', 'Rdx', 'Rbx', 'Rsp', 'Rbp', 'Rsi', 'Rdi', 'R8', 'R9', 'R10', 'R11', 'R12', 'R13', 'R14', 'R15'];
gprs.forEach((g, i) => {
  add(N.HvX64RegisterRax + i, `HvX64Register${g}`, g === 'Rsp' ? 'private' : 'shared');
});
add(N.HvX64RegisterRip, 'HvX64RegisterRip', 'private');
add(N.HvX64RegisterRflags, 'HvX64RegisterRflags', 'private');
// XMM0-15: 128-bit, shared by all VTLs (tlfs-vsm.md §9.1: XMM state is shared); XMM0-5 carry XMM fast
// hypercall input and output (tlfs-hypercalls.md §1.4).
for (let i = 0; i < 16; i++) add(N.HvX64RegisterXmm0 + i, `HvX64RegisterXmm${i}`, 'shared', 'reg128');
add(N.HvX64RegisterCr0, 'HvX64RegisterCr0', 'private');
add(N.HvX64RegisterCr2, 'HvX64RegisterCr2', 'shared');
add(N.HvX64RegisterCr3, 'HvX64RegisterCr3', 'private');
add(N.HvX64RegisterCr4, 'HvX64RegisterCr4', 'private');
add(N.HvX64RegisterCr8, 'HvX64RegisterCr8', 'private');
for (let i = 0; i < 4; i++) add(N.HvX64RegisterDr0 + i, `HvX64RegisterDr${i}`, 'shared');
add(N.HvX64RegisterDr6, 'HvX64RegisterDr6', 'private');
add(N.HvX64RegisterDr7, 'HvX64RegisterDr7', 'private');
['Es', 'Cs', 'Ss', 'Ds', 'Fs', 'Gs', 'Ldtr', 'Tr'].forEach((s, i) => {
  add(N.HvX64RegisterEs + i, `HvX64Register${s}`, 'private', 'segment');
});
add(N.HvX64RegisterIdtr, 'HvX64RegisterIdtr', 'private', 'table');
add(N.HvX64RegisterGdtr, 'HvX64RegisterGdtr', 'private', 'table');
add(N.HvX64RegisterEfer, 'HvX64RegisterEfer', 'private');
add(N.HvX64RegisterKernelGsBase, 'HvX64RegisterKernelGsBase', 'private');
add(N.HvX64RegisterPat, 'HvX64RegisterPat', 'private');
add(N.HvX64RegisterSysenterCs, 'HvX64RegisterSysenterCs', 'private');
add(N.HvX64RegisterSysenterEip, 'HvX64RegisterSysenterEip', 'private');
add(N.HvX64RegisterSysenterEsp, 'HvX64RegisterSysenterEsp', 'private');
add(N.HvX64RegisterStar, 'HvX64RegisterStar', 'private');
add(N.HvX64RegisterLstar, 'HvX64RegisterLstar', 'private');
add(N.HvX64RegisterCstar, 'HvX64RegisterCstar', 'private');
add(N.HvX64RegisterSfmask, 'HvX64RegisterSfmask', 'private');
add(N.HvX64RegisterApicBase, 'HvX64RegisterApicBase', 'private'); // each VTL has its own local APIC (tlfs-vsm.md §9.1)
add(N.HvX64RegisterTscAux, 'HvX64RegisterTscAux', 'private');
add(N.HvX64RegisterXfem, 'HvX64RegisterXfem', 'shared'); // XCR0 is shared (tlfs-vsm.md §9.2)
// Secure register intercepts (tlfs-vsm.md §3.8): set by a VTL > 0 for the VTLs below it.
add(N.HvX64RegisterCrInterceptControl, 'HvX64RegisterCrInterceptControl', 'vsm');
add(N.HvX64RegisterCrInterceptCr0Mask, 'HvX64RegisterCrInterceptCr0Mask', 'vsm');
add(N.HvX64RegisterCrInterceptCr4Mask, 'HvX64RegisterCrInterceptCr4Mask', 'vsm');
add(N.HvX64RegisterCrInterceptIa32MiscEnableMask, 'HvX64RegisterCrInterceptIa32MiscEnableMask', 'vsm');
// Synthetic registers backing the Hyper-V MSRs (tlfs-intercepts.md §7.1, VSM scope column).
add(N.HvRegisterGuestOsId, 'HvRegisterGuestOsId', 'private');
add(N.HvX64RegisterHypercall, 'HvX64RegisterHypercall', 'private');
add(N.HvRegisterVpIndex, 'HvRegisterVpIndex', 'shared', 'reg64', { readOnly: true });
add(N.HvRegisterTimeRefCount, 'HvRegisterTimeRefCount', 'shared', 'reg64', { readOnly: true });
add(N.HvRegisterVpAssistPage, 'HvRegisterVpAssistPage', 'private');
add(N.HvRegisterReferenceTsc, 'HvRegisterReferenceTsc', 'private'); // partition-wide per VTL
for (let i = 0; i < 16; i++) add(N.HvRegisterSint0 + i, `HvRegisterSint${i}`, 'private');
add(N.HvRegisterScontrol, 'HvRegisterScontrol', 'private');
add(N.HvRegisterSversion, 'HvRegisterSversion', 'private', 'reg64', { readOnly: true });
add(N.HvRegisterSifp, 'HvRegisterSifp', 'private');
add(N.HvRegisterSipp, 'HvRegisterSipp', 'private');
add(N.HvRegisterEom, 'HvRegisterEom', 'private', 'reg64', { writeOnly: true });
// VSM registers (tlfs-vsm.md §3).
add(N.HvRegisterVsmCodePageOffsets, 'HvRegisterVsmCodePageOffsets', 'vsm', 'reg64', { readOnly: true });
add(N.HvRegisterVsmVpStatus, 'HvRegisterVsmVpStatus', 'vsm', 'reg64', { readOnly: true });
add(N.HvRegisterVsmPartitionStatus, 'HvRegisterVsmPartitionStatus', 'vsm', 'reg64', { readOnly: true });
add(N.HvRegisterVsmVina, 'HvRegisterVsmVina', 'vsm');
add(N.HvRegisterVsmCapabilities, 'HvRegisterVsmCapabilities', 'vsm', 'reg64', { readOnly: true });
add(N.HvRegisterVsmPartitionConfig, 'HvRegisterVsmPartitionConfig', 'vsm');
for (let i = 0; i <= 14; i++) add(N.HvRegisterVsmVpSecureConfigVtl0 + i, `HvRegisterVsmVpSecureConfigVtl${i}`, 'vsm');

const byName = new Map(table.map((r) => [r.name, r]));

export function registerInfo(name: number): RegisterInfo | undefined {
  return byName.get(name);
}
export const allRegisters: readonly RegisterInfo[] = table;

/** HV_REGISTER_VALUE (tlfs-hypercalls.md §2.7): 128 bits, little-endian, as two 64-bit halves. */
export const HvRegisterValueLayout = struct('HV_REGISTER_VALUE', 16, {
  low: at(0, u64, 'Reg128.Low64'),
  high: at(8, u64, 'Reg128.High64'),
});
export type Reg128 = CodecValue<typeof HvRegisterValueLayout>;
/** A 64-bit register value (v modulo 2^64; no new bigint when v is in range, as it almost always is). */
export const reg64 = (v: bigint): Reg128 => ({ low: toU64(v), high: 0n });

/** HV_X64_SEGMENT_REGISTER, 16 bytes (tlfs-hypercalls.md §2.5). */
export const HvX64SegmentRegisterLayout = struct('HV_X64_SEGMENT_REGISTER', 16, {
  base: at(0, u64, 'Base'),
  limit: at(8, u32, 'Limit'),
  selector: at(12, u16, 'Selector'),
  attributes: at(14, u16, 'Attributes'),
});
export type HvX64SegmentRegister = CodecValue<typeof HvX64SegmentRegisterLayout>;

/** HV_X64_TABLE_REGISTER, 16 bytes (tlfs-hypercalls.md §2.5): +0 Pad[3] (ignored on decode, zero on encode). */
export const HvX64TableRegisterLayout = struct('HV_X64_TABLE_REGISTER', 16, {
  limit: at(6, u16, 'Limit'),
  base: at(8, u64, 'Base'),
});
export type HvX64TableRegister = CodecValue<typeof HvX64TableRegisterLayout>;

/**
 * Segment and table registers as the HV_REGISTER_VALUE that carries them: the same 16 bytes, taken as
 * the two 64-bit words Low64 (+0) and High64 (+8) of HvRegisterValueLayout, without a buffer.
 */
const S = HvX64SegmentRegisterLayout;
const T = HvX64TableRegisterLayout;
const reg128 = (w: bigint[]): Reg128 => ({ low: w[0]!, high: w[1]! });
export const segmentToReg128 = (s: HvX64SegmentRegister): Reg128 => reg128(S.toWords(s));
/**
 * Segments decoded from a register value, by the value's object: a Reg128 is never changed in place
 * (setting a register stores a new object; the KVM platform's shadow compares them by identity), so
 * its segment is decoded once (≈85 → ≈13 ns; three per intercept message). Frozen: shared by callers.
 */
const segmentsOf = new WeakMap<Reg128, Readonly<HvX64SegmentRegister>>();
export const reg128ToSegment = (r: Reg128): Readonly<HvX64SegmentRegister> => {
  let seg = segmentsOf.get(r);
  if (seg === undefined) {
    seg = Object.freeze(S.fromWords([r.low, r.high]));
    segmentsOf.set(r, seg);
  }
  return seg;
};
export const tableToReg128 = (t: HvX64TableRegister): Reg128 => reg128(T.toWords(t));
export const reg128ToTable = (r: Reg128): HvX64TableRegister => T.fromWords([r.low, r.high]);

/** Little-endian 16-byte HV_REGISTER_VALUE encoding. */
export const encodeReg128 = (r: Reg128, out?: Buffer, offset = 0): Buffer => HvRegisterValueLayout.encode(r, out, offset);
export const decodeReg128 = (buf: Buffer, offset = 0): Reg128 => HvRegisterValueLayout.decode(buf, offset);

/** Writes an HV_X64_SEGMENT_REGISTER (16 bytes) at `off`. */
export const writeSegmentRegister = (b: Buffer, off: number, s: HvX64SegmentRegister): void => void HvX64SegmentRegisterLayout.encode(s, b, off);
export const readSegmentRegister = (b: Buffer, off: number): HvX64SegmentRegister => HvX64SegmentRegisterLayout.decode(b, off);
/** Writes an HV_X64_TABLE_REGISTER (16 bytes) at `off`. */
export const writeTableRegister = (b: Buffer, off: number, t: HvX64TableRegister): void => void HvX64TableRegisterLayout.encode(t, b, off);
export const readTableRegister = (b: Buffer, off: number): HvX64TableRegister => HvX64TableRegisterLayout.decode(b, off);

/** Segment attribute bits (HV_X64_SEGMENT_REGISTER.Attributes). */
export const SegmentAttr = { Present: 1 << 7, Long: 1 << 13, Default: 1 << 14, Granularity: 1 << 15 } as const;
export const segmentDpl = (attributes: number): number => (attributes >> 5) & 3;
