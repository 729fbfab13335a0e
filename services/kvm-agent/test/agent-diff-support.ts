// Support for differential tests: run the same vsm.v1 calls against two backends and compare
// the responses and the final state, with the fields that legitimately differ between the
// emulator and KVM normalized on both sides (see agent-differential.test.ts).
import { HvError, HvMsr } from '@vsm/core';
import { pb } from '@vsm/client';
import { ApiError, type Backend } from '@vsm/vsm-v1';
import { GiB } from './agent-support';

const R = pb.HvRegisterName;

/**
 * The hypercall instructions of both pages, blanked on both sides of a comparison, and the first 3
 * bytes of each VtlCall/VtlReturn entry: the agent's `out 0x4e, ax` prologue exit stands where the
 * emulator's page has its first MOV's bytes (`mov rax, rcx`; `mov ecx, eax` + B8), platform-kvm
 * hypercall-page.ts.
 */
const HYPERCALL_INSNS = [
  [0x0f, 0x01, 0xd9],
  [0x0f, 0x01, 0xc1],
  [0x66, 0xe7, 0x4d],
  [0x66, 0xe7, 0x4e],
  [0x48, 0x89, 0xc8],
  [0x89, 0xc1, 0xb8],
];
export function blankHypercallInsns(b: Uint8Array): Buffer {
  const out = Buffer.from(b);
  // Whole instructions anywhere, and parts of one cut by either end of the buffer.
  for (let i = -2; i < out.length; i++) {
    for (const s of HYPERCALL_INSNS) {
      if (s.every((x, k) => i + k < 0 || i + k >= out.length || out[i + k] === x)) out.fill(0, Math.max(0, i), Math.min(out.length, i + 3));
    }
  }
  return out;
}

/** A response or error, with the legitimately differing fields normalized. */
export function normalize(v: unknown): unknown {
  if (v instanceof HvError) return { error: 'HvError', status: v.statusName, message: v.message };
  if (v instanceof ApiError) return { error: 'ApiError', code: v.code, reason: v.reason, message: v.message };
  if (v instanceof Error) return { error: v.name, message: v.message };
  if (Buffer.isBuffer(v) || v instanceof Uint8Array) return blankHypercallInsns(v);
  if (Array.isArray(v)) {
    return v.filter((x) => !(x && typeof x === 'object' && (x as { name?: number }).name === R.HV_REGISTER_NAME_TIME_REF_COUNT)).map(normalize);
  }
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (k !== 'createTimeUnixMs') out[k] = normalize(x);
    return out;
  }
  return v;
}

export async function settle(p: Promise<unknown>): Promise<unknown> {
  try {
    return normalize(await p);
  } catch (e) {
    return normalize(e);
  }
}

/** A backend whose methods take partial requests (withDefaults completes them). */
export type LooseBackend = {
  [K in keyof Backend]: Backend[K] extends (r: infer Req, ...a: infer A) => infer Res ? (r: Partial<Req>, ...a: A) => Res : Backend[K];
};

export type Op = { what: string; run: (b: LooseBackend) => Promise<unknown> };

/**
 * The backend as the server calls it: every request completed with its defaults (what the gRPC
 * layer decodes), so a test can write partial requests.
 */
export function withDefaults(b: Backend): LooseBackend {
  return new Proxy(b as unknown as LooseBackend, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof prop !== 'string' || typeof v !== 'function') return v;
      const type = (pb as unknown as Record<string, { fromPartial?(o: unknown): unknown }>)[prop[0]!.toUpperCase() + prop.slice(1) + 'Request'];
      if (!type?.fromPartial) return (v as (...a: unknown[]) => unknown).bind(target);
      return (req: unknown, ...rest: unknown[]) => (v as (...a: unknown[]) => unknown).call(target, type.fromPartial!(req ?? {}), ...rest);
    },
  });
}

/** Runs `ops` on both backends in lockstep, comparing every response, then the final state. */
export async function differential(emuBackend: Backend, kvmBackend: Backend, name: string, vpCount: number, ops: Op[]): Promise<unknown[]> {
  const emu = withDefaults(emuBackend);
  const kvm = withDefaults(kvmBackend);
  const results: unknown[] = [];
  for (const op of ops) {
    const a = await settle(op.run(emu));
    results.push(a);
    const b = await settle(op.run(kvm));
    try {
      expect(b).toEqual(a);
    } catch (e) {
      throw new Error(
        `${op.what}: KVM and emulator differ\n${(e as Error).message}\nafter: ${ops
          .slice(0, ops.indexOf(op))
          .map((o) => o.what)
          .join('; ')}`,
      );
    }
  }
  for (const op of stateOps(name, vpCount)) {
    const a = await settle(op.run(emu));
    const b = await settle(op.run(kvm));
    try {
      expect(b).toEqual(a);
    } catch (e) {
      throw new Error(`final state, ${op.what}: KVM and emulator differ\n${(e as Error).message}`);
    }
  }
  return results;
}

/** Everything observable about a partition afterwards. */
export function stateOps(name: string, vpCount: number): Op[] {
  const ops: Op[] = [
    { what: 'GetPartition', run: (b) => b.getPartition({ name }) },
    { what: 'ListOverlays', run: (b) => b.listOverlays({ name }) },
  ];
  for (let i = 0; i < vpCount; i++) {
    const vp = `${name}/vps/${i}`;
    ops.push({ what: `GetVirtualProcessor ${i}`, run: (b) => b.getVirtualProcessor({ name: vp }) });
    for (const vtl of [0, 1, 2]) ops.push({ what: `GetVpRegisters vp ${i} vtl ${vtl}`, run: (b) => b.getVpRegisters({ name: vp, vtl, names: [] }) });
  }
  for (const gpa of [0n, 0x1000n, 0x2000n, 0x5000n, 0x7000n, 0x8000n, 0x9000n, 0x10000n, 0x11000n]) {
    ops.push({ what: `ReadGpa RAM 0x${gpa.toString(16)}`, run: (b) => b.readGpa({ name, gpa, length: 4096 }) });
    for (const vtl of [0, 1])
      ops.push({ what: `ReadGpa VTL${vtl} view 0x${gpa.toString(16)}`, run: (b) => b.readGpa({ name, gpa, length: 4096, vtlView: vtl }) });
  }
  return ops;
}

/**
 * The snapshot suites' common start (the same on each backend): a 2-VP partition with VTL1, RAM written
 * by the host under the later SIMP and by a guest action, then VTL1 entered mid-CALL (VTL0 parked on the
 * stub's RET) with its own guest OS id, hypercall page and SIMP. Returns the partition and VP 0 names.
 */
export async function vtl1MidCallSession(b: LooseBackend, id: string): Promise<{ name: string; vp0: string }> {
  const name = `partitions/${id}`;
  const vp0 = `${name}/vps/0`;
  await b.createPartition({ partitionId: id, partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
  await b.writeGpa({ name, gpa: 0x5000n, data: Buffer.from('ram under the SIMP') });
  await b.enablePartitionVtl({ name, targetVtl: 1 });
  await b.enableVpVtl({ name: vp0, targetVtl: 1 });
  await b.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 1n });
  await b.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x1001n });
  await b.writeMemory({ name: vp0, gpa: 0x30000n, data: Buffer.from('written by the guest') });
  await b.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n }); // into VTL1, VTL0 parked on the stub's RET
  await b.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 2n });
  await b.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x2001n });
  await b.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_SIMP, value: 0x5001n });
  return { name, vp0 };
}
