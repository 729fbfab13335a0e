// tlfs layer: the inputs of what guests call early — the virtual TLB flush hypercalls, the synthetic
// cluster IPIs and the long-spin-wait notification — and HV_VP_SET. Sources: TLFS markdown
// hypercalls/HvCallFlushVirtualAddressSpace.md, HvCallFlushVirtualAddressList.md (and the Ex pages),
// HvCallSendSyntheticClusterIpi.md (and Ex), HvCallNotifyLongSpinWait.md, datatypes/hv_vp_set.md;
// Linux include/hyperv/hvgdk_mini.h (struct hv_tlb_flush, hv_tlb_flush_ex, hv_send_ipi, hv_send_ipi_ex,
// hv_vpset, HV_FLUSH_*); OpenVMM vm/hv1/hvdef (HvFlushFlags, HV_GENERIC_SET_*).
import { at, type CodecValue, struct, u8, u32, u64, ubig } from './layout';

/** HV_FLUSH_FLAGS (TLFS HvCallFlushVirtualAddressSpace.md; Linux HV_FLUSH_*). Bits 63:4 are reserved. */
export const HvFlushFlags = {
  /** The flush applies to every VP of the partition; ProcessorMask / ProcessorSet is ignored. */
  HV_FLUSH_ALL_PROCESSORS: 0x1n,
  /** The flush applies to every address space; AddressSpace is ignored. */
  HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES: 0x2n,
  /** Only non-global mappings need be flushed (FlushVirtualAddressSpace only: invalid on the List calls). */
  HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY: 0x4n,
  /** The GVA range list uses the extended range format (Linux; CPUID 0x40000003 EDX bit 14). Not offered here. */
  HV_FLUSH_USE_EXTENDED_RANGE_FORMAT: 0x8n,
} as const;

/** HV_VP_SET Format (datatypes/hv_vp_set.md; OpenVMM HV_GENERIC_SET_*). */
export const HvGenericSetFormat = {
  /** A sparse set: ValidBanksMask, then one 64-bit mask per set bank bit (bank = VpIndex / 64). */
  HV_GENERIC_SET_SPARSE_4K: 0n,
  /** Every VP of the partition. */
  HV_GENERIC_SET_ALL: 1n,
} as const;

/** HvCallFlushVirtualAddressSpace (0x0002) input, and the fixed header of HvCallFlushVirtualAddressList (0x0003), 24 bytes. */
export const HvFlushVirtualAddressSpaceInputLayout = struct('HvCallFlushVirtualAddressSpace input', 24, {
  addressSpace: at(0, u64, 'AddressSpace'), // HV_ADDRESS_SPACE_ID: a CR3 value
  flags: at(8, u64, 'Flags'), // HV_FLUSH_FLAGS
  processorMask: at(16, u64, 'ProcessorMask'), // bit n = VP index n
});
export type HvFlushVirtualAddressSpaceInput = CodecValue<typeof HvFlushVirtualAddressSpaceInputLayout>;

/**
 * HvCallFlushVirtualAddressSpaceEx (0x0013) input and the fixed header of HvCallFlushVirtualAddressListEx
 * (0x0014), 32 bytes: AddressSpace, Flags, then the HV_VP_SET's Format and ValidBanksMask; the set's
 * BankContents follow as the variable header (one QWORD per bank, Linux struct hv_tlb_flush_ex and
 * KVM's reading of it: variable header size = number of banks).
 */
export const HvFlushVirtualAddressSpaceExInputLayout = struct('HvCallFlushVirtualAddressSpaceEx input', 32, {
  addressSpace: at(0, u64, 'AddressSpace'),
  flags: at(8, u64, 'Flags'),
  format: at(16, u64, 'ProcessorSet.Format'),
  validBanksMask: at(24, u64, 'ProcessorSet.ValidBanksMask'),
});
export type HvFlushVirtualAddressSpaceExInput = CodecValue<typeof HvFlushVirtualAddressSpaceExInputLayout>;

/**
 * HvCallSendSyntheticClusterIpi (0x000B) input, 16 bytes (TLFS: Vector +0, TargetVtl +4 HV_INPUT_VTL,
 * Padding +5..7, ProcessorMask +8; the TLFS table's size "1" for ProcessorMask is a misprint of 8:
 * Linux struct hv_send_ipi and KVM read a u64). OpenVMM reads the byte after TargetVtl as flags that
 * must be 0; the other two padding bytes are RsvdZ here too.
 */
export const HvSendSyntheticClusterIpiInputLayout = struct('HvCallSendSyntheticClusterIpi input', 16, {
  vector: at(0, u32, 'Vector'),
  targetVtl: at(4, u8, 'TargetVtl'), // HV_INPUT_VTL
  rsvdZ: at(5, ubig(3), 'Padding'),
  processorMask: at(8, u64, 'ProcessorMask'),
});
export type HvSendSyntheticClusterIpiInput = CodecValue<typeof HvSendSyntheticClusterIpiInputLayout>;

/** HvCallSendSyntheticClusterIpiEx (0x0015) fixed header, 24 bytes: Vector, TargetVtl, Padding, then HV_VP_SET Format and ValidBanksMask; BankContents are the variable header. */
export const HvSendSyntheticClusterIpiExInputLayout = struct('HvCallSendSyntheticClusterIpiEx input', 24, {
  vector: at(0, u32, 'Vector'),
  targetVtl: at(4, u8, 'TargetVtl'),
  rsvdZ: at(5, ubig(3), 'Padding'),
  format: at(8, u64, 'ProcessorSet.Format'),
  validBanksMask: at(16, u64, 'ProcessorSet.ValidBanksMask'),
});
export type HvSendSyntheticClusterIpiExInput = CodecValue<typeof HvSendSyntheticClusterIpiExInputLayout>;

/** HvCallNotifyLongSpinWait (0x0008) input, 8 bytes: SpinCount +0 (4), RsvdZ +4 (4). */
export const HvNotifyLongSpinWaitInputLayout = struct('HvCallNotifyLongSpinWait input', 8, {
  spinCount: at(0, u32, 'SpinCount'),
  rsvdZ: at(4, u32, 'RsvdZ'),
});

/** Vectors a synthetic cluster IPI may carry (TLFS: >= 0x10 and <= 0xFF). */
export const HV_IPI_LOW_VECTOR = 0x10;
export const HV_IPI_HIGH_VECTOR = 0xff;

/**
 * The VP indices of an HV_VP_SET (datatypes/hv_vp_set.md): 'all' for HV_GENERIC_SET_ALL, else the
 * indices named by the sparse banks; `error` for a malformed set: an unknown
 * format, or a number of bank QWORDs other than the number of bits in ValidBanksMask (KVM's rule).
 */
export function decodeVpSet(format: bigint, validBanksMask: bigint, banks: readonly bigint[]): { vps: number[] | 'all' } | { error: string } {
  if (format === HvGenericSetFormat.HV_GENERIC_SET_ALL) return { vps: 'all' };
  if (format !== HvGenericSetFormat.HV_GENERIC_SET_SPARSE_4K) return { error: `HV_VP_SET format ${format} is not 0 (sparse) or 1 (all)` };
  let n = 0;
  for (let b = 0n; b < 64n; b++) if ((validBanksMask >> b) & 1n) n++;
  if (banks.length !== n) return { error: `HV_VP_SET has ${banks.length} bank QWORDs for ${n} valid banks` };
  const out: number[] = [];
  let i = 0;
  for (let bank = 0; bank < 64; bank++) {
    if (((validBanksMask >> BigInt(bank)) & 1n) === 0n) continue;
    const mask = banks[i++]!;
    for (let bit = 0; bit < 64; bit++) if ((mask >> BigInt(bit)) & 1n) out.push(bank * 64 + bit);
  }
  return { vps: out };
}

/** The VP indices of a 64-bit ProcessorMask (bit n = VP n). */
export function vpsOfMask(mask: bigint): number[] {
  const out: number[] = [];
  for (let bit = 0; bit < 64; bit++) if ((mask >> BigInt(bit)) & 1n) out.push(bit);
  return out;
}
