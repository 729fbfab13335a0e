// core, hypercalls: the XMM fast hypercall register block (tlfs-hypercalls.md §1.4; TLFS
// hypercall-interface.md "XMM Fast Hypercalls"): RDX, R8, XMM0..XMM5 in that order, 112 bytes. The
// input fills it from the start; the output goes into the registers after the input, starting at
// the first 16-byte chunk the input does not use (a 20-byte input: bytes 20..31 ignored, 80 bytes of
// output from XMM0 on). Registers used as input are preserved; only output registers change.
import type { VirtualProcessor } from '../partition';
import { HvRegisterName as R, type Reg128 } from '../tlfs/registers';
import { HvStatus, hvFail } from '../tlfs/status';
import type { HypercallInvocation } from './dispatcher';

/** RDX + R8 + XMM0..XMM5. */
export const HV_XMM_FAST_BLOCK_BYTES = 112;
/** XMM registers that carry fast input/output (TLFS: six; WHV_HYPERCALL_CONTEXT_MAX_XMM_REGISTERS). */
export const HV_XMM_FAST_REGISTER_COUNT = 6;

const xmm = (vp: VirtualProcessor, i: number): Reg128 => vp.shared.get(R.HvX64RegisterXmm0 + i) ?? { low: 0n, high: 0n };
/** Byte offsets in the block: RDX 0, R8 8, XMMn 16 + 16n (its low quadword first). */
const RDX_AT = 0;
const R8_AT = 8;
const xmmAt = (i: number): number => 16 + 16 * i;

/**
 * The registers a guest loads for an XMM fast call whose input is `input` (at most 112 bytes), as
 * the block's layout places it: RDX and R8 always, XMM0.. up to the last register the input reaches;
 * a register the input covers only in part gets zeros for the rest.
 */
export function fastInputRegisters(input: Buffer): { rdx: bigint; r8: bigint; xmm: Reg128[] } {
  if (input.length > HV_XMM_FAST_BLOCK_BYTES)
    hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, `${input.length} input bytes do not fit an XMM fast call (at most ${HV_XMM_FAST_BLOCK_BYTES})`);
  const b = Buffer.alloc(HV_XMM_FAST_BLOCK_BYTES);
  input.copy(b);
  const xmm: Reg128[] = [];
  for (let i = 0; xmmAt(i) < input.length; i++) xmm.push({ low: b.readBigUInt64LE(xmmAt(i)), high: b.readBigUInt64LE(xmmAt(i) + 8) });
  return { rdx: b.readBigUInt64LE(RDX_AT), r8: b.readBigUInt64LE(R8_AT), xmm };
}

/**
 * Where the output starts in the block for an XMM fast call of `inSize` input and `outSize` output
 * bytes; HV_STATUS_INVALID_HYPERCALL_INPUT when the input exceeds 112 bytes or the output does not
 * fit in the registers the input leaves.
 */
export function xmmFastChunk(call: string, inSize: number, outSize: number): number {
  if (inSize > HV_XMM_FAST_BLOCK_BYTES)
    hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, `${call}: ${inSize} input bytes do not fit an XMM fast call (at most ${HV_XMM_FAST_BLOCK_BYTES})`);
  const at = Math.ceil(inSize / 16) * 16;
  if (outSize > HV_XMM_FAST_BLOCK_BYTES - at)
    hvFail(
      HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT,
      `${call}: ${outSize} output bytes do not fit the ${HV_XMM_FAST_BLOCK_BYTES - at} register bytes after a ${inSize}-byte XMM fast input`,
    );
  return at;
}

/** The block as the VP holds it: RDX and R8 (from the invocation, which read them by the caller's convention), XMM0..XMM5. */
export function readFastBlock(vp: VirtualProcessor, inv: HypercallInvocation): Buffer {
  const b = Buffer.alloc(HV_XMM_FAST_BLOCK_BYTES);
  b.writeBigUInt64LE(BigInt.asUintN(64, inv.inputGpa), RDX_AT);
  b.writeBigUInt64LE(BigInt.asUintN(64, inv.outputGpa), R8_AT);
  for (let i = 0; i < HV_XMM_FAST_REGISTER_COUNT; i++) {
    const r = xmm(vp, i);
    b.writeBigUInt64LE(r.low, xmmAt(i));
    b.writeBigUInt64LE(r.high, xmmAt(i) + 8);
  }
  return b;
}

/**
 * Writes `bytes` into the block at byte `offset` (RDX 0..7, R8 8..15, XMMn 16+16n..): only the
 * registers the range covers change, and bytes of a covered register outside the range keep their value.
 */
export function writeFastBlock(vp: VirtualProcessor, offset: number, bytes: Buffer): void {
  const end = Math.min(HV_XMM_FAST_BLOCK_BYTES, offset + bytes.length);
  const cur = Buffer.alloc(HV_XMM_FAST_BLOCK_BYTES);
  cur.writeBigUInt64LE(vp.shared.get(R.HvX64RegisterRdx)?.low ?? 0n, RDX_AT);
  cur.writeBigUInt64LE(vp.shared.get(R.HvX64RegisterR8)?.low ?? 0n, R8_AT);
  for (let i = 0; i < HV_XMM_FAST_REGISTER_COUNT; i++) {
    const r = xmm(vp, i);
    cur.writeBigUInt64LE(r.low, xmmAt(i));
    cur.writeBigUInt64LE(r.high, xmmAt(i) + 8);
  }
  bytes.copy(cur, offset, 0, end - offset);
  if (offset < R8_AT) vp.shared.set(R.HvX64RegisterRdx, { low: cur.readBigUInt64LE(RDX_AT), high: 0n });
  if (offset < xmmAt(0) && end > R8_AT) vp.shared.set(R.HvX64RegisterR8, { low: cur.readBigUInt64LE(R8_AT), high: 0n });
  for (let i = 0; i < HV_XMM_FAST_REGISTER_COUNT; i++) {
    const lo = xmmAt(i);
    if (end > lo && offset < lo + 16) vp.shared.set(R.HvX64RegisterXmm0 + i, { low: cur.readBigUInt64LE(lo), high: cur.readBigUInt64LE(lo + 8) });
  }
}

/** The bytes of the block the output covered, as the guest reads them back (for reports). */
export function fastBlockBytes(vp: VirtualProcessor, offset: number, length: number): Buffer {
  return readFastBlock(vp, {
    control: 0n,
    inputGpa: vp.shared.get(R.HvX64RegisterRdx)?.low ?? 0n,
    outputGpa: vp.shared.get(R.HvX64RegisterR8)?.low ?? 0n,
  }).subarray(offset, offset + length);
}
