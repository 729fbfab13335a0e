// Secure interrupts in a running guest (issue #16, tlfs-vsm.md §10) on the KVM agent: test/guests/
// vsm-scenario built with SECURE_IPIS=N. After its intercepted stores, VP 0 spins in VTL0 and never
// calls VTL1; VP 1's VTL0 asks its VTL1 (VtlCall) to send HvCallSendSyntheticClusterIpi with target VTL1
// to VP 0. The interrupt for VTL1 preempts VP 0's VTL0: the core records the switch (entry reason
// Interrupt) at the instruction boundary where the agent stopped VP 0's thread (GuestRunner.
// deliverInterrupts), VP 0's thread moves to its VTL1 vCPU, whose in-kernel LAPIC delivers the vector
// to the guest's VTL1 handler (it counts it and EOIs), and VTL1 returns. Checked: the guest's own
// count, the WatchVtlTransitions stream (VP 0 entered VTL1 N times with reason INTERRUPT after its
// intercepts, never by VtlCall then), and the runner's secure-interrupt count.
import * as fs from 'node:fs';
import { pb } from '@vsm/client';
import { KvmBackend } from '@vsm/vsm-v1';
import type { GuestSession } from '@vsm/platform-kvm';
import { waitFor } from '../../../test/support/wait';
import { type AgentHarness, describeKvm, startAgent } from './agent-support';
import { buildVsmScenario, runGuestToEnd, watchTransitions } from './vsm-scenario-build';

const MiB = 1n << 20n;
const WRITES = 4;
const IPIS = 8;

const buildGuest = () => buildVsmScenario({ WRITES_PER_VP: WRITES, SECURE_IPIS: IPIS });

describeKvm('secure interrupts in a running guest: an IPI to VTL1 preempts VTL0 on another VP (real KVM)', () => {
  let h: AgentHarness;
  let backend: KvmBackend;
  let dir = '';
  beforeAll(async () => {
    backend = new KvmBackend();
    h = await startAgent(backend);
  });
  afterAll(async () => {
    await h?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test(`${IPIS} secure IPIs from VP 1's VTL1 enter VTL1 on VP 0 (entry reason Interrupt) while VP 0 runs VTL0`, async () => {
    const guest = buildGuest();
    dir = guest.dir;
    const p = await h.client.partitions.createPartition({
      partitionId: 'vsm-secure-ipi',
      partition: pb.Partition.fromPartial({ vpCount: 2, memoryBytes: 64n * MiB, maximumVtl: 1 }),
    });
    const name = p.name;

    // Every VTL switch of VP 0, from before the guest starts.
    const ac = new AbortController();
    const { transitions, watching } = await watchTransitions(h.client, name, 0, ac.signal);

    const { text, end } = await runGuestToEnd(h.client, name, guest.image);
    expect(text).toContain(`vsm-scenario: ${IPIS} secure IPIs preempted VTL0 on VP 0`);
    expect(text).toContain('vsm-scenario: PASS');
    expect(end).toMatchObject({ state: pb.RunState.RUN_STATE_STOPPED, exitCode: 0 });

    const result = Buffer.from((await h.client.memory.readGpa({ name, gpa: guest.symbols.get('scenario_result')!, length: 40 })).data);
    expect(result.readBigUInt64LE(32)).toBe(BigInt(IPIS));

    // VP 0's entries into VTL1: one VtlCall (the set-up), then one per intercepted store and one per
    // secure IPI, all with reason INTERRUPT (the core enters VTL1 for an intercept with that reason too,
    // tlfs-vsm.md §8.1); after its last store VP 0 made no VtlCall, so the last IPIS entries are the IPIs.
    await waitFor('every transition of VP 0', () => transitions.filter((t) => !t.isReturn).length >= 1 + WRITES + IPIS);
    const entries = transitions.filter((t) => !t.isReturn);
    expect(entries.map((t) => t.entryReason)).toEqual([
      pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_VTL_CALL,
      ...Array(WRITES + IPIS).fill(pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_INTERRUPT),
    ]);
    expect(entries.every((t) => t.fromVtl === 0 && t.toVtl === 1)).toBe(true);
    // The agent's own count of the switches it made at a secure interrupt (GuestRunStats).
    const sessions = (backend as unknown as { sessions: Map<unknown, GuestSession>; partition(name: string): unknown }).sessions;
    const session = sessions.get((backend as unknown as { partition(name: string): unknown }).partition(name));
    expect(session?.stats().secureInterrupts).toBe(IPIS);

    ac.abort();
    await watching;
    await h.client.partitions.deletePartition({ name });
  }, 120_000);
});
