// Whole-guest VSM on real KVM (the shape of opentmk's hv_memory_protect_write): a small 64-bit
// guest program on VP0 sets up VSM itself and then trips over its own protection.
//
//   VTL0: HV_X64_MSR_GUEST_OS_ID, hypercall page, HvCallEnablePartitionVtl(1),
//         HvCallEnableVpVtl(VP0, VTL1, initial context → VTL1 code), VtlCall
//   VTL1: its own GUEST_OS_ID and hypercall page, SynIC (SIMP, SCONTROL, SINT0),
//         EnableVtlProtection (HvCallSetVpRegisters(HvRegisterVsmPartitionConfig)),
//         HvCallModifyVtlProtectionMask(PROTECTED: read + execute, no write), VtlReturn
//   VTL0: mov [rdi], rax into PROTECTED → the read-only memslot refuses it (KVM_EXIT_MMIO) → the
//         core's HV_X64_MEMORY_INTERCEPT_MESSAGE in VTL1's SIMP slot of SINT0, VTL1 entered; with
//         route BOTH an external monitor (the Monitor stream) sees the same bytes.
//   VTL1: handles it from the message: skips the instruction (RIP += InstructionLength through
//         HvCallSetVpRegisters on VTL0's RIP), or lifts the protection and lets the access retry;
//         clears the slot, EOM, VtlReturn.
//
// Everything runs through KvmBackend.runVp (the API has no "run" RPC); the test reads results through
// the vsm.v1 API (SIMP slot, memory, registers) and the Monitor stream of a real gRPC server.
import { pb } from '@vsm/client';
import * as core from '@vsm/core';
import { Asm, buildGdt, buildIdentityPageTables, GDT_LIMIT } from '@vsm/platform-kvm/kvm';
import { KvmBackend } from '@vsm/vsm-v1';
import { type AgentHarness, GiB, describeKvm, startAgent } from './agent-support';

const R = pb.HvRegisterName;
const MSR = { GUEST_OS_ID: 0x4000_0000, HYPERCALL: 0x4000_0001, SCONTROL: 0x4000_0080, SIMP: 0x4000_0083, EOM: 0x4000_0084, SINT0: 0x4000_0090 };
const G = {
  hypercallPage: 0x2000n,
  gdt: 0x3000n,
  vtl1HypercallPage: 0x4000n,
  simp: 0x9000n,
  enableVpInput: 0x1_1000n,
  configInput: 0x1_2000n,
  protectInput: 0x1_3000n,
  skipInput: 0x1_4000n,
  relentInput: 0x1_5000n,
  control: 0x1_6000n,
  stack: 0x8_0000n,
  vtl1Stack: 0x9_0000n,
  code: 0x10_0000n,
  vtl1Code: 0x11_0000n,
  pageTables: 0x20_0000n,
  protected: 0x40_0000n,
};
const TARGET = G.protected + 0x10n;
const PARTITION_SELF = 0xffff_ffff_ffff_ffffn;
const VP_SELF = 0xffff_fffe;
const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });
const table = (name: pb.HvRegisterName, base: bigint, limit: number): pb.RegisterAssoc => ({
  name,
  value: { value: { $case: 'table', value: { base, limit } } },
});

/** wrmsr of a 64-bit value: mov ecx, msr; mov eax, lo; mov edx, hi; wrmsr. */
const wrmsr = (a: Asm, msr: number, value: bigint) =>
  a
    .movR32Imm32('rcx', msr)
    .movR32Imm32('rax', Number(value & 0xffff_ffffn))
    .movR32Imm32('rdx', Number(value >> 32n))
    .wrmsr();
/** A hypercall through a hypercall page: RCX = control, RDX/R8 = input/output GPA (or fast input). */
const hypercall = (a: Asm, page: bigint, control: bigint, rdx: bigint, r8 = 0n) =>
  a.movR64Imm64('rcx', control).movR64Imm64('rdx', rdx).movR64Imm64('r8', r8).movR64Imm64('rax', page).callReg('rax');
const rep1 = 1n << 32n;

/** HvCallSetVpRegisters input: one register of (VP self, `vtl` or the caller's). */
function setVpRegisterInput(name: number, value: bigint, targetVtl?: number): Buffer {
  const b = Buffer.alloc(16 + 32);
  b.writeBigUInt64LE(PARTITION_SELF, 0);
  b.writeUInt32LE(VP_SELF, 8);
  b[12] = targetVtl === undefined ? 0 : 0x10 | targetVtl; // HV_INPUT_VTL: UseTargetVtl
  b.writeUInt32LE(name, 16);
  b.writeBigUInt64LE(value, 32);
  return b;
}
/** HvCallModifyVtlProtectionMask input: the caller's protections, `flags` on one page. */
function protectInput(flags: number, gpfn: bigint): Buffer {
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(PARTITION_SELF, 0);
  b.writeUInt32LE(flags, 8);
  b.writeBigUInt64LE(gpfn, 16);
  return b;
}

describeKvm('a whole guest sets up VSM, protects a page from VTL1 and trips over it in VTL0 (real KVM)', () => {
  let h: AgentHarness;
  let backend: KvmBackend;
  beforeAll(async () => {
    backend = new KvmBackend();
    h = await startAgent(backend);
  });
  afterAll(async () => {
    await h?.stop();
  });

  const reg = async (vp: string, vtl: number, name: pb.HvRegisterName) => {
    const r = await h.client.vps.getVpRegisters({ name: vp, vtl, names: [name] });
    const v = r.registers[0]?.value?.value;
    return v?.$case === 'reg64' ? v.value : undefined;
  };
  const simSlot = async (name: string) => Buffer.from((await h.client.memory.readGpa({ name, gpa: G.simp, length: 256, vtlView: 1 })).data);
  const ram = async (name: string, gpa: bigint, length: number) => Buffer.from((await h.client.memory.readGpa({ name, gpa, length })).data);

  /**
   * A partition with VP0's VTL0 program `vtl0` (after the VSM set-up, which ends with the VtlCall)
   * and the VTL1 program: set-up, then a loop of VtlReturn → (entered on an intercept) HLT →
   * handle the intercept according to the control word (1 = skip, 2 = lift the protection and retry).
   */
  async function guest(id: string, vtl0Body: (a: Asm) => Asm) {
    const p = await h.client.partitions.createPartition({ partitionId: id, partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
    const name = p.name;
    const vp0 = `${name}/vps/0`;
    const pt = buildIdentityPageTables(G.pageTables, 1);
    const flat = { base: 0n, limit: 0xffffffff };
    const context: core.HvInitialVpContext = {
      rip: G.vtl1Code,
      rsp: G.vtl1Stack,
      rflags: 0x2n,
      efer: 0xd01n,
      cr0: 0x80050033n,
      cr3: pt.cr3,
      cr4: 0x6a0n,
      msrCrPat: 0x0007040600070406n,
      cs: { ...flat, selector: 0x08, attributes: 0xa09b },
      ds: { ...flat, selector: 0x10, attributes: 0xc093 },
      es: { ...flat, selector: 0x10, attributes: 0xc093 },
      fs: { ...flat, selector: 0x10, attributes: 0xc093 },
      gs: { ...flat, selector: 0x10, attributes: 0xc093 },
      ss: { ...flat, selector: 0x10, attributes: 0xc093 },
      tr: { base: 0n, selector: 0x18, attributes: 0x8b, limit: 0x67 },
      ldtr: { base: 0n, selector: 0, attributes: 0x82, limit: 0 },
      idtr: { base: 0n, limit: 0 },
      gdtr: { base: G.gdt, limit: GDT_LIMIT },
    };
    // The guest's data: page tables, GDT, hypercall input blocks, the protected page's contents.
    const data: [bigint, Buffer][] = [
      [G.pageTables, pt.bytes],
      [G.gdt, buildGdt(G.gdt)],
      [G.enableVpInput, core.encodeEnableVpVtlInput({ targetPartitionId: PARTITION_SELF, vpIndex: VP_SELF, targetVtl: 1, rsvdZ: 0, vpVtlContext: context })],
      // EnableVtlProtection = 1, DefaultVtlProtectionMask = RWX (bits 4:1).
      [G.configInput, setVpRegisterInput(core.HvRegisterName.HvRegisterVsmPartitionConfig, 1n | (0xfn << 1n))],
      [G.protectInput, protectInput(0x1 | 0x4, G.protected >> 12n)], // read + kernel execute, no write
      [G.skipInput, setVpRegisterInput(core.HvRegisterName.HvX64RegisterRip, 0n, 0)], // VTL0's RIP (value filled in by VTL1)
      [G.relentInput, protectInput(0xf, G.protected >> 12n)],
      [G.protected, Buffer.from('original-contents')],
    ];
    for (const [gpa, bytes] of data) await h.client.memory.writeGpa({ name, gpa, data: bytes });

    const vtl0 = new Asm();
    wrmsr(vtl0, MSR.GUEST_OS_ID, 0x8100_0000_0000_0001n);
    wrmsr(vtl0, MSR.HYPERCALL, G.hypercallPage | 1n);
    hypercall(vtl0, G.hypercallPage, 0x0dn | (1n << 16n), PARTITION_SELF, 1n).movRR('r13', 'rax'); // HvCallEnablePartitionVtl (fast): TargetVtl 1
    hypercall(vtl0, G.hypercallPage, 0x0fn, G.enableVpInput).movRR('r14', 'rax'); //              HvCallEnableVpVtl (memory)
    vtl0
      .zero('rcx')
      .movR64Imm64('rax', G.hypercallPage + 0x0fn)
      .callReg('rax'); //                VtlCall
    vtl0Body(vtl0);
    const vtl0Bytes = vtl0.bytes();

    const vtl1 = new Asm();
    wrmsr(vtl1, MSR.GUEST_OS_ID, 2n);
    wrmsr(vtl1, MSR.HYPERCALL, G.vtl1HypercallPage | 1n);
    wrmsr(vtl1, MSR.SIMP, G.simp | 1n);
    wrmsr(vtl1, MSR.SCONTROL, 1n);
    wrmsr(vtl1, MSR.SINT0, 0x30n);
    // (General registers are shared between VTLs: VTL1 keeps its results in R10/R11/R15.)
    hypercall(vtl1, G.vtl1HypercallPage, 0x51n | rep1, G.configInput).movRR('r10', 'rax'); //      HvCallSetVpRegisters(HvRegisterVsmPartitionConfig)
    hypercall(vtl1, G.vtl1HypercallPage, 0x0cn | rep1, G.protectInput).movRR('r11', 'rax'); //     HvCallModifyVtlProtectionMask
    vtl1
      .label('loop')
      .movR32Imm32('rcx', 1)
      .movR64Imm64('rax', G.vtl1HypercallPage + 0x26n)
      .callReg('rax') //    VtlReturn (fast)
      // Entered on an intercept. General registers are shared with VTL0: keep the ones VTL0 relies on
      // (RAX/RCX are the VtlReturn sequence's, RDX the EOM's).
      .push('rdi')
      .push('rsi')
      .push('rbx')
      .hlt() //                                                                                      the test looks
      .movR64Imm64('rsi', G.control)
      .load('rcx', 'rsi', 4)
      .decR32('rcx')
      .jz('skip')
      .decR32('rcx')
      .jz('relent')
      .hlt();
    // Skip: VTL0's RIP = the message's Rip + InstructionLength (HV_X64_INTERCEPT_MESSAGE_HEADER).
    vtl1
      .label('skip')
      .movR64Imm64('rsi', G.simp + 16n + 24n)
      .load('rax', 'rsi', 8)
      .movR64Imm64('rsi', G.simp + 16n + 4n)
      .load('rbx', 'rsi', 1)
      .addRR('rax', 'rbx')
      .movR64Imm64('rdi', G.skipInput + 32n)
      .store('rdi', 'rax', 8);
    hypercall(vtl1, G.vtl1HypercallPage, 0x51n | rep1, G.skipInput).movRR('r15', 'rax');
    vtl1.jmp('done');
    vtl1.label('relent');
    hypercall(vtl1, G.vtl1HypercallPage, 0x0cn | rep1, G.relentInput).movRR('r15', 'rax');
    // Done: free the slot (HvMessageTypeNone) and EOM, then back to VTL0.
    vtl1.label('done').movR64Imm64('rdi', G.simp).zero('rax').store('rdi', 'rax', 8);
    wrmsr(vtl1, MSR.EOM, 0n);
    vtl1.pop('rbx').pop('rsi').pop('rdi').jmp('loop');

    await h.client.memory.writeGpa({ name, gpa: G.code, data: vtl0Bytes });
    await h.client.memory.writeGpa({ name, gpa: G.vtl1Code, data: vtl1.bytes() });
    await h.client.vps.setVpRegisters({
      name: vp0,
      vtl: 0,
      registers: [
        r64(R.HV_REGISTER_NAME_X64_CR3, pt.cr3),
        table(R.HV_REGISTER_NAME_X64_GDTR, G.gdt, GDT_LIMIT),
        r64(R.HV_REGISTER_NAME_X64_RIP, G.code),
        r64(R.HV_REGISTER_NAME_X64_RSP, G.stack),
      ],
    });
    const at = (label: string) => G.code + BigInt(vtl0.offsetOf(label));
    return { name, vp0, at };
  }

  /** A monitor on the partition's intercepts (the Monitor stream of the gRPC server). */
  async function monitor(name: string) {
    const m = h.client.intercepts.monitor();
    const it = m.events[Symbol.asyncIterator]();
    m.send({ kind: { $case: 'subscribe', value: { name, accessMask: 0 } as pb.MonitorSubscribe } });
    const next = async () => {
      const r = await it.next();
      if (r.done) throw new Error('monitor stream ended');
      return r.value;
    };
    expect((await next()).kind?.$case).toBe('subscription');
    // A RETRY that intercepts again publishes the new intercept before the reply's result.
    const early: pb.InterceptEvent[] = [];
    const intercept = async () => {
      const e = early.shift();
      if (e) return e;
      const r = await next();
      if (r.kind?.$case !== 'intercept') throw new Error(`expected an intercept, got ${r.kind?.$case}`);
      return r.kind.value;
    };
    const reply = async (interceptId: bigint, action: pb.InterceptAction, data = Buffer.alloc(0)) => {
      m.send({ kind: { $case: 'reply', value: { interceptId, action, data } } });
      for (;;) {
        const r = await next();
        if (r.kind?.$case === 'intercept') early.push(r.kind.value);
        else if (r.kind?.$case === 'replyResult') return r.kind.value;
        else throw new Error(`expected a reply result, got ${r.kind?.$case}`);
      }
    };
    return { m, intercept, reply };
  }

  /** Checks the HV_MESSAGE in the SIMP slot against the faulting `mov [rdi], rax` at `rip`. */
  function expectWriteIntercept(slot: Buffer, rip: bigint, rax: bigint) {
    expect(slot.readUInt32LE(0)).toBe(0x8000_0001); // HvMessageTypeGpaIntercept
    expect(slot[4]).toBe(240); // PayloadSize
    const m = core.decodeMemoryInterceptMessage(slot.subarray(16));
    expect(m.header.vpIndex).toBe(0);
    expect(m.header.interceptAccessType).toBe(1); // write
    expect(m.header.executionState).toMatchObject({ cpl: 0, cr0Pe: true, eferLma: true, vtl: 0 });
    expect(m.header.rip).toBe(rip); // the store itself: KVM completed it before the exit, the agent decoded back
    expect(m.header.instructionLength).toBe(3); // 48 89 07
    expect(m.instructionByteCount).toBe(16);
    expect(m.instructionBytes.subarray(0, 3).toString('hex')).toBe('488907');
    expect(m.memoryAccessInfo.gvaValid).toBe(false);
    expect(m.guestPhysicalAddress).toBe(TARGET);
    expect(m.gprs[0]).toBe(rax); // RAX: the value the guest stores
    expect(m.gprs[7]).toBe(TARGET); // RDI
    expect(m.header.csSegment.selector).toBe(0x08);
  }

  test('route BOTH: the write intercepts into VTL1 (SIMP slot) and a monitor sees the same message; VTL1 skips it, then lifts the protection and the retry completes', async () => {
    const VALUE1 = 0x1122_3344_5566_7788n;
    const VALUE2 = 0x99aa_bbcc_ddee_ff00n;
    const { name, vp0, at } = await guest('wg-both', (a) =>
      a
        .movR64Imm64('rdi', TARGET)
        .movR64Imm64('rax', VALUE1)
        .label('store1')
        .store('rdi', 'rax', 8) //      refused: VTL1 skips it
        .movR64Imm64('rbx', 0x5c1bn)
        .movR64Imm64('rax', VALUE2)
        .label('store2')
        .store('rdi', 'rax', 8) //      refused: VTL1 lifts the protection, the retry completes
        .movRR('rsi', 'rdi')
        .load('r12', 'rsi', 8)
        .hlt(),
    );
    await h.client.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_BOTH });
    const mon = await monitor(name);
    const kp = backend.platformOf(name);
    const refusedBefore = kp.refusedAccesses;

    // Run 1: set-up in both VTLs, then the first store → VTL1, which halts on entry.
    const run1 = backend.runVp(vp0, { timeoutMs: 10_000 });
    expect(run1).toMatchObject({ stop: 'hlt', vtlSwitches: 3 }); // VtlCall, VtlReturn, intercept entry
    expect(run1.intercepts).toHaveLength(1);
    expect(kp.refusedAccesses - refusedBefore).toBe(1); // the MMIO exit on the read-only memslot
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_R13)).toBe(0n); // EnablePartitionVtl: HV_STATUS_SUCCESS
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_R14)).toBe(0n); // EnableVpVtl
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_R10)).toBe(1n << 32n); // SetVpRegisters: SUCCESS, 1 rep
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_R11)).toBe(1n << 32n); // ModifyVtlProtectionMask: SUCCESS, 1 rep
    expect(await reg(vp0, 1, R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG)).toBe(1n | (0xfn << 1n));
    const prot = await h.client.intercepts.getVtlProtections({ name, protectingVtl: 1 });
    expect(prot.ranges.map((r) => [r.pages?.startPage, r.pages?.pageCount, r.mapFlags])).toEqual([[G.protected >> 12n, 1n, 0x5 | 0x8]]); // UX follows KX without MBEC
    const status = (await h.client.vps.getVirtualProcessor({ name: vp0 })).vtlStatus;
    expect(status).toMatchObject({ activeVtl: 1, lastEntryReason: pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_INTERRUPT });
    const slot1 = await simSlot(name);
    expectWriteIntercept(slot1, at('store1'), VALUE1);
    expect(slot1.equals(Buffer.from(run1.intercepts[0]!.message))).toBe(true);
    // The monitor observed the same bytes, without having to answer.
    const ev1 = await mon.intercept();
    expect(ev1).toMatchObject({ vpIndex: 0, vtl: 0, protectingVtl: 1, gpa: TARGET, length: 8, needsReply: false, rip: at('store1') });
    expect(Buffer.from(ev1.writeData).readBigUInt64LE(0)).toBe(VALUE1);
    expect(Buffer.from(ev1.hvMessage).equals(slot1)).toBe(true);
    // Nothing was written; VTL0 waits at the store.
    expect((await ram(name, G.protected, 17)).toString()).toBe('original-contents');
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_RIP)).toBe(at('store1'));

    // Run 2: VTL1 skips the store (RIP += InstructionLength); VTL0 runs on to the second store.
    await h.client.memory.writeGpa({ name, gpa: G.control, data: Buffer.from([1, 0, 0, 0]) });
    const run2 = backend.runVp(vp0, { timeoutMs: 10_000 });
    expect(run2).toMatchObject({ stop: 'hlt', vtlSwitches: 2 });
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_R15)).toBe(1n << 32n); // SetVpRegisters: SUCCESS, 1 rep
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_RBX)).toBe(0x5c1bn); // VTL0 ran past the skipped store
    expect((await ram(name, G.protected, 17)).toString()).toBe('original-contents');
    expectWriteIntercept(await simSlot(name), at('store2'), VALUE2);
    expect((await mon.intercept()).rip).toBe(at('store2'));

    // Run 3: VTL1 lifts the protection and returns with VTL0's RIP unchanged: the store is retried
    // once (the core performs it), VTL0 reads it back natively and halts.
    await h.client.memory.writeGpa({ name, gpa: G.control, data: Buffer.from([2, 0, 0, 0]) });
    const run3 = backend.runVp(vp0, { timeoutMs: 10_000 });
    expect(run3).toMatchObject({ stop: 'hlt', vtlSwitches: 1, intercepts: [] });
    expect((await ram(name, TARGET, 8)).readBigUInt64LE(0)).toBe(VALUE2);
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_R12)).toBe(VALUE2);
    expect((await h.client.vps.getVirtualProcessor({ name: vp0 })).vtlStatus?.activeVtl).toBe(0);
    expect((await h.client.intercepts.listPendingIntercepts({ name })).intercepts).toHaveLength(0);
    mon.m.cancel();
  });

  test("route MONITOR: the run stops with the VP suspended; ALLOW performs the store once and the run goes on; a no-access read answered with SKIP gets the monitor's data; RETRY intercepts again", async () => {
    const VALUE = 0x0123_4567_89ab_cdefn;
    const { name, vp0, at } = await guest('wg-monitor', (a) =>
      a
        .movR64Imm64('rdi', TARGET)
        .movR64Imm64('rax', VALUE)
        .label('store')
        .store('rdi', 'rax', 8) //       refused: the monitor answers ALLOW
        .movR64Imm64('rsi', G.protected + 0x1000n)
        .label('load')
        .load('r12', 'rsi', 8) //          no access: the monitor answers RETRY, then SKIP with data
        .hlt(),
    );
    const mon = await monitor(name);
    // Set-up and the VtlReturn back to VTL0, under the default route; then hand intercepts to the monitor.
    await h.client.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
    const run1 = backend.runVp(vp0, { timeoutMs: 10_000 });
    expect(run1).toMatchObject({ stop: 'intercept', vtlSwitches: 2 }); // VtlCall, VtlReturn; then suspended
    const ev = await mon.intercept();
    expect(ev).toMatchObject({ vpIndex: 0, vtl: 0, protectingVtl: 1, gpa: TARGET, needsReply: true, rip: at('store') });
    expect(Buffer.from(ev.hvMessage).readUInt8(16 + 4) & 0xf).toBe(3); // InstructionLength
    expect((await h.client.vps.getVirtualProcessor({ name: vp0 })).vtlStatus).toMatchObject({
      activeVtl: 0,
      interceptSuspended: true,
      suspendedInterceptId: ev.interceptId,
    });
    expect(() => backend.runVp(vp0)).toThrow(/suspended/);
    expect((await ram(name, G.protected, 17)).toString()).toBe('original-contents');

    expect((await mon.reply(ev.interceptId, pb.InterceptAction.INTERCEPT_ACTION_ALLOW)).status).toBe(pb.ReplyStatus.REPLY_STATUS_APPLIED);
    expect((await ram(name, TARGET, 8)).readBigUInt64LE(0)).toBe(VALUE); // performed once, by the core, on the memfd
    // The no-access page for the load (VTL1 could do it too; the host's call is the same core path).
    await h.client.intercepts.modifyVtlProtectionMask({
      name,
      protectingVtl: 1,
      mapFlags: 0,
      ranges: [{ startPage: (G.protected >> 12n) + 1n, pageCount: 1n }],
    });
    const run2 = backend.runVp(vp0, { timeoutMs: 10_000 });
    expect(run2).toMatchObject({ stop: 'intercept', vtlSwitches: 0 });
    const evLoad = await mon.intercept();
    expect(evLoad).toMatchObject({ gpa: G.protected + 0x1000n, accessType: pb.HvInterceptAccessType.HV_INTERCEPT_ACCESS_TYPE_READ, rip: at('load') });
    expect(Buffer.from(evLoad.hvMessage).readUInt8(16 + 4) & 0xf).toBe(3); // 4C 8B 26: mov r12, [rsi] (decoded at RIP)
    // The store completed: RIP moved past it to the load.
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_RIP)).toBe(at('load'));
    // RETRY with the protection still there: the same instruction intercepts again.
    expect((await mon.reply(evLoad.interceptId, pb.InterceptAction.INTERCEPT_ACTION_RETRY)).status).toBe(pb.ReplyStatus.REPLY_STATUS_APPLIED);
    const evAgain = await mon.intercept();
    expect(evAgain.interceptId).toBeGreaterThan(evLoad.interceptId);
    expect(() => backend.runVp(vp0)).toThrow(/suspended/);
    // SKIP with data: the load completes with the monitor's bytes.
    expect((await mon.reply(evAgain.interceptId, pb.InterceptAction.INTERCEPT_ACTION_SKIP, Buffer.from('monitor!'))).status).toBe(
      pb.ReplyStatus.REPLY_STATUS_APPLIED,
    );
    const run4 = backend.runVp(vp0, { timeoutMs: 10_000 });
    expect(run4).toMatchObject({ stop: 'hlt', intercepts: [] });
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_R12)).toBe(Buffer.from('monitor!').readBigUInt64LE(0));
    expect(await reg(vp0, 0, R.HV_REGISTER_NAME_X64_RIP)).toBe(at('load') + 3n + 1n); // past the load and the HLT
    mon.m.cancel();
  });
});
