// Synthetic timers STIMER0..3 (TLFS timers.md; tlfs-intercepts.md §7.1; message layout
// tlfs-overlays-synic.md §5.7) with a fake reference clock: the core arms nothing itself, the
// "platform" here calls stimerNextDeadline/stimerExpire. Semantics as KVM's (kvm-unit-tests
// hyperv_stimer): one-shot, periodic, AutoEnable, direct mode, busy slot retried at EOM.
import { HvMessageType, HvMsr, HvStimerConfigLayout, HvTimerMessagePayloadLayout, stimerExpire, stimerNextDeadline } from '@vsm/core';
import { hvHarness } from './hyperv-harness';

const CONFIG = (i: number) => HvMsr.HV_X64_MSR_STIMER0_CONFIG + 2 * i;
const COUNT = (i: number) => HvMsr.HV_X64_MSR_STIMER0_COUNT + 2 * i;
const cfg = HvStimerConfigLayout.pack;
const SINT1 = 2; // kvm-unit-tests SINT1_NUM, vector 0xF1, no AutoEOI
const SINT2 = 3; // SINT2_NUM, vector 0xF2, AutoEOI

function setup() {
  const h = hvHarness();
  h.wrmsr(h.sintMsr(SINT1), 0xf1n);
  h.wrmsr(h.sintMsr(SINT2), 0xf2n | (1n << 17n));
  h.counters.timerChanges = 0;
  return h;
}
const payloadOf = (slot: Buffer) => HvTimerMessagePayloadLayout.decode(slot, 16);

test('one-shot: COUNT is the absolute expiration; it fires once, posts HvMessageTimerExpired and clears Enable', () => {
  const h = setup();
  const t0 = h.clock.now;
  h.wrmsr(COUNT(0), t0 + 10_000n);
  expect(stimerNextDeadline(h.p)).toBeUndefined(); // not enabled yet
  h.wrmsr(CONFIG(0), cfg({ enable: true, sintx: SINT1 }));
  expect(h.counters.timerChanges).toBe(2);
  expect(stimerNextDeadline(h.p)).toBe(t0 + 10_000n);
  stimerExpire(h.p, t0 + 9_999n);
  expect(h.raised).toEqual([]);
  expect(h.counters.timerChanges).toBe(2); // nothing fired, nothing changed
  h.clock.now = t0 + 10_003n;
  stimerExpire(h.p, h.clock.now);
  expect(h.slotHeader(SINT1)).toEqual({ messageType: HvMessageType.HvMessageTypeTimerExpired, payloadSize: 24, messageFlags: 0, originationId: 0n });
  expect(payloadOf(h.slot(SINT1))).toEqual({ timerIndex: 0, expirationTime: t0 + 10_000n, deliveryTime: t0 + 10_003n });
  expect(h.raised).toEqual([{ vp: 0, vtl: 0, vector: 0xf1, autoEoi: false }]);
  expect(h.counters.timerChanges).toBe(3);
  expect(h.rdmsr(CONFIG(0))).toBe(cfg({ sintx: SINT1 })); // Enable cleared
  expect(h.rdmsr(COUNT(0))).toBe(t0 + 10_000n);
  expect(stimerNextDeadline(h.p)).toBeUndefined();
  h.clearSlot(SINT1);
  stimerExpire(h.p, t0 + 1_000_000n);
  expect(h.raised).toHaveLength(1);
});

test('one-shot with COUNT already in the past is due at once', () => {
  const h = setup();
  h.wrmsr(COUNT(1), 5n);
  h.wrmsr(CONFIG(1), cfg({ enable: true, sintx: SINT2 }));
  expect(stimerNextDeadline(h.p)).toBe(5n);
  stimerExpire(h.p, h.clock.now);
  expect(h.raised).toEqual([{ vp: 0, vtl: 0, vector: 0xf2, autoEoi: true }]);
  expect(payloadOf(h.slot(SINT2)).timerIndex).toBe(1);
});

test('periodic: COUNT is the period; it re-arms from its last expiration and skips missed ticks', () => {
  const h = setup();
  const t0 = h.clock.now;
  h.wrmsr(COUNT(1), 10_000n);
  h.wrmsr(CONFIG(1), cfg({ enable: true, periodic: true, sintx: SINT2 }));
  expect(stimerNextDeadline(h.p)).toBe(t0 + 10_000n);
  for (let i = 1n; i <= 3n; i++) {
    stimerExpire(h.p, t0 + i * 10_000n);
    expect(payloadOf(h.slot(SINT2)).expirationTime).toBe(t0 + i * 10_000n);
    h.clearSlot(SINT2);
    expect(stimerNextDeadline(h.p)).toBe(t0 + (i + 1n) * 10_000n);
  }
  expect(h.raised).toHaveLength(3);
  // Late by 2.5 periods: one message, then the next multiple of the period after now.
  stimerExpire(h.p, t0 + 65_000n);
  expect(h.raised).toHaveLength(4);
  expect(payloadOf(h.slot(SINT2)).expirationTime).toBe(t0 + 40_000n);
  expect(stimerNextDeadline(h.p)).toBe(t0 + 70_000n);
  expect(h.rdmsr(CONFIG(1)) & 1n).toBe(1n); // stays enabled
});

test('periodic with its slot busy drops the tick (no MessagePending, no interrupt) and keeps running', () => {
  const h = setup();
  const t0 = h.clock.now;
  h.wrmsr(COUNT(0), 100n);
  h.wrmsr(CONFIG(0), cfg({ enable: true, periodic: true, sintx: SINT1 }));
  stimerExpire(h.p, t0 + 100n);
  expect(h.raised).toHaveLength(1);
  stimerExpire(h.p, t0 + 200n); // slot still holds the first message
  expect(h.raised).toHaveLength(1);
  expect(h.slotHeader(SINT1).messageFlags).toBe(0);
  expect(payloadOf(h.slot(SINT1)).expirationTime).toBe(t0 + 100n);
  expect(stimerNextDeadline(h.p)).toBe(t0 + 300n);
});

test('one-shot with its slot busy: MessagePending is set, nothing fires until the guest clears the slot and writes EOM', () => {
  const h = setup();
  // kvm-unit-tests stimer_test_one_shot_busy: the guest marks the slot busy itself.
  h.p.writeView(0, 0, 0x10000n + 256n * BigInt(SINT1), Buffer.from([0x10, 0, 0, 0x80]));
  const t0 = h.clock.now;
  h.wrmsr(COUNT(0), t0 + 10_000n);
  h.wrmsr(CONFIG(0), cfg({ enable: true, sintx: SINT1 }));
  h.clock.now = t0 + 10_000n;
  stimerExpire(h.p, h.clock.now);
  expect(h.raised).toEqual([]);
  expect(h.slotHeader(SINT1).messageFlags & 1).toBe(1); // MessagePending
  expect(stimerNextDeadline(h.p)).toBeUndefined(); // held, not armed
  expect(h.rdmsr(CONFIG(0)) & 1n).toBe(1n); // still enabled
  const changes = h.counters.timerChanges;
  h.eom(); // slot still busy: held again
  expect(h.raised).toEqual([]);
  h.clearSlot(SINT1);
  h.clock.now = t0 + 12_345n;
  h.eom();
  expect(h.raised).toEqual([{ vp: 0, vtl: 0, vector: 0xf1, autoEoi: false }]);
  expect(payloadOf(h.slot(SINT1))).toEqual({ timerIndex: 0, expirationTime: t0 + 10_000n, deliveryTime: t0 + 12_345n });
  expect(h.rdmsr(CONFIG(0)) & 1n).toBe(0n);
  expect(h.counters.timerChanges).toBeGreaterThan(changes);
});

test('a timer message waits while the SIM page is off and arrives when SIMP is enabled', () => {
  const h = setup();
  h.wrmsr(HvMsr.HV_X64_MSR_SIMP, 0n);
  h.wrmsr(COUNT(2), 1n);
  h.wrmsr(CONFIG(2), cfg({ enable: true, sintx: SINT1 }));
  stimerExpire(h.p, h.clock.now);
  expect(h.raised).toEqual([]);
  h.wrmsr(HvMsr.HV_X64_MSR_SIMP, 0x10000n | 1n);
  expect(h.raised).toEqual([{ vp: 0, vtl: 0, vector: 0xf1, autoEoi: false }]);
  expect(payloadOf(h.slot(SINT1)).timerIndex).toBe(2);
});

test('direct mode raises ApicVector without AutoEOI and posts no message', () => {
  const h = hvHarness({ synic: false });
  h.wrmsr(COUNT(0), 10_000n);
  h.wrmsr(CONFIG(0), cfg({ enable: true, periodic: true, directMode: true, apicVector: 0xf3 }));
  h.wrmsr(COUNT(1), h.clock.now + 50n);
  h.wrmsr(CONFIG(1), cfg({ enable: true, directMode: true, apicVector: 0xf4 }));
  expect(stimerNextDeadline(h.p)).toBe(h.clock.now + 50n);
  stimerExpire(h.p, h.clock.now + 10_000n);
  expect(h.raised).toEqual([
    { vp: 0, vtl: 0, vector: 0xf3, autoEoi: false },
    { vp: 0, vtl: 0, vector: 0xf4, autoEoi: false },
  ]);
  expect(h.rdmsr(CONFIG(1)) & 1n).toBe(0n); // one-shot done
  expect(stimerNextDeadline(h.p)).toBe(h.clock.now + 20_000n);
});

test('AutoEnable: writing a non-zero COUNT sets Enable; COUNT 0 clears it', () => {
  const h = setup();
  h.wrmsr(CONFIG(3), cfg({ autoEnable: true, sintx: SINT1 }));
  expect(stimerNextDeadline(h.p)).toBeUndefined();
  h.wrmsr(COUNT(3), h.clock.now + 7n);
  expect(h.rdmsr(CONFIG(3))).toBe(cfg({ enable: true, autoEnable: true, sintx: SINT1 }));
  expect(stimerNextDeadline(h.p)).toBe(h.clock.now + 7n);
  h.wrmsr(COUNT(3), 0n);
  expect(h.rdmsr(CONFIG(3))).toBe(cfg({ autoEnable: true, sintx: SINT1 }));
  expect(stimerNextDeadline(h.p)).toBeUndefined();
  // Without AutoEnable a COUNT write leaves Enable clear.
  h.wrmsr(CONFIG(2), cfg({ sintx: SINT1 }));
  h.wrmsr(COUNT(2), 100n);
  expect(h.rdmsr(CONFIG(2)) & 1n).toBe(0n);
});

test('disabling stops the timer and drops a held message; SINTx 0 disables an enabled message-mode timer', () => {
  const h = setup();
  h.wrmsr(COUNT(0), 10n);
  h.wrmsr(CONFIG(0), cfg({ enable: true, periodic: true, sintx: SINT1 }));
  h.wrmsr(CONFIG(0), 0n);
  expect(stimerNextDeadline(h.p)).toBeUndefined();
  stimerExpire(h.p, h.clock.now + 1000n);
  expect(h.raised).toEqual([]);
  // A held one-shot message is dropped by a CONFIG write (KVM's stimer_cleanup).
  h.p.writeView(0, 0, 0x10000n + 256n * BigInt(SINT1), Buffer.from([1, 0, 0, 0]));
  h.wrmsr(COUNT(1), 1n);
  h.wrmsr(CONFIG(1), cfg({ enable: true, sintx: SINT1 }));
  stimerExpire(h.p, h.clock.now);
  h.wrmsr(CONFIG(1), 0n);
  h.clearSlot(SINT1);
  h.eom();
  expect(h.raised).toEqual([]);
  // Enabled, then rewritten with SINTx = 0 in message mode: disabled (KVM).
  h.wrmsr(COUNT(2), 100n);
  h.wrmsr(CONFIG(2), cfg({ enable: true, periodic: true, sintx: SINT1 }));
  h.wrmsr(CONFIG(2), cfg({ enable: true, periodic: true, sintx: 0 }));
  expect(h.rdmsr(CONFIG(2)) & 1n).toBe(0n);
  expect(stimerNextDeadline(h.p)).toBeUndefined();
});

test('RsvdZ bits in CONFIG raise #GP and change nothing; a periodic timer with COUNT 0 does not run', () => {
  const h = setup();
  h.wrmsr(COUNT(0), 10n);
  h.wrmsr(CONFIG(0), cfg({ enable: true, periodic: true, sintx: SINT1 }));
  const before = stimerNextDeadline(h.p);
  for (const bad of [1n << 13n, 1n << 20n, 1n << 63n])
    expect(h.p.writeMsr(h.vp, CONFIG(0), cfg({ enable: true, sintx: SINT1 }) | bad)).toEqual({ exception: 13 });
  expect(h.rdmsr(CONFIG(0))).toBe(cfg({ enable: true, periodic: true, sintx: SINT1 }));
  expect(stimerNextDeadline(h.p)).toBe(before);
  h.wrmsr(CONFIG(1), cfg({ enable: true, periodic: true, sintx: SINT1 }));
  expect(stimerNextDeadline(h.p)).toBe(before);
});

test('timers are per VP; the next deadline is the earliest of all; none once the partition crashed', () => {
  const h = setup();
  const vp1 = h.p.vp(1);
  h.wrmsr(HvMsr.HV_X64_MSR_SIMP, 0x12000n | 1n, vp1);
  h.wrmsr(HvMsr.HV_X64_MSR_SCONTROL, 1n, vp1);
  h.wrmsr(h.sintMsr(SINT1), 0x41n, vp1);
  h.wrmsr(COUNT(0), 500n, vp1);
  h.wrmsr(CONFIG(0), cfg({ enable: true, sintx: SINT1 }), vp1);
  h.wrmsr(COUNT(0), 900n);
  h.wrmsr(CONFIG(0), cfg({ enable: true, sintx: SINT1 }));
  expect(h.rdmsr(COUNT(0), vp1)).toBe(500n);
  expect(stimerNextDeadline(h.p)).toBe(500n);
  h.clock.now = 0n;
  stimerExpire(h.p, 600n);
  expect(h.raised).toEqual([{ vp: 1, vtl: 0, vector: 0x41, autoEoi: false }]);
  expect(stimerNextDeadline(h.p)).toBe(900n);
  h.p.crash('test');
  expect(stimerNextDeadline(h.p)).toBeUndefined();
  stimerExpire(h.p, 1000n);
  expect(h.raised).toHaveLength(1);
});
