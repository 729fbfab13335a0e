// Pure and small real-KVM tests of the platform's pieces: the hypercall page bytes (golden), the
// agent region's stubs and IDT gates (golden), memfd RAM against the core's SparseMemory, the
// overlay page pool, and the register conversions between the core and kvm_sregs.
import fc from 'fast-check';
import * as core from '@vsm/core';
import { SparseMemory, buildHypercallPage } from '@vsm/core';
import type { KvmSegment } from '@vsm/platform-kvm/kvm';
import {
  AGENT,
  AgentRegion,
  HYPERCALL_INSN_OFFSETS,
  entryPrologue,
  MemfdRam,
  OverlayPages,
  assembleStubs,
  buildKvmHypercallPage,
  interruptGate,
  kvmHypercallPageLayout,
  segmentFromKvm,
  segmentToKvm,
  softwareInterruptVector,
  tableFromKvm,
  tableToKvm,
} from '@vsm/platform-kvm/platform';
import { instructionBeforeRip } from '@vsm/platform-kvm/platform/x86';
import { describeKvm } from './agent-support';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

describe('hypercall page (golden bytes)', () => {
  const page = buildKvmHypercallPage();
  test('entries at the OpenVMM offsets, each exiting with out 0x4d, ax; VtlCall/VtlReturn entries open with out 0x4e, ax', () => {
    expect(page.length).toBe(4096);
    expect(hex(page.subarray(0x00, 0x04))).toBe('66e74dc3'); //                   out 0x4d, ax; ret
    expect(hex(page.subarray(0x04, 0x0f))).toBe('66e74e1100000066e74dc3'); //     out 0x4e, ax [= mov ecx, eax; mov eax, 0x11]; out; ret
    expect(hex(page.subarray(0x0f, 0x1b))).toBe('66e74eb91100000066e74dc3'); //   out 0x4e, ax [= mov rax, rcx; mov ecx, 0x11]; out; ret
    expect(hex(page.subarray(0x1b, 0x26))).toBe('66e74e1200000066e74dc3'); //     out 0x4e, ax [= mov ecx, eax; mov eax, 0x12]; out; ret
    expect(hex(page.subarray(0x26, 0x32))).toBe('66e74eb91200000066e74dc3'); //   out 0x4e, ax [= mov rax, rcx; mov ecx, 0x12]; out; ret
    expect(page.subarray(0x32).every((b) => b === 0xcc)).toBe(true); //          int3
    expect([kvmHypercallPageLayout.vtlCallOffset, kvmHypercallPageLayout.vtlReturnOffset]).toEqual([0x0f, 0x26]);
    for (const off of HYPERCALL_INSN_OFFSETS) expect(hex(page.subarray(off, off + 3))).toBe('66e74d');
    // each prologue: the MOVs it stands for, and the entry's out 0x4d, ax right after their bytes
    expect([0x04, 0x0f, 0x1b, 0x26].map((o) => entryPrologue(o))).toEqual([
      { callCode: 0x11, wide: false, hypercallAt: 7 },
      { callCode: 0x11, wide: true, hypercallAt: 8 },
      { callCode: 0x12, wide: false, hypercallAt: 7 },
      { callCode: 0x12, wide: true, hypercallAt: 8 },
    ]);
    for (const o of [0x04, 0x0f, 0x1b, 0x26]) expect(HYPERCALL_INSN_OFFSETS).toContain(o + (entryPrologue(o)?.hypercallAt ?? 0));
    for (const o of [0x00, 0x05, 0x0e, 0x10, 0x27, 0x100]) expect(entryPrologue(o)).toBeUndefined();
  });
  test('same layout as the emulator page: only the 3-byte hypercall instruction and the prologue exits differ', () => {
    const prologueBytes = [0x04, 0x0f, 0x1b, 0x26].flatMap((o) => [o, o + 1, o + 2]);
    for (const vendor of ['amd', 'intel'] as const) {
      const emu = buildHypercallPage(vendor);
      const diff = [...page.keys()].filter((i) => page[i] !== emu[i]);
      expect(diff).toEqual(
        [...HYPERCALL_INSN_OFFSETS.flatMap((o) => [o, o + 1, o + 2]), ...prologueBytes].sort((a, b) => a - b).filter((i) => page[i] !== emu[i]),
      );
      for (const off of HYPERCALL_INSN_OFFSETS) expect(hex(emu.subarray(off, off + 3))).toBe(vendor === 'amd' ? '0f01d9' : '0f01c1');
      // the emulator's entries start with the MOVs the agent's prologue exit does
      expect(hex(emu.subarray(0x0f, 0x12))).toBe('4889c8');
      expect(hex(emu.subarray(0x04, 0x07))).toBe('89c1b8');
    }
  });
});

describe('agent region (golden bytes)', () => {
  test('action stubs: CPL0 ones end with HLT, the CPL3 copy with a store to the doorbell', () => {
    const stubs = Object.fromEntries(assembleStubs().map((s) => [s.name, `${s.user ? 'cpl3' : 'cpl0'} ${hex(s.bytes)}`]));
    expect(stubs).toEqual({
      wrmsr: 'cpl0 0f30f4',
      rdmsr: 'cpl0 0f32f4',
      hypercall: 'cpl0 66e74df4',
      callPage: 'cpl0 ff1500000000f4',
      copy: 'cpl3 f3a48803',
      load1: 'cpl0 0fb607f4',
      load2: 'cpl0 0fb707f4',
      load4: 'cpl0 8b07f4',
      load8: 'cpl0 488b07f4',
      store1: 'cpl0 8807f4',
      store2: 'cpl0 668907f4',
      store4: 'cpl0 8907f4',
      store8: 'cpl0 488907f4',
    });
  });
  test('64-bit interrupt gate: selector 0x08, type 0xE, present, offset split 15:0 / 31:16 / 63:32', () => {
    expect(hex(interruptGate(0x1234_5678_9abc_def0n))).toBe('f0de08000' + '08ebc9a78563412' + '00000000');
  });
  test('software-interrupt emulation failures map to their vector', () => {
    const ie = (bytes: number[]) => {
      const b = Buffer.alloc(16);
      b[0] = bytes.length;
      Buffer.from(bytes).copy(b, 1);
      return { kind: 'internal_error' as const, reason: 17 as const, suberror: 1, data: [1n, b.readBigUInt64LE(0), b.readBigUInt64LE(8), 0x1000n] };
    };
    expect(softwareInterruptVector(ie([0xcc, 0xcc]))).toBe(3);
    expect(softwareInterruptVector(ie([0xcd, 0x21]))).toBe(0x21);
    expect(softwareInterruptVector(ie([0xf1]))).toBe(1);
    expect(softwareInterruptVector(ie([0x0f, 0x0b]))).toBeUndefined();
    expect(softwareInterruptVector({ kind: 'hlt', reason: 5 })).toBeUndefined();
  });
});

describeKvm('agent region (memfd)', () => {
  test('placed above the partition, identity page tables cover RAM and the region', () => {
    for (const [ram, gpa, gib] of [
      [1n << 30n, 1n << 30n, 2],
      [4096n, 1n << 30n, 2],
      [(3n << 30n) + 4096n, 4n << 30n, 5],
    ] as [bigint, bigint, number][]) {
      const a = new AgentRegion(ram);
      try {
        expect([a.gpa, a.mappedGiB]).toEqual([gpa, gib]);
        expect(a.cr3).toBe(gpa + BigInt(AGENT.pageTables));
        const pt = a.memory.view(AGENT.pageTables, a.size - AGENT.pageTables);
        expect(pt.readBigUInt64LE(0)).toBe((a.cr3 + 0x1000n) | 0x27n); // PML4[0] → PDPT 0 (P, RW, US, A)
        const pd = (g: number) => Number((pt.readBigUInt64LE(0x1000 + g * 8) & ~0xfffn) - a.cr3);
        for (let g = 0; g < gib; g++) {
          expect(pt.readBigUInt64LE(pd(g) + 8)).toBe(((BigInt(g) << 30n) + (2n << 20n)) | 0xe7n); // 2 MiB page (P, RW, US, A, D, PS)
        }
        expect(a.stub('wrmsr').end - a.stub('wrmsr').rip).toBe(3n);
        expect(a.doorbell).toBe(a.gpa + BigInt(a.size));
        const gdt = a.memory.view(AGENT.gdt, AGENT.gdtLimit + 1);
        expect([gdt.readBigUInt64LE(0x08), gdt.readBigUInt64LE(0x10), gdt.readBigUInt64LE(0x28), gdt.readBigUInt64LE(0x30)]).toEqual([
          0x00af9b000000ffffn,
          0x00cf93000000ffffn,
          0x00cff3000000ffffn,
          0x00affb000000ffffn,
        ]);
        expect(a.memory.readU64(AGENT.tss + 4)).toBe(a.stackTop); // TSS.RSP0
        const user = a.sregs(a.sregs({} as never), true);
        expect([user.cs.selector, user.cs.dpl, user.ss.selector, user.ss.dpl, user.gdt.limit]).toEqual([0x33, 3, 0x2b, 3, 0x37]);
        expect(a.exceptionVector(a.gpa + BigInt(AGENT.handlers + 13 * 8 + 2))).toBe(13);
        expect(a.exceptionVector(a.gpa + BigInt(AGENT.handlers + 13 * 8))).toBe(13);
        expect(a.exceptionVector(a.gpa)).toBeUndefined();
      } finally {
        a.close();
      }
    }
  });

  test('MemfdRam behaves like the core SparseMemory (reads, writes, touched pages)', () => {
    const size = 64n * 4096n;
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            gpa: fc.bigInt({ min: 0n, max: size - 1n }),
            len: fc.integer({ min: 1, max: 9000 }),
            byte: fc.integer({ min: 0, max: 255 }),
            write: fc.boolean(),
          }),
          { maxLength: 20 },
        ),
        (ops) => {
          const sparse = new SparseMemory(size);
          const ram = new MemfdRam(size);
          try {
            for (const o of ops) {
              const len = Math.min(o.len, Number(size - o.gpa));
              if (o.write) {
                const data = Buffer.alloc(len, o.byte);
                sparse.write(o.gpa, data);
                ram.write(o.gpa, data);
              } else {
                expect(ram.read(o.gpa, len)).toEqual(sparse.read(o.gpa, len));
              }
            }
            expect(ram.touchedPages()).toEqual(sparse.touchedPages());
            expect(ram.pagesTouched).toBe(sparse.pagesTouched);
          } finally {
            ram.close();
          }
        },
      ),
      { numRuns: 40 },
    );
  });

  test('a 64 GiB MemfdRam holds only the pages written; reads of the rest allocate nothing', () => {
    const ram = new MemfdRam(64n << 30n);
    try {
      ram.write(5n << 30n, Buffer.from('x'));
      expect(ram.read(40n << 30n, 8192)).toEqual(Buffer.alloc(8192));
      ram.write(41n << 30n, Buffer.alloc(100)); // zeros into a hole: stays a hole
      expect(ram.touchedPages()).toEqual([(5 * 2 ** 30) / 4096]);
      expect(() => ram.read((64n << 30n) - 4n, 8)).toThrow(RangeError);
    } finally {
      ram.close();
    }
  });

  test('short MemfdRam reads across a page boundary: right bytes for data and holes on either side, no hole allocated', () => {
    const ram = new MemfdRam(1n << 20n);
    try {
      ram.write(0x2ff8n, Buffer.from('abcdefgh')); // page 2 holds data at its end; page 3 is a hole
      ram.write(0x5000n, Buffer.from('ijklmnop')); // page 5 at its start; page 4 is a hole
      ram.write(0x7ffcn, Buffer.from('qrstuvwx')); // pages 7 and 8 both hold data
      expect(ram.read(0x2ffcn, 8).toString('latin1')).toBe('efgh\0\0\0\0');
      expect(ram.read(0x4ffcn, 8).toString('latin1')).toBe('\0\0\0\0ijkl');
      expect(ram.read(0x7ffcn, 8).toString()).toBe('qrstuvwx');
      expect(ram.read(0x9ff0n, 32)).toEqual(Buffer.alloc(32)); // hole | hole
      // Zero bytes of a page that holds data elsewhere (the bytes before a guest's code), read twice.
      expect(ram.read(0x2000n, 16)).toEqual(Buffer.alloc(16));
      expect(ram.read(0x2000n, 16)).toEqual(Buffer.alloc(16));
      expect(ram.touchedPages()).toEqual([2, 5, 7, 8]);
      // The guest may fill a hole behind our back (through KVM, into the shared mapping): still seen.
      ram.memory.write(0x3000, Buffer.from('late'));
      expect(ram.read(0x2ffen, 6).toString('latin1')).toBe('gh' + 'late');
    } finally {
      ram.close();
    }
  });

  test('MemfdRam.peekU64 (page-table entries): the bytes of a data page, zeros of a hole, across a page, out of range', () => {
    const ram = new MemfdRam(1n << 20n);
    try {
      const b = Buffer.alloc(16);
      b.writeBigUInt64LE(0x0123_4567_89ab_cdefn, 0);
      b.writeBigUInt64LE(0xffff_ffff_ffff_fff0n, 8);
      ram.write(0x3ff8n, b); // the second entry starts page 4
      expect(ram.peekU64(0x3ff8n)).toBe(0x0123_4567_89ab_cdefn);
      expect(ram.peekU64(0x4000n)).toBe(0xffff_ffff_ffff_fff0n);
      expect(ram.peekU64(0x3ffcn)).toBe(0xffff_fff0_0123_4567n); // across the page boundary
      expect(ram.peekU64(0x9000n)).toBe(0n); // a hole, not allocated
      expect(ram.touchedPages()).toEqual([3, 4]);
      ram.memory.write(0x4008, Buffer.from([7])); // written behind the core's back (as the guest does)
      expect(ram.peekU64(0x4008n)).toBe(7n);
      expect(() => ram.peekU64((1n << 20n) - 4n)).toThrow(RangeError);
    } finally {
      ram.close();
    }
  });

  test('the store before RIP at the start of a page is decoded without reading the page before it', () => {
    // 64-bit paging off (CR0.PG clear: linear = physical) keeps the reader's calls to the bytes.
    const code = Buffer.from([0x88, 0x07]); // mov [rdi], al
    const mem = new Map<bigint, number>();
    for (const [i, b] of code.entries()) mem.set(0x10_0000n + BigInt(i), b);
    const pages: bigint[] = [];
    const read = (gpa: bigint, length: number) => {
      pages.push(gpa >> 12n);
      return Buffer.from(Array.from({ length }, (_, i) => mem.get(gpa + BigInt(i)) ?? 0));
    };
    const flat = { base: 0n, db: 1, l: 0 };
    const sregs = { cr0: 1n, cr3: 0n, cr4: 0n, efer: 0n, cs: flat, ds: flat, es: flat, ss: flat, fs: flat, gs: flat } as unknown as Parameters<
      typeof instructionBeforeRip
    >[4];
    const regs = { rdi: 0x20_0000n } as unknown as Parameters<typeof instructionBeforeRip>[3];
    const insn = instructionBeforeRip(0x10_0002n, 0x20_0000n, 1, regs, sregs, read);
    expect(insn).toMatchObject({ start: 0x10_0000n, end: 0x10_0002n, length: 2 });
    expect(insn?.bytes.subarray(0, 2)).toEqual(code);
    expect(pages.every((p) => p === 0x100n)).toBe(true);
  });

  test('overlay pages alias their memfd and know their offsets', () => {
    expect(OverlayPages.capacityFor(2)).toBe(24);
    const o = new OverlayPages(2);
    try {
      const a = o.alloc();
      const b = o.alloc();
      expect([o.offsetOf(a), o.offsetOf(b)]).toEqual([0, 4096]);
      b.write('hello', 10);
      expect(o.memory.read(4096 + 10, 5).toString()).toBe('hello');
      expect(() => o.alloc()).toThrow(/exhausted/);
      expect(() => o.offsetOf(Buffer.alloc(4096))).toThrow();
    } finally {
      o.close();
    }
  });
});

describe('register conversions', () => {
  test('segments: the long-mode context and the conformance contexts round-trip', () => {
    const ctx = core.longModeContext();
    for (const s of [
      ctx.cs,
      ctx.ds,
      ctx.tr,
      ctx.ldtr,
      { base: 0n, limit: 0xffffffff, selector: 0x2b, attributes: 0xa0fb },
      { base: 0n, limit: 0xffff, selector: 0, attributes: 0x82 },
    ]) {
      const r = core.segmentToReg128(s);
      expect(segmentFromKvm(segmentToKvm(r))).toEqual(r);
    }
    const cs: KvmSegment = segmentToKvm(core.segmentToReg128(ctx.cs));
    expect(cs).toMatchObject({ selector: 0x08, type: 0xb, s: 1, dpl: 0, present: 1, l: 1, db: 0, g: 1, unusable: 0 });
  });
  test('segments with P set round-trip for any attributes; tables for any base/limit', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.nat(0xffffffff), fc.nat(0xffff), fc.nat(0xffff), (base, limit, selector, attrs) => {
        const attributes = (attrs | 0x80) & ~0x0f00; // present; bits 11:8 are reserved in HV_X64_SEGMENT_REGISTER
        const r = core.segmentToReg128({ base, limit, selector, attributes });
        expect(segmentFromKvm(segmentToKvm(r))).toEqual(r);
        const t = core.tableToReg128({ base, limit: selector });
        expect(tableFromKvm(tableToKvm(t))).toEqual(t);
      }),
    );
  });
  test('a segment without P is unusable for KVM', () => {
    expect(segmentToKvm(core.segmentToReg128({ base: 0n, limit: 0, selector: 0, attributes: 0x03 })).unusable).toBe(1);
  });
});
