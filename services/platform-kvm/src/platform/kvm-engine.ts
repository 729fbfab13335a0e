// platform (KVM): the KVM agent's engine behind the core's GuestEngine seam. Guest actions run as
// real instructions on the VP's vCPU (kvm-partition.ts); VTL protections are enforced by memslots, and
// a refused ReadMemory/WriteMemory exits as MMIO and becomes the core's intercept. Answered by the
// core's model instead: ExecuteMemory (a real fetch would execute the bytes, and execute protection
// cannot be enforced with memslots here), and the memory actions of a VTL whose view would need more
// memslots than the budget. KVM failures leave as EngineErrors (the vsm.v1 layer maps them).
import * as core from '@vsm/core';
import { EngineError, type GuestEngine, HvError } from '@vsm/core';
import { SysError } from '../kvm';
import { type KvmPartition, KvmRunError } from './kvm-partition';

export function kvmEngine(kp: KvmPartition): GuestEngine {
  const p = () => kp.partition;
  return {
    writeMsr: (vp, msr, value) => run(() => kp.writeMsr(vp, msr, value)),
    readMsr: (vp, msr) => run(() => kp.readMsr(vp, msr)),
    vmcall: (vp) => run(() => kp.vmcall(vp)),
    callHypercallPage: (vp, offset) => run(() => kp.callHypercallPage(vp, offset)),
    store: (vp, gpa, data) =>
      run(() => {
        guestWrites(kp, gpa, data.length);
        if (kp.enforcesProtections(vp)) return kp.memoryAccess(vp, 'write', gpa, data.length, data);
        return kp.guestWrite(vp, gpa, data) ? { status: 'completed' } : core.STORE_GP;
      }),
    load: (vp, gpa, length) => run(() => kp.guestRead(vp, gpa, length)),
    access: (vp, kind, gpa, length, data, gva) =>
      run(() => {
        if (kind === 'write') guestWrites(kp, gpa, length);
        if (kind !== 'execute' && kp.enforcesProtections(vp)) return kp.memoryAccess(vp, kind, gpa, length, data, gva);
        return core.guestAccess(p(), vp, kind, gpa, length, data, { gva });
      }),
  };
}

/**
 * A guest action's store, about to run on the vCPU: the RAM's write log and an export's copy-on-write
 * learn of its pages first (the guest writes the memfd directly, behind MemfdRam.write).
 */
function guestWrites(kp: KvmPartition, gpa: bigint, length: number): void {
  if (length <= 0 || gpa < 0n || gpa >= kp.ram.sizeBytes) return;
  const end = gpa + BigInt(length) > kp.ram.sizeBytes ? kp.ram.sizeBytes : gpa + BigInt(length);
  kp.ram.beforeWrite(Number(gpa), Number(end - gpa));
}

function run<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw engineErrorOf(e);
  }
}

/** KVM failures as engine errors; the core's HvErrors pass unchanged. */
export function engineErrorOf(e: unknown): unknown {
  if (e instanceof HvError || e instanceof EngineError) return e;
  if (e instanceof KvmRunError && e.kind === 'unenforced') return new EngineError('failed-precondition', 'KVM_PROTECTIONS_NOT_ENFORCED', e.message);
  if (e instanceof KvmRunError)
    return new EngineError(e.kind === 'timeout' ? 'aborted' : 'unavailable', e.kind === 'timeout' ? 'KVM_GUEST_TIMEOUT' : 'KVM_UNEXPECTED_EXIT', e.message);
  if (e instanceof SysError) return new EngineError('unavailable', 'KVM_ERROR', `KVM: ${e.message}`);
  return e;
}
