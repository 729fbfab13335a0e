// Security test support: a pino logger that keeps its JSON lines, a server with a policy, and
// small helpers for audit lines and failed calls.
import pino, { type Logger } from 'pino';
import { pb, type VsmClient } from '@vsm/client';
import { CoreBackend, type RunningServer, type ServerOptions, startServer } from '@vsm/vsm-v1';
import { sha256Hex } from '@vsm/vsm-v1/security';
import { HvMsr } from '@vsm/core';

export interface LogLine {
  level: number;
  msg: string;
  audit?: boolean;
  principal?: string | null;
  method?: string;
  resource?: string;
  decision?: 'allow' | 'deny';
  [k: string]: unknown;
}

export function captureLogger(level = 'info'): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const logger = pino(
    { level },
    {
      write: (s: string) => {
        for (const l of s.split('\n')) if (l.trim()) lines.push(JSON.parse(l) as LogLine);
      },
    },
  );
  return { logger, lines };
}

export const tokenHash = (t: string) => `sha256:${sha256Hex(t)}`;

export async function startSecured(extra: Partial<ServerOptions> & { backend?: CoreBackend } = {}): Promise<{ srv: RunningServer; lines: LogLine[] }> {
  const { logger, lines } = captureLogger();
  const srv = await startServer({ listen: '127.0.0.1:0', backend: extra.backend ?? new CoreBackend(), logger, shutdownGraceMs: 200, ...extra });
  return { srv, lines };
}

export const audits = (lines: LogLine[], decision?: 'allow' | 'deny') => lines.filter((l) => l.audit && (decision === undefined || l.decision === decision));

export const partitionSpec = (vpCount = 1, maximumVtl = 1) => ({ vpCount, memoryBytes: 1n << 30n, maximumVtl }) as pb.Partition;

// ---- a partition with VTL1 set up as a guest would (shared with test/fuzz) ------------------

export const MSR = {
  GUEST_OS_ID: HvMsr.HV_X64_MSR_GUEST_OS_ID,
  HYPERCALL: HvMsr.HV_X64_MSR_HYPERCALL,
  VP_ASSIST: HvMsr.HV_X64_MSR_VP_ASSIST_PAGE,
  REFERENCE_TSC: HvMsr.HV_X64_MSR_REFERENCE_TSC,
  SCONTROL: HvMsr.HV_X64_MSR_SCONTROL,
  SIEFP: HvMsr.HV_X64_MSR_SIEFP,
  SIMP: HvMsr.HV_X64_MSR_SIMP,
  EOM: HvMsr.HV_X64_MSR_EOM,
  SINT0: HvMsr.HV_X64_MSR_SINT0,
};
export const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });

export interface Vtl1Layout {
  /** RAM page VTL1 protects no-access from VTL0 and keeps a secret in. */
  secretGpa: bigint;
  vtl0HypercallGpa: bigint;
  vtl1HypercallGpa: bigint;
  vtl1SimpGpa: bigint;
  vtl1SiefpGpa: bigint;
  vtl1AssistGpa: bigint;
}
export const VTL1_LAYOUT: Vtl1Layout = {
  secretGpa: 0x40000n,
  vtl0HypercallGpa: 0x1000n,
  vtl1HypercallGpa: 0x2000n,
  vtl1SimpGpa: 0x9000n,
  vtl1SiefpGpa: 0xa000n,
  vtl1AssistGpa: 0xb000n,
};

/**
 * Creates `id` (x64, `vpCount` VPs, 1 GiB, VTLs up to 1), enables VTL1 on every VP, and on each VP
 * lets VTL1 (entered by VtlCall from VTL0) place its hypercall page, SIMP, SIEFP and VP assist page
 * and enable its SynIC; VTL1 turns on EnableVtlProtection, the host stores `secret` at secretGpa and
 * VTL1's mask makes that page no-access for VTL0. Every VP ends in VTL0.
 */
export async function setupVtl1Partition(
  c: VsmClient,
  id: string,
  vpCount: number,
  secret: Buffer,
  L: Vtl1Layout = VTL1_LAYOUT,
): Promise<{ name: string; vps: string[] }> {
  const p = await c.partitions.createPartition({ partitionId: id, partition: { vpCount, memoryBytes: 1n << 30n, maximumVtl: 1 } as pb.Partition });
  const vps = Array.from({ length: vpCount }, (_, i) => `${p.name}/vps/${i}`);
  await c.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
  for (const [i, vp] of vps.entries()) {
    await c.vtl.enableVpVtl({ name: vp, targetVtl: 1 });
    await c.guest.writeMsr({ name: vp, msr: MSR.GUEST_OS_ID, value: 1n });
    await c.guest.writeMsr({ name: vp, msr: MSR.HYPERCALL, value: L.vtl0HypercallGpa | 1n });
    const call = await c.guest.callHypercallPage({ name: vp, offset: 0x0f, rcx: 0n }); // VtlCall
    if (call.outcome?.activeVtl !== 1) throw new Error(`VtlCall on ${vp} did not enter VTL1`);
    await c.guest.writeMsr({ name: vp, msr: MSR.GUEST_OS_ID, value: 2n });
    await c.guest.writeMsr({ name: vp, msr: MSR.HYPERCALL, value: L.vtl1HypercallGpa | 1n });
    const perVp = BigInt(i) * 0x10000n;
    await c.guest.writeMsr({ name: vp, msr: MSR.SIMP, value: (L.vtl1SimpGpa + perVp) | 1n });
    await c.guest.writeMsr({ name: vp, msr: MSR.SIEFP, value: (L.vtl1SiefpGpa + perVp) | 1n });
    await c.guest.writeMsr({ name: vp, msr: MSR.VP_ASSIST, value: (L.vtl1AssistGpa + perVp) | 1n });
    await c.guest.writeMsr({ name: vp, msr: MSR.SCONTROL, value: 1n });
    await c.guest.writeMsr({ name: vp, msr: MSR.SINT0, value: 0x30n });
  }
  await c.vps.setVpRegisters({ name: vps[0]!, vtl: 1, registers: [r64(pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] });
  await c.memory.writeGpa({ name: p.name, gpa: L.secretGpa, data: secret });
  // VTL1 (active on VP0) protects the page: HvCallModifyVtlProtectionMask, no access for VTL0.
  const input = Buffer.alloc(24);
  input.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
  input.writeUInt32LE(0, 8);
  input.writeBigUInt64LE(L.secretGpa >> 12n, 16);
  const r = await c.guest.hypercall({ name: vps[0]!, control: 0x0cn | (1n << 32n), inputGpa: 0x20000n, input });
  if (r.status !== pb.HvStatus.HV_STATUS_SUCCESS) throw new Error(`ModifyVtlProtectionMask failed: ${r.status}`);
  for (const vp of vps) {
    const ret = await c.guest.callHypercallPage({ name: vp, offset: 0x26, rcx: 1n }); // VtlReturn (fast)
    if (ret.outcome?.activeVtl !== 0) throw new Error(`VtlReturn on ${vp} did not return to VTL0`);
  }
  return { name: p.name, vps };
}
