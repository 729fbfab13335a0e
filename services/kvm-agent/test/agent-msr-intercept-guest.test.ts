// Secure MSR write intercepts in a running guest (issue #16, tlfs-vsm.md §3.8) on the KVM agent:
// test/guests/vsm-scenario built with MSR_WRITES=N. VTL1 on VP 0 sets MsrLstarWrite in its
// HvX64RegisterCrInterceptControl (a hypercall of the running guest); the agent adds IA32_LSTAR to the
// VTL0 VM's MSR filter (write only). VP 0's VTL0 then writes IA32_LSTAR N times: KVM exits to the agent
// (KVM_EXIT_X86_WRMSR), the core refuses the write and posts HV_X64_MSR_INTERCEPT_MESSAGE to VTL1's
// SINT0 (entry reason Interrupt); the agent completes the exit without entering the guest and keeps
// RIP on the WRMSR. VTL1's handler checks the message (MsrNumber, EDX:EAX, RIP on `0F 30`, VTL 0),
// moves VTL0's RIP past it and returns. Checked in the guest: RDMSR reads the old LSTAR after every
// write, VTL1 counted each one; VP 1 (whose VTL1 locked nothing) writes LSTAR once through the same
// filter and that write takes effect. Checked here: the symbols, the transition stream (VP 0 entered
// VTL1 with reason INTERRUPT once per write after its stores) and the runner's counts. VTL1 also locks
// STAR reads: VP 0's RDMSR of STAR does not happen (RDX keeps its sentinel) and reaches VTL1 as a read
// MSR intercept. A second run
// with route MONITOR: the MSR intercepts still go to VTL1 (the core's rule for secure register
// intercepts), the monitor observes them with needs_reply unset.
import * as fs from 'node:fs';
import { pb } from '@vsm/client';
import { KvmBackend } from '@vsm/vsm-v1';
import type { GuestSession } from '@vsm/platform-kvm';
import { waitFor } from '../../../test/support/wait';
import { type AgentHarness, describeKvm, startAgent } from './agent-support';
import { buildVsmScenario, runGuestToEnd, watchTransitions } from './vsm-scenario-build';

const MiB = 1n << 20n;
const WRITES = 2; // intercepted stores per VP before the MSR phase (the scenario's first part)
const MSR_WRITES = Number(process.env.VSM_MSR_WRITES ?? 8); // VSM_MSR_WRITES=400 for a measurement run
/** HvX64RegisterCrInterceptControl (tlfs-vsm.md §3.8). */
const CR_INTERCEPT_CONTROL = 0x000e0000;
/** HvMessageTypeMsrIntercept (tlfs-intercepts.md §6.8). */
const MSR_INTERCEPT_MESSAGE = 0x80010001;

const buildGuest = () => buildVsmScenario({ WRITES_PER_VP: WRITES, MSR_WRITES });

describeKvm('secure MSR write intercepts in a running guest: VTL1 locks IA32_LSTAR against VTL0 (real KVM)', () => {
  let h: AgentHarness;
  let backend: KvmBackend;
  const guests: string[] = [];
  beforeAll(async () => {
    backend = new KvmBackend();
    h = await startAgent(backend);
  });
  afterAll(async () => {
    await h?.stop();
    for (const d of guests) fs.rmSync(d, { recursive: true, force: true });
  });

  test(`${MSR_WRITES} WRMSRs of a locked LSTAR by VP 0's VTL0 take no effect and reach VTL1 as MSR intercept messages, so does a locked STAR read; VP 1's unlocked write takes effect`, async () => {
    const guest = buildGuest();
    guests.push(guest.dir);
    const p = await h.client.partitions.createPartition({
      partitionId: 'vsm-msr-intercept',
      partition: pb.Partition.fromPartial({ vpCount: 2, memoryBytes: 64n * MiB, maximumVtl: 1 }),
    });
    const name = p.name;

    const ac = new AbortController();
    const { transitions, watching } = await watchTransitions(h.client, name, 0, ac.signal);

    const { text, end } = await runGuestToEnd(h.client, name, guest.image);
    expect(text).toContain(`vsm-scenario: ${MSR_WRITES} LSTAR writes intercepted by VTL1 on VP 0, 0 took effect; VP 1's write took effect`);
    expect(text).toContain('vsm-scenario: PASS');
    expect(text).toContain('vsm-scenario: the STAR read was intercepted by VTL1 on VP 0 and did not happen');
    expect(text).toContain(' 0 bad messages'); // VTL1's checks of every message (MsrNumber, EDX:EAX, RIP on the WRMSR, VTL 0)
    expect(end).toMatchObject({ state: pb.RunState.RUN_STATE_STOPPED, exitCode: 0 });

    const u64 = async (sym: string, index = 0) =>
      Buffer.from((await h.client.memory.readGpa({ name, gpa: guest.symbols.get(sym)! + BigInt(index * 8), length: 8 })).data).readBigUInt64LE(0);
    expect(await u64('vtl1_msr_intercepts', 0)).toBe(BigInt(MSR_WRITES));
    expect(await u64('vtl1_msr_intercepts', 1)).toBe(0n);
    expect(await u64('msr_leaks')).toBe(0n);
    expect(await u64('ap_msr_done')).toBe(1n);
    expect(await u64('vtl1_msr_read_intercepts')).toBe(1n);
    expect(await u64('star_read_rdx')).toBe(0x5a5a5a5an); // RDX as before the refused RDMSR

    // VP 0's VTL1 entries: the set-up VtlCall, one per intercepted store, one per intercepted WRMSR
    // (reason INTERRUPT: the core enters VTL1 for an intercept with it, tlfs-vsm.md §8.1).
    await waitFor('every transition of VP 0', () => transitions.filter((t) => !t.isReturn).length >= 1 + WRITES + MSR_WRITES + 1);
    const entries = transitions.filter((t) => !t.isReturn);
    expect(entries.map((t) => t.entryReason)).toEqual([
      pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_VTL_CALL,
      ...Array(WRITES + MSR_WRITES + 1).fill(pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_INTERRUPT),
    ]);

    // The agent's counts: VP 0's writes trapped and refused, VP 1's trapped and performed (KVM_SET_MSRS).
    const sessions = (backend as unknown as { sessions: Map<unknown, GuestSession>; partition(name: string): unknown }).sessions;
    const session = sessions.get((backend as unknown as { partition(name: string): unknown }).partition(name));
    const stats = session?.stats();
    expect(stats?.msrWriteIntercepts).toBe(MSR_WRITES);
    expect(stats?.msrWriteExits).toBe(MSR_WRITES + 1);
    expect(stats?.msrReadIntercepts).toBe(1);
    expect(stats?.msrReadExits).toBe(1);
    console.log(`msr-intercept guest: ${MSR_WRITES} intercepted WRMSRs, run ${stats?.elapsedMs} ms`);

    // The lock is VTL1's register on VP 0 (read through the API); LSTAR of VP 0's VTL0 kept its value.
    const vp0 = `${name}/vps/0`;
    const reg = async (vtl: number, n: number) =>
      (await h.client.vps.getVpRegisters({ name: vp0, vtl, names: [n as pb.HvRegisterName] })).registers[0]?.value?.value;
    expect(await reg(1, CR_INTERCEPT_CONTROL)).toEqual({ $case: 'reg64', value: (1n << 6n) | (1n << 7n) }); // MsrLstarWrite | MsrStarRead
    expect(await reg(0, pb.HvRegisterName.HV_REGISTER_NAME_X64_LSTAR)).toEqual({ $case: 'reg64', value: await u64('lstar_kept') });

    // What the agent says it enforces for running guests (the rest of CrInterceptControl: guest actions only).
    const f = (await h.client.partitions.getCapabilities({})).features.find((x) => x.name === 'running-guest-register-intercepts');
    expect(f?.supported).toBe(false);
    expect(f?.reason).toMatch(/^partly: .*RDMSR and WRMSR.*KVM MSR filter.*HV_X64_MSR_INTERCEPT_MESSAGE.*CR0\/CR4/);

    ac.abort();
    await watching;
    await h.client.partitions.deletePartition({ name });
  }, 120_000);

  // Route MONITOR: memory intercepts wait for the monitor (it answers ALLOW; VTL1 sees none, so the
  // guest's verdict on its stores is "0 handled in VTL1", exit code 2), while the MSR intercepts still
  // go to VTL1 as for guest actions (a monitor answers memory intercepts only): the monitor observes
  // each one (HvMessageTypeMsrIntercept, needs_reply unset) and the VP never waits on it.
  test(`route MONITOR: the ${MSR_WRITES} LSTAR writes still reach VTL1; the monitor observes them without answering`, async () => {
    const guest = buildGuest();
    guests.push(guest.dir);
    const p = await h.client.partitions.createPartition({
      partitionId: 'vsm-msr-intercept-monitor',
      partition: pb.Partition.fromPartial({ vpCount: 2, memoryBytes: 64n * MiB, maximumVtl: 1 }),
    });
    const name = p.name;
    await h.client.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
    const mon = h.client.intercepts.monitor();
    const it = mon.events[Symbol.asyncIterator]();
    mon.send({ kind: { $case: 'subscribe', value: pb.MonitorSubscribe.fromPartial({ name }) } });
    expect((await it.next()).value?.kind?.$case).toBe('subscription');
    const seen: pb.InterceptEvent[] = [];
    const watching = (async () => {
      for (;;) {
        const r = await it.next();
        if (r.done) return;
        const k = r.value.kind;
        if (k?.$case !== 'intercept') continue;
        seen.push(k.value);
        if (!k.value.needsReply) continue;
        mon.send({
          kind: { $case: 'reply', value: { interceptId: k.value.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } },
        });
      }
    })().catch(() => undefined);
    const { text, end } = await runGuestToEnd(h.client, name, guest.image);
    expect(text).toContain(`vsm-scenario: ${MSR_WRITES} LSTAR writes intercepted by VTL1 on VP 0, 0 took effect; VP 1's write took effect`);
    expect(text).toContain(`0 intercepts handled in VTL1, ${2 * WRITES} values in place, 0 stray, 0 bad messages`);
    expect(end).toMatchObject({ state: pb.RunState.RUN_STATE_STOPPED, exitCode: 2 });
    await waitFor('the monitor to observe every intercept', () => seen.length >= 2 * WRITES + MSR_WRITES + 1);
    const msrs = seen.filter((e) => e.messageType === MSR_INTERCEPT_MESSAGE);
    expect(msrs).toHaveLength(MSR_WRITES + 1); // the LSTAR writes and the STAR read
    expect(msrs.every((e) => !e.needsReply && e.vpIndex === 0 && e.vtl === 0 && e.protectingVtl === 1)).toBe(true);
    expect(seen.filter((e) => e.needsReply)).toHaveLength(2 * WRITES); // the stores, answered ALLOW
    mon.cancel();
    await watching;
    await h.client.partitions.deletePartition({ name });
  }, 120_000);
});
