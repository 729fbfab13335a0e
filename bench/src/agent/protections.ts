/**
 * What VTL protections cost on KVM (part of bench/dist/agent/actions.js; also
 * `node bench/dist/agent/protections.js [--iterations N]`):
 * - a protection change: ModifyVtlProtectionMask in the core + the lower VTL's view re-synced
 *   (memslot ioctls), for one page and for a 1 GiB range;
 * - a refused guest action: WriteMemory on a write-protected page → MMIO exit → the core's intercept
 *   → message in VTL1's SIMP → VP in VTL1 (KvmPartition.memoryAccess);
 * - a whole-guest intercept round trip: VTL0 stores to a write-protected page in a loop; each store
 *   exits (MMIO), the agent posts HV_X64_MEMORY_INTERCEPT_MESSAGE and enters VTL1, whose handler
 *   (real guest code at CPL0) reads the message, skips the store through HvCallSetVpRegisters,
 *   clears the slot, EOM, VtlReturn — and the agent's part of it (MMIO exit → VTL1 vCPU ready).
 */
import * as core from '@vsm/core';
import { pb } from '@vsm/client';
import { getReg, kvm, setReg } from '@vsm/platform-kvm';
import { KvmBackend } from '@vsm/vsm-v1';

const { Asm, buildGdt, buildIdentityPageTables, GDT_LIMIT } = kvm;
type Asm = kvm.Asm;

export interface ProtectionTiming {
  calls: number;
  medianUs: number;
  p99Us: number;
  /** Memslot ioctls per call (protection changes). */
  ioctlsPerCall?: number;
  /** KVM exits per call. */
  exitsPerCall?: number;
}

const full = <T>(type: { fromPartial(o: unknown): T }, o: unknown): T => type.fromPartial(o);

function summarize(samples: number[]): ProtectionTiming {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? 0;
  const r = (x: number) => Math.round(x / 10) / 100;
  return { calls: s.length, medianUs: r(at(0.5)), p99Us: r(at(0.99)) };
}

function timeSync(iterations: number, f: (i: number) => void, reset?: (i: number) => void): ProtectionTiming {
  const samples: number[] = [];
  for (let i = 0; i < iterations + 50; i++) {
    const a = process.hrtime.bigint();
    f(i);
    const d = Number(process.hrtime.bigint() - a);
    if (i >= 50) samples.push(d);
    reset?.(i);
  }
  return summarize(samples);
}

const SIMP = 0x9000n;
const PROTECTED = 0x40_0000n;

export async function measureProtections(opts: { iterations?: number } = {}): Promise<Record<string, ProtectionTiming>> {
  const n = opts.iterations ?? 2000;
  const kvm = new KvmBackend({ actionTimeoutMs: 60_000 });
  const out: Record<string, ProtectionTiming> = {};
  try {
    const name = 'partitions/bench-prot';
    const vpName = `${name}/vps/0`;
    await kvm.createPartition(full(pb.CreatePartitionRequest, { partitionId: 'bench-prot', partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 } }));
    const kp = kvm.platformOf(name);
    const p = kp.partition;
    const vp = p.vp(0);
    const R = core.HvRegisterName;

    // ---- whole guest first (it sets VSM up itself) ----
    const pt = buildIdentityPageTables(0x20_0000n, 1);
    const flat = { base: 0n, limit: 0xffffffff };
    const ctx: core.HvInitialVpContext = {
      rip: 0x11_0000n,
      rsp: 0x9_0000n,
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
      gdtr: { base: 0x3000n, limit: GDT_LIMIT },
    };
    const setReg1 = (regName: number, value: bigint, targetVtl?: number) => {
      const b = Buffer.alloc(48);
      b.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
      b.writeUInt32LE(0xffff_fffe, 8);
      b[12] = targetVtl === undefined ? 0 : 0x10 | targetVtl;
      b.writeUInt32LE(regName, 16);
      b.writeBigUInt64LE(value, 32);
      return b;
    };
    const protect = Buffer.alloc(24);
    protect.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
    protect.writeUInt32LE(0x5, 8);
    protect.writeBigUInt64LE(PROTECTED >> 12n, 16);
    for (const [gpa, bytes] of [
      [0x20_0000n, pt.bytes],
      [0x3000n, buildGdt(0x3000n)],
      [0x1_1000n, core.encodeEnableVpVtlInput({ targetPartitionId: 0xffff_ffff_ffff_ffffn, vpIndex: 0xffff_fffe, targetVtl: 1, rsvdZ: 0, vpVtlContext: ctx })],
      [0x1_2000n, setReg1(R.HvRegisterVsmPartitionConfig, 1n | (0xfn << 1n))],
      [0x1_3000n, protect],
      [0x1_4000n, setReg1(R.HvX64RegisterRip, 0n, 0)],
    ] as [bigint, Buffer][])
      p.memory.write(gpa, bytes);
    const wrmsr = (a: Asm, msr: number, v: bigint) =>
      a
        .movR32Imm32('rcx', msr)
        .movR32Imm32('rax', Number(v & 0xffff_ffffn))
        .movR32Imm32('rdx', Number(v >> 32n))
        .wrmsr();
    const hc = (a: Asm, page: bigint, control: bigint, rdx: bigint, r8 = 0n) =>
      a.movR64Imm64('rcx', control).movR64Imm64('rdx', rdx).movR64Imm64('r8', r8).movR64Imm64('rax', page).callReg('rax');
    const vtl0 = new Asm();
    wrmsr(vtl0, 0x4000_0000, 1n);
    wrmsr(vtl0, 0x4000_0001, 0x2001n);
    hc(vtl0, 0x2000n, 0x0dn | (1n << 16n), 0xffff_ffff_ffff_ffffn, 1n);
    hc(vtl0, 0x2000n, 0x0fn, 0x1_1000n);
    vtl0.zero('rcx').movR64Imm64('rax', 0x200fn).callReg('rax');
    vtl0
      .movR64Imm64('rdi', PROTECTED)
      .movR32Imm32('r9', n + 50)
      .label('loop')
      .store('rdi', 'rax', 8)
      .decR32('r9')
      .jnz('loop')
      .hlt();
    const vtl1 = new Asm();
    wrmsr(vtl1, 0x4000_0000, 2n);
    wrmsr(vtl1, 0x4000_0001, 0x4001n);
    wrmsr(vtl1, 0x4000_0083, SIMP | 1n);
    wrmsr(vtl1, 0x4000_0080, 1n);
    wrmsr(vtl1, 0x4000_0090, 0x30n);
    hc(vtl1, 0x4000n, 0x51n | (1n << 32n), 0x1_2000n);
    hc(vtl1, 0x4000n, 0x0cn | (1n << 32n), 0x1_3000n);
    vtl1
      .label('ret')
      .movR32Imm32('rcx', 1)
      .movR64Imm64('rax', 0x4026n)
      .callReg('rax')
      .push('rdi') // entered on an intercept: VTL0 relies on RDI and R9
      .movR64Imm64('rsi', SIMP + 40n)
      .load('rax', 'rsi', 8)
      .movR64Imm64('rsi', SIMP + 20n)
      .load('rbx', 'rsi', 1)
      .addRR('rax', 'rbx')
      .movR64Imm64('rdi', 0x1_4000n + 32n)
      .store('rdi', 'rax', 8);
    hc(vtl1, 0x4000n, 0x51n | (1n << 32n), 0x1_4000n);
    vtl1.movR64Imm64('rdi', SIMP).zero('rax').store('rdi', 'rax', 8);
    wrmsr(vtl1, 0x4000_0084, 0n);
    vtl1.pop('rdi').jmp('ret');
    p.memory.write(0x10_0000n, vtl0.bytes());
    p.memory.write(0x11_0000n, vtl1.bytes());
    p.setRegisters(
      vp,
      0,
      [
        { name: R.HvX64RegisterCr3, value: core.reg64(pt.cr3) },
        { name: R.HvX64RegisterGdtr, value: core.tableToReg128({ base: 0x3000n, limit: GDT_LIMIT }) },
        { name: R.HvX64RegisterRip, value: core.reg64(0x10_0000n) },
        { name: R.HvX64RegisterRsp, value: core.reg64(0x8_0000n) },
      ],
      'host',
    );
    const e0 = kp.exits;
    const t0 = process.hrtime.bigint();
    const run = kvm.runVp(vpName, { timeoutMs: 600_000, maxExits: 100_000_000 });
    const wallNs = Number(process.hrtime.bigint() - t0);
    if (run.stop !== 'hlt' || run.intercepts.length !== n + 50)
      throw new Error(`whole-guest bench: ${JSON.stringify({ stop: run.stop, intercepts: run.intercepts.length })}`);
    out['whole guest: store → intercept → VTL1 handler skips it → VtlReturn (mean per store, wall clock)'] = {
      calls: n + 50,
      medianUs: Math.round(wallNs / (n + 50) / 10) / 100,
      p99Us: NaN,
      exitsPerCall: Math.round(((kp.exits - e0) / (n + 50)) * 100) / 100,
    };
    out['whole guest: agent part, MMIO exit → message posted → VTL1 vCPU loaded'] = summarize(kp.interceptEntryNs.slice(50));

    // ---- protection changes (host-side ModifyVtlProtectionMask + VTL0 view sync) ----
    const vm0 = () => kp.vmOf(0)!;
    const change = (label: string, start: number, count: number) => {
      const i0 = vm0().vm.memslotChanges;
      const t = timeSync(n, (i) => {
        p.modifyVtlProtectionMask('host', 1, i % 2 === 0 ? 0x1 : 0xf, [{ start: BigInt(start), count: BigInt(count) }]);
        if (!kp.enforcesProtections(vp)) throw new Error('not enforced');
      });
      out[label] = { ...t, ioctlsPerCall: Math.round(((vm0().vm.memslotChanges - i0) / (n + 50)) * 100) / 100 };
    };
    vp.activeVtl === 0 ||
      (() => {
        throw new Error('VP0 should be in VTL0');
      })();
    change('protection change: 1 page RO ↔ RW, VTL0 view re-synced', 0x300, 1);
    change('protection change: 1 GiB range (262,144 pages) RO ↔ RW, VTL0 view re-synced', 0, 262_144);

    // ---- a refused WriteMemory action: MMIO exit → intercept → VTL1 ----
    p.modifyVtlProtectionMask('host', 1, 0x5, [{ start: PROTECTED >> 12n, count: 1n }]);
    const e1 = kp.exits;
    const t = timeSync(
      n,
      () => {
        const o = kp.memoryAccess(vp, 'write', PROTECTED + 8n, 8, Buffer.alloc(8, 0xab));
        if (o.status !== 'intercepted' || !o.vtlSwitch) throw new Error(`expected an intercept into VTL1, got ${o.status}`);
      },
      () => {
        // Not timed: VTL1 skips it (RIP moves) and returns; the slot is freed.
        p.writeView(1, 0, SIMP, Buffer.alloc(8));
        setReg(vp, 0, R.HvX64RegisterRip, getReg(vp, 0, R.HvX64RegisterRip) + 3n);
        const r = core.vtlReturn(p, vp, 1n, 0n);
        if (r.resumedAccess?.outcome.status !== 'skipped') throw new Error('expected the access skipped');
      },
    );
    out['WriteMemory refused: MMIO exit → intercept → message → VP in VTL1 (platform)'] = {
      ...t,
      exitsPerCall: Math.round(((kp.exits - e1) / (n + 50)) * 100) / 100,
    };
  } finally {
    await kvm.close();
  }
  return out;
}

if (require.main === module) {
  const i = process.argv.indexOf('--iterations');
  const iterations = i >= 0 ? Number(process.argv[i + 1]) : undefined;
  measureProtections({ iterations }).then(
    (r) => process.stdout.write(JSON.stringify(r, null, 2) + '\n'),
    (e) => {
      process.stderr.write(`bench failed: ${e instanceof Error ? e.stack : String(e)}\n`);
      process.exit(1);
    },
  );
}
