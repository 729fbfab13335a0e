/**
 * The agent-owned region of a partition: a small memfd mapped in every VTL VM at a GPA above the
 * partition's GPA space (guest RAM stays untouched). It holds what the agent needs to run guest
 * actions as real instructions on a vCPU, independent of the guest's own paging and tables:
 *
 *   +0x00000  GDT (+ user code/data descriptors) and TSS              } read-only memslot
 *   +0x01000  IDT: 32 interrupt gates → the exception handlers          }
 *   +0x02000  exception handlers, 8 bytes each: out 0x4e, al; hlt       }
 *   +0x03000  action stubs                                              }
 *   +0x04000  data: the CALL target of CallHypercallPage                }
 *   +0x08000  stack (32 KiB, grows down from +0x10000; also TSS.RSP0)   } read/write memslot
 *   +0x10000  data buffer (64 KiB) for guest memory reads/writes         }
 *   +0x20000  identity page tables (2 MiB pages, user-accessible) over [0, region end + 4 KiB)
 *   end       the doorbell: one page without a memslot (a store there exits as MMIO)
 *
 * Two privilege levels, because of what this host does with guest code: on kvm_pvm, guest code at
 * CPL0 runs at ≈1-2 µs per instruction (a `dec ecx; jnz` loop: ≈2 µs per iteration; a 4 KiB
 * `rep movsb`: ≈4.7 ms) while CPL3 code runs natively (≈0.5 ns per iteration). So:
 * - MSR, hypercall and single load/store stubs run at CPL0 (WRMSR/RDMSR need it; the hypercall
 *   page's `out` needs it too: IOPL is not honoured for the guest's user mode here; a single
 *   access is two instructions) and end with HLT;
 * - the copy stub (`rep movsb`, any length) runs at CPL3 and ends with a store to the doorbell:
 *   a 4 KiB copy takes ≈50 µs instead of ≈4.7 ms at CPL0.
 *
 * Everything is written once, before any vCPU runs, and never changed afterwards except the data
 * area, the stack and the buffer: with shadow paging (kvm_pvm) a host write to a page table that
 * KVM has already shadowed would go unnoticed.
 */
import { Asm, GDT_REGION_SIZE, GuestMemory, type KvmSregs, type KvmVm, PTE, buildGdt, longModeSregs } from '../kvm';
import { HYPERCALL_INSN } from './hypercall-page';

export const GIB = 1n << 30n;
const MIB2 = 1n << 21n;

export const AGENT = {
  gdt: 0x0000,
  idt: 0x1000,
  handlers: 0x2000,
  stubs: 0x3000,
  data: 0x4000,
  callTarget: 0x4000,
  roEnd: 0x8000,
  stackTop: 0x10000,
  buffer: 0x10000,
  bufferSize: 0x10000,
  rwEnd: 0x20000,
  pageTables: 0x20000,
  vectors: 32,
  handlerSize: 8,
  /** GDT entries added after buildGdt()'s (null, 0x08 code, 0x10 data, 0x18 TSS): user data, user code64. */
  userData: 0x28,
  userCode: 0x30,
  gdtLimit: 0x37,
  tss: 0x80,
} as const;

/** User-mode (CPL3) selectors: RPL 3 into the entries above. */
export const USER_SS = AGENT.userData | 3;
export const USER_CS = AGENT.userCode | 3;

/** Port the agent's exception handlers write to; the vector is (RIP - handlers) / 8. */
export const EXCEPTION_PORT = 0x4e;

export type StubName =
  | 'wrmsr'
  | 'rdmsr'
  | 'hypercall'
  | 'callPage'
  | 'copy'
  | 'load1'
  | 'load2'
  | 'load4'
  | 'load8'
  | 'store1'
  | 'store2'
  | 'store4'
  | 'store8';

export interface Stub {
  /** GPA (= virtual address under the agent's identity map) of the first instruction. */
  rip: bigint;
  /** CPL3 stub: ends with a store to the doorbell (an MMIO exit) instead of HLT. */
  user: boolean;
  /** Kernel stubs: RIP after the final HLT (what a KVM_EXIT_HLT at the end reports). */
  end: bigint;
}

/**
 * The action stubs and their bytes. Kernel (CPL0) stubs end with HLT; user (CPL3) stubs end with
 * `mov [rbx], al` (88 03), RBX = the doorbell.
 */
export function assembleStubs(): { name: StubName; bytes: Buffer; user: boolean; endOffset: number }[] {
  const out: { name: StubName; bytes: Buffer; user: boolean; endOffset: number }[] = [];
  const kernel = (name: StubName, a: Asm) => {
    const bytes = a.hlt().bytes();
    out.push({ name, bytes, user: false, endOffset: bytes.length });
  };
  const user = (name: StubName, a: Asm) => {
    const bytes = a.store('rbx', 'rax', 1).bytes();
    out.push({ name, bytes, user: true, endOffset: bytes.length });
  };
  kernel('wrmsr', new Asm().wrmsr()); //                           0F 30 F4
  kernel('rdmsr', new Asm().rdmsr()); //                           0F 32 F4
  kernel('hypercall', new Asm().raw(HYPERCALL_INSN)); //           66 E7 4D F4   out 0x4d, ax; hlt
  kernel('callPage', new Asm().raw([0xff, 0x15, 0, 0, 0, 0])); //  FF 15 rel32   call [rip+rel32] (patched below); hlt
  user('copy', new Asm().raw([0xf3, 0xa4])); //                    F3 A4 88 03   rep movsb; mov [rbx], al
  for (const size of [1, 2, 4, 8] as const) {
    kernel(`load${size}`, new Asm().load('rax', 'rdi', size)); //  movzx eax, byte/word [rdi] | mov eax/rax, [rdi]; hlt
    kernel(`store${size}`, new Asm().store('rdi', 'rax', size)); // mov [rdi], al/ax/eax/rax; hlt
  }
  return out;
}

/** 64-bit interrupt gate (16 bytes): P=1, DPL=0, type 0xE, selector 0x08, IST 0. */
export function interruptGate(handler: bigint): Buffer {
  const b = Buffer.alloc(16);
  const lo = (handler & 0xffffn) | (0x08n << 16n) | (0x8en << 40n) | (((handler >> 16n) & 0xffffn) << 48n);
  b.writeBigUInt64LE(lo, 0);
  b.writeBigUInt64LE((handler >> 32n) & 0xffffffffn, 8);
  return b;
}

export class AgentRegion {
  readonly memory: GuestMemory;
  /** GPA of the region (1 GiB aligned, above the partition's RAM). */
  readonly gpa: bigint;
  readonly size: number;
  /** GiB identity-mapped by the agent's page tables, from GPA 0. */
  readonly mappedGiB: number;
  readonly cr3: bigint;
  /** The first page after the region: no memslot, so a guest store there exits (MMIO). */
  readonly doorbell: bigint;
  private readonly stubs = new Map<StubName, Stub>();

  constructor(ramBytes: bigint, name = 'vsm-agent') {
    this.gpa = ((ramBytes + GIB - 1n) / GIB) * GIB;
    this.mappedGiB = Number(this.gpa / GIB) + 1;
    const pdpts = Math.ceil(this.mappedGiB / 512);
    const ptBytes = (1 + pdpts + this.mappedGiB) * 4096;
    this.size = AGENT.pageTables + ptBytes;
    this.cr3 = this.gpa + BigInt(AGENT.pageTables);
    this.doorbell = this.gpa + BigInt(this.size);
    if (this.doorbell + 4096n > BigInt(this.mappedGiB) * GIB) throw new Error('agent region too large for its identity map');
    this.memory = GuestMemory.create(this.size, name);
    try {
      this.build(pdpts);
    } catch (e) {
      this.memory.close();
      throw e;
    }
  }

  private build(pdpts: number): void {
    const m = this.memory;
    m.write(AGENT.gdt, buildGdt(this.gpa + BigInt(AGENT.gdt)));
    if (GDT_REGION_SIZE > AGENT.idt - AGENT.gdt) throw new Error('GDT does not fit');
    m.writeU64(AGENT.gdt + AGENT.userData, 0x00cff3000000ffffn); // data, DPL 3
    m.writeU64(AGENT.gdt + AGENT.userCode, 0x00affb000000ffffn); // 64-bit code, DPL 3
    m.writeU64(AGENT.gdt + AGENT.tss + 4, this.gpa + BigInt(AGENT.stackTop)); // TSS.RSP0: exceptions from CPL3
    // Exception handlers: out 0x4e, al (E6 4E); hlt (F4); jmp back to the hlt (EB FD); padding.
    for (let v = 0; v < AGENT.vectors; v++) {
      const at = AGENT.handlers + v * AGENT.handlerSize;
      m.write(at, Buffer.from([0xe6, EXCEPTION_PORT, 0xf4, 0xeb, 0xfd, 0x90, 0x90, 0x90]));
      m.write(AGENT.idt + v * 16, interruptGate(this.gpa + BigInt(at)));
    }
    let at = AGENT.stubs;
    for (const s of assembleStubs()) {
      if (s.name === 'callPage') {
        // call [rip + rel32]: rel32 counts from the end of the 6-byte instruction to the target slot.
        s.bytes.writeInt32LE(AGENT.callTarget - (at + 6), 2);
      }
      m.write(at, s.bytes);
      const rip = this.gpa + BigInt(at);
      this.stubs.set(s.name, { rip, user: s.user, end: rip + BigInt(s.endOffset) });
      at += (s.bytes.length + 15) & ~15;
    }
    if (at > AGENT.data) throw new Error('agent stubs overflow their area');
    // Identity map [0, mappedGiB GiB) with 2 MiB pages: PML4, then the PDPTs, then one PD per GiB.
    const pt = AGENT.pageTables;
    const base = this.cr3;
    const table = PTE.P | PTE.RW | PTE.US | PTE.A;
    const pd0 = 1 + pdpts;
    for (let i = 0; i < pdpts; i++) m.writeU64(pt + i * 8, (base + BigInt((1 + i) * 4096)) | table);
    const pd = Buffer.alloc(4096);
    for (let g = 0; g < this.mappedGiB; g++) {
      m.writeU64(pt + (1 + Math.floor(g / 512)) * 4096 + (g % 512) * 8, (base + BigInt((pd0 + g) * 4096)) | table);
      for (let i = 0; i < 512; i++) pd.writeBigUInt64LE((BigInt(g) * GIB + BigInt(i) * MIB2) | table | PTE.D | PTE.PS, i * 8);
      m.write(pt + (pd0 + g) * 4096, pd);
    }
  }

  stub(name: StubName): Stub {
    return this.stubs.get(name)!;
  }

  get stackTop(): bigint {
    return this.gpa + BigInt(AGENT.stackTop);
  }
  get bufferGpa(): bigint {
    return this.gpa + BigInt(AGENT.buffer);
  }
  /** The bytes of the data buffer (aliases the mapping). */
  buffer(length: number): Buffer {
    return this.memory.view(AGENT.buffer, length);
  }
  setCallTarget(gpa: bigint): void {
    this.memory.writeU64(AGENT.callTarget, gpa);
  }

  /** The vector of an exception reported by a handler's `out 0x4e` (either RIP convention). */
  exceptionVector(rip: bigint): number | undefined {
    const off = rip - this.gpa - BigInt(AGENT.handlers);
    if (off < 0n || off >= BigInt(AGENT.vectors * AGENT.handlerSize)) return undefined;
    return Number(off / BigInt(AGENT.handlerSize));
  }

  /** Maps the region into a VM: code and tables read-only, stack and buffer read/write. */
  mapInto(vm: KvmVm): void {
    vm.map({ gpa: this.gpa, size: AGENT.roEnd, memory: this.memory, offset: 0, readonly: true });
    vm.map({ gpa: this.gpa + BigInt(AGENT.roEnd), size: AGENT.rwEnd - AGENT.roEnd, memory: this.memory, offset: AGENT.roEnd });
    vm.map({ gpa: this.gpa + BigInt(AGENT.pageTables), size: this.size - AGENT.pageTables, memory: this.memory, offset: AGENT.pageTables, readonly: true });
  }

  /** Special registers of the agent environment: flat 64-bit, agent GDT/IDT/page tables; CPL0, or CPL3 for user stubs. */
  sregs(current: KvmSregs, user = false): KvmSregs {
    const s = longModeSregs(current, this.cr3, this.gpa + BigInt(AGENT.gdt), {
      idt: { base: this.gpa + BigInt(AGENT.idt), limit: AGENT.vectors * 16 - 1 },
      nxe: true,
    });
    s.gdt = { base: s.gdt.base, limit: AGENT.gdtLimit };
    if (user) {
      s.cs = { ...s.cs, selector: USER_CS, dpl: 3 };
      s.ss = { ...s.ss, selector: USER_SS, dpl: 3 };
    }
    return s;
  }

  close(): void {
    this.memory.close();
  }
}
