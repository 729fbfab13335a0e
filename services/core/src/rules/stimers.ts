// core, rules: the synthetic timers STIMER0..3 of each VP in each VTL (TLFS timers.md; MSRs
// tlfs-intercepts.md §7.1; message tlfs-overlays-synic.md §5.7) and the SynIC acknowledgement
// (EOM) that retries their held messages. The core keeps no timer of its own: the platform arms one
// host timer at stimerNextDeadline(p), calls stimerExpire(p, now) when it fires, and is told through
// PlatformHooks.onTimerChange whenever the deadlines may have changed.
//
// Semantics follow KVM (arch/x86/kvm/hyperv.c), which kvm-unit-tests' hyperv_stimer checks:
// - CONFIG write: the timer stops (held message dropped); an enabled message-mode timer written with
//   SINTx = 0 is disabled; if Enable is set it starts.
// - COUNT write: the timer stops; COUNT = 0 clears Enable, otherwise AutoEnable sets it; if
//   enabled it starts.
// - start: periodic fires at now + COUNT; one-shot at COUNT (absolute reference time; already in
//   the past: due at once). A timer with COUNT = 0 does not run.
// - expiry: message mode places HvMessageTimerExpired {TimerIndex, ExpirationTime, DeliveryTime} in
//   SINTx's slot from the timer's own buffer; direct mode raises ApicVector (no AutoEOI). On
//   success a one-shot clears Enable and a periodic re-arms at the next multiple of its period
//   after now (ticks missed meanwhile are not replayed). A one-shot whose slot is busy sets
//   MessagePending in it and waits for EOM (or SCONTROL/SIMP being enabled) to retry; a periodic
//   whose slot is busy drops that tick (KVM's "lazy" no-retry). A disabled SynIC or SIM page holds
//   either kind until the acknowledgement.
// - Lazy is stored and reads back; like KVM it changes nothing.
import { requestInterrupt } from './interrupts';
import type { PartitionState } from '../state/partition';
import type { SyntheticTimer, VirtualProcessor } from '../state/vp';
import { type Vtl, VTLS } from '../vtl-array';
import { HV_STIMER_ENABLE, HvStimerConfigLayout } from '../tlfs/msr';
import { HvMessageType, HvTimerMessagePayloadLayout, encodeHvMessage } from '../tlfs/message';
import { referenceTime } from './time';
import { rescan, synicView } from './synic';

const C = HvStimerConfigLayout;
/** STIMERx_CONFIG bits 15:13 and 63:20: RsvdZ. */
const CONFIG_RSVDZ = BigInt.asUintN(64, ~C.definedMask);

function notify(p: PartitionState): void {
  p.spec.platform?.onTimerChange?.();
}

function cleanup(t: SyntheticTimer): void {
  t.expiration = undefined;
  t.messagePending = false;
}

function start(p: PartitionState, vp: VirtualProcessor, t: SyntheticTimer): void {
  if (t.count === 0n) return;
  t.expiration = C.unpack(t.config).periodic ? referenceTime(p, vp.index) + t.count : t.count;
}

/** Whether the timer is waiting for its deadline (the platform's host timer covers it). */
function armed(t: SyntheticTimer): boolean {
  return (t.config & HV_STIMER_ENABLE) !== 0n && t.count !== 0n && t.expiration !== undefined && !t.messagePending;
}

/** RDMSR of STIMERindex_CONFIG / _COUNT of (vp, vtl). */
export function readStimer(vp: VirtualProcessor, vtl: Vtl, index: number, reg: 'config' | 'count'): bigint {
  const t = vp.vtls.get(vtl).stimers[index]!;
  return reg === 'config' ? t.config : t.count;
}

/** WRMSR of STIMERindex_CONFIG / _COUNT of (vp, vtl). Returns false (#GP, nothing changed) for RsvdZ bits set in CONFIG. */
export function writeStimer(p: PartitionState, vp: VirtualProcessor, vtl: Vtl, index: number, reg: 'config' | 'count', value: bigint): boolean {
  const t = vp.vtls.get(vtl).stimers[index]!;
  if (reg === 'config') {
    if ((value & CONFIG_RSVDZ) !== 0n) return false;
    const wasEnabled = (t.config & HV_STIMER_ENABLE) !== 0n;
    const cfg = C.unpack(value);
    cleanup(t);
    if (wasEnabled && !cfg.directMode && cfg.sintx === 0) cfg.enable = false;
    t.config = C.pack(cfg);
  } else {
    cleanup(t);
    t.count = value;
    if (value === 0n) t.config &= ~HV_STIMER_ENABLE;
    else if (C.unpack(t.config).autoEnable) t.config |= HV_STIMER_ENABLE;
  }
  if ((t.config & HV_STIMER_ENABLE) !== 0n) start(p, vp, t);
  notify(p);
  return true;
}

/** The earliest deadline of an armed synthetic timer of the partition (reference time, 100 ns), if any. */
export function stimerNextDeadline(p: PartitionState): bigint | undefined {
  if (p.state !== 'active' || p.deleted) return undefined;
  let next: bigint | undefined;
  for (const vp of p.vps) {
    for (const vtl of VTLS) {
      const st = vp.vtls.get(vtl);
      if (!st.enabled) continue;
      for (const t of st.stimers) if (armed(t) && (next === undefined || t.expiration! < next)) next = t.expiration;
    }
  }
  return next;
}

/**
 * Fires every armed timer due at `now100ns` (reference time): messages and interrupts, periodic
 * timers re-armed, one-shots disabled, held messages marked (see the header). Calls onTimerChange
 * once if anything fired.
 */
export function stimerExpire(p: PartitionState, now100ns: bigint): void {
  if (p.state !== 'active' || p.deleted) return;
  let changed = false;
  for (const vp of p.vps) {
    for (const vtl of VTLS) {
      const st = vp.vtls.get(vtl);
      if (!st.enabled) continue;
      st.stimers.forEach((t, index) => {
        if (!armed(t) || now100ns < t.expiration!) return;
        expire(p, vp, vtl, index, t, now100ns);
        changed = true;
      });
    }
  }
  if (changed) notify(p);
}

function expire(p: PartitionState, vp: VirtualProcessor, vtl: Vtl, index: number, t: SyntheticTimer, now: bigint): void {
  const cfg = C.unpack(t.config);
  let done: boolean;
  if (cfg.directMode) {
    requestInterrupt(p, vp, vtl, cfg.apicVector, { autoEoi: false });
    done = true;
  } else {
    const message = encodeHvMessage(
      { messageType: HvMessageType.HvMessageTypeTimerExpired, payloadSize: HvTimerMessagePayloadLayout.size, messageFlags: 0, originationId: 0n },
      HvTimerMessagePayloadLayout.encode({ timerIndex: index, expirationTime: t.expiration!, deliveryTime: referenceTime(p, vp.index) }),
    );
    const r = vp.vtls.get(vtl).synic.place(synicView(p, vp, vtl), cfg.sintx, message, !cfg.periodic);
    done = r === 'delivered' || (r === 'busy' && cfg.periodic);
  }
  if (!done) {
    t.messagePending = true;
    return;
  }
  t.messagePending = false;
  if (!cfg.periodic) {
    t.config &= ~HV_STIMER_ENABLE;
    t.expiration = undefined;
  } else {
    const exp = t.expiration!;
    t.expiration = now < exp ? exp : now + (t.count - ((now - exp) % t.count));
  }
}

/**
 * The SynIC of (vp, vtl) was acknowledged: HV_X64_MSR_EOM written, or SCONTROL / SIMP written
 * (enabling them delivers what waits). Queued messages move into free slots (§5.4 rule 4), then
 * timers holding a message retry it.
 */
export function acknowledgeSynic(p: PartitionState, vp: VirtualProcessor, vtl: Vtl): void {
  rescan(p, vp, vtl);
  let retried = false;
  vp.vtls.get(vtl).stimers.forEach((t, index) => {
    if (!t.messagePending || (t.config & HV_STIMER_ENABLE) === 0n) return;
    expire(p, vp, vtl, index, t, referenceTime(p, vp.index));
    retried = true;
  });
  if (retried) notify(p);
}
