// core: executes a CALL into the active VTL's hypercall page. The page holds our own stubs
// (tlfs/vsm.ts buildHypercallPage), so the emulator runs exactly those bytes with a tiny decoder
// for the handful of instructions they use. The CALL's stack push is not modelled: the return
// address is kept in the VP's per-VTL state (pendingStubReturn) instead, and RSP is untouched.
// When a VMCALL in a stub switches VTL, the caller stays at the RET after the VMCALL and executes
// it when it next runs (stub-return.ts resumeStub), exactly as on hardware.
import { type GuestOutcome, type Partition, type VirtualProcessor, X64Exception } from './partition';
import { HvError, HvStatus } from './tlfs/status';
import { HvRegisterName as R } from './tlfs/registers';
import { executeVmcall } from './hypercalls';

const MAX_STEPS = 16;

export interface StubOutcome extends GuestOutcome {
  rax: bigint;
}

export function callHypercallPage(p: Partition, vp: VirtualProcessor, offset: number): StubOutcome {
  p.assertVpCanAct(vp); // a suspended VP runs no code (and its RIP is not moved into the page)
  if (p.spec.architecture !== 'x64') throw new HvError(HvStatus.HV_STATUS_FEATURE_UNAVAILABLE, 'arm64 has no hypercall page (HVC #2/#3 instead; not modelled)');
  const vtl = vp.activeVtl;
  const overlay = p.overlays.find('hypercall', vtl, null);
  if (!overlay) throw new HvError(HvStatus.HV_STATUS_INVALID_VP_STATE, `the hypercall page is not enabled in VTL ${vtl} (HV_X64_MSR_HYPERCALL)`);
  if (!Number.isInteger(offset) || offset < 0 || offset > 4095) throw new HvError(HvStatus.HV_STATUS_INVALID_PARAMETER, `offset ${offset} is outside the page`);
  const pageGpa = overlay.gpfn << 12n;
  // The CALL fetches what the VP sees at the page's GPA: an overlay placed on top of the hypercall
  // page (stacking, overlays.ts) is what runs, as on hardware and on the KVM agent.
  const page = p.readView(vtl, vp.index, pageGpa, 4096);
  const returnRip = p.reg(vp, R.HvX64RegisterRip);
  const st = vp.vtls.get(vtl);
  const gpr = (n: number) => p.reg(vp, n);
  const set = (n: number, v: bigint) => p.setReg(vp, n, v & 0xffff_ffff_ffff_ffffn);
  const fail = (exception: (typeof X64Exception)[keyof typeof X64Exception]): StubOutcome => {
    set(R.HvX64RegisterRip, returnRip);
    st.pendingStubReturn = null;
    return { exception, activeVtl: vp.activeVtl, rax: gpr(R.HvX64RegisterRax) };
  };
  // The caller's RAX/RCX before the page's code runs (a VtlCall from the page records them).
  const callSite = { rax: gpr(R.HvX64RegisterRax), rcx: gpr(R.HvX64RegisterRcx) };
  let pc = offset;
  for (let step = 0; step < MAX_STEPS; step++) {
    const b = (i: number) => page[pc + i] ?? 0xcc;
    if (b(0) === 0x89 && b(1) === 0xc1) { set(R.HvX64RegisterRcx, gpr(R.HvX64RegisterRax) & 0xffffffffn); pc += 2; continue; } // mov ecx, eax
    if (b(0) === 0x48 && b(1) === 0x89 && b(2) === 0xc8) { set(R.HvX64RegisterRax, gpr(R.HvX64RegisterRcx)); pc += 3; continue; } // mov rax, rcx
    if (b(0) === 0xb8 || b(0) === 0xb9) { // mov eax/ecx, imm32 (zero-extends)
      const imm = BigInt(page.readUInt32LE(pc + 1));
      set(b(0) === 0xb8 ? R.HvX64RegisterRax : R.HvX64RegisterRcx, imm);
      pc += 5;
      continue;
    }
    if (b(0) === 0x0f && b(1) === 0x01 && (b(2) === 0xc1 || b(2) === 0xd9)) { // vmcall / vmmcall
      // VMCALL on AMD and VMMCALL on Intel are #UD; our page always holds the vendor's own one.
      if ((b(2) === 0xc1) !== (p.vendor === 'intel')) return fail(X64Exception.UD);
      set(R.HvX64RegisterRip, pageGpa + BigInt(pc));
      st.pendingStubReturn = returnRip;
      const o = executeVmcall(p, vp, { callSite });
      if (o.exception !== undefined) return fail(o.exception);
      if (o.vtlSwitch) return { activeVtl: vp.activeVtl, vtlSwitch: o.vtlSwitch, resumedAccess: o.resumedAccess, rax: gpr(R.HvX64RegisterRax) };
      st.pendingStubReturn = null;
      pc += 3;
      continue;
    }
    if (b(0) === 0xc3) { // ret
      set(R.HvX64RegisterRip, returnRip);
      st.pendingStubReturn = null;
      return { activeVtl: vp.activeVtl, rax: gpr(R.HvX64RegisterRax) };
    }
    if (b(0) === 0xcc) return fail(X64Exception.BP); // int3 fill
    return fail(X64Exception.UD);
  }
  return fail(X64Exception.UD);
}
