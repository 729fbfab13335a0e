/**
 * Guest-action round trips of the KVM agent, next to the raw exit baseline of this host:
 *
 *   node bench/dist/agent/actions.js [--iterations N]
 *
 * prints JSON. Each row times one call `iterations` times (after a warm-up):
 * - raw: rawbench.ts's WRMSR / port-I/O exit loops (one KVM_RUN per exit, no core);
 * - platform: KvmPartition actions called directly (stub set-up, exits, core, store back);
 * - backend: KvmBackend / CoreBackend methods with vsm.v1 messages (no gRPC);
 * - grpc: the generated client over loopback TCP against a server on each backend;
 * - protections: protection changes, refused accesses and whole-guest intercept round trips
 *   (protections.ts, iterations / 10).
 */
import pino from 'pino';
import { connect } from '@vsm/client';
import { pb } from '@vsm/client';
import { type Backend, CoreBackend, startServer } from '@vsm/vsm-v1';
import { KvmBackend } from '@vsm/vsm-v1';
import { measureRawExits } from './rawbench';
import { type ProtectionTiming, measureProtections } from './protections';

export interface CallTiming {
  calls: number;
  callsPerSec: number;
  medianUs: number;
  p99Us: number;
  /** KVM exits per call (platform rows). */
  exitsPerCall?: number;
}

export interface AgentBench {
  iterations: number;
  raw: { wrmsrExit: CallTiming; pioExit: CallTiming };
  platform: Record<string, CallTiming>;
  backend: Record<string, CallTiming>;
  grpc: Record<string, CallTiming>;
  /** VTL protections on KVM (protections.ts). */
  protections: Record<string, ProtectionTiming>;
}

function summarize(samples: number[], totalNs: number): CallTiming {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? 0;
  const r = (x: number) => Math.round(x / 10) / 100;
  return { calls: s.length, callsPerSec: Math.round(s.length / (totalNs / 1e9)), medianUs: r(at(0.5)), p99Us: r(at(0.99)) };
}

async function time(iterations: number, f: (i: number) => unknown): Promise<CallTiming> {
  for (let i = 0; i < Math.min(200, iterations); i++) await f(i);
  const samples: number[] = [];
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) {
    const a = process.hrtime.bigint();
    await f(i);
    samples.push(Number(process.hrtime.bigint() - a));
  }
  return summarize(samples, Number(process.hrtime.bigint() - t0));
}

const GOS = 0x4000_0000;
const full = <T>(type: { fromPartial(o: unknown): T }, o: unknown): T => type.fromPartial(o);

export async function measureAgentActions(opts: { iterations?: number } = {}): Promise<AgentBench> {
  const n = opts.iterations ?? 20_000;
  const rawAll = measureRawExits({ iterations: n, warmup: 1000 });
  const raw = {
    wrmsrExit: { calls: rawAll.wrmsr.exits, callsPerSec: rawAll.wrmsr.exitsPerSec, medianUs: rawAll.wrmsr.medianUs, p99Us: rawAll.wrmsr.p99Us },
    pioExit: { calls: rawAll.pio.exits, callsPerSec: rawAll.pio.exitsPerSec, medianUs: rawAll.pio.medianUs, p99Us: rawAll.pio.p99Us },
  };

  const kvm = new KvmBackend();
  const emu = new CoreBackend();
  const out: AgentBench = { iterations: n, raw, platform: {}, backend: {}, grpc: {}, protections: {} };
  try {
    const setup = async (b: Backend) => {
      await b.createPartition(full(pb.CreatePartitionRequest, { partitionId: 'bench', partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 } }));
      await b.enablePartitionVtl(full(pb.EnablePartitionVtlRequest, { name: 'partitions/bench', targetVtl: 1 }));
      await b.enableVpVtl(full(pb.EnableVpVtlRequest, { name: 'partitions/bench/vps/0', targetVtl: 1 }));
      for (const vtl of [0, 1]) {
        if (vtl === 1) await b.callHypercallPage(full(pb.CallHypercallPageRequest, { name: 'partitions/bench/vps/0', offset: 0x0f, rcx: 0n }));
        await b.writeMsr(full(pb.WriteMsrRequest, { name: 'partitions/bench/vps/0', msr: GOS, value: 1n }));
        await b.writeMsr(full(pb.WriteMsrRequest, { name: 'partitions/bench/vps/0', msr: 0x4000_0001, value: vtl ? 0x2001n : 0x1001n }));
      }
      await b.callHypercallPage(full(pb.CallHypercallPageRequest, { name: 'partitions/bench/vps/0', offset: 0x26, rcx: 1n }));
      // HvCallGetVpRegisters input (HvRegisterVsmVpStatus of self) at 0x10000.
      const input = Buffer.alloc(24);
      input.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
      input.writeUInt32LE(0xffff_fffe, 8);
      input.writeUInt32LE(0x000d_0003, 16);
      await b.writeGpa(full(pb.WriteGpaRequest, { name: 'partitions/bench', gpa: 0x10000n, data: input }));
    };
    await setup(kvm);
    await setup(emu);

    // Platform: the actions themselves.
    const kp = kvm.platformOf('partitions/bench');
    const { vp } = kvm.vp('partitions/bench/vps/0');
    const R = (await import('@vsm/core')).HvRegisterName;
    const plat = async (name: string, f: (i: number) => unknown) => {
      const e0 = kp.exits;
      const t = await time(n, f);
      out.platform[name] = { ...t, exitsPerCall: Math.round(((kp.exits - e0) / (t.calls + Math.min(200, n))) * 100) / 100 };
    };
    await plat('WRMSR GUEST_OS_ID', (i) => kp.writeMsr(vp, GOS, BigInt(i + 1)));
    await plat('RDMSR GUEST_OS_ID', () => kp.readMsr(vp, GOS));
    await plat('ReadMemory 8 bytes', () => kp.guestRead(vp, 0x10000n, 8));
    await plat('ReadMemory 4096 bytes', () => kp.guestRead(vp, 0x10000n, 4096));
    await plat('WriteMemory 8 bytes', () => kp.guestWrite(vp, 0x20000n, Buffer.alloc(8, 1)));
    await plat('CallHypercallPage HvCallGetVpRegisters', () => {
      vp.shared.set(R.HvX64RegisterRcx, { low: 0x50n | (1n << 32n), high: 0n });
      vp.shared.set(R.HvX64RegisterRdx, { low: 0x10000n, high: 0n });
      vp.shared.set(R.HvX64RegisterR8, { low: 0x11000n, high: 0n });
      return kp.callHypercallPage(vp, 0);
    });
    await plat('VtlCall + VtlReturn (two CallHypercallPage)', () => {
      vp.shared.set(R.HvX64RegisterRcx, { low: 0n, high: 0n });
      kp.callHypercallPage(vp, 0x0f);
      vp.shared.set(R.HvX64RegisterRcx, { low: 1n, high: 0n });
      return kp.callHypercallPage(vp, 0x26);
    });

    // Backends, vsm.v1 messages in and out, no gRPC.
    const wr = full(pb.WriteMsrRequest, { name: 'partitions/bench/vps/0', msr: GOS, value: 7n });
    const rd = full(pb.ReadMsrRequest, { name: 'partitions/bench/vps/0', msr: GOS });
    out.backend['kvm WriteMsr'] = await time(n, () => kvm.writeMsr(wr));
    out.backend['emulator WriteMsr'] = await time(n, () => emu.writeMsr(wr));
    out.backend['kvm ReadMsr'] = await time(n, () => kvm.readMsr(rd));
    out.backend['emulator ReadMsr'] = await time(n, () => emu.readMsr(rd));

    // gRPC over loopback.
    for (const [label, b] of [
      ['kvm', kvm],
      ['emulator', emu],
    ] as const) {
      const srv = await startServer({ listen: '127.0.0.1:0', backend: b, logger: pino({ level: 'silent' }), shutdownGraceMs: 200 });
      const client = connect(srv.address);
      try {
        const m = Math.max(1, Math.floor(n / 4));
        out.grpc[`${label} WriteMsr`] = await time(m, (i) => client.guest.writeMsr({ name: 'partitions/bench/vps/0', msr: GOS, value: BigInt(i + 1) }));
        out.grpc[`${label} ReadMsr`] = await time(m, () => client.guest.readMsr({ name: 'partitions/bench/vps/0', msr: GOS }));
      } finally {
        client.close();
        // The server's shutdown closes its backend; both are closed below anyway.
        await new Promise<void>((r) => srv.server.tryShutdown(() => r()));
      }
    }
  } finally {
    await kvm.close();
    await emu.close();
  }
  out.protections = await measureProtections({ iterations: Math.max(100, Math.floor(n / 10)) });
  return out;
}

if (require.main === module) {
  const i = process.argv.indexOf('--iterations');
  const iterations = i >= 0 ? Number(process.argv[i + 1]) : undefined;
  measureAgentActions({ iterations }).then(
    (r) => process.stdout.write(JSON.stringify(r, null, 2) + '\n'),
    (e) => {
      process.stderr.write(`bench failed: ${e instanceof Error ? e.stack : String(e)}\n`);
      process.exit(1);
    },
  );
}
