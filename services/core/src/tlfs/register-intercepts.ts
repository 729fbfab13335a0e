// tlfs layer: secure register intercepts (tlfs-vsm.md §3.8; TLFS vsm.md "Secure Register Intercepts"):
// HV_REGISTER_CR_INTERCEPT_CONTROL and its mask registers, the architectural MSRs they name, and the
// two messages a refused lower-VTL access becomes: HV_X64_REGISTER_INTERCEPT_MESSAGE (0x80010006) for
// control and descriptor-table registers, HV_X64_MSR_INTERCEPT_MESSAGE (0x80010001) for MSRs
// (tlfs-intercepts.md §6.8; OpenHCL `cvm_try_protect_secure_register_write` / `cvm_try_protect_msr_write`
// send these, the TLFS names the intercept but not the message: **unconfirmed** beyond OpenHCL).
import { HvX64InterceptMessageHeaderLayout } from './message';
import { HvRegisterValueLayout } from './registers';
import { at, bitfield, bits, type CodecValue, flag, struct, u16, u32, u64, u8 } from './layout';

/** HV_REGISTER_CR_INTERCEPT_CONTROL (TLFS vsm.md; tlfs-vsm.md §3.8); 63:25 RsvdZ (OpenVMM adds 25..28). */
export const HvRegisterCrInterceptControlLayout = bitfield('HV_REGISTER_CR_INTERCEPT_CONTROL', 64, {
  cr0Write: flag(0), // Cr0Write
  cr4Write: flag(1), // Cr4Write
  xCr0Write: flag(2), // XCr0Write
  ia32MiscEnableRead: flag(3), // IA32MiscEnableRead
  ia32MiscEnableWrite: flag(4), // IA32MiscEnableWrite
  msrLstarRead: flag(5), // MsrLstarRead
  msrLstarWrite: flag(6), // MsrLstarWrite
  msrStarRead: flag(7), // MsrStarRead
  msrStarWrite: flag(8), // MsrStarWrite
  msrCstarRead: flag(9), // MsrCstarRead
  msrCstarWrite: flag(10), // MsrCstarWrite
  apicBaseMsrRead: flag(11), // ApicBaseMsrRead
  apicBaseMsrWrite: flag(12), // ApicBaseMsrWrite
  msrEferRead: flag(13), // MsrEferRead
  msrEferWrite: flag(14), // MsrEferWrite
  gdtrWrite: flag(15), // GdtrWrite
  idtrWrite: flag(16), // IdtrWrite
  ldtrWrite: flag(17), // LdtrWrite
  trWrite: flag(18), // TrWrite
  msrSysenterCsWrite: flag(19), // MsrSysenterCsWrite
  msrSysenterEipWrite: flag(20), // MsrSysenterEipWrite
  msrSysenterEspWrite: flag(21), // MsrSysenterEspWrite
  msrSfmaskWrite: flag(22), // MsrSfmaskWrite
  msrTscAuxWrite: flag(23), // MsrTscAuxWrite
  msrSgxLaunchControlWrite: flag(24), // MsrSgxLaunchControlWrite
});
export type HvRegisterCrInterceptControl = CodecValue<typeof HvRegisterCrInterceptControlLayout>;
export type CrInterceptBit = keyof HvRegisterCrInterceptControl;
/** Bits the TLFS defines (24:0); 63:25 are RsvdZ. */
export const CR_INTERCEPT_CONTROL_DEFINED = HvRegisterCrInterceptControlLayout.definedMask;
export const decodeCrInterceptControl = (v: bigint): HvRegisterCrInterceptControl => HvRegisterCrInterceptControlLayout.unpack(v);
export const encodeCrInterceptControl = (c: Partial<HvRegisterCrInterceptControl>): bigint => HvRegisterCrInterceptControlLayout.pack(c);

/** Architectural MSR numbers (Intel SDM vol. 4) that HV_REGISTER_CR_INTERCEPT_CONTROL names. */
export const X64Msr = {
  IA32_APIC_BASE: 0x0000001b,
  IA32_MISC_ENABLE: 0x000001a0,
  IA32_SYSENTER_CS: 0x00000174,
  IA32_SYSENTER_ESP: 0x00000175,
  IA32_SYSENTER_EIP: 0x00000176,
  IA32_SGXLEPUBKEYHASH0: 0x0000008c, // SGX launch control (first of four; all four are one intercept bit)
  IA32_EFER: 0xc0000080,
  IA32_STAR: 0xc0000081,
  IA32_LSTAR: 0xc0000082,
  IA32_CSTAR: 0xc0000083,
  IA32_FMASK: 0xc0000084,
  IA32_TSC_AUX: 0xc0000103,
} as const;

/** HV_X64_REGISTER_ACCESS_INFO flags byte of the register intercept (OpenVMM `HvX64RegisterInterceptMessageFlags`). */
export const HvX64RegisterInterceptMessageFlagsLayout = bitfield('HV_X64_REGISTER_INTERCEPT_MESSAGE_FLAGS', 8, {
  isMemoryOp: flag(0), // IsMemoryOp
  rsvd: bits(7, 1),
});

/**
 * HV_X64_REGISTER_INTERCEPT_MESSAGE, 64 bytes (tlfs-intercepts.md §6.8; OpenVMM hvdef
 * `HvX64RegisterInterceptMessage`): +0 header, +40 Flags, +41 Reserved, +42 Reserved (u16),
 * +44 RegisterName (HV_REGISTER_NAME), +48 AccessInfo (HV_REGISTER_VALUE: the value being written).
 */
export const HvX64RegisterInterceptMessageLayout = struct('HV_X64_REGISTER_INTERCEPT_MESSAGE', 64, {
  header: at(0, HvX64InterceptMessageHeaderLayout, 'Header'),
  flags: at(40, HvX64RegisterInterceptMessageFlagsLayout, 'Flags'),
  rsvd: at(41, u8, 'Reserved'),
  rsvd2: at(42, u16, 'Reserved2'),
  registerName: at(44, u32, 'RegisterName'),
  accessInfo: at(48, HvRegisterValueLayout, 'AccessInfo.SourceValue'),
});
export type HvX64RegisterInterceptMessage = CodecValue<typeof HvX64RegisterInterceptMessageLayout>;
export const encodeRegisterInterceptMessage = (m: HvX64RegisterInterceptMessage): Buffer => HvX64RegisterInterceptMessageLayout.encode(m);
export const decodeRegisterInterceptMessage = (b: Buffer, base = 0): HvX64RegisterInterceptMessage => HvX64RegisterInterceptMessageLayout.decode(b, base);

/**
 * HV_X64_MSR_INTERCEPT_MESSAGE, 64 bytes (tlfs-intercepts.md §6.8; OpenVMM hvdef
 * `HvX64MsrInterceptMessage`): +0 header, +40 MsrNumber, +44 Reserved, +48 Rdx, +56 Rax (for a
 * write: the value EDX:EAX being written).
 */
export const HvX64MsrInterceptMessageLayout = struct('HV_X64_MSR_INTERCEPT_MESSAGE', 64, {
  header: at(0, HvX64InterceptMessageHeaderLayout, 'Header'),
  msrNumber: at(40, u32, 'MsrNumber'),
  reserved: at(44, u32, 'Reserved'),
  rdx: at(48, u64, 'Rdx'),
  rax: at(56, u64, 'Rax'),
});
export type HvX64MsrInterceptMessage = CodecValue<typeof HvX64MsrInterceptMessageLayout>;
export const encodeMsrInterceptMessage = (m: HvX64MsrInterceptMessage): Buffer => HvX64MsrInterceptMessageLayout.encode(m);
export const decodeMsrInterceptMessage = (b: Buffer, base = 0): HvX64MsrInterceptMessage => HvX64MsrInterceptMessageLayout.decode(b, base);
