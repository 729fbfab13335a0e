// The protection-violation round trip on the KVM backend, in process (no gRPC): VTL0 writes to a
// page VTL1 made read-only (the view maps it as a read-only memslot once protections are enforced
// by the KVM platform) → memory intercept: HV_MESSAGE in VTL1's SINT0 slot (SIMP), the VP enters
// VTL1 → VTL1's handler reads the message, skips VTL0's instruction with HvCallSetVpRegisters(VTL0
// RIP) and consumes the message → VtlReturn → VTL0 resumes past the access. Two drivers:
//
// - WholeGuestProtection: real guest code on KvmBackend.runVp (the shape of opentmk's
//   hv_memory_protect_write, as in services/kvm-agent/test/agent-whole-guest-vsm.test.ts). VTL0:
//   `mov [rdi], al; jmp`; VTL1: `call` VtlReturn, then the handler (Rip + InstructionLength from
//   the message into the HvCallSetVpRegisters input, the hypercall through its page, MessageType =
//   0), `jmp`. 3 exits per round trip: the refused store (MMIO), the hypercall, the VtlReturn.
// - ActionProtection: the same sequence as vsm.v1 guest actions (the conformance scenario "VTL1
//   skips the instruction by advancing VTL0 RIP"): WriteMemory (VTL0), ReadMemory ×2 (the message's
//   MessageType and GuestPhysicalAddress), WriteMemory (consume), Hypercall (HvCallSetVpRegisters,
//   input already in memory), CallHypercallPage (VtlReturn): what a client of the API drives.
import { pb } from '@vsm/client';
import type { KvmBackend } from '@vsm/vsm-v1';
import { GiB, GUEST_OS_ID, MSR, expectSwitch, full, r64, vtl1Context } from './kvm-guest';
import { loadKvmLayer } from './kvm-raw';
import { nextRip } from './kvm-stats';

const R = pb.HvRegisterName;
const P = {
  hypercallPage: 0x2000n,
  gdt: 0x3000n,
  vtl1HypercallPage: 0x4000n,
  simp: 0x9000n,
  skipInput: 0x1_4000n,
  setInputA: 0x2_0000n,
  setInputB: 0x2_0100n,
  maskInput: 0x2_1000n,
  protected: 0x4_0000n,
  stack: 0x8_0000n,
  vtl1Stack: 0x9_0000n,
  code: 0x10_0000n,
  vtl1Code: 0x11_0000n,
  pageTables: 0x20_0000n,
} as const;
/** Arbitrary VTL0 RIPs the action driver alternates between (never executed: actions run stubs). */
const RIP = { a: 0x40_1000n, b: 0x40_2000n } as const;
/** HvMessageTypeGpaIntercept */
const GPA_INTERCEPT = 0x8000_0001;
/** Offsets in HV_MESSAGE: payload at 16; HV_X64_INTERCEPT_MESSAGE_HEADER InstructionLength at +4, Rip at +24; GuestPhysicalAddress at +56. */
const MSG = { instructionLength: 16 + 4, rip: 16 + 24, gpa: 16 + 56 } as const;
const SET_VP_REGISTERS = 0x51n | (1n << 32n);
const HV_X64_REGISTER_RIP = 0x0002_0010;
const VTL_RETURN = 0x26n;

/** HvCallSetVpRegisters input: self, TargetVtl 0, HvX64RegisterRip = rip. */
function setRipInput(rip: bigint): Buffer {
  const input = Buffer.alloc(48);
  input.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
  input.writeUInt32LE(0xffff_fffe, 8);
  input[12] = 0x10; // UseTargetVtl, TargetVtl 0
  input.writeUInt32LE(HV_X64_REGISTER_RIP, 16);
  input.writeBigUInt64LE(rip, 32);
  return input;
}

/**
 * A partition with VTL0 and VTL1 on VP0 (page tables, GDT, both hypercall pages), VTL1's SynIC
 * (SIMP, SCONTROL, SINT0), EnableVtlProtection, and the page P.protected read + execute only for
 * VTL0 (set by VTL1 with HvCallModifyVtlProtectionMask); ends in VTL0. VTL1 is left parked on its
 * VtlReturn with `vtl1Resume` as the address it resumes at on the next entry.
 */
async function vsmPartition(b: KvmBackend, id: string, vtl1Resume: bigint): Promise<{ name: string; vp: string }> {
  const k = loadKvmLayer();
  const p = await b.createPartition(full(pb.CreatePartitionRequest, { partitionId: id, partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } }));
  const vp = `${p.name}/vps/0`;
  const pt = k.buildIdentityPageTables(P.pageTables, 1);
  const write = (gpa: bigint, data: Uint8Array) => b.writeGpa(full(pb.WriteGpaRequest, { name: p.name, gpa, data: Buffer.from(data) }));
  await write(P.pageTables, pt.bytes);
  await write(P.gdt, k.buildGdt(P.gdt));
  await write(P.protected, Buffer.from('original-contents'));
  await b.setVpRegisters(
    full(pb.SetVpRegistersRequest, {
      name: vp,
      vtl: 0,
      registers: [
        r64(R.HV_REGISTER_NAME_X64_CR3, pt.cr3),
        { name: R.HV_REGISTER_NAME_X64_GDTR, value: { value: { $case: 'table', value: { base: P.gdt, limit: k.GDT_LIMIT } } } },
        r64(R.HV_REGISTER_NAME_X64_RIP, P.code),
        r64(R.HV_REGISTER_NAME_X64_RSP, P.stack),
      ],
    }),
  );
  await b.enablePartitionVtl(full(pb.EnablePartitionVtlRequest, { name: p.name, targetVtl: 1 }));
  await b.enableVpVtl(full(pb.EnableVpVtlRequest, { name: vp, targetVtl: 1, initialContext: vtl1Context(k, pt.cr3, vtl1Resume, P.vtl1Stack) }));
  const msr = (msr: number, value: bigint) => b.writeMsr(full(pb.WriteMsrRequest, { name: vp, msr, value }));
  await msr(MSR.GUEST_OS_ID, GUEST_OS_ID);
  await msr(MSR.HYPERCALL, P.hypercallPage | 1n);
  expectSwitch(await b.callHypercallPage(full(pb.CallHypercallPageRequest, { name: vp, offset: 0x0f, rcx: 0n })), 1, 'setup VtlCall');
  await msr(MSR.GUEST_OS_ID, GUEST_OS_ID);
  await msr(MSR.HYPERCALL, P.vtl1HypercallPage | 1n);
  await msr(MSR.SIMP, P.simp | 1n);
  await msr(MSR.SCONTROL, 1n);
  await msr(MSR.SINT0, 0x30n);
  await b.setVpRegisters(full(pb.SetVpRegistersRequest, { name: vp, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] }));
  const mask = Buffer.alloc(24);
  mask.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
  mask.writeUInt32LE(0x1 | 0x4, 8); // read + kernel execute: writes intercept
  mask.writeBigUInt64LE(P.protected >> 12n, 16);
  const m = await b.hypercall(full(pb.HypercallRequest, { name: vp, control: 0x0cn | (1n << 32n), inputGpa: P.maskInput, input: mask }));
  if (m.status !== pb.HvStatus.HV_STATUS_SUCCESS || m.repsCompleted !== 1) throw new Error(`setup: HvCallModifyVtlProtectionMask status ${m.status}`);
  // VTL1 parks on VtlReturn from `vtl1Resume` (the action keeps its return address: VTL1 resumes there).
  await b.setVpRegisters(full(pb.SetVpRegistersRequest, { name: vp, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_X64_RIP, vtl1Resume)] }));
  expectSwitch(await b.callHypercallPage(full(pb.CallHypercallPageRequest, { name: vp, offset: Number(VTL_RETURN), rcx: 1n })), 0, 'setup VtlReturn');
  return { name: p.name, vp };
}

export class WholeGuestProtection {
  private constructor(
    readonly backend: KvmBackend,
    readonly partition: string,
    readonly vp: string,
  ) {}

  static async create(b: KvmBackend, id = 'kvm-bench-protect-guest'): Promise<WholeGuestProtection> {
    const { Asm } = loadKvmLayer();
    // VTL0: the faulting store, again and again (RDI = the protected page, set below).
    const vtl0 = new Asm().label('loop').store('rdi', 'rax', 1).jmp('loop');
    // VTL1 (general registers are shared with VTL0, which uses only RDI and AL). Constants live in
    // registers nothing else writes: RSI = VTL1's SIMP page, RDX = the HvCallSetVpRegisters input
    // page (the hypercall's input GPA), R8 = 0 (its output GPA, and the MessageType that frees the
    // slot), R13 = VTL1's hypercall page (hypercall entry), R14 = its VtlReturn entry. Message fields
    // are read at [RSI + offset]. VTL1 code runs at CPL0, which this host emulates an instruction at
    // a time (≈0.55 µs each here, kvm-agent README "Host facts"), so the handler is as short as its work
    // allows: 12 instructions of its own a round trip, was 20 with an absolute address loaded for
    // every access (bench/README.md "Fast path").
    const vtl1 = new Asm()
      .label('loop')
      .movR32Imm32('rcx', 1)
      .callReg('r14') //                              VtlReturn (fast)
      .label('handler') //                                                                entered on the intercept
      .load('r9', 'rsi', 8, MSG.gpa) //               what was hit
      .load('rax', 'rsi', 8, MSG.rip) //              the faulting instruction
      .load('rbx', 'rsi', 1, MSG.instructionLength)
      .addRR('rax', 'rbx')
      .store('rdx', 'rax', 8, 32) //                 HvCallSetVpRegisters(VTL0 RIP = next)
      .movR64Imm64('rcx', SET_VP_REGISTERS)
      .callReg('r13')
      .store('rsi', 'r8', 4) //                      MessageType = None: slot free
      .jmp('loop');
    const handler = P.vtl1Code + BigInt(vtl1.offsetOf('handler'));
    const { name, vp } = await vsmPartition(b, id, handler);
    const write = (gpa: bigint, data: Uint8Array) => b.writeGpa(full(pb.WriteGpaRequest, { name, gpa, data: Buffer.from(data) }));
    await write(P.code, vtl0.bytes());
    await write(P.vtl1Code, vtl1.bytes());
    await write(P.skipInput, setRipInput(0n));
    await b.setVpRegisters(
      full(pb.SetVpRegistersRequest, {
        name: vp,
        vtl: 0,
        registers: [
          r64(R.HV_REGISTER_NAME_X64_RIP, P.code),
          r64(R.HV_REGISTER_NAME_X64_RDI, P.protected + 0x10n),
          r64(R.HV_REGISTER_NAME_X64_RSI, P.simp),
          r64(R.HV_REGISTER_NAME_X64_RDX, P.skipInput),
          r64(R.HV_REGISTER_NAME_X64_R8, 0n),
          r64(R.HV_REGISTER_NAME_X64_R13, P.vtl1HypercallPage),
          r64(R.HV_REGISTER_NAME_X64_R14, P.vtl1HypercallPage + VTL_RETURN),
        ],
      }),
    );
    return new WholeGuestProtection(b, name, vp);
  }

  /** Runs n round trips (3n exits: store, hypercall, VtlReturn); throws unless exactly that happened. */
  run(n: number): void {
    const r = this.backend.runVp(this.vp, { maxExits: 3 * n, timeoutMs: 10_000 });
    const intercepts = r.intercepts.length;
    if (r.stop !== 'timeout' || r.exits !== 3 * n || r.vtlSwitches !== 2 * n || intercepts !== n) {
      throw new Error(
        `protection round trips: runVp stopped with ${JSON.stringify({ stop: r.stop, exits: r.exits, vtlSwitches: r.vtlSwitches, intercepts, exception: r.exception, exit: r.exit?.kind })}, expected ${3 * n} exits, ${2 * n} switches, ${n} intercepts`,
      );
    }
  }

  /** After the batches: VP in VTL0, the protected bytes untouched (every store was skipped). */
  async check(): Promise<void> {
    const { vp } = this.backend.vp(this.vp);
    if (vp.activeVtl !== 0) throw new Error(`protection loop: VP left in VTL ${vp.activeVtl}`);
    const d = await this.backend.readGpa(full(pb.ReadGpaRequest, { name: this.partition, gpa: P.protected, length: 17 }));
    if (Buffer.from(d.data).toString() !== 'original-contents') throw new Error('protection loop: the protected page was written');
  }
}

export class ActionProtection {
  private rip: bigint = RIP.a;
  private readonly data = Buffer.from([0x5a]);
  rounds = 0;

  private constructor(
    readonly backend: KvmBackend,
    readonly partition: string,
    readonly vp: string,
  ) {}

  static async create(b: KvmBackend, id = 'kvm-bench-protect-actions'): Promise<ActionProtection> {
    const { name, vp } = await vsmPartition(b, id, P.vtl1Code);
    for (const [gpa, rip] of [
      [P.setInputA, RIP.a],
      [P.setInputB, RIP.b],
    ] as const) {
      await b.writeGpa(full(pb.WriteGpaRequest, { name, gpa, data: setRipInput(rip) }));
    }
    await b.setVpRegisters(full(pb.SetVpRegistersRequest, { name: vp, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_X64_RIP, RIP.a)] }));
    return new ActionProtection(b, name, vp);
  }

  /** One violation → VTL1 handler → VtlReturn → VTL0 resumed past the access. Checks every step. */
  async once(): Promise<void> {
    const b = this.backend;
    const vp = this.vp;
    const w = await b.writeMemory(full(pb.WriteMemoryRequest, { name: vp, gpa: P.protected, data: this.data }));
    const ic = w.outcome?.intercept;
    if (!ic || ic.heldBack || w.outcome?.activeVtl !== 1) throw new Error(`violation: expected an intercept delivered to VTL1, got ${describe(w.outcome)}`);
    // VTL1's handler reads the fields it needs (two loads: MessageType, GuestPhysicalAddress), then
    // consumes the message.
    const type = Buffer.from((await b.readMemory(full(pb.ReadMemoryRequest, { name: vp, gpa: P.simp, length: 4 }))).data).readUInt32LE(0);
    const gpa = Buffer.from((await b.readMemory(full(pb.ReadMemoryRequest, { name: vp, gpa: P.simp + BigInt(MSG.gpa), length: 8 }))).data).readBigUInt64LE(0);
    if (type !== GPA_INTERCEPT || gpa !== P.protected)
      throw new Error(
        `VTL1 handler: the SIM slot holds message type 0x${type.toString(16)} for GPA 0x${gpa.toString(16)}, expected the GPA intercept of 0x${P.protected.toString(16)}`,
      );
    await b.writeMemory(full(pb.WriteMemoryRequest, { name: vp, gpa: P.simp, data: Buffer.alloc(4) }));
    const to = nextRip(this.rip, RIP.a, RIP.b);
    const set = await b.hypercall(full(pb.HypercallRequest, { name: vp, control: SET_VP_REGISTERS, inputGpa: to === RIP.a ? P.setInputA : P.setInputB }));
    if (set.status !== pb.HvStatus.HV_STATUS_SUCCESS) throw new Error(`VTL1 handler: HvCallSetVpRegisters status ${set.status}`);
    const ret = await b.callHypercallPage(full(pb.CallHypercallPageRequest, { name: vp, offset: Number(VTL_RETURN), rcx: 1n }));
    expectSwitch(ret, 0, 'VtlReturn');
    if (!ret.outcome?.resumedAccess?.skipped) throw new Error(`VtlReturn: expected the access skipped, got ${describe(ret.outcome)}`);
    this.rip = to;
    this.rounds++;
  }
}

function describe(o: unknown): string {
  // Buffers arrive here already through their toJSON ({ type: 'Buffer', data }).
  const isBuf = (v: unknown): v is { data: unknown[] } => typeof v === 'object' && v !== null && (v as { type?: unknown }).type === 'Buffer';
  return JSON.stringify(o, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : isBuf(v) ? `<${v.data.length} bytes>` : v));
}
