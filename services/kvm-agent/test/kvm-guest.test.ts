/**
 * Real guest code on /dev/kvm through the thin native layer: port I/O, MSR filter exits,
 * read-only memslots and holes, two VMs sharing one backing with an overlay, sync regs.
 * Gated by test/support/kvm-gate.ts (skipped with the reason, or failed when VSM_REQUIRE_KVM=1).
 * Nothing here depends on timing.
 */
import {
  Asm,
  GuestMemory,
  KVM_CAP,
  VcpuWatchdog,
  KVM_SYNC_X86_REGS,
  KVM_SYNC_X86_SREGS,
  type KvmExit,
  KvmSystem,
  MINI,
  MiniGuest,
  EFER,
  SysError,
} from '@vsm/platform-kvm/kvm';

import { describeKvm } from '../../../test/support/kvm-gate';

type ExitOf<K extends KvmExit['kind']> = Extract<KvmExit, { kind: K }>;
function expectKind<K extends KvmExit['kind']>(e: KvmExit, kind: K): ExitOf<K> {
  if (e.kind !== kind)
    throw new Error(`expected a ${kind} exit, got ${JSON.stringify(e, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v))}`);
  return e as ExitOf<K>;
}

describeKvm('KVM native layer on /dev/kvm', () => {
  let system: KvmSystem;
  beforeAll(() => {
    system = KvmSystem.open();
  });
  afterAll(() => system.close());

  it('reports the API version, mmap size and the capabilities the design relies on', () => {
    expect(system.apiVersion()).toBe(12);
    expect(system.vcpuMmapSize()).toBeGreaterThanOrEqual(4096);
    for (const cap of [KVM_CAP.USER_MEMORY, KVM_CAP.READONLY_MEM, KVM_CAP.X86_USER_SPACE_MSR, KVM_CAP.X86_MSR_FILTER, KVM_CAP.IMMEDIATE_EXIT]) {
      expect(system.checkExtension(cap)).toBeGreaterThan(0);
    }
    expect(system.checkExtension(KVM_CAP.SYNC_REGS) & (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS)).toBe(KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS);
  });

  it('(a) exits on port I/O with the right port, direction, size and data; IN takes the value supplied', () => {
    const g = MiniGuest.create({ system });
    try {
      const code = new Asm()
        .movR32Imm32('rax', 0x5a) // mov eax, 0x5a
        .outImm8Al(0x10) //           out 0x10, al
        .movR32Imm32('rax', 0xcafef00d)
        .outImm8Eax(0x44) //          out 0x44, eax
        .movR32Imm32('rdx', 0x3f8)
        .inAlDx() //                  in al, dx   (value supplied by the host)
        .movRR('rbx', 'rax') //       mov rbx, rax
        .hlt();
      g.load(code.bytes());
      const e1 = expectKind(g.step(), 'io');
      expect([e1.direction, e1.port, e1.size, e1.count, e1.value]).toEqual(['out', 0x10, 1, 1, 0x5a]);
      expect([...e1.data]).toEqual([0x5a]);
      const e2 = expectKind(g.step(), 'io');
      expect([e2.direction, e2.port, e2.size, e2.value]).toEqual(['out', 0x44, 4, 0xcafef00d]);
      const e3 = expectKind(g.step(), 'io');
      expect([e3.direction, e3.port, e3.size]).toEqual(['in', 0x3f8, 1]);
      g.vcpu.completeIoIn(0xa7);
      expectKind(g.step(), 'hlt');
      expect(g.vcpu.getRegs().rbx & 0xffn).toBe(0xa7n);
    } finally {
      g.close();
    }
  });

  it("(a2) a call into a hypercall-page style stub (out imm8, al; ret) exits with the caller's registers and returns", () => {
    const g = MiniGuest.create({ system });
    try {
      const stubGpa = MINI.code + 0x3000n;
      g.vm.writeGpa(stubGpa, new Asm().outImm8Al(0xe9).ret().bytes()); // E6 E9 C3
      const code = new Asm()
        .movR32Imm32('rcx', 0x0001_0002) // "hypercall input" registers must reach the host intact
        .movR64Imm64('rdx', 0x1111_2222_3333_4444n)
        .movR64Imm64('rax', stubGpa)
        .callReg('rax') //                 call rax → stub
        .movRR('rbx', 'rax') //            after return: rbx = rax (set by the host)
        .hlt();
      g.load(code.bytes());
      const e = expectKind(g.step(), 'io');
      expect([e.direction, e.port]).toEqual(['out', 0xe9]);
      const regs = g.vcpu.getRegs();
      expect(regs.rcx).toBe(0x0001_0002n);
      expect(regs.rdx).toBe(0x1111_2222_3333_4444n);
      expect(regs.rip).toBe(stubGpa + 2n);
      expect(regs.rsp).toBe(MINI.stackTop - 8n); // return address pushed
      g.vcpu.setRegs({ ...regs, rax: 0x1234n }); // the "hypercall result"
      expectKind(g.step(), 'hlt');
      expect(g.vcpu.getRegs().rbx).toBe(0x1234n);
      expect(g.vcpu.getRegs().rsp).toBe(MINI.stackTop);
    } finally {
      g.close();
    }
  });

  it('(b) traps WRMSR/RDMSR of 0x40000000 through the MSR filter; the value round-trips into RAX/RDX', () => {
    const g = MiniGuest.create({ system });
    try {
      g.vm.trapMsrs(); // 0x40000000–0x400000FF → userspace
      const msrs = new Map<number, bigint>();
      const code = new Asm()
        .movR32Imm32('rcx', 0x4000_0000)
        .movR32Imm32('rax', 0x89abcdef)
        .movR32Imm32('rdx', 0x01234567)
        .wrmsr() //               → KVM_EXIT_X86_WRMSR
        .zero('rax')
        .zero('rdx')
        .rdmsr() //               → KVM_EXIT_X86_RDMSR, completed with the stored value
        .movRR('r8', 'rax')
        .movRR('r9', 'rdx')
        .movR32Imm32('rcx', 0xc000_0080) // EFER: not filtered, handled in the kernel
        .rdmsr()
        .hlt();
      g.load(code.bytes());
      const w = expectKind(g.step(), 'wrmsr');
      expect(w.index).toBe(0x4000_0000);
      expect(w.data).toBe(0x0123_4567_89ab_cdefn);
      msrs.set(w.index, w.data);
      const r = expectKind(g.step(), 'rdmsr');
      expect(r.index).toBe(0x4000_0000);
      g.vcpu.completeMsr({ data: msrs.get(r.index) ?? 0n });
      expectKind(g.step(), 'hlt'); // the EFER read did not exit
      const regs = g.vcpu.getRegs();
      expect(regs.r8).toBe(0x89abcdefn);
      expect(regs.r9).toBe(0x01234567n);
      expect(regs.rax & EFER.LMA).toBe(EFER.LMA);
    } finally {
      g.close();
    }
  });

  it('(b2) an MSR exit completed with error raises #GP in the guest (no IDT → triple fault → shutdown)', () => {
    const g = MiniGuest.create({ system });
    try {
      g.vm.trapMsrs();
      g.load(new Asm().movR32Imm32('rcx', 0x4000_00ff).rdmsr().hlt().bytes());
      const r = expectKind(g.step(), 'rdmsr');
      expect(r.index).toBe(0x4000_00ff);
      g.vcpu.completeMsr({ error: true });
      expectKind(g.step(), 'shutdown');
    } finally {
      g.close();
    }
  });

  it('(c) a write to a read-only memslot exits as MMIO (GPA, data) and leaves memory intact; reads succeed; a hole read exits as MMIO', () => {
    const g = MiniGuest.create({ system });
    try {
      const ro = MINI.data; // 0x200000
      g.memory.writeU64(Number(ro), 0x1122_3344_5566_7788n);
      g.vm.map({ gpa: ro, size: 4096, memory: g.memory, offset: Number(ro), readonly: true });
      expect(g.vm.lookup(ro)?.readonly).toBe(true);
      expect(g.vm.lookup(ro + 0x1000n)?.readonly).toBe(false);
      const hole = 0x1_0000_0000n - 0x1000n; // identity-mapped by the page tables, no memslot
      expect(g.vm.lookup(hole)).toBeUndefined();
      const code = new Asm()
        .movR64Imm64('rdi', ro)
        .load('rbx', 'rdi', 8) //           read from the RO slot: no exit
        .movR64Imm64('rax', 0xaabb_ccdd_eeff_0011n)
        .store('rdi', 'rax', 8) //          write: KVM_EXIT_MMIO
        .movR64Imm64('rsi', hole)
        .load('rcx', 'rsi', 4) //           read of a hole: KVM_EXIT_MMIO, data from the host
        .hlt();
      g.load(code.bytes());
      const w = expectKind(g.step(), 'mmio');
      expect(w.isWrite).toBe(true);
      expect(w.gpa).toBe(ro);
      expect(w.len).toBe(8);
      expect(w.value).toBe(0xaabb_ccdd_eeff_0011n);
      const rd = expectKind(g.step(), 'mmio');
      expect(rd.isWrite).toBe(false);
      expect(rd.gpa).toBe(hole);
      expect(rd.len).toBe(4);
      g.vcpu.completeMmioRead(0xdead_beefn);
      expectKind(g.step(), 'hlt');
      const regs = g.vcpu.getRegs();
      expect(regs.rbx).toBe(0x1122_3344_5566_7788n);
      expect(regs.rcx).toBe(0xdead_beefn);
      expect(g.memory.readU64(Number(ro))).toBe(0x1122_3344_5566_7788n);

      // turning the page writable again (same backing) lets the write through
      g.vm.map({ gpa: ro, size: 4096, memory: g.memory, offset: Number(ro) });
      g.load(new Asm().movR64Imm64('rdi', ro).movR64Imm64('rax', 0x77n).store('rdi', 'rax', 8).hlt().bytes(), MINI.code + 0x1000n);
      expectKind(g.step(), 'hlt');
      expect(g.memory.readU64(Number(ro))).toBe(0x77n);
    } finally {
      g.close();
    }
  });

  it("(d) two VMs sharing one GuestMemory see each other's writes; an overlay in one VM leaves the other view and the underlying page untouched", () => {
    const memory = GuestMemory.create(16 << 20);
    const mapped = 8 << 20; // both VMs map [0, 8 MiB); overlay pages come from [8 MiB, 16 MiB)
    const a = MiniGuest.create({ system, memory, memorySize: mapped });
    const b = MiniGuest.create({ system, memory, memorySize: mapped, tablesAlreadyWritten: true });
    try {
      const page = 0x30_0000n;
      const overlayOffset = 0x80_0000;
      const slotsBefore = a.vm.mappings().length;
      // writer(value) at code+0x000: mov rdi, page; mov rax, value; mov [rdi], rax; hlt
      // reader at code+0x100:        mov rdi, page; mov rax, [rdi]; hlt
      const writer = (v: bigint): Buffer => new Asm().movR64Imm64('rdi', page).movR64Imm64('rax', v).store('rdi', 'rax').hlt().bytes();
      const reader = new Asm().movR64Imm64('rdi', page).load('rax', 'rdi').hlt().bytes();
      const run = (g: MiniGuest, code: Buffer, at: bigint): bigint => {
        g.load(code, at);
        expectKind(g.step(), 'hlt');
        return g.vcpu.getRegs().rax;
      };

      run(a, writer(0xaaaa_0001n), MINI.code);
      expect(run(b, reader, MINI.code + 0x100n)).toBe(0xaaaa_0001n); // B sees A's write
      run(b, writer(0xbbbb_0002n), MINI.code + 0x200n);
      expect(run(a, reader, MINI.code + 0x100n)).toBe(0xbbbb_0002n); // and vice versa
      expect(memory.readU64(Number(page))).toBe(0xbbbb_0002n);

      // overlay the page in B only
      memory.writeU64(overlayOffset, 0x0e0e_0e0en);
      b.vm.map({ gpa: page, size: 4096, memory, offset: overlayOffset });
      expect(b.vm.lookup(page)?.offset).toBe(overlayOffset);
      expect(b.vm.mappings().length).toBe(3); // [0,page) [page] (page,8MiB)
      expect(run(b, reader, MINI.code + 0x100n)).toBe(0x0e0e_0e0en);
      run(b, writer(0xbbbb_0003n), MINI.code + 0x300n); // lands in the overlay
      expect(memory.readU64(overlayOffset)).toBe(0xbbbb_0003n);
      expect(memory.readU64(Number(page))).toBe(0xbbbb_0002n); // underlying bytes untouched
      expect(run(a, reader, MINI.code + 0x100n)).toBe(0xbbbb_0002n); // A's view untouched
      expect(a.vm.mappings().length).toBe(slotsBefore);

      // remove the overlay: the underlying page reappears in B
      b.vm.map({ gpa: page, size: 4096, memory, offset: Number(page) });
      expect(run(b, reader, MINI.code + 0x100n)).toBe(0xbbbb_0002n);
    } finally {
      a.close();
      b.close();
      memory.close();
    }
  });

  it('(e) sync regs: RAX and RIP changed through kvm_run.s.regs take effect without KVM_SET_REGS', () => {
    const g = MiniGuest.create({ system });
    try {
      const code = new Asm()
        .movR32Imm32('rax', 0x11)
        .outImm8Al(0x10) //   exit 1: rax = 0x11 visible in s.regs
        .outImm8Al(0x11) //   exit 2: reports the RAX written through s.regs
        .outImm8Al(0x12) //   skipped: RIP is redirected past it
        .label('target')
        .outImm8Al(0x13) //   exit 3
        .hlt();
      g.load(code.bytes());
      const target = MINI.code + BigInt(code.offsetOf('target'));
      g.vcpu.setSyncRegs(KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS);
      expect(g.vcpu.syncRegsMask).toBe(KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS);

      const e1 = expectKind(g.step(), 'io');
      expect(e1.port).toBe(0x10);
      expect(g.vcpu.syncedRegsFresh).toBe(true);
      expect(g.vcpu.syncedReg('rax')).toBe(0x11n);
      expect(g.vcpu.getSregs().efer & EFER.LMA).toBe(EFER.LMA); // from s.regs.sregs

      g.vcpu.setSyncedReg('rax', 0x99n);
      expect(g.vcpu.dirtyRegsMask & KVM_SYNC_X86_REGS).toBe(KVM_SYNC_X86_REGS);
      const e2 = expectKind(g.step(), 'io');
      expect(e2.port).toBe(0x11);
      expect(e2.value).toBe(0x99);
      expect(g.vcpu.dirtyRegsMask & KVM_SYNC_X86_REGS).toBe(0); // KVM consumed the dirty bit

      g.vcpu.setSyncedReg('rip', target);
      g.vcpu.setSyncedReg('rax', 0x42n);
      const e3 = expectKind(g.step(), 'io');
      expect(e3.port).toBe(0x13);
      expect(e3.value).toBe(0x42);

      // getRegs() serves the shared copy; the kernel's own state agrees
      const viaSync = g.vcpu.getRegs();
      g.vcpu.setSyncRegs(0);
      const viaIoctl = g.vcpu.getRegs();
      expect(viaSync).toEqual(viaIoctl);
      expect(viaIoctl.rip).toBe(target + 2n); // after `out 0x13, al`
      expectKind(g.step(), 'hlt');
    } finally {
      g.close();
    }
  });

  it('setRegs() with sync regs enabled goes through the shared page; setSyncedReg() needs a fresh copy', () => {
    const g = MiniGuest.create({ system });
    try {
      g.vcpu.setSyncRegs(KVM_SYNC_X86_REGS);
      expect(() => g.vcpu.setSyncedReg('rax', 1n)).toThrow(/not fresh/);
      g.load(new Asm().outImm8Al(0x10).label('x').outImm8Al(0x20).hlt().bytes());
      expectKind(g.step(), 'io');
      const r = g.vcpu.getRegs();
      g.vcpu.setRegs({ ...r, rax: 0x3cn });
      expect(g.vcpu.dirtyRegsMask & KVM_SYNC_X86_REGS).toBe(KVM_SYNC_X86_REGS);
      const e = expectKind(g.step(), 'io');
      expect([e.port, e.value]).toEqual([0x20, 0x3c]);
    } finally {
      g.close();
    }
  });

  it('immediate_exit returns EINTR without entering the guest', () => {
    const g = MiniGuest.create({ system });
    try {
      g.load(new Asm().outImm8Al(0x10).hlt().bytes());
      g.vcpu.immediateExit = true;
      expectKind(g.vcpu.run(), 'intr');
      expect(g.vcpu.getRegs().rip).toBe(MINI.code); // nothing executed
      g.vcpu.immediateExit = false;
      expectKind(g.step(), 'io');
    } finally {
      g.close();
    }
  });

  it('a watchdog kicks a guest that never exits out of KVM_RUN; exits before the deadline are unaffected', () => {
    const g = MiniGuest.create({ system });
    const wd = VcpuWatchdog.start({ periodMs: 5 });
    try {
      g.load(new Asm().outImm8Al(0x10).label('spin').jmp('spin').bytes()); // out 0x10, al; spin: jmp spin
      expect(wd.run(g.vcpu, 60_000).kind).toBe('io');
      expect(wd.run(g.vcpu, 50).kind).toBe('timeout');
      const rip = g.vcpu.getRegs().rip;
      expect(rip).toBe(MINI.code + 2n); // still spinning on the jmp
      expect(wd.run(g.vcpu, 20).kind).toBe('timeout'); // can be resumed and timed out again
    } finally {
      wd.close();
      g.close();
    }
  });

  it('reads and writes the FPU state', () => {
    const g = MiniGuest.create({ system });
    try {
      const f = g.vcpu.getFpu();
      expect(f.xmm).toHaveLength(16);
      const x = Buffer.alloc(16, 0xab);
      g.vcpu.setFpu({ ...f, xmm: f.xmm.map((v, i) => (i === 3 ? x : v)) });
      expect(g.vcpu.getFpu().xmm[3]).toEqual(x);
    } finally {
      g.close();
    }
  });

  it('rejects overlapping raw memslots and misaligned maps with clear errors', () => {
    const g = MiniGuest.create({ system });
    try {
      const m = g.vm.mappings()[0];
      expect(m).toBeDefined();
      expect(() => g.vm.setUserMemoryRegion({ slot: 100, flags: 0, gpa: 0x1000n, size: 4096, hostAddress: g.memory.hostAddress })).toThrow(SysError);
      expect(() => g.vm.map({ gpa: 0x123n, size: 4096, memory: g.memory, offset: 0 })).toThrow(/aligned/);
    } finally {
      g.close();
    }
  });
});
