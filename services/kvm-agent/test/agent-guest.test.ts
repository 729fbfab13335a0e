// Whole-guest smoke tests: small 64-bit guest programs (assembled with Asm) loaded into a
// partition through the API and run on VP0 from their own state (their page tables, GDT, stack)
// until HLT (KvmBackend.runVp). Everything the guest does goes through the embedded core: the
// Hyper-V MSRs it writes, the hypercall page it enables, the hypercall it makes through that page
// (a real CALL into the page, whose `out 0x4d, ax` exits to the dispatcher), a VtlCall into VTL1
// code and the VtlReturn back.
import { pb } from '@vsm/client';
import { Asm, buildGdt, buildIdentityPageTables, GDT_LIMIT } from '@vsm/platform-kvm/kvm';
import { KvmBackend } from '@vsm/vsm-v1';
import { type AgentHarness, GiB, describeKvm, startAgent } from './agent-support';

const R = pb.HvRegisterName;
const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });
const table = (name: pb.HvRegisterName, base: bigint, limit: number): pb.RegisterAssoc => ({
  name,
  value: { value: { $case: 'table', value: { base, limit } } },
});

const GUEST = {
  pageTables: 0x20_0000n,
  gdt: 0x3000n,
  code: 0x10_0000n,
  vtl1Code: 0x11_0000n,
  stack: 0x8_0000n,
  vtl1Stack: 0x9_0000n,
  input: 0x1_0000n,
  output: 0x1_1000n,
  hypercallPage: 0x2000n,
  vtl1HypercallPage: 0x4000n,
};
const GUEST_OS_ID = 0x8100_0000_0000_0001n;

describeKvm('whole guests on KVM', () => {
  let h: AgentHarness;
  let backend: KvmBackend;
  beforeAll(async () => {
    backend = new KvmBackend();
    h = await startAgent(backend);
  });
  afterAll(async () => {
    await h?.stop();
  });

  /** A partition whose VP0 has identity page tables and a flat GDT in its RAM, CR3/GDTR pointing at them. */
  async function partition(id: string, maximumVtl = 0) {
    const p = await h.client.partitions.createPartition({ partitionId: id, partition: { vpCount: 1, memoryBytes: GiB, maximumVtl } as pb.Partition });
    const vp0 = `${p.name}/vps/0`;
    const pt = buildIdentityPageTables(GUEST.pageTables, 1);
    await h.client.memory.writeGpa({ name: p.name, gpa: GUEST.pageTables, data: pt.bytes });
    await h.client.memory.writeGpa({ name: p.name, gpa: GUEST.gdt, data: buildGdt(GUEST.gdt) });
    await h.client.vps.setVpRegisters({
      name: vp0,
      vtl: 0,
      registers: [
        r64(R.HV_REGISTER_NAME_X64_CR3, pt.cr3),
        table(R.HV_REGISTER_NAME_X64_GDTR, GUEST.gdt, GDT_LIMIT),
        r64(R.HV_REGISTER_NAME_X64_RIP, GUEST.code),
        r64(R.HV_REGISTER_NAME_X64_RSP, GUEST.stack),
      ],
    });
    return { name: p.name, vp0, cr3: pt.cr3 };
  }
  const reg = async (vp: string, vtl: number, name: pb.HvRegisterName) => {
    const r = await h.client.vps.getVpRegisters({ name: vp, vtl, names: [name] });
    const v = r.registers[0]?.value?.value;
    return v?.$case === 'reg64' ? v.value : undefined;
  };

  /** wrmsr of a 64-bit value: mov ecx, msr; mov eax, lo; mov edx, hi; wrmsr. */
  const wrmsr = (a: Asm, msr: number, value: bigint) =>
    a
      .movR32Imm32('rcx', msr)
      .movR32Imm32('rax', Number(value & 0xffff_ffffn))
      .movR32Imm32('rdx', Number(value >> 32n))
      .wrmsr();

  test('GUEST_OS_ID, hypercall page, HvCallGetVpRegisters(HvRegisterVsmVpStatus) through the page: the core sees it, RAX has the result', async () => {
    const { name, vp0 } = await partition('guest-hc');
    const code = new Asm();
    wrmsr(code, 0x4000_0000, GUEST_OS_ID); //                                      HV_X64_MSR_GUEST_OS_ID
    wrmsr(code, 0x4000_0001, GUEST.hypercallPage | 1n); //                        HV_X64_MSR_HYPERCALL: enable at 0x2000
    // The input block of HvCallGetVpRegisters, stored by the guest: HV_PARTITION_ID_SELF,
    // HV_VP_INDEX_SELF + TargetVtl 0, one HV_REGISTER_NAME (HvRegisterVsmVpStatus).
    code
      .movR64Imm64('rdi', GUEST.input)
      .movR64Imm64('rax', 0xffff_ffff_ffff_ffffn)
      .store('rdi', 'rax', 8)
      .movR64Imm64('rdi', GUEST.input + 8n)
      .movR32Imm32('rax', 0xffff_fffe)
      .store('rdi', 'rax', 8)
      .movR64Imm64('rdi', GUEST.input + 16n)
      .movR32Imm32('rax', 0x000d_0003)
      .store('rdi', 'rax', 8);
    // RCX = control (HvCallGetVpRegisters 0x50, rep count 1), RDX = input GPA, R8 = output GPA.
    code
      .movR64Imm64('rcx', 0x50n | (1n << 32n))
      .movR64Imm64('rdx', GUEST.input)
      .movR64Imm64('r8', GUEST.output)
      .movR64Imm64('rax', GUEST.hypercallPage)
      .callReg('rax') //                  call [hypercall page + 0]
      .movRR('rbx', 'rax') //                                                      result value
      .movR64Imm64('rdi', GUEST.output)
      .load('rsi', 'rdi', 8) //                   the register value the call wrote
      .hlt();
    const bytes = code.bytes();
    await h.client.memory.writeGpa({ name, gpa: GUEST.code, data: bytes });

    const run = backend.runVp(vp0, { timeoutMs: 5000 });
    expect(run).toMatchObject({ stop: 'hlt', exits: 4, vtlSwitches: 0 }); // 2 WRMSR, 1 hypercall, HLT
    // The core saw the MSR writes and placed the hypercall page.
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_GUEST_OS_ID)).toBe(GUEST_OS_ID);
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_HYPERCALL)).toBe(GUEST.hypercallPage | 1n);
    const ov = await h.client.memory.listOverlays({ name });
    expect(ov.overlays.map((o) => [o.kind, o.gpa])).toEqual([[pb.OverlayKind.OVERLAY_KIND_HYPERCALL, GUEST.hypercallPage]]);
    // HV_HYPERCALL_RESULT_VALUE: HV_STATUS_SUCCESS, RepsCompleted 1 — in RAX when the call returned.
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_RBX)).toBe(1n << 32n);
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_RAX)).toBe(1n << 32n);
    // HvRegisterVsmVpStatus: ActiveVtl 0, EnabledVtlSet {0}.
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_RSI)).toBe(1n << 16n);
    const out = await h.client.memory.readGpa({ name, gpa: GUEST.output, length: 16 });
    expect(Buffer.from(out.data).readBigUInt64LE(0)).toBe(1n << 16n);
    // The guest really ran: RIP past its HLT, its CALL pushed the return address on its own stack.
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_RIP)).toBe(GUEST.code + BigInt(bytes.length));
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_RSP)).toBe(GUEST.stack);
    const ret = await h.client.memory.readGpa({ name, gpa: GUEST.stack - 8n, length: 8 });
    const callEnd = bytes.indexOf(Buffer.from([0xff, 0xd0])) + 2; // call rax
    expect(Buffer.from(ret.data).readBigUInt64LE(0)).toBe(GUEST.code + BigInt(callEnd));
  });

  test('VtlCall into VTL1 code and VtlReturn back, in one run (both VTLs on their own vCPUs)', async () => {
    const { name, vp0, cr3 } = await partition('guest-vtl', 1);
    await h.client.vtl.enablePartitionVtl({ name, targetVtl: 1 });
    const flat = { base: 0n, limit: 0xffffffff };
    await h.client.vtl.enableVpVtl({
      name: vp0,
      targetVtl: 1,
      initialContext: pb.InitialVpContext.fromPartial({
        rip: GUEST.vtl1Code,
        rsp: GUEST.vtl1Stack,
        rflags: 0x2n,
        efer: 0xd01n,
        cr0: 0x80050033n,
        cr3,
        cr4: 0x6a0n,
        msrCrPat: 0x0007040600070406n,
        cs: { ...flat, selector: 0x08, attributes: 0xa09b },
        ds: { ...flat, selector: 0x10, attributes: 0xc093 },
        es: { ...flat, selector: 0x10, attributes: 0xc093 },
        fs: { ...flat, selector: 0x10, attributes: 0xc093 },
        gs: { ...flat, selector: 0x10, attributes: 0xc093 },
        ss: { ...flat, selector: 0x10, attributes: 0xc093 },
        tr: { selector: 0x18, attributes: 0x8b, limit: 0x67 },
        ldtr: { attributes: 0x82 },
        idtr: { base: 0n, limit: 0 },
        gdtr: { base: GUEST.gdt, limit: GDT_LIMIT },
      }),
    });
    // VTL0: enable its hypercall page, VtlCall through it (offset 0x0F, RCX = 0 → control input 0),
    // then, back from VTL1, keep what VTL1 left in the shared RBX and halt.
    const vtl0 = new Asm();
    wrmsr(vtl0, 0x4000_0000, GUEST_OS_ID);
    wrmsr(vtl0, 0x4000_0001, GUEST.hypercallPage | 1n);
    vtl0
      .movR64Imm64('rbx', 0xb0b0n)
      .zero('rcx')
      .movR64Imm64('rax', GUEST.hypercallPage + 0x0fn)
      .callReg('rax')
      .movRR('r12', 'rbx')
      .hlt();
    // VTL1: its own hypercall page (per VTL), a result in the shared RBX, fast VtlReturn (0x26, RCX = 1).
    const vtl1 = new Asm();
    wrmsr(vtl1, 0x4000_0000, 2n);
    wrmsr(vtl1, 0x4000_0001, GUEST.vtl1HypercallPage | 1n);
    vtl1
      .movR64Imm64('rbx', 0x1234n)
      .movR32Imm32('rcx', 1)
      .movR64Imm64('rax', GUEST.vtl1HypercallPage + 0x26n)
      .callReg('rax')
      .hlt(); // not reached in this run: VTL0 runs on after the return
    await h.client.memory.writeGpa({ name, gpa: GUEST.code, data: vtl0.bytes() });
    await h.client.memory.writeGpa({ name, gpa: GUEST.vtl1Code, data: vtl1.bytes() });

    const transitions: pb.VtlTransition[] = [];
    const ac = new AbortController();
    let registered!: () => void;
    const subscribed = new Promise<void>((r) => (registered = r));
    const watch = (async () => {
      for await (const ev of h.client.vtl.watchTransitions({ name }, ac.signal)) {
        if (ev.event?.$case === 'subscribed') registered();
        if (ev.event?.$case === 'transition') transitions.push(ev.event.value);
        if (transitions.length === 2) ac.abort();
      }
    })();
    await subscribed;
    const run = backend.runVp(vp0, { timeoutMs: 5000 });
    expect(run).toMatchObject({ stop: 'hlt', vtlSwitches: 2 });
    await watch;
    expect(transitions.map((t) => [t.fromVtl, t.toVtl, t.isReturn])).toEqual([
      [0, 1, false],
      [1, 0, true],
    ]);
    expect((await h.client.vps.getVirtualProcessor({ name: vp0 })).vtlStatus?.activeVtl).toBe(0);
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_R12)).toBe(0x1234n); // VTL1's RBX, shared
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_RIP)).toBe(GUEST.code + BigInt(vtl0.bytes().length));
    expect(await reg(vp0, 1, R.HV_REGISTER_NAME_GUEST_OS_ID)).toBe(2n);
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_GUEST_OS_ID)).toBe(GUEST_OS_ID);
    // VTL1 stopped on its page's RET after the VMCALL-equivalent (resumes there on the next VtlCall).
    expect(await reg(vp0, 1, R.HV_REGISTER_NAME_X64_RIP)).toBe(GUEST.vtl1HypercallPage + 0x26n + 11n);
    const ov = await h.client.memory.listOverlays({ name });
    expect(ov.overlays.map((o) => [o.vtl, o.gpa])).toEqual([
      [0, GUEST.hypercallPage],
      [1, GUEST.vtl1HypercallPage],
    ]);
  });

  test('a guest that never exits is stopped by the watchdog', async () => {
    const { vp0, name } = await partition('guest-loop');
    await h.client.memory.writeGpa({ name, gpa: GUEST.code, data: Buffer.from([0xeb, 0xfe]) }); // jmp $
    const t0 = Date.now();
    const run = backend.runVp(vp0, { timeoutMs: 200 });
    expect(run.stop).toBe('timeout');
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_RIP)).toBe(GUEST.code);
  });
});
