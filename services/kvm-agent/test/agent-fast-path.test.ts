// runVp's exit path moves only what an exit needs (issue #13; services/kvm-agent/README.md,
// "Registers"): MSRs stay in the vCPU until the core asks for one, a VTL's private state stays in its
// own vCPU across a VTL switch, the shared x87/SSE/AVX state moves (KVM_GET/SET_XSAVE) with the VP,
// and registers the core changed are loaded into the vCPU that holds that VTL. Real guest code on
// real KVM:
//
//   VTL0: wrmsr IA32_LSTAR (no exit: only the Hyper-V range is filtered); VtlCall through its page
//   VTL1: (resumes after its VtlReturn call) HvCallGetVpRegisters of VTL0's LSTAR (memory-based,
//         output at OUTPUT); VtlReturn
//   VTL0: rdmsr IA32_LSTAR → [RESULT + 8]; hlt
//
// Guest x87/SSE instructions end in KVM_EXIT_INTERNAL_ERROR (emulation failure) on this nested
// kvm_pvm host, so the FP state is put into VTL0's vCPU with KVM_SET_FPU and looked for in VTL1's.
import { pb } from '@vsm/client';
import { Asm, buildGdt, buildIdentityPageTables, GDT_LIMIT } from '@vsm/platform-kvm/kvm';
import { KvmBackend } from '@vsm/vsm-v1';
import { describeKvm, GiB } from './agent-support';

const R = pb.HvRegisterName;
const MSR = { GUEST_OS_ID: 0x4000_0000, HYPERCALL: 0x4000_0001 };
const IA32_LSTAR = 0xc000_0082;
const G = {
  hypercallPage: 0x2000n,
  gdt: 0x3000n,
  vtl1HypercallPage: 0x4000n,
  input: 0x1_0000n,
  output: 0x1_1000n,
  result: 0x1_2000n,
  stack: 0x8_0000n,
  vtl1Stack: 0x9_0000n,
  code: 0x10_0000n,
  vtl1Code: 0x11_0000n,
  pageTables: 0x20_0000n,
};
const VTL_CALL = 0x0fn;
const VTL_RETURN = 0x26n;
const GET_VP_REGISTERS = 0x50n | (1n << 32n);
const XMM_VALUE = 0x1122_3344_5566_7788n;
const LSTAR_BY_GUEST = 0xffff_f800_1234_5000n;
const LSTAR_BY_API = 0xffff_f800_abcd_e000n;

const full = <T>(type: { fromPartial(o: unknown): T }, o: unknown): T => type.fromPartial(o);
const r64 = (name: pb.HvRegisterName, value: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value } } });

describeKvm('runVp fast path: lazy MSRs, private state per VTL vCPU, shared FP state', () => {
  const b = new KvmBackend();
  let vp = '';
  let name = '';
  const read = async (gpa: bigint, length: number) => Buffer.from((await b.readGpa(full(pb.ReadGpaRequest, { name, gpa, length }))).data);
  const lstar = async () => {
    const r = await b.getVpRegisters(full(pb.GetVpRegistersRequest, { name: vp, vtl: 0, names: [R.HV_REGISTER_NAME_X64_LSTAR] }));
    const v = r.registers[0]?.value?.value;
    return v?.$case === 'reg64' ? v.value : undefined;
  };

  beforeAll(async () => {
    const p = await b.createPartition(
      full(pb.CreatePartitionRequest, { partitionId: 'fast-path', partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } }),
    );
    name = p.name;
    vp = `${name}/vps/0`;
    const pt = buildIdentityPageTables(G.pageTables, 1);
    const write = (gpa: bigint, data: Uint8Array) => b.writeGpa(full(pb.WriteGpaRequest, { name, gpa, data: Buffer.from(data) }));
    await write(G.pageTables, pt.bytes);
    await write(G.gdt, buildGdt(G.gdt));
    const vtl0 = new Asm()
      .movR32Imm32('rcx', IA32_LSTAR)
      .movR32Imm32('rax', Number(LSTAR_BY_GUEST & 0xffff_ffffn))
      .movR32Imm32('rdx', Number(LSTAR_BY_GUEST >> 32n))
      .wrmsr()
      .zero('rcx')
      .movR64Imm64('rax', G.hypercallPage + VTL_CALL)
      .callReg('rax')
      .movR32Imm32('rcx', IA32_LSTAR)
      .rdmsr()
      .movR64Imm64('rsi', G.result + 8n)
      .store('rsi', 'rax', 4)
      .movR64Imm64('rsi', G.result + 12n)
      .store('rsi', 'rdx', 4)
      .hlt();
    const vtl1 = new Asm()
      .label('park')
      .movR32Imm32('rcx', 1)
      .movR64Imm64('rax', G.vtl1HypercallPage + VTL_RETURN)
      .callReg('rax')
      .label('handler') // where VTL1 resumes on a VtlCall: it is parked in the call above
      .movR64Imm64('rcx', GET_VP_REGISTERS)
      .movR64Imm64('rdx', G.input)
      .movR64Imm64('r8', G.output)
      .movR64Imm64('rax', G.vtl1HypercallPage)
      .callReg('rax')
      .jmp('park');
    await write(G.code, vtl0.bytes());
    await write(G.vtl1Code, vtl1.bytes());
    // HvCallGetVpRegisters input: partition self, VP self, target VTL 0, HvX64RegisterLstar.
    const input = Buffer.alloc(24);
    input.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
    input.writeUInt32LE(0xffff_fffe, 8);
    input[12] = 0x10; // UseTargetVtl, VTL 0
    input.writeUInt32LE(R.HV_REGISTER_NAME_X64_LSTAR, 16);
    await write(G.input, input);
    await b.setVpRegisters(
      full(pb.SetVpRegistersRequest, {
        name: vp,
        vtl: 0,
        registers: [
          r64(R.HV_REGISTER_NAME_X64_CR3, pt.cr3),
          r64(R.HV_REGISTER_NAME_X64_CR4, 0x6a0n), // PAE, PGE, OSFXSR, OSXMMEXCPT: SSE instructions run
          { name: R.HV_REGISTER_NAME_X64_GDTR, value: { value: { $case: 'table', value: { base: G.gdt, limit: GDT_LIMIT } } } },
          r64(R.HV_REGISTER_NAME_X64_RIP, G.code),
          r64(R.HV_REGISTER_NAME_X64_RSP, G.stack),
        ],
      }),
    );
    const flat = { base: 0n, limit: 0xffffffff };
    const data = { ...flat, selector: 0x10, attributes: 0xc093 };
    await b.enablePartitionVtl(full(pb.EnablePartitionVtlRequest, { name, targetVtl: 1 }));
    await b.enableVpVtl(
      full(pb.EnableVpVtlRequest, {
        name: vp,
        targetVtl: 1,
        initialContext: {
          rip: G.vtl1Code,
          rsp: G.vtl1Stack,
          rflags: 0x2n,
          efer: 0xd01n,
          cr0: 0x80050033n,
          cr3: pt.cr3,
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
          gdtr: { base: G.gdt, limit: GDT_LIMIT },
        },
      }),
    );
    const msr = (m: number, value: bigint) => b.writeMsr(full(pb.WriteMsrRequest, { name: vp, msr: m, value }));
    await msr(MSR.GUEST_OS_ID, 0x8100_0000_0000_0001n);
    await msr(MSR.HYPERCALL, G.hypercallPage | 1n);
    // Into VTL1 once (guest action) to enable its page; VTL1 then parks in its loop's VtlReturn.
    expect((await b.callHypercallPage(full(pb.CallHypercallPageRequest, { name: vp, offset: Number(VTL_CALL), rcx: 0n }))).outcome?.activeVtl).toBe(1);
    await msr(MSR.GUEST_OS_ID, 0x8100_0000_0000_0001n);
    await msr(MSR.HYPERCALL, G.vtl1HypercallPage | 1n);
    // VTL1 parks on a VtlReturn called from its handler's address: the next VtlCall resumes it there.
    const handler = G.vtl1Code + BigInt(vtl1.offsetOf('handler'));
    await b.setVpRegisters(full(pb.SetVpRegistersRequest, { name: vp, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_X64_RIP, handler)] }));
    expect((await b.callHypercallPage(full(pb.CallHypercallPageRequest, { name: vp, offset: Number(VTL_RETURN), rcx: 1n }))).outcome?.activeVtl).toBe(0);
  });

  afterAll(async () => {
    await b.close();
  });

  it('moves FP state to the other VTL, lets VTL1 read VTL0 MSRs the guest wrote, stores them at the end of the run', async () => {
    const kp = b.platformOf(name);
    const cpu = (vtl: 0 | 1) => kp.vmOf(vtl)!.existingCpu(0)!.vcpu;
    // XMM0 in VTL0's XSAVE area (legacy region offset 160; XSTATE_BV bit 1 = SSE state present).
    const xsave = cpu(0).getXsaveRaw(Buffer.alloc(4096));
    xsave.writeBigUInt64LE(XMM_VALUE, 160);
    xsave.writeBigUInt64LE(xsave.readBigUInt64LE(512) | 2n, 512);
    cpu(0).setXsaveRaw(xsave);
    const xmm0 = (vtl: 0 | 1) => cpu(vtl).getXsaveRaw(Buffer.alloc(4096)).readBigUInt64LE(160);
    expect(xmm0(0)).toBe(XMM_VALUE);
    expect(xmm0(1)).not.toBe(XMM_VALUE);
    const r = b.runVp(vp, { maxExits: 50, timeoutMs: 20_000 });
    expect({ stop: r.stop, exits: r.exits, vtlSwitches: r.vtlSwitches }).toEqual({ stop: 'hlt', exits: 4, vtlSwitches: 2 });
    const res = await read(G.result, 16);
    // VTL1's vCPU ran with XMM0 as VTL0 left it (x87/SSE/AVX state is shared, tlfs-vsm.md §9.2).
    expect(xmm0(1)).toBe(XMM_VALUE);
    // VTL1's HvCallGetVpRegisters saw the LSTAR VTL0's code wrote without an exit (fetched lazily from VTL0's vCPU).
    const out = await read(G.output, 16);
    expect(out.readBigUInt64LE(0)).toBe(LSTAR_BY_GUEST);
    // VTL0 still had its own LSTAR after the round trip (private state stayed in its vCPU).
    expect(res.readBigUInt64LE(8)).toBe(LSTAR_BY_GUEST);
    // The run's end left the core's register file whole.
    expect(await lstar()).toBe(LSTAR_BY_GUEST);
  });

  /**
   * The program again with the guest's wrmsr skipped (it starts after it) and LSTAR set through the
   * API to `value`, then `between` (more register writes) before the run; VTL1's HvCallGetVpRegisters,
   * VTL0's RDMSR and the core must all see `value`.
   */
  async function runWithLstarFromApi(value: bigint, between: () => Promise<void> = async () => {}): Promise<void> {
    await b.setVpRegisters(
      full(pb.SetVpRegistersRequest, {
        name: vp,
        vtl: 0,
        registers: [r64(R.HV_REGISTER_NAME_X64_LSTAR, value), r64(R.HV_REGISTER_NAME_X64_RIP, G.code + 5n + 5n + 5n + 2n)],
      }),
    );
    await between();
    await b.writeGpa(full(pb.WriteGpaRequest, { name, gpa: G.result, data: Buffer.alloc(16) }));
    const r = b.runVp(vp, { maxExits: 50, timeoutMs: 20_000 });
    expect({ stop: r.stop, exits: r.exits, vtlSwitches: r.vtlSwitches }).toEqual({ stop: 'hlt', exits: 4, vtlSwitches: 2 });
    expect((await read(G.output, 8)).readBigUInt64LE(0)).toBe(value);
    expect((await read(G.result, 16)).readBigUInt64LE(8)).toBe(value);
    expect(await lstar()).toBe(value);
  }

  it('loads a register the core changed between runs into the vCPU that holds that VTL', async () => {
    await runWithLstarFromApi(LSTAR_BY_API);
  });

  it('loads them all the same when more changed between runs than the register files remember by name', async () => {
    // LSTAR and RIP first, then 40 more writes (RBX): the change log (32 names) no longer reaches
    // back to the first two, so every register the vCPU holds is compared with the core's.
    await runWithLstarFromApi(LSTAR_BY_API + 0x1000n, async () => {
      for (let i = 0; i < 40; i++)
        await b.setVpRegisters(full(pb.SetVpRegistersRequest, { name: vp, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_X64_RBX, BigInt(i))] }));
    });
  });
});
