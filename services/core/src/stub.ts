// core: a CALL into the active VTL's hypercall page, for both engines. The core decides what the
// call means (the checks, the caller's RIP, pendingStubReturn, the outcome); the engine only runs
// the page's code and reports what it did (HypercallPageCode): it reached a hypercall instruction,
// it returned, or it raised an exception. The emulated engine runs the page's bytes with a tiny
// decoder for the handful of instructions our stubs use (tlfs/vsm.ts buildHypercallPage); the KVM
// engine runs them on the vCPU. The CALL's stack push is not modelled: the return address is kept
// in the VP's per-VTL state (pendingStubReturn) instead, and RSP is untouched. When a hypercall in a
// stub switches VTL, the caller stays at the RET after it and executes the RET when it next runs
// (stub-return.ts resumeStub), exactly as on hardware.
import { type GuestOutcome, type Partition, type VirtualProcessor, X64Exception, type X64ExceptionVector } from './partition';
import { HvError, HvStatus } from './tlfs/status';
import { HvRegisterName as R } from './tlfs/registers';
import { type HypercallOutcome, executeVmcall } from './hypercalls';
import type { HypercallCallSite } from './vtl-switch';

const MAX_STEPS = 16;

export interface StubOutcome extends GuestOutcome {
  rax: bigint;
}

/** What the page's code did, as the engine that ran it reports it. */
export type HypercallPageEvent =
  /**
   * It reached its hypercall instruction at GPA `rip`; the core's register file holds the general
   * registers it executes with (the core's dispatcher executes it).
   */
  | { kind: 'hypercall'; rip: bigint }
  /** It returned to its caller (RET); the core's register file holds the general registers it left. */
  | { kind: 'return' }
  /** It raised an exception (the core's register file holds the general registers it left). */
  | { kind: 'exception'; vector: X64ExceptionVector };

/** The page's code as an engine runs it, for one call. */
export interface HypercallPageCode {
  /**
   * Runs the code until its next event: from the entry the first time, afterwards on from the
   * instruction after the hypercall it reported last (which completed without switching VTL or
   * raising an exception), with the general registers the core now holds.
   */
  run(): HypercallPageEvent;
  /** Executes the reported hypercall instruction with the core's dispatcher (default: executeVmcall). */
  dispatch?(callSite: HypercallCallSite): HypercallOutcome;
}

/**
 * The CALL: `code` runs the page's code (the page is at `pageGpa`, the CALL's target at `entry`);
 * without it, the emulated engine's decoder runs the bytes the VP sees there.
 */
export function callHypercallPage(
  p: Partition,
  vp: VirtualProcessor,
  offset: number,
  code: (pageGpa: bigint, entry: bigint) => HypercallPageCode = (pageGpa, entry) => emulatedPageCode(p, vp, pageGpa, entry),
): StubOutcome {
  p.assertVpCanAct(vp); // a suspended VP runs no code (and its RIP is not moved into the page)
  if (p.spec.architecture !== 'x64') throw new HvError(HvStatus.HV_STATUS_FEATURE_UNAVAILABLE, 'arm64 has no hypercall page (HVC #2/#3 instead; not modelled)');
  const vtl = vp.activeVtl;
  const overlay = p.overlays.find('hypercall', vtl, null);
  if (!overlay) throw new HvError(HvStatus.HV_STATUS_INVALID_VP_STATE, `the hypercall page is not enabled in VTL ${vtl} (HV_X64_MSR_HYPERCALL)`);
  if (!Number.isInteger(offset) || offset < 0 || offset > 4095) throw new HvError(HvStatus.HV_STATUS_INVALID_PARAMETER, `offset ${offset} is outside the page`);
  const pageGpa = overlay.gpfn << 12n;
  const returnRip = p.reg(vp, R.HvX64RegisterRip);
  const st = vp.vtls.get(vtl);
  const rax = () => p.reg(vp, R.HvX64RegisterRax);
  // The caller's RAX/RCX before the page's code runs (a VtlCall from the page records them).
  const callSite: HypercallCallSite = { rax: rax(), rcx: p.reg(vp, R.HvX64RegisterRcx) };
  const page = code(pageGpa, pageGpa + BigInt(offset));
  const dispatch = (): HypercallOutcome => (page.dispatch ? page.dispatch(callSite) : executeVmcall(p, vp, { callSite }));
  /** The call is over in the caller's VTL: back at the caller's RIP, nothing parked on a RET. */
  const returned = (exception?: X64ExceptionVector): StubOutcome => {
    p.setReg(vp, R.HvX64RegisterRip, returnRip);
    st.pendingStubReturn = null;
    const o: StubOutcome = { activeVtl: vp.activeVtl, rax: rax() };
    if (exception !== undefined) o.exception = exception; // present only when raised (no object spread)
    return o;
  };
  for (;;) {
    const ev = page.run();
    if (ev.kind === 'return') return returned();
    if (ev.kind === 'exception') return returned(ev.vector);
    // The hypercall instruction runs at its address in the page; if it switches VTL the caller is
    // parked on the stub's RET (pendingStubReturn), which it executes when it next runs.
    p.setReg(vp, R.HvX64RegisterRip, ev.rip);
    st.pendingStubReturn = returnRip;
    const o = dispatch();
    if (o.exception !== undefined) return returned(o.exception);
    if (o.vtlSwitch) {
      const out: StubOutcome = { activeVtl: vp.activeVtl, vtlSwitch: o.vtlSwitch, resumedAccess: o.resumedAccess, rax: rax() };
      if (o.reentry) out.reentry = o.reentry;
      return out;
    }
    st.pendingStubReturn = null;
  }
}

/**
 * The emulated engine's run of the page's code: the bytes the VP sees at the page's GPA (an overlay
 * placed on top of the hypercall page, stacking, overlays.ts, is what runs, as on hardware and on
 * the KVM agent), decoded for the instructions our stubs use: mov ecx, eax; mov rax, rcx; mov
 * eax/ecx, imm32; the vendor's hypercall instruction; ret; int3 (the fill). Anything else is #UD.
 */
function emulatedPageCode(p: Partition, vp: VirtualProcessor, pageGpa: bigint, entry: bigint): HypercallPageCode {
  const page = p.readView(vp.activeVtl, vp.index, pageGpa, 4096);
  const gpr = (n: number) => p.reg(vp, n);
  const set = (n: number, v: bigint) => p.setReg(vp, n, v & 0xffff_ffff_ffff_ffffn);
  let pc = Number(entry - pageGpa);
  let steps = 0;
  return {
    run: () => {
      for (; steps < MAX_STEPS; steps++) {
        const b = (i: number) => page[pc + i] ?? 0xcc;
        if (b(0) === 0x89 && b(1) === 0xc1) {
          set(R.HvX64RegisterRcx, gpr(R.HvX64RegisterRax) & 0xffffffffn);
          pc += 2;
          continue;
        } // mov ecx, eax
        if (b(0) === 0x48 && b(1) === 0x89 && b(2) === 0xc8) {
          set(R.HvX64RegisterRax, gpr(R.HvX64RegisterRcx));
          pc += 3;
          continue;
        } // mov rax, rcx
        if (b(0) === 0xb8 || b(0) === 0xb9) {
          // mov eax/ecx, imm32 (zero-extends)
          const imm = BigInt(page.readUInt32LE(pc + 1));
          set(b(0) === 0xb8 ? R.HvX64RegisterRax : R.HvX64RegisterRcx, imm);
          pc += 5;
          continue;
        }
        if (b(0) === 0x0f && b(1) === 0x01 && (b(2) === 0xc1 || b(2) === 0xd9)) {
          // vmcall / vmmcall
          // VMCALL on AMD and VMMCALL on Intel are #UD; our page always holds the vendor's own one.
          if ((b(2) === 0xc1) !== (p.vendor === 'intel')) return { kind: 'exception', vector: X64Exception.UD };
          const at = pageGpa + BigInt(pc);
          pc += 3; // run() is called again only when the hypercall completed in this VTL
          steps++;
          return { kind: 'hypercall', rip: at };
        }
        if (b(0) === 0xc3) return { kind: 'return' }; // ret
        if (b(0) === 0xcc) return { kind: 'exception', vector: X64Exception.BP }; // int3 fill
        return { kind: 'exception', vector: X64Exception.UD };
      }
      return { kind: 'exception', vector: X64Exception.UD };
    },
  };
}
