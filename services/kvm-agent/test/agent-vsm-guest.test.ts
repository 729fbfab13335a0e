// The whole-guest VSM scenario of issue #20 as a real guest: test/guests/vsm-scenario (C and a little
// assembly, built here with gcc, loaded as ELF64 through LoadGuestImage) runs on 2 VPs of the KVM agent.
//
//   VTL0 (VP 0): guest OS id, hypercall page, HvCallEnablePartitionVtl, HvCallEnableVpVtl (itself),
//                VP 1 up with INIT/SIPI (real-mode trampoline), VtlCall.
//   VTL1 (VP 0): its hypercall page and IDT, EnableVtlProtection, HvCallModifyVtlProtectionMask
//                (PROT_PAGES pages no-write for VTL0), HvCallEnableVpVtl(VP 1), its SynIC (SIMP,
//                SIEFP, SINT0 = vector 0x50 without AutoEOI, SCONTROL), VtlReturn.
//   VTL0 (VP 1): VtlCall; VTL1 (VP 1) sets up its own SynIC; VtlReturn.
//   Both VPs in VTL0 at once: WRITES each `mov [rdi], rax` into the protected pages, a distinct
//   address and value per VP and iteration, neither VP more than 2 stores ahead of the other. Each
//   store intercepts into VTL1 on its VP as SINT0; VTL1's handler checks the message, performs the
//   store, moves VTL0's RIP past it (HvCallSetVpRegisters), logs it, clears the slot, EOM, EOI.
//   VP 0 checks every value, prints a summary on COM1, writes 0 to the debug-exit port.
//
// Route BOTH: an external monitor (the Monitor stream) observes every intercept while VTL1 handles
// it. Nothing lost, nothing applied twice: the monitor saw 2*WRITES intercepts with distinct ids,
// VTL1's log (read with ReadGpa) has each (vp, gpa, value) exactly once, and the values are in place.
import * as fs from 'node:fs';
import { pb } from '@vsm/client';
import * as core from '@vsm/core';
import { waitFor } from '../../../test/support/wait';
import { KvmBackend } from '@vsm/vsm-v1';
import { type AgentHarness, describeKvm, startAgent } from './agent-support';
import { buildVsmScenario, runGuestToEnd } from './vsm-scenario-build';

const MiB = 1n << 20n;
/** The scenario's parameters (build.sh passes them to the C code). */
const WRITES = Number(process.env.VSM_SCENARIO_WRITES ?? 16); // VSM_SCENARIO_WRITES=128 for a longer run
const PROT_PAGES = 4;
const PROT_GPA = 0x100_0000n;
const VPS = 2;

/** The guest's address and value of store `j` of VP `vp` (scenario.c target_gpa / value_of). */
const targetGpa = (vp: number, j: number) => {
  const slot = BigInt(vp * WRITES + j);
  return PROT_GPA + (slot % BigInt(PROT_PAGES)) * 4096n + (slot / BigInt(PROT_PAGES)) * 8n;
};
const storedValue = (vp: number, j: number) => 0x5ec0_0000_0000_0000n | (BigInt(vp + 1) << 40n) | (BigInt(j + 1) << 8n) | 0x5an;

type Guest = { image: Buffer; symbols: Map<string, bigint>; dir: string };

/** Builds the guest in a temporary directory; returns the image and its symbols (nm). */
const buildGuest = (autoEoi: boolean): Guest => buildVsmScenario({ WRITES_PER_VP: WRITES, PROT_PAGES, SINT0_AUTO_EOI: autoEoi ? 1 : 0 });

describeKvm('a whole guest on 2 VPs: VTL1 handles concurrent intercepts as SINT0 interrupts, a monitor observes with route BOTH (real KVM)', () => {
  let h: AgentHarness;
  let backend: KvmBackend;
  const guests: Guest[] = [];
  beforeAll(async () => {
    backend = new KvmBackend();
    h = await startAgent(backend);
  });
  afterAll(async () => {
    await h?.stop();
    for (const g of guests) fs.rmSync(g.dir, { recursive: true, force: true });
  });

  test.each([
    ['without AutoEOI: the handler EOIs the LAPIC', false],
    ['with AutoEOI: the agent clears the vector on the LAPIC of VTL1', true],
  ])(
    `${VPS} VPs x ${WRITES} intercepted stores, SINT0 %s: each performed once by VTL1, seen once by the monitor, both VPs interleaved`,
    async (_what, autoEoi) => {
      const guest = buildGuest(autoEoi);
      guests.push(guest);
      const sym = (name: string) => {
        const a = guest.symbols.get(name);
        if (a === undefined) throw new Error(`the guest has no symbol ${name}`);
        return a;
      };
      const p = await h.client.partitions.createPartition({
        partitionId: autoEoi ? 'vsm-guest-autoeoi' : 'vsm-guest',
        partition: pb.Partition.fromPartial({ vpCount: VPS, memoryBytes: 64n * MiB, maximumVtl: 1 }),
      });
      const name = p.name;
      await h.client.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_BOTH });

      // The monitor: subscribed before the guest starts; it only observes (BOTH: the VTL handles).
      const mon = h.client.intercepts.monitor();
      const it = mon.events[Symbol.asyncIterator]();
      mon.send({ kind: { $case: 'subscribe', value: pb.MonitorSubscribe.fromPartial({ name }) } });
      const first = await it.next();
      expect(first.value?.kind?.$case).toBe('subscription');
      const seen: pb.InterceptEvent[] = [];
      const others: string[] = [];
      const watching = (async () => {
        for (;;) {
          const r = await it.next();
          if (r.done) return;
          if (r.value.kind?.$case === 'intercept') seen.push(r.value.kind.value);
          else others.push(r.value.kind?.$case ?? 'none');
        }
      })().catch(() => undefined); // the stream is cancelled at the end

      const { loaded, text, end, runMs } = await runGuestToEnd(h.client, name, guest.image);
      expect(loaded).toMatchObject({
        format: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_ELF64,
        entryPoint: 0x20_0000n,
        entryMode: pb.GuestEntryMode.GUEST_ENTRY_MODE_LONG64,
      });

      // The run: stopped by the guest's debug-exit write of 0, after its summary.
      expect(end).toMatchObject({ state: pb.RunState.RUN_STATE_STOPPED, exitCode: 0 });
      expect(text).toContain(
        `vsm-scenario: ${VPS} VPs x ${WRITES} stores to ${PROT_PAGES} protected pages: ${VPS * WRITES} intercepts handled in VTL1, ${VPS * WRITES} values in place, 0 stray, 0 bad messages, 0 mismatches`,
      );
      expect(text).toContain('vsm-scenario: PASS');
      const part = await h.client.partitions.getPartition({ name });
      expect(part).toMatchObject({ runState: pb.RunState.RUN_STATE_STOPPED, exitCode: 0 });
      // KVM refused each store once (an MMIO exit on the read-only memslot): no store ran twice.
      expect(backend.platformOf(name).refusedAccesses).toBe(VPS * WRITES);

      // The monitor saw every intercept once: 2*WRITES distinct ids, the right GPAs, both VPs.
      await waitFor('the monitor to receive every intercept', () => seen.length >= VPS * WRITES);
      expect(others).toEqual([]);
      expect(seen).toHaveLength(VPS * WRITES);
      expect(new Set(seen.map((e) => e.interceptId)).size).toBe(VPS * WRITES);
      const expected = new Map<string, bigint>();
      for (let vp = 0; vp < VPS; vp++) for (let j = 0; j < WRITES; j++) expected.set(`${vp}:${targetGpa(vp, j)}`, storedValue(vp, j));
      for (const e of seen) {
        expect(e).toMatchObject({
          vtl: 0,
          protectingVtl: 1,
          accessType: pb.HvInterceptAccessType.HV_INTERCEPT_ACCESS_TYPE_WRITE,
          length: 8,
          needsReply: false,
        });
        const key = `${e.vpIndex}:${e.gpa}`;
        expect(expected.has(key)).toBe(true);
        expect(Buffer.from(e.writeData).readBigUInt64LE(0)).toBe(expected.get(key));
        const m = core.decodeMemoryInterceptMessage(Buffer.from(e.hvMessage).subarray(16));
        expect(m).toMatchObject({ guestPhysicalAddress: e.gpa, header: { vpIndex: e.vpIndex, instructionLength: 3, interceptAccessType: 1 } });
        expect(m.instructionBytes.subarray(0, 3).toString('hex')).toBe('488907'); // mov [rdi], rax
      }
      expect(new Set(seen.map((e) => `${e.vpIndex}:${e.gpa}`)).size).toBe(VPS * WRITES);
      expect(new Set(seen.map((e) => e.vpIndex))).toEqual(new Set([0, 1]));

      // VTL1's log, read with ReadGpa: each (vp, gpa, value) exactly once, in a single global order.
      const logBytes = Buffer.from((await h.client.memory.readGpa({ name, gpa: sym('vtl1_log'), length: VPS * WRITES * 32 })).data);
      const counts = Buffer.from((await h.client.memory.readGpa({ name, gpa: sym('vtl1_log_count'), length: VPS * 8 })).data);
      expect([counts.readBigUInt64LE(0), counts.readBigUInt64LE(8)]).toEqual([BigInt(WRITES), BigInt(WRITES)]);
      const log: { seq: bigint; vp: number; gpa: bigint; value: bigint }[] = [];
      for (let i = 0; i < VPS * WRITES; i++) {
        const o = i * 32;
        log.push({
          seq: logBytes.readBigUInt64LE(o),
          vp: Number(logBytes.readBigUInt64LE(o + 8)),
          gpa: logBytes.readBigUInt64LE(o + 16),
          value: logBytes.readBigUInt64LE(o + 24),
        });
      }
      const logged = new Map<string, bigint>();
      for (const e of log) {
        const key = `${e.vp}:${e.gpa}`;
        expect(logged.has(key)).toBe(false); // not applied twice
        logged.set(key, e.value);
      }
      expect(logged).toEqual(expected); // nothing lost, the right values
      expect(log.map((e) => e.seq).sort((a, b) => (a < b ? -1 : 1))).toEqual(Array.from({ length: VPS * WRITES }, (_, i) => BigInt(i)));

      // The values in guest memory, as the host reads them.
      for (let vp = 0; vp < VPS; vp++) {
        for (let j = 0; j < WRITES; j++) {
          const v = Buffer.from((await h.client.memory.readGpa({ name, gpa: targetGpa(vp, j), length: 8 })).data).readBigUInt64LE(0);
          expect(v).toBe(storedValue(vp, j));
        }
      }

      // Interleaved in time: intercept ids are allocated in the order the stores faulted, and VTL1's
      // sequence numbers in the order it handled them; in both, neither VP ran all of its stores first.
      const byId = [...seen].sort((a, b) => (a.interceptId < b.interceptId ? -1 : 1)).map((e) => e.vpIndex);
      const bySeq = [...log].sort((a, b) => (a.seq < b.seq ? -1 : 1)).map((e) => e.vp);
      const switches = (order: number[]) => order.reduce((n, vp, i) => n + (i > 0 && vp !== order[i - 1] ? 1 : 0), 0);
      expect(switches(byId)).toBeGreaterThan(1);
      expect(switches(bySeq)).toBeGreaterThan(1);
      const result = Buffer.from((await h.client.memory.readGpa({ name, gpa: sym('scenario_result'), length: 32 })).data);
      const maxInFlight = result.readBigUInt64LE(24);
      // Figures for the closing note.
      console.log(
        `vsm-scenario (AutoEOI ${autoEoi}): ${VPS * WRITES} intercepts in ${runMs} ms; VP order by intercept id ${byId.join('')}; at most ${maxInFlight} VPs in VTL1's handler at once`,
      );

      mon.cancel();
      await watching;
      await h.client.partitions.deletePartition({ name });
    },
    120_000,
  );

  test(`route MONITOR: each VP waits on its intercept until the monitor answers ALLOW, then runs on (${VPS} VPs x ${WRITES} stores)`, async () => {
    const guest = buildGuest(false);
    guests.push(guest);
    const p = await h.client.partitions.createPartition({
      partitionId: 'vsm-guest-monitor',
      partition: pb.Partition.fromPartial({ vpCount: VPS, memoryBytes: 64n * MiB, maximumVtl: 1 }),
    });
    const name = p.name;
    await h.client.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
    const mon = h.client.intercepts.monitor();
    const it = mon.events[Symbol.asyncIterator]();
    mon.send({ kind: { $case: 'subscribe', value: pb.MonitorSubscribe.fromPartial({ name }) } });
    expect((await it.next()).value?.kind?.$case).toBe('subscription');
    const answered = new Map<bigint, number>();
    const watching = (async () => {
      for (;;) {
        const r = await it.next();
        if (r.done) return;
        const k = r.value.kind;
        if (k?.$case !== 'intercept') continue;
        answered.set(k.value.interceptId, k.value.vpIndex);
        mon.send({
          kind: { $case: 'reply', value: { interceptId: k.value.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } },
        });
      }
    })().catch(() => undefined);
    const { text, end } = await runGuestToEnd(h.client, name, guest.image);
    // VTL1 saw none (route MONITOR), so the guest's own verdict is "0 handled in VTL1" (its exit code 2);
    // every store was performed by the monitor's ALLOW, exactly once, and the run went to its end.
    expect(end).toMatchObject({ state: pb.RunState.RUN_STATE_STOPPED, exitCode: 2 });
    expect(text).toContain(`0 intercepts handled in VTL1, ${VPS * WRITES} values in place, 0 stray, 0 bad messages, 0 mismatches`);
    expect(answered.size).toBe(VPS * WRITES);
    expect(new Set(answered.values())).toEqual(new Set([0, 1]));
    mon.cancel();
    await watching;
    await h.client.partitions.deletePartition({ name });
  }, 120_000);
});
