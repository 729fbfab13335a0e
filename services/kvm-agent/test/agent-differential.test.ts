// Differential test: the same sequence of vsm.v1 calls against CoreBackend and KvmBackend
// (real /dev/kvm) must give identical responses and leave identical state — registers of every
// VP and VTL, outcomes, memory bytes (RAM and each VTL's view), overlays. Fields that
// legitimately differ are normalized on both sides:
// - the hypercall instruction inside the hypercall page (VMMCALL/VMCALL on the emulator,
//   `out 0x4d, ax` on KVM — reported by GetCapabilities), and the first 3 bytes of each
//   VtlCall/VtlReturn entry (the KVM page's `out 0x4e, ax` prologue exit where the emulator's page
//   has its first MOV);
// - HvRegisterTimeRefCount and HV_X64_MSR_TIME_REF_COUNT (a clock), create_time_unix_ms.
import fc from 'fast-check';
import { pb } from '@vsm/client';
import { HvMsr } from '@vsm/core';
import { CoreBackend } from '@vsm/vsm-v1';
import { KvmBackend } from '@vsm/vsm-v1';
import { GiB, describeKvm } from './agent-support';
import { type LooseBackend, type Op, differential } from './agent-diff-support';

const R = pb.HvRegisterName;
const MSR = {
  GUEST_OS_ID: HvMsr.HV_X64_MSR_GUEST_OS_ID,
  HYPERCALL: HvMsr.HV_X64_MSR_HYPERCALL,
  VP_INDEX: HvMsr.HV_X64_MSR_VP_INDEX,
  TIME_REF_COUNT: HvMsr.HV_X64_MSR_TIME_REF_COUNT,
  REFERENCE_TSC: HvMsr.HV_X64_MSR_REFERENCE_TSC,
  TSC_FREQUENCY: HvMsr.HV_X64_MSR_TSC_FREQUENCY,
  VP_ASSIST_PAGE: HvMsr.HV_X64_MSR_VP_ASSIST_PAGE,
  SCONTROL: HvMsr.HV_X64_MSR_SCONTROL,
  SVERSION: HvMsr.HV_X64_MSR_SVERSION,
  SIEFP: HvMsr.HV_X64_MSR_SIEFP,
  SIMP: HvMsr.HV_X64_MSR_SIMP,
  EOM: HvMsr.HV_X64_MSR_EOM,
  SINT0: HvMsr.HV_X64_MSR_SINT0,
};
const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });
const seg = (name: pb.HvRegisterName, s: { base?: bigint; limit?: number; selector: number; attributes: number }): pb.RegisterAssoc => ({
  name,
  value: { value: { $case: 'segment', value: { base: s.base ?? 0n, limit: s.limit ?? 0xffffffff, selector: s.selector, attributes: s.attributes } } },
});

const pattern = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 13 + 5) & 0xff));

describeKvm('KVM backend vs emulator backend', () => {
  let emu: CoreBackend;
  let kvm: KvmBackend;
  beforeAll(() => {
    emu = new CoreBackend();
    kvm = new KvmBackend();
  });
  afterAll(async () => {
    await emu?.close();
    await kvm?.close();
  });

  test('a scripted session: MSRs, overlays, guest memory, hypercalls, VtlCall/VtlReturn, 32-bit and CPL3 callers', async () => {
    const name = 'partitions/diff-script';
    const vp0 = `${name}/vps/0`;
    const vp1 = `${name}/vps/1`;
    const ops: Op[] = [];
    const op = (what: string, run: (b: LooseBackend) => Promise<unknown>) => ops.push({ what, run });
    op('CreatePartition', (b) =>
      b.createPartition({ partitionId: 'diff-script', requestId: '', partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 2 } as pb.Partition }),
    );
    op('WriteGpa pattern', (b) => b.writeGpa({ name, gpa: 0x1000n, data: pattern }));
    op('WriteGpa pattern 2', (b) => b.writeGpa({ name, gpa: 0x9000n, data: pattern }));
    // MSRs.
    op('RDMSR GUEST_OS_ID (0)', (b) => b.readMsr({ name: vp0, msr: MSR.GUEST_OS_ID }));
    op('WRMSR HYPERCALL without OS id', (b) => b.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x1001n }));
    op('WRMSR GUEST_OS_ID', (b) => b.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 0x8100_0000_0000_0001n }));
    op('RDMSR GUEST_OS_ID', (b) => b.readMsr({ name: vp0, msr: MSR.GUEST_OS_ID }));
    op('WRMSR VP_INDEX (read-only: #GP)', (b) => b.writeMsr({ name: vp0, msr: MSR.VP_INDEX, value: 5n }));
    op('RDMSR VP_INDEX vp1', (b) => b.readMsr({ name: vp1, msr: MSR.VP_INDEX }));
    op('RDMSR TSC_FREQUENCY', (b) => b.readMsr({ name: vp0, msr: MSR.TSC_FREQUENCY }));
    op('RDMSR SVERSION', (b) => b.readMsr({ name: vp0, msr: MSR.SVERSION }));
    op('RDMSR EOM (write-only: #GP)', (b) => b.readMsr({ name: vp0, msr: MSR.EOM }));
    op('RDMSR unknown Hyper-V MSR', (b) => b.readMsr({ name: vp0, msr: 0x400000f0 }));
    op('WRMSR unknown Hyper-V MSR', (b) => b.writeMsr({ name: vp0, msr: 0x400000f0, value: 1n }));
    op('RDMSR architectural MSR (not modelled: #GP)', (b) => b.readMsr({ name: vp0, msr: 0xc0000080 }));
    op('WRMSR SINT0 vector 5 unmasked (#GP)', (b) => b.writeMsr({ name: vp0, msr: MSR.SINT0, value: 5n }));
    op('WRMSR SINT0', (b) => b.writeMsr({ name: vp0, msr: MSR.SINT0, value: 0x31n }));
    op('RDMSR SINT0', (b) => b.readMsr({ name: vp0, msr: MSR.SINT0 }));
    op('WRMSR HYPERCALL', (b) => b.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x1001n | 0xffcn }));
    op('RDMSR HYPERCALL', (b) => b.readMsr({ name: vp0, msr: MSR.HYPERCALL }));
    op('WRMSR REFERENCE_TSC', (b) => b.writeMsr({ name: vp0, msr: MSR.REFERENCE_TSC, value: 0x7001n }));
    op('WRMSR SIMP vp1 at 0x9000', (b) => b.writeMsr({ name: vp1, msr: MSR.SIMP, value: 0x9001n }));
    op('WRMSR HYPERCALL beyond the GPA space (#GP)', (b) => b.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: (GiB + 0x1000n) | 1n }));
    op('ListOverlays', (b) => b.listOverlays({ name }));
    // Guest memory through the views.
    for (const [gpa, length] of [
      [0x1000n, 4096],
      [0x1000n, 4],
      [0x0ffcn, 8],
      [0x0ff8n, 24],
      [0x7000n, 64],
      [0x9000n, 16],
      [0x9000n, 1],
      [0x9003n, 2],
      [0x9005n, 4],
      [0x9007n, 8],
      [0x3ffffff8n, 8],
    ] as [bigint, number][]) {
      op(`ReadMemory vp0 0x${gpa.toString(16)}+${length}`, (b) => b.readMemory({ name: vp0, gpa, length }));
      op(`ReadMemory vp1 0x${gpa.toString(16)}+${length}`, (b) => b.readMemory({ name: vp1, gpa, length }));
    }
    op('ReadMemory beyond RAM', (b) => b.readMemory({ name: vp0, gpa: GiB - 4n, length: 8 }));
    op('ReadMemory length 0', (b) => b.readMemory({ name: vp0, gpa: 0n, length: 0 }));
    op('WriteMemory into the hypercall page (#GP)', (b) => b.writeMemory({ name: vp0, gpa: 0x1800n, data: Buffer.from('nope') }));
    op('WriteMemory crossing into the hypercall page (#GP, nothing written)', (b) => b.writeMemory({ name: vp0, gpa: 0x0ff0n, data: Buffer.alloc(32, 0xaa) }));
    op('WriteMemory into the reference TSC page (#GP)', (b) => b.writeMemory({ name: vp0, gpa: 0x7008n, data: Buffer.from([1, 2]) }));
    for (const [gpa, data] of [
      [0x2000n, [1]],
      [0x2001n, [2, 3]],
      [0x2003n, [4, 5, 6, 7]],
      [0x2007n, [8, 9, 10, 11, 12, 13, 14, 15]],
      [0x2ffen, [0xee, 0xdd, 0xcc]],
      [0x5000n, Array.from({ length: 300 }, (_, i) => i & 0xff)],
    ] as [bigint, number[]][]) {
      op(`WriteMemory 0x${gpa.toString(16)}+${data.length}`, (b) => b.writeMemory({ name: vp0, gpa, data: Buffer.from(data) }));
    }
    op('WriteMemory vp1 into its SIMP', (b) => b.writeMemory({ name: vp1, gpa: 0x9010n, data: Buffer.from('simp of vp1') }));
    op('WriteMemory vp0 at the same GPA (RAM)', (b) => b.writeMemory({ name: vp0, gpa: 0x9010n, data: Buffer.from('ram') }));
    op('ReadMemory vp1 SIMP', (b) => b.readMemory({ name: vp1, gpa: 0x9000n, length: 32 }));
    op('ReadMemory vp0 same GPA', (b) => b.readMemory({ name: vp0, gpa: 0x9000n, length: 32 }));
    // Hypercalls: direct (RIP += 3) and through the page (RIP unchanged).
    op('SetVpRegisters vp0', (b) =>
      b.setVpRegisters({
        name: vp0,
        vtl: 0,
        registers: [
          r64(R.HV_REGISTER_NAME_X64_RIP, 0x40_1000n),
          r64(R.HV_REGISTER_NAME_X64_RSP, 0x8000n),
          r64(R.HV_REGISTER_NAME_X64_RAX, 0x1111n),
          r64(R.HV_REGISTER_NAME_X64_RBX, 0x2222n),
          r64(R.HV_REGISTER_NAME_X64_RSI, 0x3333n),
          r64(R.HV_REGISTER_NAME_X64_RDI, 0x4444n),
          r64(R.HV_REGISTER_NAME_X64_R15, 0x5555n),
          r64(R.HV_REGISTER_NAME_X64_RFLAGS, 0x246n),
        ],
      }),
    );
    const getRegsInput = (names: number[], targetVtl = 0) => {
      const input = Buffer.alloc(16 + 4 * names.length);
      input.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
      input.writeUInt32LE(0xfffffffe, 8);
      input[12] = targetVtl;
      names.forEach((n, i) => {
        input.writeUInt32LE(n, 16 + 4 * i);
      });
      return input;
    };
    const regsIn = getRegsInput([
      R.HV_REGISTER_NAME_VSM_VP_STATUS,
      R.HV_REGISTER_NAME_GUEST_OS_ID,
      R.HV_REGISTER_NAME_X64_RBX,
      R.HV_REGISTER_NAME_VSM_CODE_PAGE_OFFSETS,
    ]);
    op('Hypercall GetVpRegisters (memory)', (b) =>
      b.hypercall({ name: vp0, control: 0x50n | (4n << 32n), inputGpa: 0x10000n, outputGpa: 0x11000n, input: regsIn, outputSize: 64 }),
    );
    op('Hypercall GetVpRegisters output overlapping input', (b) =>
      b.hypercall({ name: vp0, control: 0x50n | (1n << 32n), inputGpa: 0x10000n, outputGpa: 0x10008n, input: regsIn.subarray(0, 20), outputSize: 16 }),
    );
    op('Hypercall unknown code', (b) => b.hypercall({ name: vp0, control: 0x7777n, inputGpa: 0n, outputGpa: 0n, input: Buffer.alloc(0), outputSize: 0 }));
    op('Hypercall fast EnablePartitionVtl', (b) =>
      b.hypercall({
        name: vp0,
        control: 0x0dn | (1n << 16n),
        inputGpa: 0n,
        outputGpa: 0n,
        input: Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0]),
        outputSize: 0,
      }),
    );
    op('Hypercall input into the hypercall page (#GP)', (b) =>
      b.hypercall({ name: vp0, control: 0x50n | (1n << 32n), inputGpa: 0x1000n, outputGpa: 0x11000n, input: regsIn.subarray(0, 20), outputSize: 16 }),
    );
    op('CallHypercallPage 0 (GetVpRegisters via the page)', (b) =>
      b.callHypercallPage({ name: vp0, offset: 0, rcx: 0x50n | (1n << 32n), rdx: 0x10000n, r8: 0x12000n }),
    );
    op('ReadMemory output of the page call', (b) => b.readMemory({ name: vp0, gpa: 0x12000n, length: 16 }));
    op('CallHypercallPage 3 (RET)', (b) => b.callHypercallPage({ name: vp0, offset: 3 }));
    op('CallHypercallPage 0x800 (INT3: #BP)', (b) => b.callHypercallPage({ name: vp0, offset: 0x800 }));
    op('CallHypercallPage 0x0F, no VTL1 on the VP (#UD)', (b) => b.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n }));
    op('CallHypercallPage 4096 (bad offset)', (b) => b.callHypercallPage({ name: vp0, offset: 4096 }));
    op('CallHypercallPage vp1 (no page in... partition-wide page)', (b) => b.callHypercallPage({ name: vp1, offset: 0, rcx: 0x7777n }));
    // VTL1 on VP0, VtlCall / VtlReturn through the page.
    op('EnableVpVtl 1 vp0', (b) => b.enableVpVtl({ name: vp0, targetVtl: 1 }));
    op('VtlCall', (b) => b.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n }));
    op('VTL1 WRMSR GUEST_OS_ID', (b) => b.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 2n }));
    op('VTL1 WRMSR HYPERCALL at 0x8000', (b) => b.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x8001n }));
    op('VTL1 WRMSR VP_ASSIST_PAGE', (b) => b.writeMsr({ name: vp0, msr: MSR.VP_ASSIST_PAGE, value: 0xa001n }));
    op('VTL1 WriteMemory VtlReturnX64Rax/Rcx', (b) => b.writeMemory({ name: vp0, gpa: 0xa010n, data: Buffer.from('0123456789abcdef') }));
    op('VTL1 ReadMemory its hypercall page', (b) => b.readMemory({ name: vp0, gpa: 0x8000n, length: 64 }));
    op('VTL1 ReadMemory VTL0 hypercall page GPA (RAM)', (b) => b.readMemory({ name: vp0, gpa: 0x1000n, length: 64 }));
    op('VTL1 SetVpRegisters RBX', (b) => b.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_X64_RBX, 0xb1n)] }));
    op('VtlReturn (normal)', (b) => b.callHypercallPage({ name: vp0, offset: 0x26, rcx: 0n }));
    op('VtlCall again', (b) => b.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n }));
    op('VTL1 direct Hypercall VtlReturn (fast)', (b) =>
      b.hypercall({ name: vp0, control: 0x12n, inputGpa: 0n, outputGpa: 0n, input: Buffer.alloc(0), outputSize: 0 }),
    );
    op('direct Hypercall VtlCall with RAX=0', (b) => b.setVpRegisters({ name: vp0, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_X64_RAX, 0n)] }));
    op('direct Hypercall VtlCall', (b) => b.hypercall({ name: vp0, control: 0x11n, inputGpa: 0n, outputGpa: 0n, input: Buffer.alloc(0), outputSize: 0 }));
    op('VtlReturn fast via page', (b) => b.callHypercallPage({ name: vp0, offset: 0x26, rcx: 1n }));
    // A 32-bit caller (CS.L = 0, compatibility mode) through the 32-bit VtlCall entry.
    op('CS 32-bit', (b) =>
      b.setVpRegisters({
        name: vp0,
        vtl: 0,
        registers: [seg(R.HV_REGISTER_NAME_X64_CS, { selector: 0x08, attributes: 0xc09b }), r64(R.HV_REGISTER_NAME_X64_RAX, 0xffff_ffff_0000_0000n)],
      }),
    );
    op('32-bit VtlCall (0x04)', (b) => b.callHypercallPage({ name: vp0, offset: 0x04 }));
    op('VTL1 32-bit... VtlReturn 64-bit entry', (b) => b.callHypercallPage({ name: vp0, offset: 0x26, rcx: 1n }));
    op('32-bit hypercall (0x00) GetVpRegisters', (b) =>
      b.setVpRegisters({
        name: vp0,
        vtl: 0,
        registers: [
          r64(R.HV_REGISTER_NAME_X64_RDX, 0n),
          r64(R.HV_REGISTER_NAME_X64_RAX, 0x50n),
          r64(R.HV_REGISTER_NAME_X64_RBX, 0n),
          r64(R.HV_REGISTER_NAME_X64_RCX, 0x10000n),
          r64(R.HV_REGISTER_NAME_X64_RDI, 0n),
          r64(R.HV_REGISTER_NAME_X64_RSI, 0x13000n),
        ],
      }),
    );
    op('32-bit hypercall via page', (b) => b.callHypercallPage({ name: vp0, offset: 0 }));
    op('32-bit VtlReturn from VTL0 (#UD)', (b) => b.callHypercallPage({ name: vp0, offset: 0x1b }));
    // A CPL3 caller.
    op('CS CPL3', (b) => b.setVpRegisters({ name: vp0, vtl: 0, registers: [seg(R.HV_REGISTER_NAME_X64_CS, { selector: 0x2b, attributes: 0xa0fb })] }));
    op('CPL3 hypercall through the page (#UD)', (b) => b.callHypercallPage({ name: vp0, offset: 0, rcx: 0x50n }));
    op('CPL3 direct hypercall (#UD)', (b) => b.hypercall({ name: vp0, control: 0x50n, inputGpa: 0n, outputGpa: 0n, input: Buffer.alloc(0), outputSize: 0 }));
    op('CPL3 WRMSR (the emulator models no CPL check for MSRs)', (b) => b.writeMsr({ name: vp0, msr: MSR.SCONTROL, value: 1n }));
    // GUEST_OS_ID = 0 disables the page.
    op('WRMSR GUEST_OS_ID 0', (b) => b.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 0n }));
    op('CallHypercallPage without a page', (b) => b.callHypercallPage({ name: vp0, offset: 0 }));
    op('ReadMemory 0x1000 after the page went', (b) => b.readMemory({ name: vp0, gpa: 0x1000n, length: 4096 }));
    op('DeletePartition other', (b) => b.deletePartition({ name: 'partitions/none' }));
    const results = await differential(emu, kvm, name, 2, ops);
    // The script exercises the success paths, not just identical errors.
    const errors = ops.filter((_, i) => (results[i] as { error?: string }).error !== undefined).map((o) => o.what);
    expect(errors).toEqual([
      'ReadMemory beyond RAM',
      'ReadMemory length 0',
      'CallHypercallPage 4096 (bad offset)',
      'CallHypercallPage without a page',
      'DeletePartition other',
    ]);
  });

  test("protections and intercepts: memslot enforcement on KVM answers exactly as the emulator's model (routes, retries, skips, monitor deadlines, bypassing hypercall copies)", async () => {
    const name = 'partitions/diff-prot';
    const vp0 = `${name}/vps/0`;
    const vp1 = `${name}/vps/1`;
    const ops: Op[] = [];
    const op = (what: string, run: (b: LooseBackend) => Promise<unknown>) => ops.push({ what, run });
    const protect = (flags: number, startPage: bigint, pageCount = 1n) =>
      op(`protect 0x${startPage.toString(16)}+${pageCount} = 0x${flags.toString(16)}`, (b) =>
        b.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: flags, ranges: [{ startPage, pageCount }] }),
      );
    const vtlReturn = (vp: string, what = 'VtlReturn') => op(`${what} ${vp.slice(-1)}`, (b) => b.callHypercallPage({ name: vp, offset: 0x26, rcx: 1n }));
    op('CreatePartition', (b) =>
      b.createPartition({ partitionId: 'diff-prot', requestId: '', partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition }),
    );
    op('WriteGpa pattern', (b) => b.writeGpa({ name, gpa: 0x40000n, data: Buffer.concat([pattern, pattern, pattern, pattern]) }));
    op('EnablePartitionVtl', (b) => b.enablePartitionVtl({ name, targetVtl: 1, enableMbec: false }));
    for (const vp of [vp0, vp1]) {
      op(`EnableVpVtl ${vp}`, (b) => b.enableVpVtl({ name: vp, targetVtl: 1 }));
      op(`GUEST_OS_ID ${vp}`, (b) => b.writeMsr({ name: vp, msr: MSR.GUEST_OS_ID, value: 1n }));
      op(`HYPERCALL ${vp}`, (b) => b.writeMsr({ name: vp, msr: MSR.HYPERCALL, value: 0x1001n }));
      op(`VtlCall ${vp}`, (b) => b.callHypercallPage({ name: vp, offset: 0x0f, rcx: 0n }));
      op(`VTL1 GUEST_OS_ID ${vp}`, (b) => b.writeMsr({ name: vp, msr: MSR.GUEST_OS_ID, value: 2n }));
      op(`VTL1 HYPERCALL ${vp}`, (b) => b.writeMsr({ name: vp, msr: MSR.HYPERCALL, value: 0x2001n }));
      op(`VTL1 SIMP ${vp}`, (b) => b.writeMsr({ name: vp, msr: MSR.SIMP, value: 0x9001n }));
      op(`VTL1 SCONTROL ${vp}`, (b) => b.writeMsr({ name: vp, msr: MSR.SCONTROL, value: 1n }));
      op(`VTL1 SINT0 ${vp}`, (b) => b.writeMsr({ name: vp, msr: MSR.SINT0, value: 0x30n }));
    }
    op('ModifyVtlProtectionMask before EnableVtlProtection (refused)', (b) =>
      b.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: 0x1, ranges: [{ startPage: 0x40n, pageCount: 1n }] }),
    );
    op('EnableVtlProtection', (b) => b.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] }));
    protect(0x1, 0x40n); // read-only
    protect(0x0, 0x41n); // no access
    protect(0x1 | 0x4, 0x42n, 2n); // read + execute
    protect(0x1, 0x1n); // under VTL0's hypercall page: the overlay is not subject to it
    // A guest write through the hypercall (the model's hypercall input copy ignores protections).
    op('VTL1 HvCallModifyVtlProtectionMask via the page', (b) =>
      b.hypercall({
        name: vp0,
        control: 0x0cn | (1n << 32n),
        inputGpa: 0x20000n,
        outputGpa: 0n,
        input: Buffer.from('ffffffffffffffff' + '01000000' + '00000000' + '4400000000000000', 'hex'),
        outputSize: 0,
      }),
    );
    vtlReturn(vp0);
    vtlReturn(vp1);
    for (const [gpa, len] of [
      [0x40000n, 8],
      [0x40ff8n, 16],
      [0x41000n, 1],
      [0x41ffcn, 8],
      [0x42000n, 4096],
      [0x3fff0n, 64],
      [0x44000n, 2],
      [0x1000n, 16],
    ] as [bigint, number][]) {
      op(`ReadMemory vp1 0x${gpa.toString(16)}+${len}`, (b) => b.readMemory({ name: vp1, gpa, length: len }));
    }
    op('VtlReturn vp1 (after the read intercept: retried, intercepts again)', (b) => b.callHypercallPage({ name: vp1, offset: 0x26, rcx: 1n }));
    op('VTL1 vp1 lets reads through', (b) =>
      b.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: 0x1, ranges: [{ startPage: 0x41n, pageCount: 1n }] }),
    );
    op('VtlReturn vp1 (retry completes)', (b) => b.callHypercallPage({ name: vp1, offset: 0x26, rcx: 1n }));
    for (const [gpa, data] of [
      [0x40008n, '12345678'],
      [0x3fffcn, 'abcdefgh'],
      [0x44010n, 'x'],
      [0x43ff0n, 'cross into the read-only run'],
      [0x1800n, 'hc page'],
      [0x45000n, 'free'],
    ] as [bigint, string][]) {
      op(`WriteMemory vp0 0x${gpa.toString(16)} ${data}`, (b) => b.writeMemory({ name: vp0, gpa, data: Buffer.from(data) }));
      op(`state vp0 after 0x${gpa.toString(16)}`, (b) => b.getVirtualProcessor({ name: vp0 }));
      op(`VtlReturn vp0 after 0x${gpa.toString(16)} (if in VTL1)`, async (b) =>
        (await b.getVirtualProcessor({ name: vp0 })).vtlStatus?.activeVtl === 1 ? b.callHypercallPage({ name: vp0, offset: 0x26, rcx: 1n }) : 'in VTL0',
      );
    }
    op('Hypercall input into the read-only page (the copy ignores protections)', (b) =>
      b.hypercall({
        name: vp0,
        control: 0x50n | (1n << 32n),
        inputGpa: 0x40100n,
        outputGpa: 0x41100n,
        input: Buffer.from('ffffffffffffffff' + 'feffffff00000000' + '03000d00', 'hex'),
        outputSize: 16,
      }),
    );
    op('VTL1 skips: RIP moved', (b) => b.setVpRegisters({ name: vp0, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_X64_RIP, 0x40_1000n)] }));
    op('WriteMemory vp0 refused', (b) => b.writeMemory({ name: vp0, gpa: 0x40010n, data: Buffer.from('skip me') }));
    op('VTL1 moves VTL0 RIP', (b) => b.setVpRegisters({ name: vp0, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_X64_RIP, 0x40_1003n)] }));
    vtlReturn(vp0, 'VtlReturn (skipped)');
    // Route BOTH, then MONITOR with deadline policies (the absent monitor's answer).
    op('route BOTH', (b) => b.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_BOTH }));
    op('WriteMemory vp1 (BOTH)', (b) => b.writeMemory({ name: vp1, gpa: 0x40020n, data: Buffer.from('both') }));
    vtlReturn(vp1);
    op('VtlReturn vp1 again (if in VTL1)', async (b) =>
      (await b.getVirtualProcessor({ name: vp1 })).vtlStatus?.activeVtl === 1 ? b.callHypercallPage({ name: vp1, offset: 0x26, rcx: 1n }) : 'in VTL0',
    );
    // (A RETRY deadline on a page that stays protected would retry forever, on both backends.)
    for (const action of [pb.InterceptAction.INTERCEPT_ACTION_ALLOW, pb.InterceptAction.INTERCEPT_ACTION_SKIP]) {
      op(`route MONITOR, deadline ${pb.InterceptAction[action]}`, (b) =>
        b.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR, answerDeadlineMs: 1n, deadlineAction: action }),
      );
      op(`WriteMemory vp0 (MONITOR ${action})`, (b) => b.writeMemory({ name: vp0, gpa: 0x40030n + BigInt(action), data: Buffer.from(`m${action}`) }));
      op(`ReadMemory vp0 hole (MONITOR ${action})`, (b) => b.readMemory({ name: vp0, gpa: 0x46000n, length: 8 }));
      op(`pending (MONITOR ${action})`, (b) => b.listPendingIntercepts({ name }));
    }
    protect(0x0, 0x46n);
    op('route MONITOR, deadline CRASH', (b) =>
      b.setInterceptRoute({
        name,
        route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR,
        answerDeadlineMs: 1n,
        deadlineAction: pb.InterceptAction.INTERCEPT_ACTION_CRASH,
      }),
    );
    op('ReadMemory vp0 hole (CRASH)', (b) => b.readMemory({ name: vp0, gpa: 0x46000n, length: 8 }));
    op('after the crash', (b) => b.readMemory({ name: vp0, gpa: 0x45000n, length: 8 }));
    op('GetVtlProtections', (b) => b.getVtlProtections({ name, protectingVtl: 1 }));
    const results = await differential(emu, kvm, name, 2, ops);
    expect(
      results.filter((r) => JSON.stringify(r, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)).includes('"intercept":{')).length,
    ).toBeGreaterThan(8);
    const kp = kvm.platformOf(name);
    // The first refusal of each access is a real MMIO exit on KVM (retries on VtlReturn are the core's, on both).
    expect(kp.refusedAccesses).toBeGreaterThanOrEqual(6);
  });

  test('random sessions with protections (fast-check): masks, accesses across refused pages, VtlReturn retries and skips, routes', async () => {
    const pages = [0x40n, 0x41n, 0x42n, 0x43n];
    const opArb: fc.Arbitrary<(name: string) => Op> = fc.oneof(
      fc
        .record({ start: fc.constantFrom(...pages), count: fc.integer({ min: 1, max: 3 }), flags: fc.constantFrom(0x0, 0x1, 0x3, 0x5, 0xf) })
        .map(({ start, count, flags }) => (n: string) => ({
          what: `protect 0x${start.toString(16)}+${count} = 0x${flags.toString(16)}`,
          run: (b: LooseBackend) =>
            b.modifyVtlProtectionMask({ name: n, protectingVtl: 1, mapFlags: flags, ranges: [{ startPage: start, pageCount: BigInt(count) }] }),
        })),
      fc
        .record({ vp: fc.nat(1), off: fc.integer({ min: 0x3f_ff0, max: 0x44_010 }), len: fc.constantFrom(1, 2, 4, 8, 3, 16, 100, 4096) })
        .map(({ vp, off, len }) => (n: string) => ({
          what: `ReadMemory vp${vp} 0x${off.toString(16)}+${len}`,
          run: (b: LooseBackend) => b.readMemory({ name: `${n}/vps/${vp}`, gpa: BigInt(off), length: len }),
        })),
      fc
        .record({ vp: fc.nat(1), off: fc.integer({ min: 0x3f_ff0, max: 0x44_010 }), data: fc.uint8Array({ minLength: 1, maxLength: 24 }) })
        .map(({ vp, off, data }) => (n: string) => ({
          what: `WriteMemory vp${vp} 0x${off.toString(16)}+${data.length}`,
          run: (b: LooseBackend) => b.writeMemory({ name: `${n}/vps/${vp}`, gpa: BigInt(off), data: Buffer.from(data) }),
        })),
      fc.record({ vp: fc.nat(1) }).map(({ vp }) => (n: string) => ({
        what: `VtlReturn vp${vp}`,
        run: (b: LooseBackend) => b.callHypercallPage({ name: `${n}/vps/${vp}`, offset: 0x26, rcx: 1n }),
      })),
      fc.record({ vp: fc.nat(1) }).map(({ vp }) => (n: string) => ({
        what: `VtlCall vp${vp}`,
        run: (b: LooseBackend) => b.callHypercallPage({ name: `${n}/vps/${vp}`, offset: 0x0f, rcx: 0n }),
      })),
      fc.record({ vp: fc.nat(1), rip: fc.constantFrom(0x40_1000n, 0x40_1003n) }).map(({ vp, rip }) => (n: string) => ({
        what: `VTL0 RIP vp${vp} = 0x${rip.toString(16)}`,
        run: (b: LooseBackend) => b.setVpRegisters({ name: `${n}/vps/${vp}`, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_X64_RIP, rip)] }),
      })),
      fc
        .constantFrom(pb.InterceptRoute.INTERCEPT_ROUTE_HIGHER_VTL, pb.InterceptRoute.INTERCEPT_ROUTE_BOTH)
        .map((route) => (n: string) => ({ what: `route ${pb.InterceptRoute[route]}`, run: (b: LooseBackend) => b.setInterceptRoute({ name: n, route }) })),
      fc.constantFrom(pb.InterceptAction.INTERCEPT_ACTION_ALLOW, pb.InterceptAction.INTERCEPT_ACTION_SKIP).map((action) => (n: string) => ({
        what: `route MONITOR deadline ${pb.InterceptAction[action]}`,
        run: (b: LooseBackend) =>
          b.setInterceptRoute({ name: n, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR, answerDeadlineMs: 1n, deadlineAction: action }),
      })),
      fc.record({ vp: fc.nat(1) }).map(({ vp }) => (n: string) => ({
        what: `EOM vp${vp}`,
        run: (b: LooseBackend) => b.writeMsr({ name: `${n}/vps/${vp}`, msr: MSR.EOM, value: 0n }),
      })),
    );
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 5, maxLength: 30 }), async (mk) => {
        const id = `diff-prot-rand-${run++}`;
        const name = `partitions/${id}`;
        const setup: Op[] = [
          {
            what: 'CreatePartition',
            run: (b) => b.createPartition({ partitionId: id, requestId: '', partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition }),
          },
          { what: 'WriteGpa', run: (b) => b.writeGpa({ name, gpa: 0x3f000n, data: Buffer.concat([pattern, pattern, pattern, pattern, pattern, pattern]) }) },
          { what: 'EnablePartitionVtl', run: (b) => b.enablePartitionVtl({ name, targetVtl: 1, enableMbec: false }) },
        ];
        for (const vp of [0, 1]) {
          const v = `${name}/vps/${vp}`;
          setup.push(
            { what: `EnableVpVtl ${vp}`, run: (b) => b.enableVpVtl({ name: v, targetVtl: 1 }) },
            { what: `GUEST_OS_ID ${vp}`, run: (b) => b.writeMsr({ name: v, msr: MSR.GUEST_OS_ID, value: 1n }) },
            { what: `HYPERCALL ${vp}`, run: (b) => b.writeMsr({ name: v, msr: MSR.HYPERCALL, value: 0x1001n }) },
            { what: `VtlCall ${vp}`, run: (b) => b.callHypercallPage({ name: v, offset: 0x0f, rcx: 0n }) },
            { what: `VTL1 SIMP ${vp}`, run: (b) => b.writeMsr({ name: v, msr: MSR.SIMP, value: 0x9001n }) },
            { what: `VTL1 SCONTROL ${vp}`, run: (b) => b.writeMsr({ name: v, msr: MSR.SCONTROL, value: 1n }) },
            { what: `VTL1 SINT0 ${vp}`, run: (b) => b.writeMsr({ name: v, msr: MSR.SINT0, value: 0x30n }) },
            { what: `VtlReturn ${vp}`, run: (b) => b.callHypercallPage({ name: v, offset: 0x26, rcx: 1n }) },
          );
        }
        setup.push({
          what: 'EnableVtlProtection',
          run: (b) => b.setVpRegisters({ name: `${name}/vps/0`, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] }),
        });
        try {
          await differential(emu, kvm, name, 2, [...setup, ...mk.map((f) => f(name))]);
        } finally {
          await emu.deletePartition({ name });
          await kvm.deletePartition({ name });
        }
      }),
      { numRuns: Number(process.env.DIFF_RUNS ?? 25), seed: Number(process.env.DIFF_SEED ?? 20240611), endOnFailure: true },
    );
  });

  test('random sessions (fast-check): MSR writes/reads, memory accesses of every size, page calls, register writes', async () => {
    const gpas = [0x0ff8n, 0x1000n, 0x1ff0n, 0x2000n, 0x5000n, 0x7ffen, 0x8000n, 0x9000n, 0xa000n, 0xa010n];
    const pageMsrs = [MSR.HYPERCALL, MSR.REFERENCE_TSC, MSR.VP_ASSIST_PAGE, MSR.SIMP, MSR.SIEFP];
    const opArb: fc.Arbitrary<(name: string) => Op> = fc.oneof(
      // The hypercall page never shares a GPA with another overlay here: a CALL into a hypercall page
      // hidden under another overlay executes the overlay on top on KVM (real fetch) but the hidden
      // page's own code on the emulator (core/stub.ts); see README.md, "Differences".
      fc.record({ vp: fc.nat(1), gpa: fc.constantFrom(0x1000n, 0x2000n), en: fc.boolean() }).map(({ vp, gpa, en }) => (n: string) => ({
        what: `WRMSR vp${vp} HYPERCALL = 0x${(gpa | (en ? 1n : 0n)).toString(16)}`,
        run: (b: LooseBackend) => b.writeMsr({ name: `${n}/vps/${vp}`, msr: MSR.HYPERCALL, value: gpa | (en ? 1n : 0n) }),
      })),
      fc
        .record({
          vp: fc.nat(1),
          msr: fc.constantFrom(...pageMsrs.filter((m) => m !== MSR.HYPERCALL)),
          gpa: fc.constantFrom(0x8000n, 0x9000n, 0xa000n),
          en: fc.boolean(),
        })
        .map(({ vp, msr, gpa, en }) => (n: string) => ({
          what: `WRMSR vp${vp} 0x${msr.toString(16)} = 0x${(gpa | (en ? 1n : 0n)).toString(16)}`,
          run: (b: LooseBackend) => b.writeMsr({ name: `${n}/vps/${vp}`, msr, value: gpa | (en ? 1n : 0n) }),
        })),
      fc
        .record({ vp: fc.nat(1), msr: fc.constantFrom(...Object.values(MSR).filter((m) => m !== MSR.TIME_REF_COUNT), 0x400000ff) })
        .map(({ vp, msr }) => (n: string) => ({
          what: `RDMSR vp${vp} 0x${msr.toString(16)}`,
          run: (b: LooseBackend) => b.readMsr({ name: `${n}/vps/${vp}`, msr }),
        })),
      fc
        .record({ vp: fc.nat(1), gpa: fc.constantFrom(...gpas), len: fc.constantFrom(1, 2, 3, 4, 8, 9, 16, 100, 4096) })
        .map(({ vp, gpa, len }) => (n: string) => ({
          what: `ReadMemory vp${vp} 0x${gpa.toString(16)}+${len}`,
          run: (b: LooseBackend) => b.readMemory({ name: `${n}/vps/${vp}`, gpa, length: len }),
        })),
      fc
        .record({ vp: fc.nat(1), gpa: fc.constantFrom(...gpas), data: fc.uint8Array({ minLength: 1, maxLength: 40 }) })
        .map(({ vp, gpa, data }) => (n: string) => ({
          what: `WriteMemory vp${vp} 0x${gpa.toString(16)}+${data.length}`,
          run: (b: LooseBackend) => b.writeMemory({ name: `${n}/vps/${vp}`, gpa, data: Buffer.from(data) }),
        })),
      fc
        .record({ vp: fc.nat(1), offset: fc.constantFrom(0, 3, 0x0f, 0x26, 0x100), rcx: fc.constantFrom(0n, 1n, 0x50n, 0x11n, 0x12n) })
        .map(({ vp, offset, rcx }) => (n: string) => ({
          what: `CallHypercallPage vp${vp} 0x${offset.toString(16)} rcx ${rcx}`,
          run: (b: LooseBackend) => b.callHypercallPage({ name: `${n}/vps/${vp}`, offset, rcx }),
        })),
      fc
        .record({
          vp: fc.nat(1),
          reg: fc.constantFrom(R.HV_REGISTER_NAME_X64_RAX, R.HV_REGISTER_NAME_X64_RBX, R.HV_REGISTER_NAME_X64_RIP, R.HV_REGISTER_NAME_X64_R8),
          v: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        })
        .map(({ vp, reg, v }) => (n: string) => ({
          what: `SetVpRegisters vp${vp} ${R[reg]}`,
          run: (b: LooseBackend) => b.setVpRegisters({ name: `${n}/vps/${vp}`, registers: [r64(reg, v)] }),
        })),
      fc.record({ vp: fc.nat(1), control: fc.constantFrom(0x11n, 0x12n, 0x50n | (1n << 32n), 0x0dn | (1n << 16n)) }).map(({ vp, control }) => (n: string) => ({
        what: `Hypercall vp${vp} 0x${control.toString(16)}`,
        run: (b: LooseBackend) =>
          b.hypercall({
            name: `${n}/vps/${vp}`,
            control,
            inputGpa: 0x10000n,
            outputGpa: 0x11000n,
            input: Buffer.from('ffffffffffffffff' + 'feffffff00000000' + '03000d00', 'hex'),
            outputSize: 16,
          }),
      })),
    );
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 5, maxLength: 30 }), async (mk) => {
        const id = `diff-rand-${run++}`;
        const name = `partitions/${id}`;
        const setup: Op[] = [
          {
            what: 'CreatePartition',
            run: (b) => b.createPartition({ partitionId: id, requestId: '', partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition }),
          },
          { what: 'WriteGpa', run: (b) => b.writeGpa({ name, gpa: 0x1000n, data: Buffer.concat([pattern, pattern]) }) },
          { what: 'EnablePartitionVtl', run: (b) => b.enablePartitionVtl({ name, targetVtl: 1, enableMbec: false }) },
          { what: 'EnableVpVtl', run: (b) => b.enableVpVtl({ name: `${name}/vps/0`, targetVtl: 1 }) },
          { what: 'GUEST_OS_ID', run: (b) => b.writeMsr({ name: `${name}/vps/0`, msr: MSR.GUEST_OS_ID, value: 1n }) },
          { what: 'HYPERCALL', run: (b) => b.writeMsr({ name: `${name}/vps/0`, msr: MSR.HYPERCALL, value: 0x1001n }) },
        ];
        try {
          await differential(emu, kvm, name, 2, [...setup, ...mk.map((f) => f(name))]);
        } finally {
          await emu.deletePartition({ name });
          await kvm.deletePartition({ name });
        }
      }),
      { numRuns: Number(process.env.DIFF_RUNS ?? 25), seed: Number(process.env.DIFF_SEED ?? 20240611), endOnFailure: true },
    );
  });
});
