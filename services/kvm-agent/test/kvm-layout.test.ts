/**
 * Pure checks of the native KVM layer (no /dev/kvm needed): ioctl numbers, struct layouts,
 * the assembler's encodings, page tables and GDT images.
 */
import * as ioctl from '@vsm/platform-kvm/kvm/ioctl';
import { EXIT, RUN, SREGS, decodeRegs, decodeSregs, encodeRegs, encodeSregs, type KvmSregs, type KvmSegment } from '@vsm/platform-kvm/kvm/layout';
import { Asm, GDT_LIMIT, PTE, buildGdt, buildIdentityPageTables, longModeSregs } from '@vsm/platform-kvm/kvm/longmode';

describe('ioctl numbers', () => {
  // Values printed by a C program including <linux/kvm.h> on x86-64.
  const expected: Record<string, number> = {
    KVM_GET_API_VERSION: 0xae00,
    KVM_CREATE_VM: 0xae01,
    KVM_CHECK_EXTENSION: 0xae03,
    KVM_GET_VCPU_MMAP_SIZE: 0xae04,
    KVM_GET_SUPPORTED_CPUID: 0xc008ae05,
    KVM_CREATE_VCPU: 0xae41,
    KVM_SET_USER_MEMORY_REGION: 0x4020ae46,
    KVM_RUN: 0xae80,
    KVM_GET_REGS: 0x8090ae81,
    KVM_SET_REGS: 0x4090ae82,
    KVM_GET_SREGS: 0x8138ae83,
    KVM_SET_SREGS: 0x4138ae84,
    KVM_GET_MSRS: 0xc008ae88,
    KVM_SET_MSRS: 0x4008ae89,
    KVM_GET_FPU: 0x81a0ae8c,
    KVM_SET_FPU: 0x41a0ae8d,
    KVM_SET_CPUID2: 0x4008ae90,
    KVM_GET_VCPU_EVENTS: 0x8040ae9f,
    KVM_SET_VCPU_EVENTS: 0x4040aea0,
    KVM_ENABLE_CAP: 0x4068aea3,
    KVM_X86_SET_MSR_FILTER: 0x4188aec6,
  };
  it.each(Object.entries(expected))('%s', (name, value) => {
    expect((ioctl as unknown as Record<string, number>)[name]).toBe(value);
  });
});

describe('struct layouts', () => {
  it('pins kvm_run offsets', () => {
    expect(RUN.exitReason).toBe(8);
    expect(RUN.exit).toBe(32);
    expect(RUN.kvmValidRegs).toBe(288);
    expect(RUN.kvmDirtyRegs).toBe(296);
    expect(RUN.syncRegs).toBe(304);
    expect(RUN.syncSregs).toBe(448);
    expect(RUN.syncEvents).toBe(760);
    expect(EXIT.msrIndex).toBe(44);
    expect(EXIT.msrData).toBe(48);
    expect(EXIT.mmioLen).toBe(48);
    expect(SREGS.efer).toBe(264);
    expect(SREGS.size).toBe(312);
  });

  it('round-trips kvm_regs at an offset', () => {
    const b = Buffer.alloc(400);
    encodeRegs(b, { rax: 1n, rdi: 0xffff_ffff_ffff_ffffn, rip: 0x100000n, rflags: 2n }, 100);
    const r = decodeRegs(b, 100);
    expect(r.rax).toBe(1n);
    expect(r.rdi).toBe(0xffff_ffff_ffff_ffffn);
    expect(r.rip).toBe(0x100000n);
    expect(r.rflags).toBe(2n);
    expect(b.readBigUInt64LE(100 + 5 * 8)).toBe(0xffff_ffff_ffff_ffffn); // rdi is the 6th field
  });

  it('round-trips kvm_sregs', () => {
    const z: KvmSegment = { base: 0n, limit: 0, selector: 0, type: 0, present: 0, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 };
    const blank: KvmSregs = {
      cs: z,
      ds: z,
      es: z,
      fs: z,
      gs: z,
      ss: z,
      tr: z,
      ldt: z,
      gdt: { base: 0n, limit: 0 },
      idt: { base: 0n, limit: 0 },
      cr0: 0n,
      cr2: 0n,
      cr3: 0n,
      cr4: 0n,
      cr8: 0n,
      efer: 0n,
      apicBase: 0xfee00900n,
      interruptBitmap: [0n, 0n, 0n, 1n],
    };
    const s = longModeSregs(blank, 0x10000n, 0x1000n);
    const b = Buffer.alloc(SREGS.size);
    encodeSregs(b, s);
    expect(decodeSregs(b)).toEqual(s);
    expect(b[SREGS.cs + 19]).toBe(1); // cs.l
    expect(b.readUInt16LE(SREGS.gdt + 8)).toBe(GDT_LIMIT);
  });
});

describe('Asm encodings (cross-checked against GNU as)', () => {
  const cases: [string, (a: Asm) => Asm, string][] = [
    ['hlt', (a) => a.hlt(), 'f4'],
    ['wrmsr', (a) => a.wrmsr(), '0f30'],
    ['rdmsr', (a) => a.rdmsr(), '0f32'],
    ['ret', (a) => a.ret(), 'c3'],
    ['out 0x10, al', (a) => a.outImm8Al(0x10), 'e610'],
    ['out 0x20, eax', (a) => a.outImm8Eax(0x20), 'e720'],
    ['out dx, al', (a) => a.outDxAl(), 'ee'],
    ['in al, 0x30', (a) => a.inAlImm8(0x30), 'e430'],
    ['in eax, dx', (a) => a.inEaxDx(), 'ed'],
    ['mov ecx, 0x40000000', (a) => a.movR32Imm32('rcx', 0x40000000), 'b900000040'],
    ['mov r9d, 0x12345678', (a) => a.movR32Imm32('r9', 0x12345678), '41b978563412'],
    ['mov rdi, imm64', (a) => a.movR64Imm64('rdi', 0x1122334455667788n), '48bf8877665544332211'],
    ['mov r12, imm64', (a) => a.movR64Imm64('r12', 0x1122334455667788n), '49bc8877665544332211'],
    ['mov rbx, rax', (a) => a.movRR('rbx', 'rax'), '4889c3'],
    ['mov r11, rdx', (a) => a.movRR('r11', 'rdx'), '4989d3'],
    ['mov [rdi], rax', (a) => a.store('rdi', 'rax', 8), '488907'],
    ['mov [rdi], eax', (a) => a.store('rdi', 'rax', 4), '8907'],
    ['mov [rdi], ax', (a) => a.store('rdi', 'rax', 2), '668907'],
    ['mov [rdi], al', (a) => a.store('rdi', 'rax', 1), '8807'],
    ['mov [r8], rbx', (a) => a.store('r8', 'rbx', 8), '498918'],
    ['mov rax, [rdi]', (a) => a.load('rax', 'rdi', 8), '488b07'],
    ['mov eax, [rdi]', (a) => a.load('rax', 'rdi', 4), '8b07'],
    ['movzx eax, byte [rdi]', (a) => a.load('rax', 'rdi', 1), '0fb607'],
    ['mov r10, [r9]', (a) => a.load('r10', 'r9', 8), '4d8b11'],
    ['mov r9, [rsi+0x48]', (a) => a.load('r9', 'rsi', 8, 0x48), '4c8b4e48'],
    ['mov rax, [rsi+0x28]', (a) => a.load('rax', 'rsi', 8, 0x28), '488b4628'],
    ['movzx ebx, byte [rsi+0x14]', (a) => a.load('rbx', 'rsi', 1, 0x14), '0fb65e14'],
    ['mov [r11+0x20], rax', (a) => a.store('r11', 'rax', 8, 0x20), '49894320'],
    ['mov rax, [r13+0] (no mod-00 form)', (a) => a.load('rax', 'r13', 8), '498b4500'],
    ['mov [rbp-8], eax', (a) => a.store('rbp', 'rax', 4, -8), '8945f8'],
    ['mov [rdi+0x7f], al', (a) => a.store('rdi', 'rax', 1, 0x7f), '88477f'],
    ['mov r10d, [r9-0x80]', (a) => a.load('r10', 'r9', 4, -0x80), '458b5180'],
    ['inc r11', (a) => a.incR64('r11'), '49ffc3'],
    ['dec ecx', (a) => a.decR32('rcx'), 'ffc9'],
    ['shl rdx, 32', (a) => a.shlR64Imm8('rdx', 32), '48c1e220'],
    ['or rax, rdx', (a) => a.orRR('rax', 'rdx'), '4809d0'],
    ['add rax, rbx', (a) => a.addRR('rax', 'rbx'), '4801d8'],
    ['add r9, rcx', (a) => a.addRR('r9', 'rcx'), '4901c9'],
    ['xor r9d, r9d', (a) => a.zero('r9'), '4531c9'],
    ['push r12', (a) => a.push('r12'), '4154'],
    ['pop rbx', (a) => a.pop('rbx'), '5b'],
    ['call rax', (a) => a.callReg('rax'), 'ffd0'],
    ['jmp r8', (a) => a.jmpReg('r8'), '41ffe0'],
    ['l: jmp l', (a) => a.label('l').jmp('l'), 'ebfe'],
    ['l: jnz l', (a) => a.label('l').jnz('l'), '75fe'],
    ['call l; l:', (a) => a.call('l').label('l'), 'e800000000'],
    ['jmp l; nop; l: (forward → rel32)', (a) => a.jmp('l').nop().label('l'), 'e90100000090'],
  ];
  it.each(cases)('%s', (_name, emit, hex) => {
    expect(emit(new Asm()).bytes().toString('hex')).toBe(hex);
  });

  it('rejects memory operands that need SIB or a displacement wider than a byte', () => {
    expect(() => new Asm().store('rsp', 'rax')).toThrow(/SIB/);
    expect(() => new Asm().load('rax', 'r12')).toThrow(/SIB/);
    expect(() => new Asm().load('rax', 'rsi', 8, 128)).toThrow(/signed byte/);
    expect(() => new Asm().store('rsi', 'rax', 8, -129)).toThrow(/signed byte/);
  });

  it('reports undefined labels', () => {
    expect(() => new Asm().jmp('nowhere').bytes()).toThrow(/undefined label/);
  });
});

describe('page tables and GDT images', () => {
  it('identity-maps with 2 MiB pages', () => {
    const pt = buildIdentityPageTables(0x10000n, 2);
    expect(pt.cr3).toBe(0x10000n);
    expect(pt.bytes.length).toBe(4 * 4096);
    const pml4e = pt.bytes.readBigUInt64LE(0);
    expect(pml4e & ~0xfffn).toBe(0x11000n);
    expect(pt.bytes.readBigUInt64LE(0x1000 + 8) & ~0xfffn).toBe(0x13000n); // PDPT[1] → PD 1
    const pde = pt.bytes.readBigUInt64LE(0x3000 + 3 * 8); // GiB 1, 2 MiB page 3
    expect(pde & ~0xfffn).toBe((1n << 30n) + 3n * (1n << 21n));
    expect(pde & PTE.PS).toBe(PTE.PS);
  });

  it('builds a GDT whose TSS descriptor points at base+0x80', () => {
    const g = buildGdt(0x1234_5000n);
    expect(g.readBigUInt64LE(8)).toBe(0x00af9b000000ffffn);
    expect(g.readBigUInt64LE(16)).toBe(0x00cf93000000ffffn);
    const lo = g.readBigUInt64LE(0x18);
    const hi = g.readBigUInt64LE(0x20);
    const base = ((lo >> 16n) & 0xffffffn) | (((lo >> 56n) & 0xffn) << 24n) | (hi << 32n);
    expect(base).toBe(0x1234_5080n);
    expect((lo >> 40n) & 0xffn).toBe(0x8bn);
  });
});
