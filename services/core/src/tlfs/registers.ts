// tlfs layer: HV_REGISTER_NAME values and VSM scope (tlfs-hypercalls.md §2.7; private/shared lists
// from tlfs-vsm.md §9), HV_REGISTER_VALUE (128-bit) and the segment/table register layouts
// (tlfs-hypercalls.md §2.5: HV_X64_SEGMENT_REGISTER, HV_X64_TABLE_REGISTER).

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
} as const;

/**
 * Where a register lives under VSM (tlfs-vsm.md §9):
 * - `shared`: one value for all VTLs of the VP (GPRs except RSP, CR2, DR0-3, ...);
 * - `private`: one value per VTL (RIP, RSP, RFLAGS, CRs, segments, synthetic MSRs, ...);
 * - `vsm`: computed or validated by the VSM model (status, config, capabilities).
 * DR6 is private because HvRegisterVsmCapabilities.Dr6Shared is 0 in this implementation.
 */
export type RegisterScope = 'shared' | 'private' | 'vsm';
export type RegisterShape = 'reg64' | 'segment' | 'table';

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
gprs.forEach((g, i) => add(N.HvX64RegisterRax + i, `HvX64Register${g}`, g === 'Rsp' ? 'private' : 'shared'));
add(N.HvX64RegisterRip, 'HvX64RegisterRip', 'private');
add(N.HvX64RegisterRflags, 'HvX64RegisterRflags', 'private');
add(N.HvX64RegisterCr0, 'HvX64RegisterCr0', 'private');
add(N.HvX64RegisterCr2, 'HvX64RegisterCr2', 'shared');
add(N.HvX64RegisterCr3, 'HvX64RegisterCr3', 'private');
add(N.HvX64RegisterCr4, 'HvX64RegisterCr4', 'private');
add(N.HvX64RegisterCr8, 'HvX64RegisterCr8', 'private');
for (let i = 0; i < 4; i++) add(N.HvX64RegisterDr0 + i, `HvX64RegisterDr${i}`, 'shared');
add(N.HvX64RegisterDr6, 'HvX64RegisterDr6', 'private');
add(N.HvX64RegisterDr7, 'HvX64RegisterDr7', 'private');
['Es', 'Cs', 'Ss', 'Ds', 'Fs', 'Gs', 'Ldtr', 'Tr'].forEach((s, i) => add(N.HvX64RegisterEs + i, `HvX64Register${s}`, 'private', 'segment'));
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

/** HV_REGISTER_VALUE: 128 bits as two 64-bit halves. */
export interface Reg128 {
  low: bigint;
  high: bigint;
}
export const reg64 = (v: bigint): Reg128 => ({ low: v & 0xffff_ffff_ffff_ffffn, high: 0n });

/** HV_X64_SEGMENT_REGISTER (16 bytes): +0 Base, +8 Limit, +12 Selector, +14 Attributes. */
export interface HvX64SegmentRegister {
  base: bigint;
  limit: number;
  selector: number;
  attributes: number;
}
/** HV_X64_TABLE_REGISTER (16 bytes): +0 Pad[3], +6 Limit, +8 Base. */
export interface HvX64TableRegister {
  limit: number;
  base: bigint;
}

export function segmentToReg128(s: HvX64SegmentRegister): Reg128 {
  return {
    low: s.base & 0xffff_ffff_ffff_ffffn,
    high: BigInt(s.limit >>> 0) | (BigInt(s.selector & 0xffff) << 32n) | (BigInt(s.attributes & 0xffff) << 48n),
  };
}
export function reg128ToSegment(r: Reg128): HvX64SegmentRegister {
  return {
    base: r.low,
    limit: Number(r.high & 0xffff_ffffn),
    selector: Number((r.high >> 32n) & 0xffffn),
    attributes: Number((r.high >> 48n) & 0xffffn),
  };
}
export function tableToReg128(t: HvX64TableRegister): Reg128 {
  // Bytes 0..5 padding, 6..7 limit => low = limit << 48; bytes 8..15 base => high.
  return { low: BigInt(t.limit & 0xffff) << 48n, high: t.base & 0xffff_ffff_ffff_ffffn };
}
export function reg128ToTable(r: Reg128): HvX64TableRegister {
  return { limit: Number((r.low >> 48n) & 0xffffn), base: r.high };
}

/** Little-endian 16-byte HV_REGISTER_VALUE encoding. */
export function encodeReg128(r: Reg128, out: Buffer = Buffer.alloc(16), offset = 0): Buffer {
  out.writeBigUInt64LE(r.low, offset);
  out.writeBigUInt64LE(r.high, offset + 8);
  return out;
}
export function decodeReg128(buf: Buffer, offset = 0): Reg128 {
  return { low: buf.readBigUInt64LE(offset), high: buf.readBigUInt64LE(offset + 8) };
}

/** Writes an HV_X64_SEGMENT_REGISTER (16 bytes): +0 Base, +8 Limit, +12 Selector, +14 Attributes. */
export function writeSegmentRegister(b: Buffer, off: number, s: HvX64SegmentRegister): void {
  b.writeBigUInt64LE(s.base, off);
  b.writeUInt32LE(s.limit >>> 0, off + 8);
  b.writeUInt16LE(s.selector & 0xffff, off + 12);
  b.writeUInt16LE(s.attributes & 0xffff, off + 14);
}
export function readSegmentRegister(b: Buffer, off: number): HvX64SegmentRegister {
  return { base: b.readBigUInt64LE(off), limit: b.readUInt32LE(off + 8), selector: b.readUInt16LE(off + 12), attributes: b.readUInt16LE(off + 14) };
}
/** Writes an HV_X64_TABLE_REGISTER (16 bytes): +0 Pad[3], +6 Limit, +8 Base. */
export function writeTableRegister(b: Buffer, off: number, t: HvX64TableRegister): void {
  b.writeUInt16LE(t.limit & 0xffff, off + 6);
  b.writeBigUInt64LE(t.base, off + 8);
}
export function readTableRegister(b: Buffer, off: number): HvX64TableRegister {
  return { limit: b.readUInt16LE(off + 6), base: b.readBigUInt64LE(off + 8) };
}

/** Segment attribute bits (HV_X64_SEGMENT_REGISTER.Attributes). */
export const SegmentAttr = { Present: 1 << 7, Long: 1 << 13, Default: 1 << 14, Granularity: 1 << 15 } as const;
export const segmentDpl = (attributes: number): number => (attributes >> 5) & 3;
