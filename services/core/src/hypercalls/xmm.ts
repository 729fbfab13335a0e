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
  b.writeBigUInt64LE(BigInt.asUintN(64, inv.inputGpa), 0);
  b.writeBigUInt64LE(BigInt.asUintN(64, inv.outputGpa), 8);
  for (let i = 0; i < HV_XMM_FAST_REGISTER_COUNT; i++) {
    const r = xmm(vp, i);
    b.writeBigUInt64LE(r.low, 16 + 16 * i);
    b.writeBigUInt64LE(r.high, 24 + 16 * i);
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
  cur.writeBigUInt64LE(vp.shared.get(R.HvX64RegisterRdx)?.low ?? 0n, 0);
  cur.writeBigUInt64LE(vp.shared.get(R.HvX64RegisterR8)?.low ?? 0n, 8);
  for (let i = 0; i < HV_XMM_FAST_REGISTER_COUNT; i++) {
    const r = xmm(vp, i);
    cur.writeBigUInt64LE(r.low, 16 + 16 * i);
    cur.writeBigUInt64LE(r.high, 24 + 16 * i);
  }
  bytes.copy(cur, offset, 0, end - offset);
  if (offset < 8) vp.shared.set(R.HvX64RegisterRdx, { low: cur.readBigUInt64LE(0), high: 0n });
  if (offset < 16 && end > 8) vp.shared.set(R.HvX64RegisterR8, { low: cur.readBigUInt64LE(8), high: 0n });
  for (let i = 0; i < HV_XMM_FAST_REGISTER_COUNT; i++) {
    const lo = 16 + 16 * i;
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
