// tlfs layer: VP startup (tlfs-hypercalls.md §2.10; TLFS hypercalls/HvCallStartVirtualProcessor.md and
// HvCallGetVpIndexFromApicId.md) and the message a lower VTL's intercepted hypercall becomes
// (HV_X64_HYPERCALL_INTERCEPT_MESSAGE; OpenVMM hvdef `HvX64HypercallInterceptMessage`).
import { HvInitialVpContextLayout } from './vsm';
import { HvX64InterceptMessageHeaderLayout } from './message';
import { at, bytes, type CodecValue, struct, u32, u64, u8, uint, ubig } from './layout';

/**
 * HvCallStartVirtualProcessor x64 input, 240 bytes (TLFS HvCallStartVirtualProcessor.md "x64 Layout";
 * OpenVMM hvdef `StartVirtualProcessorX64`): +0 PartitionId, +8 VpIndex, +12 TargetVtl (HV_VTL),
 * +13 RsvdZ (3), +16 VpContext (HV_INITIAL_VP_CONTEXT, 224).
 */
export const HvStartVirtualProcessorInputLayout = struct('HvCallStartVirtualProcessor input', 240, {
  partitionId: at(0, u64, 'PartitionId'),
  vpIndex: at(8, u32, 'VpIndex'),
  targetVtl: at(12, u8, 'TargetVtl'), // HV_VTL
  rsvdZ: at(13, uint(3), 'RsvdZ'),
  vpContext: at(16, HvInitialVpContextLayout, 'VpContext'),
});
export type HvStartVirtualProcessorInput = CodecValue<typeof HvStartVirtualProcessorInputLayout>;
export const HV_START_VIRTUAL_PROCESSOR_INPUT_SIZE = HvStartVirtualProcessorInputLayout.size;
export const decodeStartVirtualProcessorInput = (b: Buffer): HvStartVirtualProcessorInput => HvStartVirtualProcessorInputLayout.decode(b);
export const encodeStartVirtualProcessorInput = (i: HvStartVirtualProcessorInput): Buffer => HvStartVirtualProcessorInputLayout.encode(i);

/**
 * HvCallGetVpIndexFromApicId (0x009A, rep) fixed header, 16 bytes: +0 PartitionId, +8 TargetVtl,
 * +9 RsvdZ (7). Rep input element: the APIC id (UINT32); rep output element: the HV_VP_INDEX (UINT32).
 * Sources: OpenVMM hvdef `GetVpIndexFromApicId` (target_vtl: u8, reserved: [u8; 7]) and
 * hv1_hypercall `RepHypercall<GetVpIndexFromApicId, u32, u32>`; Linux hvgdk_mini.h
 * `struct hv_get_vp_from_apic_id_in` declares TargetVtl as HV_INPUT_VTL. The TLFS page gives the
 * call code and the element types; whether TargetVtl is an HV_VTL or an HV_INPUT_VTL is
 * **unconfirmed**: we read it as HV_INPUT_VTL (Linux), which is the same byte for VTLs named with
 * UseTargetVtl = 0 meaning "the caller's VTL".
 */
export const HvGetVpIndexFromApicIdHeaderLayout = struct('HvCallGetVpIndexFromApicId header', 16, {
  partitionId: at(0, u64, 'PartitionId'),
  targetVtl: at(8, u8, 'TargetVtl'),
  rsvdZ: at(9, ubig(7), 'RsvdZ'),
});
export type HvGetVpIndexFromApicIdHeader = CodecValue<typeof HvGetVpIndexFromApicIdHeaderLayout>;
export const HV_GET_VP_INDEX_FROM_APIC_ID_HEADER_SIZE = HvGetVpIndexFromApicIdHeaderLayout.size;
export const decodeGetVpIndexFromApicIdHeader = (b: Buffer): HvGetVpIndexFromApicIdHeader => HvGetVpIndexFromApicIdHeaderLayout.decode(b);
export const encodeGetVpIndexFromApicIdHeader = (h: HvGetVpIndexFromApicIdHeader): Buffer => HvGetVpIndexFromApicIdHeaderLayout.encode(h);

/**
 * HV_X64_HYPERCALL_INTERCEPT_MESSAGE, 208 bytes (OpenVMM hvdef `HvX64HypercallInterceptMessage`;
 * the TLFS names HvMessageTypeHypercallIntercept 0x80000050 but documents no payload):
 * +0 header (40), +40 Rax, +48 Rbx, +56 Rcx, +64 Rdx, +72 R8, +80 Rsi, +88 Rdi, +96 XmmRegisters[6]
 * (16 each, 16-byte aligned), +192 Flags (bit 0 IsIsolated), +196 Rsvd2[3]. Used here for a lower VTL's
 * HvCallStartVirtualProcessor that InterceptVpStartup sends to the higher VTL: which message real
 * Hyper-V sends for that intercept is **unconfirmed**.
 */
export const HvX64HypercallInterceptMessageLayout = struct('HV_X64_HYPERCALL_INTERCEPT_MESSAGE', 208, {
  header: at(0, HvX64InterceptMessageHeaderLayout, 'Header'),
  rax: at(40, u64, 'Rax'),
  rbx: at(48, u64, 'Rbx'),
  rcx: at(56, u64, 'Rcx'),
  rdx: at(64, u64, 'Rdx'),
  r8: at(72, u64, 'R8'),
  rsi: at(80, u64, 'Rsi'),
  rdi: at(88, u64, 'Rdi'),
  xmmRegisters: at(96, bytes(96), 'XmmRegisters[6]'),
  flags: at(192, u32, 'Flags'), // bit 0 IsIsolated
  rsvd2: at(196, bytes(12), 'Rsvd2'),
});
export type HvX64HypercallInterceptMessage = CodecValue<typeof HvX64HypercallInterceptMessageLayout>;
export const encodeHypercallInterceptMessage = (m: HvX64HypercallInterceptMessage): Buffer => HvX64HypercallInterceptMessageLayout.encode(m);
export const decodeHypercallInterceptMessage = (b: Buffer, base = 0): HvX64HypercallInterceptMessage => HvX64HypercallInterceptMessageLayout.decode(b, base);
