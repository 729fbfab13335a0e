// core: the one piece of hypercall-page state that VTL switches and intercept entry need. A VMCALL in
// a hypercall-page stub that switched VTL leaves its caller parked on the stub's RET; the caller
// executes that RET when it next runs (see stub.ts). Kept apart from stub.ts so that the access and
// VTL-switch rules do not depend on the hypercall dispatcher (no import cycle).
import type { VirtualProcessor } from './state/vp';
import { HvRegisterName as R } from './tlfs/registers';
import { setReg } from './rules/processor';

/** A VTL that is resumed while parked on a stub's RET executes the RET (returns to its caller). */
export function resumeStub(vp: VirtualProcessor): void {
  const st = vp.vtls.get(vp.activeVtl);
  if (st.pendingStubReturn === null) return;
  setReg(vp, R.HvX64RegisterRip, st.pendingStubReturn);
  st.pendingStubReturn = null;
}
