// Security property: VTL0 cannot cross the trust boundary. Random sequences of lower-VTL guest
// actions - reads, writes, instruction fetches, WRMSRs, and hypercalls with random inputs including
// HvCallModifyVtlProtectionMask and HvCallSetVpRegisters aimed at VTL1 - never read the memory VTL1
// protected (no access), and never change it, VTL1's overlays, VTL1's registers or VTL1's
// protections. VTL1's own reactions (handling an intercept, returning from a VtlCall) are played
// by the harness the way a VTL1 kernel would; after each step the host API checks VTL1's state
// against the baseline.
import pino from 'pino';
import fc from 'fast-check';
import * as core from '@vsm/core';
import { connect, pb, type VsmClient } from '@vsm/client';
import { CoreBackend, type RunningServer, startServer } from '@vsm/vsm-v1';
import { MSR, VTL1_LAYOUT as L, setupVtl1Partition, r64 } from './support';

jest.setTimeout(10 * 60_000);
const RUNS = Number(process.env.TRUST_RUNS ?? 40);
const SECRET = Buffer.from('VTL1-SECRET:7f3a9c1e5b2d8046aa55');
const SCRATCH_IN = 0x20000n; // unprotected pages VTL0 may use for hypercall input/output
const SCRATCH_OUT = 0x22000n;
const R = pb.HvRegisterName;

let srv: RunningServer;
let c: VsmClient;
let run = 0;
/** What the runs exercised (asserted at the end, so that a vacuous pass fails). */
const seen = { intercepts: 0, vtl1Entries: 0, hypercallStatuses: new Map<number, number>() };
beforeAll(async () => {
  srv = await startServer({ listen: '127.0.0.1:0', backend: new CoreBackend(), logger: pino({ level: 'silent' }), shutdownGraceMs: 200 });
  c = connect(srv.address, { retries: 0, deadlineMs: 10_000 });
});
afterAll(async () => {
  c.close();
  await srv.shutdown('test');
});

// ---- VTL1 state as the host sees it ---------------------------------------------------------

/** VTL1 registers compared: every private and VSM register except the live VP status. */
const VTL1_REGS = core.Partition.modeledRegisters()
  .filter((r) => r.scope !== 'shared' && r.name !== core.HvRegisterName.HvRegisterVsmVpStatus && r.name !== core.HvRegisterName.HvRegisterTimeRefCount)
  .map((r) => r.name as pb.HvRegisterName);

async function vtl1State(name: string, vps: string[]) {
  const prot = await c.intercepts.getVtlProtections({ name, protectingVtl: 1 });
  const overlays = (await c.memory.listOverlays({ name, vtl: 1 })).overlays;
  const regs: Record<string, string> = {};
  for (const vp of vps) {
    const r = await c.vps.getVpRegisters({ name: vp, vtl: 1, names: VTL1_REGS });
    for (const a of r.registers)
      regs[`${vp}:${pb.HvRegisterName[a.name] ?? a.name}`] = JSON.stringify(a.value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString(16) : v));
    const st = (await c.vps.getVirtualProcessor({ name: vp })).vtlStatus!;
    regs[`${vp}:enabledVtlSet`] = String(st.enabledVtlSet);
  }
  return {
    secretPage: Buffer.from((await c.memory.readGpa({ name, gpa: L.secretGpa, length: 4096 })).data).toString('hex'),
    vtl1HypercallPage: Buffer.from((await c.memory.readGpa({ name, gpa: L.vtl1HypercallGpa, length: 4096, vtlView: 1 })).data).toString('hex'),
    protections: {
      enabled: prot.protectionEnabled,
      defaultMask: prot.defaultMapFlags,
      ranges: prot.ranges.map((x) => `${x.pages?.startPage}+${x.pages?.pageCount}:${x.mapFlags}`),
    },
    overlays: overlays.map((o) => `${pb.OverlayKind[o.kind]}/${o.vpIndex ?? '-'}@${o.gpa.toString(16)}#${o.stackPosition}${o.readOnly ? 'ro' : ''}`).sort(),
    regs,
  };
}

/** True when `data` contains any 8-byte window of the secret. */
function leaks(data: Uint8Array | undefined): boolean {
  if (!data || data.length < 8) return false;
  const hay = Buffer.from(data);
  for (let i = 0; i + 8 <= SECRET.length; i++) if (hay.includes(SECRET.subarray(i, i + 8))) return true;
  return false;
}

// ---- VTL0 actions -----------------------------------------------------------------------------

const gpaArb = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: -64, max: 4096 + 64 }).map((d) => L.secretGpa + BigInt(d)) },
  { weight: 2, arbitrary: fc.constantFrom(L.vtl1HypercallGpa, L.vtl1SimpGpa, L.vtl1SiefpGpa, L.vtl1AssistGpa, L.vtl1SimpGpa + 0x10000n, L.vtl0HypercallGpa) },
  { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: (1n << 30n) - 4096n }) },
);
const secretPage = L.secretGpa >> 12n;
const pagesArb = fc.array(
  fc.oneof(
    fc.constant(secretPage),
    fc.constantFrom(L.vtl1HypercallGpa >> 12n, L.vtl1SimpGpa >> 12n, L.vtl1AssistGpa >> 12n),
    fc.bigInt({ min: 0n, max: 0x3ffffn }),
  ),
  { minLength: 1, maxLength: 4 },
);
/** Target-VTL bytes: plain values, UseTargetVtl (bit 4) with VTL1/2, junk. */
const targetVtlArb = fc.oneof(fc.constantFrom(0, 1, 2, 0x10, 0x11, 0x12, 0x1f), fc.integer({ min: 0, max: 0xff }));
const partitionIdArb = fc.constantFrom(0xffff_ffff_ffff_ffffn, 0n, 1n);

/** HvCallModifyVtlProtectionMask (0x000C) from VTL0. */
const modifyMaskArb = fc.record({ pid: partitionIdArb, flags: fc.integer({ min: 0, max: 0x1f }), target: targetVtlArb, pages: pagesArb }).map((m) => {
  const input = Buffer.alloc(16 + m.pages.length * 8);
  input.writeBigUInt64LE(m.pid, 0);
  input.writeUInt32LE(m.flags, 8);
  input[12] = m.target;
  m.pages.forEach((p, i) => {
    input.writeBigUInt64LE(p, 16 + i * 8);
  });
  return {
    k: 'hypercall' as const,
    control: 0x0cn | (BigInt(m.pages.length) << 32n),
    input,
    label: `ModifyVtlProtectionMask flags=${m.flags} target=0x${m.target.toString(16)}`,
  };
});

/** HvCallSetVpRegisters (0x0051) from VTL0 aimed at VTL1's registers. */
const sensitiveRegs = [
  R.HV_REGISTER_NAME_X64_RIP,
  R.HV_REGISTER_NAME_X64_RSP,
  R.HV_REGISTER_NAME_X64_CR3,
  R.HV_REGISTER_NAME_X64_HYPERCALL,
  R.HV_REGISTER_NAME_SIPP,
  R.HV_REGISTER_NAME_SIFP,
  R.HV_REGISTER_NAME_VP_ASSIST_PAGE,
  R.HV_REGISTER_NAME_SCONTROL,
  R.HV_REGISTER_NAME_SINT0,
  R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG,
  R.HV_REGISTER_NAME_VSM_VINA,
  R.HV_REGISTER_NAME_VSM_VP_SECURE_CONFIG_VTL0,
  R.HV_REGISTER_NAME_GUEST_OS_ID,
  R.HV_REGISTER_NAME_REFERENCE_TSC,
  R.HV_REGISTER_NAME_X64_EFER,
  R.HV_REGISTER_NAME_X64_LSTAR,
];
const setRegsArb = fc
  .record({
    pid: partitionIdArb,
    vpIndex: fc.constantFrom(0xfffffffe, 0, 1, 7),
    target: targetVtlArb,
    regs: fc.array(
      fc.record({
        name: fc.oneof(fc.constantFrom(...sensitiveRegs), fc.nat({ max: 0xffffff })),
        value: fc.oneof(
          gpaArb.map((g) => g | 1n),
          fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        ),
      }),
      { minLength: 1, maxLength: 3 },
    ),
  })
  .map((m) => {
    const input = Buffer.alloc(16 + m.regs.length * 32);
    input.writeBigUInt64LE(m.pid, 0);
    input.writeUInt32LE(m.vpIndex, 8);
    input[12] = m.target;
    m.regs.forEach((r, i) => {
      input.writeUInt32LE(r.name, 16 + i * 32);
      input.writeBigUInt64LE(r.value, 16 + i * 32 + 16);
    });
    return {
      k: 'hypercall' as const,
      control: 0x51n | (BigInt(m.regs.length) << 32n),
      input,
      label: `SetVpRegisters target=0x${m.target.toString(16)} ${m.regs.map((r) => pb.HvRegisterName[r.name] ?? r.name.toString(16)).join(',')}`,
    };
  });

/** HvCallGetVpRegisters (0x0050) aimed at VTL1: whatever it returns, it is not the secret. */
const getRegsArb = fc.record({ target: targetVtlArb, names: fc.array(fc.constantFrom(...sensitiveRegs), { minLength: 1, maxLength: 3 }) }).map((m) => {
  const input = Buffer.alloc(16 + m.names.length * 4);
  input.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
  input.writeUInt32LE(0xfffffffe, 8);
  input[12] = m.target;
  m.names.forEach((n, i) => {
    input.writeUInt32LE(n, 16 + i * 4);
  });
  return { k: 'hypercall' as const, control: 0x50n | (BigInt(m.names.length) << 32n), input, label: `GetVpRegisters target=0x${m.target.toString(16)}` };
});

/** Any other call code, random flags and input. */
const otherHypercallArb = fc
  .record({
    code: fc.oneof(fc.constantFrom(0x0d, 0x0f, 0x11, 0x12, 0x13, 0x5c, 0x5d), fc.integer({ min: 0, max: 0xff })),
    fast: fc.boolean(),
    reps: fc.integer({ min: 0, max: 3 }),
    input: fc.uint8Array({ maxLength: 48 }),
  })
  .map((m) => ({
    k: 'hypercall' as const,
    control: BigInt(m.code) | (m.fast ? 1n << 16n : 0n) | (BigInt(m.reps) << 32n),
    input: Buffer.from(m.input),
    label: `hypercall 0x${m.code.toString(16)}${m.fast ? ' fast' : ''}`,
  }));

const actionArb = fc.tuple(
  fc.constantFrom(0, 1),
  fc.oneof(
    { weight: 3, arbitrary: fc.record({ k: fc.constant('read' as const), gpa: gpaArb, length: fc.integer({ min: 1, max: 64 }) }) },
    { weight: 3, arbitrary: fc.record({ k: fc.constant('write' as const), gpa: gpaArb, data: fc.uint8Array({ minLength: 1, maxLength: 32 }) }) },
    { weight: 1, arbitrary: fc.record({ k: fc.constant('execute' as const), gpa: gpaArb, length: fc.integer({ min: 1, max: 16 }) }) },
    {
      weight: 2,
      arbitrary: fc.record({
        k: fc.constant('wrmsr' as const),
        msr: fc.oneof(fc.constantFrom(...Object.values(MSR), 0x40000091, 0x4000009f), fc.integer({ min: 0x40000000, max: 0x400000ff })),
        value: fc.oneof(
          gpaArb.map((g) => (g & ~0xfffn) | 1n),
          fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        ),
      }),
    },
    { weight: 3, arbitrary: modifyMaskArb },
    { weight: 3, arbitrary: setRegsArb },
    { weight: 1, arbitrary: getRegsArb },
    { weight: 2, arbitrary: otherHypercallArb },
    {
      weight: 1,
      arbitrary: fc.record({ k: fc.constant('page' as const), offset: fc.constantFrom(0x0f, 0x26, 0, 0x04, 0x1b, 0x30), rcx: fc.bigInt({ min: 0n, max: 3n }) }),
    },
  ),
);
type Action = typeof actionArb extends fc.Arbitrary<infer T> ? T : never;

const show = ([vp, a]: Action) =>
  `vp${vp} ` +
  ('label' in a
    ? a.label
    : a.k === 'read' || a.k === 'execute'
      ? `${a.k} 0x${a.gpa.toString(16)}+${a.length}`
      : a.k === 'write'
        ? `write 0x${a.gpa.toString(16)}+${a.data.length}`
        : a.k === 'wrmsr'
          ? `wrmsr 0x${a.msr.toString(16)}=0x${a.value.toString(16)}`
          : `call page+0x${a.offset.toString(16)}`);

/** Performs a VTL0 action; returns every byte string it handed back to VTL0. */
async function perform(vp: string, a: Action[1]): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  const note = (o: pb.GuestActionOutcome | undefined) => {
    if (o?.resumedAccess?.data) out.push(o.resumedAccess.data);
    if (o?.intercept) seen.intercepts++;
    if (o?.vtlSwitch?.toVtl === 1) seen.vtl1Entries++;
  };
  const ok = <T>(p: Promise<T>) => p.catch(() => undefined); // refusals (INVALID_ARGUMENT, ...) are fine
  switch (a.k) {
    case 'read': {
      const r = await ok(c.guest.readMemory({ name: vp, gpa: a.gpa, length: a.length }));
      if (r) {
        out.push(r.data);
        note(r.outcome);
      }
      break;
    }
    case 'execute': {
      const r = await ok(c.guest.executeMemory({ name: vp, gpa: a.gpa, length: a.length }));
      if (r) {
        out.push(r.data);
        note(r.outcome);
      }
      break;
    }
    case 'write': {
      const r = await ok(c.guest.writeMemory({ name: vp, gpa: a.gpa, data: Buffer.from(a.data) }));
      note(r?.outcome);
      break;
    }
    case 'wrmsr':
      await ok(c.guest.writeMsr({ name: vp, msr: a.msr, value: a.value }));
      break;
    case 'page': {
      const r = await ok(c.guest.callHypercallPage({ name: vp, offset: a.offset, rcx: a.rcx, rdx: SCRATCH_IN, r8: SCRATCH_OUT }));
      note(r?.outcome);
      break;
    }
    case 'hypercall': {
      // Input and output blocks on VTL0's own scratch pages; blocks on the protected page are the
      // dedicated tests below.
      const r = await ok(c.guest.hypercall({ name: vp, control: a.control, inputGpa: SCRATCH_IN, outputGpa: SCRATCH_OUT, input: a.input, outputSize: 256 }));
      if (r) {
        out.push(r.output);
        note(r.outcome);
        seen.hypercallStatuses.set(
          Number(a.control & 0xffffn),
          (seen.hypercallStatuses.get(Number(a.control & 0xffffn)) ?? 0) + (r.status === pb.HvStatus.HV_STATUS_SUCCESS ? 0 : 1),
        );
      }
      break;
    }
  }
  return out;
}

/** VTL1's side: whenever a VP is in VTL1 (VtlCall, intercept delivery), it returns to VTL0 - skipping an intercepted instruction. */
async function vtl1Returns(vps: string[]): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for (const vp of vps) {
    for (let i = 0; i < 4; i++) {
      const st = (await c.vps.getVirtualProcessor({ name: vp })).vtlStatus!;
      if (st.activeVtl === 0) break;
      if (st.lastEntryReason === pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_INTERRUPT) {
        // An intercept: VTL1 skips the faulting VTL0 instruction (moves VTL0's RIP) and drains SINT0.
        const rip = (await c.vps.getVpRegisters({ name: vp, vtl: 0, names: [R.HV_REGISTER_NAME_X64_RIP] })).registers[0]!.value!.value as { value: bigint };
        await c.vps.setVpRegisters({ name: vp, vtl: 0, registers: [r64(R.HV_REGISTER_NAME_X64_RIP, rip.value + 3n)] });
      }
      const r = await c.guest.callHypercallPage({ name: vp, offset: 0x26, rcx: 1n });
      if (r.outcome?.resumedAccess?.data) out.push(r.outcome.resumedAccess.data);
    }
    expect((await c.vps.getVirtualProcessor({ name: vp })).vtlStatus?.activeVtl).toBe(0);
  }
  return out;
}

test('VTL0 cannot read, change or unprotect what VTL1 protected, nor touch VTL1 overlays, registers or protections', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(pb.InterceptRoute.INTERCEPT_ROUTE_HIGHER_VTL, pb.InterceptRoute.INTERCEPT_ROUTE_BOTH),
      fc.array(actionArb, { minLength: 1, maxLength: 20 }),
      async (route, actions) => {
        const id = `tb-${run++}`;
        const { name, vps } = await setupVtl1Partition(c, id, 2, SECRET);
        try {
          await c.intercepts.setInterceptRoute({ name, route });
          const baseline = await vtl1State(name, vps);
          expect(baseline.secretPage.startsWith(SECRET.toString('hex'))).toBe(true);
          const done: string[] = [];
          for (const action of actions) {
            done.push(show(action));
            const returned = [...(await perform(vps[action[0]]!, action[1])), ...(await vtl1Returns(vps))];
            const leaked = returned.find(leaks);
            if (leaked) throw new Error(`VTL0 read VTL1's secret after: ${done.join('; ')}\n${Buffer.from(leaked).toString('latin1')}`);
            const now = await vtl1State(name, vps);
            if (JSON.stringify(now) !== JSON.stringify(baseline)) {
              expect({ after: done, state: now }).toEqual({ after: done, state: baseline }); // shows the difference
            }
          }
        } finally {
          await c.partitions.deletePartition({ name });
        }
      },
    ),
    { numRuns: RUNS, seed: process.env.TRUST_SEED ? Number(process.env.TRUST_SEED) : undefined, endOnFailure: true },
  );
  // The boundary was actually probed: accesses intercepted, VTL1 entered, VSM hypercalls refused.
  expect(seen.intercepts).toBeGreaterThan(0);
  expect(seen.vtl1Entries).toBeGreaterThan(0);
  expect(seen.hypercallStatuses.get(0x0c)).toBeGreaterThan(0);
  expect(seen.hypercallStatuses.get(0x51)).toBeGreaterThan(0);
});

// Hypercall parameter blocks on the protected page (found by this property; fixed): (a) the API's
// read-back of the output block returned protected bytes; (b) the guest's stores of the input
// block bypassed protections; (c) the hypervisor read input / wrote output as a confused deputy.
// Now the stores are guest accesses, the dispatcher raises a memory intercept for a parameter
// block the caller may not access (tlfs-hypercalls.md §1.1), and the read-back returns nothing.
describe('hypercall parameter blocks respect VTL protections', () => {
  const fresh = async () => setupVtl1Partition(c, `tbk-${run++}`, 2, SECRET);
  const ram = async (name: string) => Buffer.from((await c.memory.readGpa({ name, gpa: L.secretGpa, length: SECRET.length })).data);

  test('(a) VTL0 does not get the protected page back as hypercall output', async () => {
    const { vps } = await fresh();
    const r = await c.guest.hypercall({ name: vps[1]!, control: 0x9999n, outputGpa: L.secretGpa, outputSize: SECRET.length });
    expect(leaks(r.output)).toBe(false);
  });

  test('(b) VTL0 cannot store a hypercall input block into the protected page', async () => {
    const { name, vps } = await fresh();
    await c.guest.hypercall({ name: vps[1]!, control: 0x9999n, inputGpa: L.secretGpa, input: Buffer.from('OVERWRITTEN-BY-VTL0') }).catch(() => undefined);
    expect((await ram(name)).equals(SECRET)).toBe(true);
  });

  test('(c) the hypervisor does not write VTL0 hypercall output into the protected page', async () => {
    const { name, vps } = await fresh();
    // HvCallGetVpRegisters(self, RAX) with the output block on VTL1's page; input on a scratch page.
    const input = Buffer.alloc(20);
    input.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
    input.writeUInt32LE(0xfffffffe, 8);
    input.writeUInt32LE(0x00020000, 16);
    const r = await c.guest.hypercall({ name: vps[1]!, control: 0x50n | (1n << 32n), inputGpa: SCRATCH_IN, outputGpa: L.secretGpa, input });
    expect(r.outcome?.intercept?.protectingVtl).toBe(1); // a memory intercept instead of a completed call
    expect((await ram(name)).equals(SECRET)).toBe(true);
  });
});
