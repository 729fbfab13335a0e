// Property: VTL private state is isolated (tlfs-vsm.md §9). Over random sequences of host register
// writes, guest synthetic-MSR writes, VtlCall and VtlReturn (through the hypercall-page stubs, as a
// guest does it: tlfs-vsm.md §6, tlfs-hypercalls.md §1.7, §2.6), a VTL's private registers change
// only through
//   (a) explicit writes that target that VTL (host writes naming it; guest WRMSR while it is active),
//   (b) the RIP movement of VtlCall/VtlReturn: the caller parks on the RET that follows the VMCALL in
//       its stub (VMCALL address + 3), and a parked VTL, when resumed, executes that RET and continues
//       at the return address of its CALL into the page;
// shared registers change only through explicit writes and the stubs' own instructions
// (mov rax, rcx; mov ecx, 0x11/0x12). The model below predicts all of it and is compared with the
// partition after every step.
import fc from 'fast-check';
import {
  HvMsr,
  HvRegisterName as R,
  Partition,
  type Reg128,
  X64Exception,
  callHypercallPage,
  longModeContext,
  reg64,
  registerInfo,
  segmentToReg128,
  tableToReg128,
} from '@vsm/core';

type V = 0 | 1;
const PAGE: Record<V, bigint> = { 0: 0x10n << 12n, 1: 0x20n << 12n };
const VTL_CALL_OFFSET = 0x0f;
const VTL_RETURN_OFFSET = 0x26;
/** Stub length: mov rax,rcx (3) + mov ecx,imm32 (5) + VMCALL (3) -> the RET is at offset + 11. */
const RET_AFTER_VMCALL = 11n;
const VTL0_START_RIP = 0x0000_0000_0040_1000n;
const VTL1_ENTRY_RIP = 0xffff_f800_0000_2000n;
const MASK64 = (1n << 64n) - 1n;

const CODE_SEG = longModeContext().cs;

/** Private registers compared after every step (all of them must be VSM-private). */
const PRIVATE: number[] = [
  R.HvX64RegisterRip,
  R.HvX64RegisterRsp,
  R.HvX64RegisterRflags,
  R.HvX64RegisterCr0,
  R.HvX64RegisterCr3,
  R.HvX64RegisterCr4,
  R.HvX64RegisterCr8,
  R.HvX64RegisterDr7,
  R.HvX64RegisterEfer,
  R.HvX64RegisterKernelGsBase,
  R.HvX64RegisterPat,
  R.HvX64RegisterSysenterCs,
  R.HvX64RegisterSysenterEip,
  R.HvX64RegisterSysenterEsp,
  R.HvX64RegisterStar,
  R.HvX64RegisterLstar,
  R.HvX64RegisterCstar,
  R.HvX64RegisterSfmask,
  R.HvX64RegisterCs,
  R.HvX64RegisterSs,
  R.HvX64RegisterDs,
  R.HvX64RegisterGdtr,
  R.HvX64RegisterIdtr,
  R.HvRegisterGuestOsId,
  R.HvX64RegisterHypercall,
  R.HvRegisterScontrol,
  R.HvRegisterSint0 + 3,
];
/** Shared registers compared after every step. */
const SHARED: number[] = [
  R.HvX64RegisterRax,
  R.HvX64RegisterRcx,
  R.HvX64RegisterRdx,
  R.HvX64RegisterRbx,
  R.HvX64RegisterRbp,
  R.HvX64RegisterRsi,
  R.HvX64RegisterRdi,
  R.HvX64RegisterR8,
  R.HvX64RegisterR15,
  R.HvX64RegisterCr2,
  R.HvX64RegisterDr0,
  R.HvX64RegisterDr3,
];

interface Parked {
  /** Return address of the CALL into the hypercall page. */
  ret: bigint;
  /** Where the VTL is parked: the RET after the VMCALL. */
  at: bigint;
}
interface Model {
  active: V;
  priv: Record<V, Map<number, Reg128>>;
  parked: Record<V, Parked | null>;
  shared: Map<number, bigint>;
}
interface Real {
  p: Partition;
}

const vpOf = (r: Real) => r.p.vps[0]!;
const name = (n: number) => registerInfo(n)!.tlfsName;

function cplOf(m: Model, v: V): number {
  const cs = m.priv[v].get(R.HvX64RegisterCs)!;
  return Number((cs.high >> 53n) & 3n); // attributes are bits 127:112; DPL = attributes 6:5
}
function protectedMode(m: Model, v: V): boolean {
  return (m.priv[v].get(R.HvX64RegisterCr0)!.low & 1n) === 1n;
}

/** A parked VTL that is resumed executes its RET, if it is still parked on it. */
function resume(m: Model, v: V): void {
  const pk = m.parked[v];
  if (!pk) return;
  if (m.priv[v].get(R.HvX64RegisterRip)!.low === pk.at) m.priv[v].set(R.HvX64RegisterRip, reg64(pk.ret));
  m.parked[v] = null;
}

function matches(m: Model, r: Real): boolean {
  const vp = vpOf(r);
  if (vp.activeVtl !== m.active) return false;
  for (const v of [0, 1] as V[]) {
    for (const n of PRIVATE) {
      const a = r.p.getRegister(vp, v, n);
      const e = m.priv[v].get(n)!;
      if (a.low !== e.low || a.high !== e.high) return false;
    }
  }
  return SHARED.every((n) => r.p.getRegister(vp, m.active, n).low === m.shared.get(n));
}

/** Fast path when everything matches; otherwise jest assertions that show the difference. */
function compare(m: Model, r: Real): void {
  if (matches(m, r)) return;
  const vp = vpOf(r);
  expect(vp.activeVtl).toBe(m.active);
  for (const v of [0, 1] as V[]) {
    const actual: Record<string, Reg128> = {};
    const expected: Record<string, Reg128> = {};
    for (const n of PRIVATE) {
      actual[`VTL${v}.${name(n)}`] = r.p.getRegister(vp, v, n);
      expected[`VTL${v}.${name(n)}`] = m.priv[v].get(n)!;
    }
    expect(actual).toEqual(expected);
  }
  const actualShared: Record<string, bigint> = {};
  const expectedShared: Record<string, bigint> = {};
  for (const n of SHARED) {
    actualShared[name(n)] = r.p.getRegister(vp, m.active, n).low;
    expectedShared[name(n)] = m.shared.get(n)!;
  }
  expect(actualShared).toEqual(expectedShared);
}

// ---- commands ----------------------------------------------------------------------------------

/** Host write of a private register of one VTL (any VTL, active or not). RIP: see RipWrite. */
class PrivateWrite implements fc.Command<Model, Real> {
  constructor(
    readonly vtl: V,
    readonly reg: number,
    readonly value: Reg128,
  ) {}
  check = () => true;
  run(m: Model, r: Real): void {
    r.p.setRegisters(vpOf(r), this.vtl, [{ name: this.reg, value: this.value }], 'host');
    m.priv[this.vtl].set(this.reg, this.value);
    compare(m, r);
  }
  toString = () => `priv(VTL${this.vtl} ${name(this.reg)} = ${this.value.high.toString(16)}:${this.value.low.toString(16)})`;
}

/**
 * Host write of RIP of the active VTL. (RIP writes to a parked VTL are not generated: see the
 * report that accompanies these tests — the core resumes a parked VTL at its stub's return address
 * even when its RIP was moved while it was parked.)
 */
class RipWrite implements fc.Command<Model, Real> {
  constructor(readonly value: bigint) {}
  check = () => true;
  run(m: Model, r: Real): void {
    r.p.setRegisters(vpOf(r), m.active, [{ name: R.HvX64RegisterRip, value: reg64(this.value) }], 'host');
    m.priv[m.active].set(R.HvX64RegisterRip, reg64(this.value));
    compare(m, r);
  }
  toString = () => `rip(active = ${this.value.toString(16)})`;
}

/** Host write of a shared register, through either VTL's view. */
class SharedWrite implements fc.Command<Model, Real> {
  constructor(
    readonly vtl: V,
    readonly reg: number,
    readonly value: bigint,
  ) {}
  check = () => true;
  run(m: Model, r: Real): void {
    r.p.setRegisters(vpOf(r), this.vtl, [{ name: this.reg, value: reg64(this.value) }], 'host');
    m.shared.set(this.reg, this.value);
    compare(m, r);
  }
  toString = () => `shared(via VTL${this.vtl} ${name(this.reg)} = ${this.value.toString(16)})`;
}

/** Guest WRMSR of a private synthetic MSR: lands in the active VTL only. */
class GuestMsrWrite implements fc.Command<Model, Real> {
  constructor(
    readonly msr: number,
    readonly reg: number,
    readonly value: bigint,
  ) {}
  check = () => true;
  run(m: Model, r: Real): void {
    // An unmasked SINT with a vector below 16 is refused with #GP (tlfs-overlays-synic.md §5.1).
    const isSint = this.msr >= HvMsr.HV_X64_MSR_SINT0 && this.msr <= HvMsr.HV_X64_MSR_SINT15;
    const badVector = isSint && (this.value & (1n << 16n)) === 0n && (this.value & 0xffn) < 16n;
    if (badVector) {
      expect(r.p.writeMsr(vpOf(r), this.msr, this.value)).toEqual({ exception: 13 });
    } else {
      expect(r.p.writeMsr(vpOf(r), this.msr, this.value)).toEqual({});
      m.priv[m.active].set(this.reg, reg64(this.value));
    }
    compare(m, r);
  }
  toString = () => `wrmsr(0x${this.msr.toString(16)} = ${this.value.toString(16)})`;
}

/** CALL hypercall_page + 0x0F with RCX = 0 (VtlCall). */
class VtlCall implements fc.Command<Model, Real> {
  check = () => true;
  run(m: Model, r: Real): void {
    const vp = vpOf(r);
    r.p.setReg(vp, R.HvX64RegisterRcx, 0n);
    const from = m.active;
    const ok = from === 0 && cplOf(m, 0) === 0 && protectedMode(m, 0);
    const o = callHypercallPage(r.p, vp, VTL_CALL_OFFSET);
    // the stub's own instructions ran before the VMCALL either way
    m.shared.set(R.HvX64RegisterRax, 0n);
    m.shared.set(R.HvX64RegisterRcx, 0x11n);
    if (ok) {
      expect(o.exception).toBeUndefined();
      expect(o.vtlSwitch).toMatchObject({ fromVtl: 0, toVtl: 1, isReturn: false });
      const at = PAGE[0] + BigInt(VTL_CALL_OFFSET) + RET_AFTER_VMCALL;
      m.parked[0] = { ret: m.priv[0].get(R.HvX64RegisterRip)!.low, at };
      m.priv[0].set(R.HvX64RegisterRip, reg64(at));
      m.active = 1;
      resume(m, 1);
    } else {
      expect(o.exception).toBe(X64Exception.UD);
      expect(o.vtlSwitch).toBeUndefined();
    }
    compare(m, r);
  }
  toString = () => 'vtlCall';
}

/** CALL hypercall_page + 0x26 with RCX = 0 (normal) or 1 (fast) (VtlReturn). */
class VtlReturn implements fc.Command<Model, Real> {
  constructor(readonly fast: boolean) {}
  check = () => true;
  run(m: Model, r: Real): void {
    const vp = vpOf(r);
    const control = this.fast ? 1n : 0n;
    r.p.setReg(vp, R.HvX64RegisterRcx, control);
    const from = m.active;
    const ok = from === 1 && cplOf(m, 1) === 0 && protectedMode(m, 1);
    const o = callHypercallPage(r.p, vp, VTL_RETURN_OFFSET);
    m.shared.set(R.HvX64RegisterRax, control);
    m.shared.set(R.HvX64RegisterRcx, 0x12n);
    if (ok) {
      expect(o.exception).toBeUndefined();
      expect(o.vtlSwitch).toMatchObject({ fromVtl: 1, toVtl: 0, isReturn: true, fastReturn: this.fast });
      const at = PAGE[1] + BigInt(VTL_RETURN_OFFSET) + RET_AFTER_VMCALL;
      m.parked[1] = { ret: m.priv[1].get(R.HvX64RegisterRip)!.low, at };
      m.priv[1].set(R.HvX64RegisterRip, reg64(at));
      m.active = 0;
      resume(m, 0);
      // No VP assist page is enabled, so a normal return has nothing to load into RAX/RCX.
    } else {
      expect(o.exception).toBe(X64Exception.UD);
      expect(o.vtlSwitch).toBeUndefined();
    }
    compare(m, r);
  }
  toString = () => `vtlReturn(${this.fast ? 'fast' : 'normal'})`;
}

// ---- arbitraries -------------------------------------------------------------------------------

const u64 = fc.bigInt({ min: 0n, max: MASK64 });
const vtlArb = fc.constantFrom<V>(0, 1);
const segArb = (attributes: fc.Arbitrary<number>) =>
  fc.record({ base: u64, limit: fc.integer({ min: 0, max: 0xffff_ffff }), selector: fc.integer({ min: 0, max: 0xffff }), attributes }).map(segmentToReg128);
const tableArb = fc.record({ limit: fc.integer({ min: 0, max: 0xffff }), base: u64 }).map(tableToReg128);

const plain64Regs = [
  R.HvX64RegisterRsp,
  R.HvX64RegisterRflags,
  R.HvX64RegisterCr3,
  R.HvX64RegisterCr4,
  R.HvX64RegisterCr8,
  R.HvX64RegisterDr7,
  R.HvX64RegisterKernelGsBase,
  R.HvX64RegisterPat,
  R.HvX64RegisterSysenterCs,
  R.HvX64RegisterSysenterEip,
  R.HvX64RegisterSysenterEsp,
  R.HvX64RegisterStar,
  R.HvX64RegisterLstar,
  R.HvX64RegisterCstar,
  R.HvX64RegisterSfmask,
];

const privateWriteArb: fc.Arbitrary<fc.Command<Model, Real>> = fc.oneof(
  fc.tuple(vtlArb, fc.constantFrom(...plain64Regs), u64).map(([v, n, x]) => new PrivateWrite(v, n, reg64(x))),
  // CR0 with PE set or clear (PE = 0 makes the VTL's VtlCall/VtlReturn #UD)
  fc
    .tuple(vtlArb, fc.constantFrom(0x8005_0033n, 0x8005_0033n, 0x8005_0033n, 0x8005_0033n, 0x8005_0032n, 0x0000_0011n))
    .map(([v, x]) => new PrivateWrite(v, R.HvX64RegisterCr0, reg64(x))),
  // EFER keeps LME|LMA so the 64-bit calling convention stays in force
  fc.tuple(vtlArb, fc.integer({ min: 0, max: 0xffff })).map(([v, x]) => new PrivateWrite(v, R.HvX64RegisterEfer, reg64(BigInt(x) | 0x500n))),
  // CS: a long-mode code segment at DPL 0 (mostly) or 3 (CPL3: #UD on VtlCall/VtlReturn)
  fc
    .tuple(vtlArb, segArb(fc.constantFrom(CODE_SEG.attributes, CODE_SEG.attributes, CODE_SEG.attributes, CODE_SEG.attributes, CODE_SEG.attributes | (3 << 5))))
    .map(([v, s]) => new PrivateWrite(v, R.HvX64RegisterCs, s)),
  fc
    .tuple(vtlArb, fc.constantFrom(R.HvX64RegisterSs, R.HvX64RegisterDs), segArb(fc.integer({ min: 0, max: 0xffff })))
    .map(([v, n, s]) => new PrivateWrite(v, n, s)),
  fc.tuple(vtlArb, fc.constantFrom(R.HvX64RegisterGdtr, R.HvX64RegisterIdtr), tableArb).map(([v, n, t]) => new PrivateWrite(v, n, t)),
);

const commandArbs: fc.Arbitrary<fc.Command<Model, Real>>[] = [
  privateWriteArb,
  u64.map((x) => new RipWrite(x)),
  fc.tuple(vtlArb, fc.constantFrom(...SHARED), u64).map(([v, n, x]) => new SharedWrite(v, n, x)),
  fc.oneof(
    u64.map((x) => new GuestMsrWrite(HvMsr.HV_X64_MSR_SCONTROL, R.HvRegisterScontrol, x)),
    u64.map((x) => new GuestMsrWrite(HvMsr.HV_X64_MSR_SINT0 + 3, R.HvRegisterSint0 + 3, x)),
  ),
  fc.constant(new VtlCall()),
  fc.constant(new VtlCall()),
  fc.boolean().map((fast) => new VtlReturn(fast)),
  fc.boolean().map((fast) => new VtlReturn(fast)),
];

// ---- setup -------------------------------------------------------------------------------------

/**
 * A one-VP partition with VTL1 enabled and a hypercall page in each VTL, set up the way a guest
 * does it: GUEST_OS_ID + HV_X64_MSR_HYPERCALL written by WRMSR while that VTL is active. Ends in
 * VTL0 with VTL1 parked in its VtlReturn stub.
 */
function setup(): { model: Model; real: Real } {
  const p = new Partition({ id: 'p-prop', architecture: 'x64', vpCount: 1, memoryBytes: 1n << 20n, maximumVtl: 1, labels: {} });
  const vp = p.vps[0]!;
  p.enablePartitionVtl('host', 1, 0);
  p.enableVpVtl('host', 0, 1, { ...longModeContext(), rip: VTL1_ENTRY_RIP, rsp: 0xffff_f800_0010_0000n, cr3: 0x7000n });
  p.setRegisters(vp, 0, [{ name: R.HvX64RegisterRip, value: reg64(VTL0_START_RIP) }], 'host');

  expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, 0x8100_0a00_0000_4000n)).toEqual({});
  expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, PAGE[0] | 1n)).toEqual({});
  p.setReg(vp, R.HvX64RegisterRcx, 0n);
  expect(callHypercallPage(p, vp, VTL_CALL_OFFSET).activeVtl).toBe(1);
  // First entry into VTL1: its initial context.
  expect(p.reg(vp, R.HvX64RegisterRip)).toBe(VTL1_ENTRY_RIP);
  expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, 0x8100_0a00_0000_4001n)).toEqual({});
  expect(p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, PAGE[1] | 1n)).toEqual({});
  p.setReg(vp, R.HvX64RegisterRcx, 0n);
  expect(callHypercallPage(p, vp, VTL_RETURN_OFFSET).activeVtl).toBe(0);
  // VTL0 returned from its CALL; VTL1 is parked on the RET of its VtlReturn stub.
  expect(p.getRegister(vp, 0, R.HvX64RegisterRip).low).toBe(VTL0_START_RIP);
  expect(p.getRegister(vp, 1, R.HvX64RegisterRip).low).toBe(PAGE[1] + 0x26n + RET_AFTER_VMCALL);
  expect(p.getRegister(vp, 0, R.HvX64RegisterHypercall).low).toBe(PAGE[0] | 1n);
  expect(p.getRegister(vp, 1, R.HvX64RegisterHypercall).low).toBe(PAGE[1] | 1n);

  const snap = (v: V) => new Map(PRIVATE.map((n) => [n, p.getRegister(vp, v, n)] as const));
  const model: Model = {
    active: 0,
    priv: { 0: snap(0), 1: snap(1) },
    parked: { 0: null, 1: { ret: VTL1_ENTRY_RIP, at: PAGE[1] + 0x26n + RET_AFTER_VMCALL } },
    shared: new Map(SHARED.map((n) => [n, p.getRegister(vp, 0, n).low] as const)),
  };
  return { model, real: { p } };
}

describe('VTL private state isolation (property)', () => {
  test('setup: both hypercall pages are in place and distinct', () => {
    const { real } = setup();
    expect(real.p.readView(0, 0, PAGE[0] + 0x0fn, 12).toString('hex')).toBe('4889c8b9110000000f01d9c3');
    expect(real.p.readView(1, 0, PAGE[1] + 0x26n, 12).toString('hex')).toBe('4889c8b9120000000f01d9c3');
    expect(real.p.readView(0, 0, PAGE[1], 4).toString('hex')).toBe('00000000'); // VTL0 does not see VTL1's page
  });

  test('a fixed round trip: call, return, call lands where the model says', () => {
    const { model, real } = setup();
    const cmds = [new RipWrite(0x1234n), new VtlCall(), new VtlReturn(false), new VtlCall(), new VtlReturn(true)];
    for (const c of cmds) c.run(model, real);
    // VTL1 was resumed at the return address of its first VtlReturn CALL, then parked again.
    expect(real.p.getRegister(vpOf(real), 0, R.HvX64RegisterRip).low).toBe(0x1234n);
    expect(real.p.getRegister(vpOf(real), 1, R.HvX64RegisterRip).low).toBe(PAGE[1] + 0x31n);
  });

  test('random sequences of register writes, VtlCall and VtlReturn', () => {
    fc.assert(
      fc.property(fc.commands(commandArbs, { maxCommands: 50, size: 'max' }), (cmds) => {
        fc.modelRun(setup, cmds);
      }),
      { numRuns: 200 },
    );
  });
});
