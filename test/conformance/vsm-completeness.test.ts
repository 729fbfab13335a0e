// Conformance (issue #16): HvCallTranslateVirtualAddress(Ex) from VTL1 on VTL0's page tables, memory
// actions that name a GVA (GvaValid in the intercept, #PF), XMM fast hypercalls (HvCallGetVpRegisters
// output in XMM registers), the flush / IPI / spin-wait calls and a flush returning for continuation
// (HypercallResponse.control_after), MBEC for ExecuteMemory by CPL, and GetCapabilities. Public gRPC
// API only, so the same scenario runs on the emulator and on the KVM agent
// (VSM_BACKEND=agent npx jest test/conformance --selectProjects conformance).
import { pb } from '@vsm/client';
import { HvMsr } from '@vsm/core';
import { GiB, type Harness, failure, startHarness } from '../support/server';

const R = pb.HvRegisterName;
const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });
const SELF = 0xffff_ffff_ffff_ffffn;
const VP_SELF = 0xffff_fffe;
const IN = 0x10000n;
const OUT = 0x11000n;
const CR3 = 0x100000n;
const u64 = (v: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
};

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
}, 120_000);
afterAll(async () => {
  await h.stop();
});

/** A 2-VP partition, hypercall pages in VTL0 (0x1000) and VTL1 (0x2000), VTL1 enabled on both VPs (EnableMbec). */
async function setup(id: string) {
  const p = await h.client.partitions.createPartition({ partitionId: id, partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
  const vp0 = `${p.name}/vps/0`;
  const vp1 = `${p.name}/vps/1`;
  for (const vp of [vp0, vp1]) {
    await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 0x8100_0000_0000_0001n });
    await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x1000n | 1n });
  }
  await h.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1, enableMbec: true });
  await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
  await h.client.vtl.enableVpVtl({ name: vp1, targetVtl: 1 });
  return { p, vp0, vp1 };
}

/** 4-level page tables for VTL0 of `vp`: GVA 0x7f_0000_1000 -> 0x400000 (user RW), 0x7f_0000_2000 -> 0x401000 (user RO). */
async function vtl0Paging(pname: string, vp: string) {
  // PML4[0] -> 0x101000 (PDPT), PDPT[0x1fc] -> 0x102000 (PD)... 0x7f_0000_1000 = PML4 0, PDPT 0x1fc, PD 0, PT 1.
  const w = (gpa: bigint, v: bigint) => h.client.memory.writeGpa({ name: pname, gpa, data: u64(v) });
  await w(CR3, 0x101000n | 7n);
  await w(0x101000n + 0x1fcn * 8n, 0x102000n | 7n);
  await w(0x102000n, 0x103000n | 7n);
  await w(0x103000n + 8n, 0x400000n | 7n);
  await w(0x103000n + 16n, 0x401000n | 5n);
  await h.client.vps.setVpRegisters({
    name: vp,
    vtl: 0,
    registers: [
      r64(R.HV_REGISTER_NAME_X64_CR3, CR3),
      r64(R.HV_REGISTER_NAME_X64_CR4, 0x20n),
      r64(R.HV_REGISTER_NAME_X64_CR0, 0x8000_0011n),
      r64(R.HV_REGISTER_NAME_X64_EFER, 0xd01n),
    ],
  });
}

/** VtlCall into VTL1, whose hypercall page (0x2000) is set up the first time (for VtlReturn). */
async function vtlCall(vp: string) {
  const o = await h.client.guest.callHypercallPage({ name: vp, offset: 0x0f, rcx: 0n });
  expect(o.outcome?.activeVtl).toBe(1);
  await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 0x8100_0000_0000_0001n });
  await h.client.guest.writeMsr({ name: vp, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x2000n | 1n });
}

/** HvCallTranslateVirtualAddress input (TLFS: PartitionId, VpIndex, Reserved, ControlFlags, GvaPage). */
function translateInput(gvaPage: bigint, flags: bigint, o: { partitionId?: bigint; vpIndex?: number; rsvd?: number } = {}) {
  const b = Buffer.alloc(32);
  b.writeBigUInt64LE(o.partitionId ?? SELF, 0);
  b.writeUInt32LE(o.vpIndex ?? VP_SELF, 8);
  b.writeUInt32LE(o.rsvd ?? 0, 12);
  b.writeBigUInt64LE(flags, 16);
  b.writeBigUInt64LE(gvaPage, 24);
  return b;
}
const VTL0 = 0x10n << 56n; // HV_INPUT_VTL UseTargetVtl | 0 in ControlFlags 63:56
const VALIDATE_READ = 1n;
const VALIDATE_WRITE = 2n;
const USER = 0x80n;

describe('address translation (HvCallTranslateVirtualAddress 0x0052 / Ex 0x00AC)', () => {
  test('VTL1 walks VTL0 page tables: GpaPage, cache type, result codes; statuses for bad input', async () => {
    const { p, vp0 } = await setup('c16-translate');
    await vtl0Paging(p.name, vp0);
    await vtlCall(vp0);
    const tr = (input: Buffer, control = 0x52n, outputSize = 16) =>
      h.client.guest.hypercall({ name: vp0, control, inputGpa: IN, outputGpa: OUT, input, outputSize });
    const ok = await tr(translateInput(0x7f_0000_1n, VALIDATE_READ | VALIDATE_WRITE | VTL0));
    expect(ok.status).toBe(pb.HvStatus.HV_STATUS_SUCCESS);
    const out = Buffer.from(ok.output);
    expect(out.readUInt32LE(0)).toBe(0); // HvTranslateGvaSuccess
    expect(out[4]).toBe(6); // CacheType WB (PAT entry 0)
    expect(out.readBigUInt64LE(8)).toBe(0x400n); // GpaPage
    // A user-mode write to the read-only page: PrivilegeViolation (2); a page not present: 1.
    expect(Buffer.from((await tr(translateInput(0x7f_0000_2n, VALIDATE_WRITE | USER | VTL0))).output).readUInt32LE(0)).toBe(2);
    const np = await tr(translateInput(0x7f_0000_3n, VALIDATE_READ | VTL0));
    expect([np.status, Buffer.from(np.output).readUInt32LE(0), Buffer.from(np.output).readBigUInt64LE(8)]).toEqual([pb.HvStatus.HV_STATUS_SUCCESS, 1, 0n]);
    // Ex: 64-byte output (OpenVMM layout), GpaPage at +48.
    const ex = await tr(translateInput(0x7f_0000_1n, VALIDATE_READ | VTL0), 0xacn, 64);
    expect([ex.status, Buffer.from(ex.output).readBigUInt64LE(48)]).toEqual([pb.HvStatus.HV_STATUS_SUCCESS, 0x400n]);
    // Bad input: wrong partition, own VTL, reserved field, rep count on a simple call, a VP that does not exist.
    expect((await tr(translateInput(1n, VALIDATE_READ | VTL0, { partitionId: 3n }))).status).toBe(pb.HvStatus.HV_STATUS_ACCESS_DENIED);
    expect((await tr(translateInput(1n, VALIDATE_READ | (0x11n << 56n)))).status).toBe(pb.HvStatus.HV_STATUS_ACCESS_DENIED);
    expect((await tr(translateInput(1n, VALIDATE_READ | VTL0, { rsvd: 1 }))).status).toBe(pb.HvStatus.HV_STATUS_INVALID_PARAMETER);
    expect((await tr(translateInput(1n, VALIDATE_READ | VTL0), 0x52n | (1n << 32n))).status).toBe(pb.HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
    expect((await tr(translateInput(1n, VALIDATE_READ | VTL0, { vpIndex: 9 }))).status).toBe(pb.HvStatus.HV_STATUS_INVALID_VP_INDEX);
    // From VTL0 there is no lower VTL to translate for.
    await h.client.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 0n });
    expect((await tr(translateInput(0x7f_0000_1n, VALIDATE_READ | VTL0))).status).toBe(pb.HvStatus.HV_STATUS_ACCESS_DENIED);
  });

  test('a memory action that names a GVA: intercept with GvaValid and the GVA; #PF when it does not translate; wrong GPA refused', async () => {
    const { p, vp0 } = await setup('c16-gva');
    await vtl0Paging(p.name, vp0);
    // VTL1 makes 0x400000 read-only for VTL0.
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] });
    await vtlCall(vp0);
    const mask = Buffer.alloc(24);
    mask.writeBigUInt64LE(SELF, 0);
    mask.writeUInt32LE(0xd, 8); // R | KMX | UMX
    mask[12] = 0x11; // HV_INPUT_VTL: VTL1's own protections
    mask.writeBigUInt64LE(0x400n, 16);
    expect((await h.client.guest.hypercall({ name: vp0, control: 0x0cn | (1n << 32n), inputGpa: IN, outputGpa: 0n, input: mask })).status).toBe(
      pb.HvStatus.HV_STATUS_SUCCESS,
    );
    await h.client.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 0n });
    const w = await h.client.guest.writeMemory({ name: vp0, gpa: 0n, gva: 0x7f_0000_1010n, data: Buffer.from('12345678') });
    const n = w.outcome?.intercept;
    expect(n?.gpa).toBe(0x400010n);
    expect(n?.gva).toBe(0x7f_0000_1010n);
    const msg = Buffer.from(n!.hvMessage);
    // HV_X64_MEMORY_INTERCEPT_MESSAGE after the 16-byte HV_MESSAGE header: MemoryAccessInfo +45 bit 0, GVA +48, GPA +56.
    expect(msg[16 + 45]! & 1).toBe(1);
    expect(msg.readBigUInt64LE(16 + 48)).toBe(0x7f_0000_1010n);
    expect(msg.readBigUInt64LE(16 + 56)).toBe(0x400010n);
    // VTL1 (entered with the intercept) skips the access: VTL0's RIP moves on, then VtlReturn.
    expect(w.outcome?.activeVtl).toBe(1);
    const rip = (await h.client.vps.getVpRegisters({ name: vp0, vtl: 0, names: [R.HV_REGISTER_NAME_X64_RIP] })).registers[0]?.value?.value;
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_X64_RIP, (rip?.$case === 'reg64' ? rip.value : 0n) + 4n)] });
    expect((await h.client.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 0n })).outcome?.activeVtl).toBe(0);
    const pf = await h.client.guest.readMemory({ name: vp0, gpa: 0n, gva: 0x7f_0000_5000n, length: 4 });
    expect(pf.outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_PF);
    const r = await h.client.guest.readMemory({ name: vp0, gpa: 0n, gva: 0x7f_0000_2004n, length: 4 });
    expect(r.outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_UNSPECIFIED);
    const e = await failure(h.client.guest.readMemory({ name: vp0, gpa: 0x5000n, gva: 0x7f_0000_2004n, length: 4 }));
    expect(e.reason).toBe('HV_STATUS_INVALID_PARAMETER');
  });
});

describe('XMM fast hypercalls', () => {
  test('HvCallGetVpRegisters with its names in XMM0 and the values in XMM1..: fast_output; what does not fit -> INVALID_HYPERCALL_INPUT', async () => {
    const { vp0 } = await setup('c16-xmm');
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_X64_RBX, 0xb0b0n)] });
    const input = Buffer.alloc(24);
    input.writeBigUInt64LE(SELF, 0);
    input.writeUInt32LE(VP_SELF, 8);
    input.writeUInt32LE(R.HV_REGISTER_NAME_X64_RBX, 16);
    input.writeUInt32LE(R.HV_REGISTER_NAME_VSM_VP_STATUS, 20);
    const control = 0x50n | (1n << 16n) | (2n << 32n); // fast, rep count 2
    const r = await h.client.guest.hypercall({ name: vp0, control, input });
    expect([r.status, r.repsCompleted, r.continuation]).toEqual([pb.HvStatus.HV_STATUS_SUCCESS, 2, false]);
    const out = Buffer.from(r.fastOutput);
    expect(out.length).toBe(32); // XMM1, XMM2
    expect(out.readBigUInt64LE(0)).toBe(0xb0b0n);
    expect(out.readBigUInt64LE(16)).toBe(0b11n << 16n); // VsmVpStatus: VTL0 and VTL1 enabled, active VTL0
    expect(r.controlAfter).toBe(control);
    // The registers hold it too (XMM1 is shared by both VTLs).
    const x = await h.client.vps.getVpRegisters({ name: vp0, vtl: 0, names: [R.HV_REGISTER_NAME_X64_XMM1] });
    const v = x.registers[0]?.value?.value;
    expect(v?.$case === 'reg128' ? v.value.low : -1n).toBe(0xb0b0n);
    // 5 names (36 bytes) leave 64 bytes for 80 bytes of output.
    const big = Buffer.concat([input.subarray(0, 16), Buffer.alloc(20, 0)]);
    const tooBig = await h.client.guest.hypercall({ name: vp0, control: 0x50n | (1n << 16n) | (5n << 32n), input: big });
    expect(tooBig.status).toBe(pb.HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
    const e = await failure(h.client.guest.hypercall({ name: vp0, control, input: Buffer.alloc(113) }));
    expect(e.reason).toBe('HV_STATUS_INVALID_PARAMETER');
  });
});

describe('what guests call early', () => {
  test('flushes, IPIs, long spin wait: statuses; a flush whose target TLB VTL1 locked returns for continuation', async () => {
    const { vp0, vp1 } = await setup('c16-early');
    const fast = (name: string, control: bigint, rdx: bigint, r8: bigint) => {
      const input = Buffer.concat([u64(rdx), u64(r8)]);
      return h.client.guest.hypercall({ name, control: control | (1n << 16n), input });
    };
    expect((await fast(vp0, 0x08n, 0x1000n, 0n)).status).toBe(pb.HvStatus.HV_STATUS_SUCCESS); // NotifyLongSpinWait
    expect((await fast(vp0, 0x0bn, 0x40n, 3n)).status).toBe(pb.HvStatus.HV_STATUS_SUCCESS); // IPI to VP0, VP1
    expect((await fast(vp0, 0x0bn, 0x05n, 3n)).status).toBe(pb.HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT); // vector < 0x10
    expect((await fast(vp0, 0x0bn, 0x40n | (0x11n << 32n), 3n)).status).toBe(pb.HvStatus.HV_STATUS_ACCESS_DENIED); // VTL0 -> VTL1
    expect((await fast(vp0, 0x0bn | (1n << 32n), 0x40n, 3n)).status).toBe(pb.HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT); // rep count on a simple call
    const flushIn = (flags: bigint, mask: bigint) => Buffer.concat([u64(0n), u64(flags), u64(mask)]);
    const flush = (name: string, flags: bigint, mask: bigint) =>
      h.client.guest.hypercall({ name, control: 0x02n, inputGpa: IN, outputGpa: 0n, input: flushIn(flags, mask) });
    expect((await flush(vp1, 0n, 1n)).status).toBe(pb.HvStatus.HV_STATUS_SUCCESS);
    expect((await flush(vp1, 0x10n, 1n)).status).toBe(pb.HvStatus.HV_STATUS_INVALID_PARAMETER);
    // VTL1 on VP0 locks VTL0's TLB (HvRegisterVsmVpSecureConfigVtl0.TlbLocked) and stays in VTL1.
    await vtlCall(vp0);
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_VP_SECURE_CONFIG_VTL0, 2n)] });
    const list = Buffer.concat([flushIn(1n, 0n), u64(0x7000n), u64(0x8000n)]);
    const control = 0x03n | (2n << 32n);
    const waiting = await h.client.guest.hypercall({ name: vp1, control, inputGpa: IN, outputGpa: 0n, input: list });
    expect([waiting.continuation, waiting.resultValue, waiting.controlAfter]).toEqual([true, 0n, control]);
    // VP0 returns to VTL0: the lock is released; the reissued call completes.
    await h.client.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 0n });
    const done = await h.client.guest.hypercall({ name: vp1, control, inputGpa: IN, outputGpa: 0n, input: list });
    expect([done.continuation, done.status, done.repsCompleted]).toEqual([false, pb.HvStatus.HV_STATUS_SUCCESS, 2]);
  });

  test('GetCapabilities: hypercall_codes lists the new calls; XMM fast and MBEC features', async () => {
    const c = await h.client.partitions.getCapabilities({});
    expect(c.hypercallCodes).toEqual(expect.arrayContaining([0x02, 0x03, 0x08, 0x0b, 0x13, 0x14, 0x15, 0x52, 0xac]));
    const f = new Map(c.features.map((x) => [x.name, x]));
    expect(f.get('hv-xmm-input')?.supported).toBe(true);
    expect(f.get('hv-xmm-output')?.supported).toBe(true);
    const mbec = f.get('mbec');
    expect(mbec).toBeDefined();
    if (!mbec!.supported) expect(mbec!.reason).toMatch(/ExecuteMemory/);
  });
});

describe('MBEC', () => {
  test('ExecuteMemory: UMX for CPL3, KMX for CPL0 once VTL1 enabled MBEC for VTL0 on the VP; the intercept names the permission', async () => {
    const { vp0 } = await setup('c16-mbec');
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] });
    await h.client.vps.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_VP_SECURE_CONFIG_VTL0, 1n)] });
    await vtlCall(vp0);
    const mask = Buffer.alloc(24);
    mask.writeBigUInt64LE(SELF, 0);
    mask.writeUInt32LE(0x9, 8); // R | UMX: user code page
    mask[12] = 0x11;
    mask.writeBigUInt64LE(0x300n, 16);
    expect((await h.client.guest.hypercall({ name: vp0, control: 0x0cn | (1n << 32n), inputGpa: IN, outputGpa: 0n, input: mask })).status).toBe(
      pb.HvStatus.HV_STATUS_SUCCESS,
    );
    await h.client.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 0n });
    const st = await h.client.vps.getVpRegisters({ name: vp0, vtl: 0, names: [R.HV_REGISTER_NAME_VSM_VP_STATUS] });
    const vs = st.registers[0]?.value?.value;
    expect(vs?.$case === 'reg64' ? vs.value & 0x10n : -1n).toBe(0x10n); // ActiveMbecEnabled
    const kernel = await h.client.guest.executeMemory({ name: vp0, gpa: 0x300000n, length: 4 });
    expect(kernel.outcome?.intercept?.mbecExecuteMode).toBe(pb.MbecExecuteMode.MBEC_EXECUTE_MODE_KERNEL);
    await h.client.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 0n }).catch(() => undefined);
    // CPL3: CS.DPL = 3 (selector 0x2b, attributes 0xa0fb).
    await h.client.vps.setVpRegisters({
      name: vp0,
      vtl: 0,
      registers: [
        { name: R.HV_REGISTER_NAME_X64_CS, value: { value: { $case: 'segment', value: { base: 0n, limit: 0xffffffff, selector: 0x2b, attributes: 0xa0fb } } } },
      ],
    });
    const user = await h.client.guest.executeMemory({ name: vp0, gpa: 0x300000n, length: 4 });
    expect([user.outcome?.intercept, user.outcome?.exception]).toEqual([undefined, pb.X64Exception.X64_EXCEPTION_UNSPECIFIED]);
  });
});
