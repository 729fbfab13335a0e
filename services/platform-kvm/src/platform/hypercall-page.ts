/**
 * The hypercall page the KVM agent gives the guest (the `hypercallPage` platform hook).
 *
 * The TLFS leaves the page's code to the hypervisor. This kernel has no KVM Hyper-V support, so
 * VMCALL/VMMCALL never reach userspace; the agent's page exits with port I/O instead:
 *
 *     66 E7 4D      out 0x4d, ax      ; "hypercall": exits to the agent (KVM_EXIT_IO, port 0x4D, 2 bytes)
 *
 * It takes the place of the 3-byte VMCALL/VMMCALL in OpenVMM's layout, so every entry point and
 * every RET sits at the same offset as in the emulator's page (a VtlCall leaves the caller's RIP
 * on the same RET address on both backends), and the instruction reads AX only: RCX/RDX/R8 (and
 * the 32-bit convention's registers) reach the dispatcher untouched.
 *
 * The VtlCall/VtlReturn entries open with `out 0x4e, ax` (PROLOGUE_PORT) in place of their first
 * MOV's bytes: guest code at CPL0 runs emulated on this host at ≈0.55–2 µs an instruction, and the two
 * MOVs that load the call code cost two of them on every VTL switch. At that exit the agent sets the
 * registers as the MOVs would have (64-bit entries RAX = RCX, ECX = call code; 32-bit entries
 * ECX = EAX, EAX = call code) and RIP as after the entry's `out 0x4d, ax`, and goes on exactly as for
 * that hypercall (entryPrologue, kvm-partition.ts hypercallExit). The bytes after the first
 * instruction are OpenVMM's, never executed by the agent's VPs.
 *
 *   off   bytes                         code
 *   0x00  66 E7 4D C3                   out 0x4d, ax ; ret                       (hypercall)
 *   0x04  66 E7 4E 11 00 00 00 66 E7 4D C3      out 0x4e, ax = [mov ecx, eax ; mov eax, 0x11] ; out ; ret (VtlCall, 32-bit)
 *   0x0F  66 E7 4E B9 11 00 00 00 66 E7 4D C3   out 0x4e, ax = [mov rax, rcx ; mov ecx, 0x11] ; out ; ret (VtlCall, 64-bit)
 *   0x1B  66 E7 4E 12 00 00 00 66 E7 4D C3      out 0x4e, ax = [mov ecx, eax ; mov eax, 0x12] ; out ; ret (VtlReturn, 32-bit)
 *   0x26  66 E7 4E B9 12 00 00 00 66 E7 4D C3   out 0x4e, ax = [mov rax, rcx ; mov ecx, 0x12] ; out ; ret (VtlReturn, 64-bit)
 *   rest  CC                            int3
 *
 * HvRegisterVsmCodePageOffsets reports VtlCall 0x0F / VtlReturn 0x26, as on the emulator.
 */
import { type HypercallPageLayout, HypercallPageOffsets } from '@vsm/core';

/** The I/O port of the hypercall instruction. No device model lives on it. */
export const HYPERCALL_PORT = 0x4d;
/** `out 0x4d, ax` (operand-size prefix + E7 ib): 3 bytes, like VMCALL. */
export const HYPERCALL_INSN = [0x66, 0xe7, HYPERCALL_PORT] as const;
export const HYPERCALL_INSN_LENGTH = 3;
/** The size of the port access the hypercall instruction makes (AX). */
export const HYPERCALL_IO_SIZE = 2;
/** The port of the `out 0x4e, ax` that opens each VtlCall/VtlReturn entry (its MOVs done by the agent). */
export const PROLOGUE_PORT = 0x4e;
const PROLOGUE_INSN = [0x66, 0xe7, PROLOGUE_PORT] as const;

/** What a VtlCall/VtlReturn entry's MOVs do, by the entry's page offset. */
export interface EntryPrologue {
  /** HvCallVtlCall 0x11 or HvCallVtlReturn 0x12 (tlfs-hypercalls.md). */
  callCode: number;
  /** 64-bit entry (RAX = RCX, ECX = code) or 32-bit (ECX = EAX, EAX = code). */
  wide: boolean;
  /** Offset of the entry's `out 0x4d, ax` from the entry (the bytes of the MOVs it replaces). */
  hypercallAt: number;
}

const PROLOGUES = new Map<number, EntryPrologue>([
  [HypercallPageOffsets.vtlCall32, { callCode: 0x11, wide: false, hypercallAt: 7 }],
  [HypercallPageOffsets.vtlCall64, { callCode: 0x11, wide: true, hypercallAt: 8 }],
  [HypercallPageOffsets.vtlReturn32, { callCode: 0x12, wide: false, hypercallAt: 7 }],
  [HypercallPageOffsets.vtlReturn64, { callCode: 0x12, wide: true, hypercallAt: 8 }],
]);

/** The entry whose `out 0x4e, ax` sits at this offset of a page, if it is one. */
export const entryPrologue = (pageOffset: number): EntryPrologue | undefined => PROLOGUES.get(pageOffset);

/** Offsets of the hypercall instruction inside the page (one per entry point). */
export const HYPERCALL_INSN_OFFSETS: readonly number[] = [
  HypercallPageOffsets.hypercall,
  HypercallPageOffsets.vtlCall32 + 7,
  HypercallPageOffsets.vtlCall64 + 8,
  HypercallPageOffsets.vtlReturn32 + 7,
  HypercallPageOffsets.vtlReturn64 + 8,
];

export function buildKvmHypercallPage(): Buffer {
  const page = Buffer.alloc(4096, 0xcc);
  const call = [...HYPERCALL_INSN];
  const put = (off: number, bytes: readonly number[]) => Buffer.from(bytes).copy(page, off);
  put(HypercallPageOffsets.hypercall, [...call, 0xc3]);
  put(HypercallPageOffsets.vtlCall32, [0x89, 0xc1, 0xb8, 0x11, 0, 0, 0, ...call, 0xc3]);
  put(HypercallPageOffsets.vtlCall64, [0x48, 0x89, 0xc8, 0xb9, 0x11, 0, 0, 0, ...call, 0xc3]);
  put(HypercallPageOffsets.vtlReturn32, [0x89, 0xc1, 0xb8, 0x12, 0, 0, 0, ...call, 0xc3]);
  put(HypercallPageOffsets.vtlReturn64, [0x48, 0x89, 0xc8, 0xb9, 0x12, 0, 0, 0, ...call, 0xc3]);
  // Each VtlCall/VtlReturn entry opens with the prologue exit in place of its MOVs' first 3 bytes.
  for (const off of PROLOGUES.keys()) put(off, PROLOGUE_INSN);
  return page;
}

export const kvmHypercallPageLayout: HypercallPageLayout = {
  build: buildKvmHypercallPage,
  vtlCallOffset: HypercallPageOffsets.vtlCall64,
  vtlReturnOffset: HypercallPageOffsets.vtlReturn64,
};

/** One line for the capability report: how this page differs from the emulator's. */
export const HYPERCALL_PAGE_DESCRIPTION =
  `entries exit to the agent with 'out 0x${HYPERCALL_PORT.toString(16)}, ax' (66 E7 ${HYPERCALL_PORT.toString(16).toUpperCase()}) ` +
  `(VtlCall/VtlReturn entries open with 'out 0x${PROLOGUE_PORT.toString(16)}, ax', whose MOVs the agent does) ` +
  `in place of VMCALL/VMMCALL (KVM here has no Hyper-V support); offsets as OpenVMM/emulator: hypercall 0x00, ` +
  `VtlCall 0x0F (64-bit) / 0x04 (32-bit), VtlReturn 0x26 / 0x1B, INT3 elsewhere`;
