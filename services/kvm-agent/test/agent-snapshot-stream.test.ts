// Streamed snapshots (ExportPartition / ImportPartition, #17) across backends and with guest code
// that writes RAM itself: an emulator stream imports on KVM and a KVM stream on the emulator, and
// both copies then answer alike (the differential support); an incremental export after a guest ran
// carries the pages the guest wrote (found in the KVM dirty log, KVM_GET_DIRTY_LOG), and base +
// delta import byte-identical; a guest that writes RAM while an export reads it fails the export.
import { pb } from '@vsm/client';
import { Asm, GDT_LIMIT, buildGdt, buildIdentityPageTables } from '@vsm/platform-kvm/kvm';
import { type CoreBackend, type StreamSink, CoreBackend as Emulator, KvmBackend } from '@vsm/vsm-v1';
import { type LooseBackend, type Op, differential, vtl1MidCallSession, withDefaults } from './agent-diff-support';
import { GiB, describeKvm } from './agent-support';

jest.setTimeout(300_000);
const R = pb.HvRegisterName;
const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });

/** ExportPartition straight from a backend (no transport), every chunk collected. */
async function exportOf(b: CoreBackend, r: Partial<pb.ExportPartitionRequest>, onChunk?: (c: pb.SnapshotChunk) => void): Promise<pb.SnapshotChunk[]> {
  const out: pb.SnapshotChunk[] = [];
  const sink: StreamSink<pb.SnapshotChunk> = {
    write: (m) => {
      out.push(m);
      onChunk?.(m);
      return true;
    },
    drained: async () => undefined,
  };
  await b.exportPartition(pb.ExportPartitionRequest.fromPartial(r), sink, new AbortController().signal);
  return out;
}
async function importOn(b: CoreBackend, chunks: pb.SnapshotChunk[], partitionId: string): Promise<pb.Partition> {
  async function* reqs() {
    for (const chunk of chunks) yield { partitionId, chunk };
  }
  return b.importPartition(reqs(), new AbortController().signal);
}
const headerOf = (chunks: pb.SnapshotChunk[]) => {
  const c = chunks[0]!.chunk;
  if (c?.$case !== 'header') throw new Error('no header first');
  return c.value;
};
const pagesIn = (chunks: pb.SnapshotChunk[]) =>
  chunks.flatMap((c) =>
    c.chunk?.$case === 'memory' ? c.chunk.value.runs.flatMap((r) => Array.from({ length: r.data.length / 4096 }, (_, k) => r.gpfn + BigInt(k))) : [],
  );
const stateOf = async (b: CoreBackend, name: string) => ({ ...(await b.savePartition({ name })), sourceName: '', savedTimeUnixMs: 0n });

describeKvm('streamed snapshots on KVM', () => {
  let kvm: KvmBackend;
  let emu: Emulator;
  beforeAll(() => {
    kvm = new KvmBackend();
    emu = new Emulator();
  });
  afterAll(async () => {
    await kvm?.close();
    await emu?.close();
  });

  /** VTL1 entered mid-CALL, overlays in both VTLs, RAM written by the host and by a guest action, protections. */
  async function session(b: LooseBackend, id: string) {
    const { name, vp0 } = await vtl1MidCallSession(b, id);
    await b.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] });
    await b.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: 0x1, ranges: [{ startPage: 0x40n, pageCount: 4n }] });
    await b.callHypercallPage({ name: vp0, offset: 0x26, rcx: 0n }); // back to VTL0
  }
  function continuation(copy: string): Op[] {
    const c0 = `${copy}/vps/0`;
    const ops: Op[] = [];
    const op = (what: string, run: (b: LooseBackend) => Promise<unknown>) => ops.push({ what, run });
    op('ReadMemory RAM written by the guest', (b) => b.readMemory({ name: c0, gpa: 0x30000n, length: 20 }));
    op('ReadGpa RAM under the SIMP', (b) => b.readGpa({ name: copy, gpa: 0x5000n, length: 18 }));
    op('WriteMemory into VTL1-protected RAM (intercept)', (b) => b.writeMemory({ name: c0, gpa: 0x40000n, data: Buffer.from('x') }));
    op('VtlCall', (b) => b.callHypercallPage({ name: c0, offset: 0x0f, rcx: 0n }));
    op('ReadMemory VTL1 SIMP', (b) => b.readMemory({ name: c0, gpa: 0x5000n, length: 16 }));
    op('VtlReturn', (b) => b.callHypercallPage({ name: c0, offset: 0x26, rcx: 0n }));
    return ops;
  }

  test('an emulator stream imports on KVM and a KVM stream on the emulator; the copies continue alike', async () => {
    await session(withDefaults(emu), 'ss-e');
    await session(withDefaults(kvm), 'ss-k');
    const fromEmu = await exportOf(emu, { name: 'partitions/ss-e', chunkBytes: 8192 });
    const fromKvm = await exportOf(kvm, { name: 'partitions/ss-k', chunkBytes: 8192 });
    // Emulator -> KVM (and the same stream on the emulator, for the comparison).
    await importOn(kvm, fromEmu, 'ss-e2k');
    await importOn(emu, fromEmu, 'ss-e2k');
    await differential(emu, kvm, 'partitions/ss-e2k', 2, continuation('partitions/ss-e2k'));
    // KVM -> emulator.
    await importOn(emu, fromKvm, 'ss-k2e');
    await importOn(kvm, fromKvm, 'ss-k2e');
    await differential(emu, kvm, 'partitions/ss-k2e', 2, continuation('partitions/ss-k2e'));
  });

  /** A partition whose VP0 runs `code` (identity paging, flat GDT) at 0x100000. */
  async function guestPartition(id: string, code: Buffer) {
    const b = withDefaults(kvm);
    const name = `partitions/${id}`;
    await b.createPartition({ partitionId: id, partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 0 } as pb.Partition });
    const pt = buildIdentityPageTables(0x20_0000n, 1);
    await b.writeGpa({ name, gpa: 0x20_0000n, data: pt.bytes });
    await b.writeGpa({ name, gpa: 0x3000n, data: buildGdt(0x3000n) });
    await b.writeGpa({ name, gpa: 0x10_0000n, data: code });
    const regs = (rip: bigint) => [
      r64(R.HV_REGISTER_NAME_X64_CR3, pt.cr3),
      { name: R.HV_REGISTER_NAME_X64_GDTR, value: { value: { $case: 'table' as const, value: { base: 0x3000n, limit: GDT_LIMIT } } } },
      r64(R.HV_REGISTER_NAME_X64_RIP, rip),
      r64(R.HV_REGISTER_NAME_X64_RSP, 0x8_0000n),
    ];
    await b.setVpRegisters({ name: `${name}/vps/0`, vtl: 0, registers: regs(0x10_0000n) });
    return { name, vp0: `${name}/vps/0`, restart: () => b.setVpRegisters({ name: `${name}/vps/0`, vtl: 0, registers: regs(0x10_0000n) }) };
  }
  /** Guest code: 8-byte stores of `value` at each of `gpas`, then HLT. */
  const storing = (gpas: bigint[], value: bigint) => {
    const a = new Asm().movR64Imm64('rax', value);
    for (const g of gpas) a.movR64Imm64('rdi', g).store('rdi', 'rax', 8);
    return a.hlt().bytes();
  };

  test('an incremental export carries the pages the guest itself wrote (KVM dirty log); base + delta import byte-identical', async () => {
    const { name, vp0 } = await guestPartition('ss-dirty', storing([0x50_0000n, 0x50_3008n, 0x7f_f000n], 0x1122_3344_5566_7788n));
    await withDefaults(kvm).writeGpa({ name, gpa: 0x50_0000n, data: Buffer.from('before the guest ran') });
    const full = await exportOf(kvm, { name });
    expect(kvm.runVp(vp0, { timeoutMs: 5000 })).toMatchObject({ stop: 'hlt' });
    const delta = await exportOf(kvm, { name, baseSnapshotId: headerOf(full).snapshotId });
    // The guest's stores (no MemfdRam.write saw them) and nothing else.
    expect(pagesIn(delta)).toEqual([0x500n, 0x503n, 0x7ffn]);
    await importOn(kvm, [...full, ...delta], 'ss-dirty-copy');
    await importOn(emu, [...full, ...delta], 'ss-dirty-copy');
    expect(await stateOf(kvm, 'partitions/ss-dirty-copy')).toEqual(await stateOf(kvm, name));
    const copy = await withDefaults(kvm).readGpa({ name: 'partitions/ss-dirty-copy', gpa: 0x50_3008n, length: 8 });
    expect(Buffer.from(copy.data).readBigUInt64LE(0)).toBe(0x1122_3344_5566_7788n);
    // The same state on the emulator: every page and the VP's registers after the run.
    await differential(emu, kvm, 'partitions/ss-dirty-copy', 1, [
      { what: 'ReadGpa 0x500000', run: (b) => b.readGpa({ name: 'partitions/ss-dirty-copy', gpa: 0x50_0000n, length: 32 }) },
      { what: 'ReadGpa 0x7ff000', run: (b) => b.readGpa({ name: 'partitions/ss-dirty-copy', gpa: 0x7f_f000n, length: 8 }) },
    ]);
  });

  test('a guest that writes RAM while an export reads it fails the export (ABORTED); the next delta still has its pages', async () => {
    const { name, vp0, restart } = await guestPartition('ss-race', storing([0x50_0000n], 0xdead_beefn));
    // Pages after the code so that the export's freeze holds 0x500000 when the guest writes it.
    for (let g = 0x40_0000n; g < 0x60_0000n; g += 0x1_0000n) await withDefaults(kvm).writeGpa({ name, gpa: g, data: Buffer.alloc(0x1_0000, 1) });
    const full = await exportOf(kvm, { name });
    let ran = false;
    const failed = await exportOf(kvm, { name, chunkBytes: 4096 }, (c) => {
      // After the first page went out, the guest runs and stores into a page not sent yet.
      if (!ran && c.chunk?.$case === 'memory') {
        ran = true;
        expect(kvm.runVp(vp0, { timeoutMs: 5000 })).toMatchObject({ stop: 'hlt' });
      }
    }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(failed?.message).toMatch(/the guest wrote 1 page of RAM itself while the export read them/);
    // The failed export moved no base: a delta against the full one has the guest's page.
    await restart();
    const delta = await exportOf(kvm, { name, baseSnapshotId: headerOf(full).snapshotId });
    expect(pagesIn(delta)).toContain(0x500n);
    await importOn(kvm, [...full, ...delta], 'ss-race-copy');
    expect(await stateOf(kvm, 'partitions/ss-race-copy')).toEqual(await stateOf(kvm, name));
  });
});
