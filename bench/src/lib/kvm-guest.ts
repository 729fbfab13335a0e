// Agent figures with real guest code, in process (no gRPC): a partition on KvmBackend whose VP0
// runs small 64-bit guest loops from its own state (KvmBackend.runVp: its page tables, GDT, stack)
// so each measured operation is a real instruction exiting to the agent, handled by the core, and
// resumed. `runVp(vp, { maxExits: n })` stops after exactly n handled exits, so a batch of n
// operations is one runVp call and the guest loops need no counter (on this host every CPL0
// instruction the guest executes costs about a microsecond; the loops carry only what the
// operation needs, like the raw loops).
//
// Layout (GPAs): 0x2000 VTL0 hypercall page, 0x4000 VTL1 hypercall page, 0x3000 GDT,
// 0x1_0000 hypercall input, 0x1_1000 output, 0x8_0000 / 0x9_0000 VTL0 / VTL1 stack tops,
// 0x10_0000 VTL0 loops, 0x11_0000 VTL1 loop, 0x20_0000 identity page tables (1 GiB, 2 MiB pages).
import { pb } from '@vsm/client';
import type { KvmBackend } from '@vsm/vsm-v1';
import { loadKvmLayer, type KvmLayerModule } from './kvm-raw';

export type KvmAgentModule = typeof import('@vsm/vsm-v1');

/** @vsm/vsm-v1 (KvmBackend), loaded lazily like loadKvmLayer: listing or running other suites never loads koffi. */
export function loadKvmAgent(): KvmAgentModule {
  return require('@vsm/vsm-v1') as KvmAgentModule;
}

export const GiB = 1n << 30n;
export const MSR = { GUEST_OS_ID: 0x4000_0000, HYPERCALL: 0x4000_0001, SCONTROL: 0x4000_0080, SIMP: 0x4000_0083, SINT0: 0x4000_0090 } as const;
export const GUEST_OS_ID = 0x8100_0000_0000_0001n;
const G = {
  hypercallPage: 0x2000n,
  gdt: 0x3000n,
  vtl1HypercallPage: 0x4000n,
  input: 0x1_0000n,
  output: 0x1_1000n,
  stack: 0x8_0000n,
  vtl1Stack: 0x9_0000n,
  wrmsrLoop: 0x10_0000n,
  hypercallLoop: 0x10_0100n,
  vtlCallLoop: 0x10_0200n,
  vtl1Loop: 0x11_0000n,
  pageTables: 0x20_0000n,
} as const;
/** HvCallGetVpRegisters, memory-based, rep count 1. */
const GET_VP_REGISTERS = 0x50n | (1n << 32n);
/** HV_HYPERCALL_RESULT_VALUE: HV_STATUS_SUCCESS, RepsCompleted 1. */
const GET_VP_REGISTERS_OK = 1n << 32n;
const VTL_CALL_OFFSET = 0x0fn;
const VTL_RETURN_OFFSET = 0x26n;

const R = pb.HvRegisterName;
export const full = <T>(type: { fromPartial(o: unknown): T }, o: unknown): T => type.fromPartial(o);
export const r64 = (name: pb.HvRegisterName, value: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value } } });
const table = (name: pb.HvRegisterName, base: bigint, limit: number): pb.RegisterAssoc => ({
  name,
  value: { value: { $case: 'table', value: { base, limit } } },
});

/** Initial VTL1 context: flat 64-bit CPL0 on the partition's page tables and the GDT at 0x3000. */
export function vtl1Context(k: KvmLayerModule, cr3: bigint, rip: bigint, rsp: bigint): pb.InitialVpContext {
  const flat = { base: 0n, limit: 0xffffffff };
  const data = { ...flat, selector: 0x10, attributes: 0xc093 };
  return pb.InitialVpContext.fromPartial({
    rip,
    rsp,
    rflags: 0x2n,
    efer: 0xd01n,
    cr0: 0x80050033n,
    cr3,
    cr4: 0x6a0n,
    msrCrPat: 0x0007040600070406n,
    cs: { ...flat, selector: 0x08, attributes: 0xa09b },
    ds: data,
    es: data,
    fs: data,
    gs: data,
    ss: data,
    tr: { selector: 0x18, attributes: 0x8b, limit: 0x67 },
    ldtr: { attributes: 0x82 },
    idtr: { base: 0n, limit: 0 },
    gdtr: { base: G.gdt, limit: k.GDT_LIMIT },
  });
}

/**
 * A VP with VTL0 and VTL1, both with their hypercall page enabled, running guest loops:
 * - wrmsr: `wrmsr; jmp` of HV_X64_MSR_GUEST_OS_ID (one MSR exit handled by the core each);
 * - hypercall: `call r13; jmp` into the VTL0 hypercall page at offset 0 (`out 0x4d, ax; ret`) with
 *   HvCallGetVpRegisters(HvRegisterVsmVpStatus), memory-based (one port exit, the core's dispatcher);
 * - VTL round trip: VTL0 `xor ecx, ecx; call r13; jmp` into VtlCall (page + 0x0F); VTL1
 *   `mov ecx, 1; call r14; jmp` into fast VtlReturn (page + 0x26): two port exits and two VTL
 *   switches (each: the shared state moved to the other VTL's vCPU; private state stays in each).
 */
export class GuestLoops {
  private program: 'wrmsr' | 'hypercall' | 'vtl' | null = null;

  private constructor(
    readonly backend: KvmBackend,
    readonly vpName: string,
  ) {}

  static async create(backend: KvmBackend, id = 'kvm-bench-guest'): Promise<GuestLoops> {
    const k = loadKvmLayer();
    const b = backend;
    const p = await b.createPartition(full(pb.CreatePartitionRequest, { partitionId: id, partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } }));
    const vp0 = `${p.name}/vps/0`;
    const pt = k.buildIdentityPageTables(G.pageTables, 1);
    const write = (gpa: bigint, data: Uint8Array) => b.writeGpa(full(pb.WriteGpaRequest, { name: p.name, gpa, data: Buffer.from(data) }));
    await write(G.pageTables, pt.bytes);
    await write(G.gdt, k.buildGdt(G.gdt));
    await write(G.wrmsrLoop, new k.Asm().label('l').wrmsr().jmp('l').bytes());
    await write(G.hypercallLoop, new k.Asm().label('l').callReg('r13').jmp('l').bytes());
    await write(G.vtlCallLoop, new k.Asm().label('l').zero('rcx').callReg('r13').jmp('l').bytes());
    await write(G.vtl1Loop, new k.Asm().label('l').movR32Imm32('rcx', 1).callReg('r14').jmp('l').bytes());
    // HvCallGetVpRegisters input: HV_PARTITION_ID_SELF, HV_VP_INDEX_SELF (target VTL 0), HvRegisterVsmVpStatus.
    const input = Buffer.alloc(24);
    input.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
    input.writeUInt32LE(0xffff_fffe, 8);
    input.writeUInt32LE(0x000d_0003, 16);
    await write(G.input, input);
    await b.setVpRegisters(
      full(pb.SetVpRegistersRequest, {
        name: vp0,
        vtl: 0,
        registers: [
          r64(R.HV_REGISTER_NAME_X64_CR3, pt.cr3),
          table(R.HV_REGISTER_NAME_X64_GDTR, G.gdt, k.GDT_LIMIT),
          r64(R.HV_REGISTER_NAME_X64_RIP, G.wrmsrLoop),
          r64(R.HV_REGISTER_NAME_X64_RSP, G.stack),
        ],
      }),
    );
    await b.enablePartitionVtl(full(pb.EnablePartitionVtlRequest, { name: p.name, targetVtl: 1 }));
    await b.enableVpVtl(full(pb.EnableVpVtlRequest, { name: vp0, targetVtl: 1, initialContext: vtl1Context(k, pt.cr3, G.vtl1Loop, G.vtl1Stack) }));
    // Guest OS id and hypercall page in both VTLs (guest actions), ending in VTL0. VTL1 is left
    // parked on its page's VtlReturn called from G.vtl1Loop, where the next VtlCall resumes it.
    await b.writeMsr(full(pb.WriteMsrRequest, { name: vp0, msr: MSR.GUEST_OS_ID, value: GUEST_OS_ID }));
    await b.writeMsr(full(pb.WriteMsrRequest, { name: vp0, msr: MSR.HYPERCALL, value: G.hypercallPage | 1n }));
    expectSwitch(await b.callHypercallPage(full(pb.CallHypercallPageRequest, { name: vp0, offset: Number(VTL_CALL_OFFSET), rcx: 0n })), 1, 'setup VtlCall');
    await b.writeMsr(full(pb.WriteMsrRequest, { name: vp0, msr: MSR.GUEST_OS_ID, value: GUEST_OS_ID }));
    await b.writeMsr(full(pb.WriteMsrRequest, { name: vp0, msr: MSR.HYPERCALL, value: G.vtl1HypercallPage | 1n }));
    expectSwitch(await b.callHypercallPage(full(pb.CallHypercallPageRequest, { name: vp0, offset: Number(VTL_RETURN_OFFSET), rcx: 1n })), 0, 'setup VtlReturn');
    return new GuestLoops(b, vp0);
  }

  private async load(program: 'wrmsr' | 'hypercall' | 'vtl'): Promise<void> {
    if (this.program === program) return;
    const regs =
      program === 'wrmsr'
        ? [
            r64(R.HV_REGISTER_NAME_X64_RIP, G.wrmsrLoop),
            r64(R.HV_REGISTER_NAME_X64_RCX, BigInt(MSR.GUEST_OS_ID)),
            r64(R.HV_REGISTER_NAME_X64_RAX, GUEST_OS_ID & 0xffff_ffffn),
            r64(R.HV_REGISTER_NAME_X64_RDX, GUEST_OS_ID >> 32n),
          ]
        : program === 'hypercall'
          ? [
              r64(R.HV_REGISTER_NAME_X64_RIP, G.hypercallLoop),
              r64(R.HV_REGISTER_NAME_X64_RCX, GET_VP_REGISTERS),
              r64(R.HV_REGISTER_NAME_X64_RDX, G.input),
              r64(R.HV_REGISTER_NAME_X64_R8, G.output),
              r64(R.HV_REGISTER_NAME_X64_R13, G.hypercallPage),
            ]
          : [
              r64(R.HV_REGISTER_NAME_X64_RIP, G.vtlCallLoop),
              r64(R.HV_REGISTER_NAME_X64_R13, G.hypercallPage + VTL_CALL_OFFSET),
              r64(R.HV_REGISTER_NAME_X64_R14, G.vtl1HypercallPage + VTL_RETURN_OFFSET),
            ];
    await this.backend.setVpRegisters(
      full(pb.SetVpRegistersRequest, { name: this.vpName, vtl: 0, registers: [...regs, r64(R.HV_REGISTER_NAME_X64_RSP, G.stack)] }),
    );
    this.program = program;
  }

  /** Loads the program's registers once; `run(n)` then runs n more of its operations. */
  async prepare(program: 'wrmsr' | 'hypercall' | 'vtl'): Promise<(n: number) => void> {
    await this.load(program);
    const b = this.backend;
    const vp = this.vpName;
    const exitsPerOp = program === 'vtl' ? 2 : 1;
    return (n: number) => {
      const r = b.runVp(vp, { maxExits: n * exitsPerOp, timeoutMs: 10_000 });
      // maxExits reached is reported as stop 'timeout' with exactly that many exits; anything else
      // (HLT, an unexpected exit, a dispatcher exception, the deadline) means the loop broke.
      if (r.exits !== n * exitsPerOp || r.stop !== 'timeout' || r.vtlSwitches !== (program === 'vtl' ? 2 * n : 0)) {
        throw new Error(
          `${program} guest loop: runVp stopped with ${JSON.stringify({ stop: r.stop, exits: r.exits, vtlSwitches: r.vtlSwitches, exception: r.exception, exit: r.exit?.kind })}, expected ${n * exitsPerOp} exits`,
        );
      }
    };
  }

  /** Checks the loop's architectural result after a batch (outside the timed region). */
  check(program: 'wrmsr' | 'hypercall' | 'vtl'): void {
    const { p, vp } = this.backend.vp(this.vpName);
    if (vp.activeVtl !== 0) throw new Error(`${program} loop: VP left in VTL ${vp.activeVtl}`);
    if (program === 'hypercall') {
      const rax = p.reg(vp, Number(R.HV_REGISTER_NAME_X64_RAX));
      if (rax !== GET_VP_REGISTERS_OK) throw new Error(`hypercall loop: RAX 0x${rax.toString(16)}, expected HV_STATUS_SUCCESS with 1 rep`);
    }
  }
}

export function expectSwitch(r: { outcome?: pb.GuestActionOutcome }, toVtl: number, what: string): void {
  const o = r.outcome;
  if (!o || o.exception !== pb.X64Exception.X64_EXCEPTION_UNSPECIFIED || o.activeVtl !== toVtl)
    throw new Error(`${what}: expected VTL ${toVtl}, got ${JSON.stringify(o, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}`);
}

export { loadKvmLayer };
