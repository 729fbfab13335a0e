// KVM exit-level figures, in process (no gRPC): raw exit loops through the KVM agent's own koffi
// binding (the floors), next to the same kinds of exits handled by the agent for real guest code
// (KvmBackend.runVp: a whole guest from its own state), measured in the same run, rotated per
// repeat. Every sample times a batch of operations (≈20 ms) and is divided by the batch size.
import { pb } from '@vsm/client';
import type { BenchContext, FigureSpec, Suite } from '../api';
import { GuestLoops, loadKvmAgent } from '../lib/kvm-guest';
import { kvmAvailability, loadKvmLayer, openRawLoop, type RawLoop, type RawLoopKind } from '../lib/kvm-raw';
import { calibrateBatch, opsPerSec, perOpUs } from '../lib/kvm-stats';

/**
 * Target duration of one sample (one batch), µs. Long enough that runVp's own entry and exit (a full
 * load after other work, the held-back MSRs fetched at the end: tens of µs) weigh well under 1% of an
 * agent sample: a real guest runs on instead of stopping after n exits.
 */
const SAMPLE_US = 20_000;

const RAW: { kind: RawLoopKind; what: string; rate: boolean }[] = [
  { kind: 'pio', what: 'port-I/O exit round trip: guest `out 0x10, al; jmp`', rate: true },
  { kind: 'wrmsr', what: 'WRMSR exit round trip: guest `wrmsr` of HV_X64_MSR_GUEST_OS_ID (MSR filter, user-space MSR exit); `jmp`', rate: true },
  { kind: 'mmio', what: 'MMIO exit round trip: guest `mov [rdi], eax` to a GPA without a memslot; `jmp`', rate: true },
  { kind: 'mmio_ro', what: 'MMIO exit round trip on a read-only memslot (the path enforced protections take)', rate: false },
  { kind: 'pio_call_ret', what: "the agent hypercall loop's guest code without the agent: `call` into `out 0x4d, ax; ret`, `jmp`", rate: false },
];
const RAW_HOW = "one-vCPU VM through the agent's koffi binding, host only re-enters KVM_RUN; µs per exit, mean of a ≈20 ms batch per sample";
const AGENT_HOW =
  'whole guest on KvmBackend.runVp in process; µs per operation, mean of a ≈20 ms batch (one runVp of that many exits: its entry/exit amortised) per sample';

const figures: FigureSpec[] = [
  ...RAW.map((r): FigureSpec => ({ id: `kvm.raw.${r.kind}`, kind: 'latency', unit: 'us', description: `${r.what}; ${RAW_HOW}` })),
  ...RAW.filter((r) => r.rate).map(
    (r): FigureSpec => ({
      id: `kvm.raw.${r.kind}.rate`,
      kind: 'rate',
      unit: 'exits/s',
      description: `exits per second of the kvm.raw.${r.kind} batches (total exits / total time per repeat)`,
    }),
  ),
  {
    id: 'kvm.agent.wrmsr',
    kind: 'latency',
    unit: 'us',
    description: `synthetic MSR write by guest code: \`wrmsr\` of HV_X64_MSR_GUEST_OS_ID; \`jmp\` → MSR exit, the core applies it, completion, resume; ${AGENT_HOW}`,
  },
  {
    id: 'kvm.agent.hypercall',
    kind: 'latency',
    unit: 'us',
    description: `hypercall by guest code through the VTL0 hypercall page: \`call\` into \`out 0x4d, ax; ret\` with HvCallGetVpRegisters(HvRegisterVsmVpStatus), memory-based; port exit → core dispatcher → resume; ${AGENT_HOW}`,
  },
  {
    id: 'kvm.agent.vtl_roundtrip',
    kind: 'latency',
    unit: 'us',
    description: `VtlCall by VTL0 code + fast VtlReturn by VTL1 code through their hypercall pages: 2 port exits, 2 VTL switches (shared state moved between the VTLs' vCPUs, private state stays in each); ${AGENT_HOW}; absolute µs comparable with published VM-introspection event round trips (15–81 µs on bare metal; this host is nested)`,
  },
  {
    id: 'kvm.action.writemsr',
    kind: 'latency',
    unit: 'us',
    description:
      'WriteMsr(HV_X64_MSR_GUEST_OS_ID) guest action through KvmBackend in process (vsm.v1 messages, `wrmsr; hlt` stub: MSR exit + HLT exit), no gRPC; µs per action, mean of a ≈20 ms batch per sample',
  },
];

async function run(ctx: BenchContext): Promise<void> {
  const k = loadKvmLayer();
  const { KvmBackend } = loadKvmAgent();
  const samples = ctx.pick(30, 100);
  const warmup = ctx.pick(3, 10);
  const system = k.KvmSystem.open();
  const loops: RawLoop[] = [];
  const backend = new KvmBackend();
  try {
    for (const r of RAW) loops.push(openRawLoop(k, system, r.kind));
    const guest = await GuestLoops.create(backend);

    type Step = { id: string; rateId?: string; prepare(): Promise<(n: number) => unknown>; after?(): void };
    const steps: Step[] = [
      ...loops.map(
        (l): Step => ({
          id: `kvm.raw.${l.kind}`,
          rateId: RAW.find((r) => r.kind === l.kind)!.rate ? `kvm.raw.${l.kind}.rate` : undefined,
          prepare: async () => (n) => l.exits(n),
        }),
      ),
      { id: 'kvm.agent.wrmsr', prepare: () => guest.prepare('wrmsr'), after: () => guest.check('wrmsr') },
      { id: 'kvm.agent.hypercall', prepare: () => guest.prepare('hypercall'), after: () => guest.check('hypercall') },
      { id: 'kvm.agent.vtl_roundtrip', prepare: () => guest.prepare('vtl'), after: () => guest.check('vtl') },
      {
        id: 'kvm.action.writemsr',
        prepare: async () => {
          const req = pb.WriteMsrRequest.fromPartial({ name: guest.vpName, msr: 0x4000_0000, value: 0x8100_0000_0000_0001n });
          return async (n) => {
            for (let i = 0; i < n; i++) {
              const o = (await backend.writeMsr(req)).outcome;
              if (o?.exception) throw new Error(`WriteMsr action raised exception ${o.exception}`);
            }
          };
        },
      },
    ];

    const batches = new Map<string, number>();
    for (let rep = 0; rep < ctx.repeats; rep++) {
      const t0 = performance.now();
      for (let i = 0; i < steps.length; i++) {
        const s = steps[(i + rep) % steps.length]!;
        const op = await s.prepare();
        let batch = batches.get(s.id);
        if (batch === undefined) {
          batch = await calibrateBatch(op, { targetUs: SAMPLE_US, probeUs: 5000, max: 10_000 });
          batches.set(s.id, batch);
          ctx.log(`${s.id}: ${batch} operations per sample`);
        }
        const n = batch;
        const raw = await ctx.sampleLatency(async () => op(n), { warmup, samples });
        ctx.recordLatency(s.id, perOpUs(raw, n));
        if (s.rateId) ctx.recordRate(s.rateId, opsPerSec(raw, n));
        s.after?.();
      }
      ctx.log(`repeat ${rep + 1}/${ctx.repeats} done (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    }
  } finally {
    for (const l of loops) l.close();
    await backend.close();
    system.close();
  }
}

export const suite: Suite = {
  name: 'kvm',
  description: "KVM exits: raw exit loops through the agent's binding vs the same exits handled by the agent for real guest code (in process, no gRPC)",
  figures,
  ratios: [
    {
      figure: 'kvm.agent.wrmsr.p50',
      baseline: 'kvm.raw.wrmsr.p50',
      target: { op: '<=', value: 1.5 },
      description: 'synthetic MSR write handled by the agent vs raw WRMSR exit',
    },
    {
      figure: 'kvm.agent.hypercall.p50',
      baseline: 'kvm.raw.pio_call_ret.p50',
      target: { op: '<=', value: 1.3 },
      description: 'hypercall through the hypercall page vs the same call/out/ret guest code without the agent (issue #13)',
    },
    {
      figure: 'kvm.agent.vtl_roundtrip.p50',
      baseline: 'kvm.raw.pio.p50',
      target: { op: '<=', value: 5 },
      description: 'VtlCall + VtlReturn vs raw exit round trip (issue #13)',
    },
  ],
  budget: { quickSec: 60, fullSec: 240 },
  available: kvmAvailability,
  run,
};
