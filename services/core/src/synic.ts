// core: the SynIC of one VP in one VTL (tlfs-overlays-synic.md §5): per-SINT message queues feeding
// the SIM page slots, MessagePending, EOM redelivery, and event flags in the SIEF page.
// Queues are bounded (SYNIC_QUEUE_LIMIT per SINT). When a queue is full, post() says so and the
// caller holds the source back (an intercepting VP stays suspended); nothing is ever dropped.
import { HV_MESSAGE_FLAG_MESSAGE_PENDING, HV_MESSAGE_SIZE, HV_SYNIC_SINT_COUNT, HV_EVENT_FLAGS_BYTE_COUNT, HV_EVENT_FLAGS_COUNT } from './tlfs/message';

export const SYNIC_QUEUE_LIMIT = 16;

export type PostResult = 'delivered' | 'queued' | 'full';

/** Where the SynIC's pages and enable bits live; supplied by the partition. */
export interface SynicView {
  /** SIM page (the SIMP overlay) if enabled. */
  simPage(): Buffer | undefined;
  /** SIEF page (the SIEFP overlay) if enabled. */
  siefPage(): Buffer | undefined;
  /** SCONTROL.Enable. */
  enabled(): boolean;
  /** SINTx register value. */
  sint(n: number): bigint;
  /**
   * SINTn is asserted (an edge): a message was just placed in its SIM slot or one of its event
   * flags was newly set. The partition raises the SINT's vector unless it is masked or polling.
   */
  assert?(sint: number): void;
}

/** What placing a message directly in a slot (a synthetic timer's own buffer) did. */
export type PlaceResult = 'delivered' | 'busy' | 'unavailable';

export class Synic {
  /** Messages waiting for their SIM slot, per SINT, oldest first. */
  readonly queues: Buffer[][] = Array.from({ length: HV_SYNIC_SINT_COUNT }, () => []);

  /** Queues a message for SINTn and delivers what the SIM page can take. */
  post(view: SynicView, sint: number, message: Buffer): PostResult {
    if (message.length !== HV_MESSAGE_SIZE) throw new RangeError('an HV_MESSAGE is 256 bytes');
    const q = this.queues[sint]!;
    if (q.length >= SYNIC_QUEUE_LIMIT) return 'full';
    // Nothing queued and the slot free (the usual case): straight into the slot, no queue copy.
    if (q.length === 0 && this.place(view, sint, message) === 'delivered') return 'delivered';
    q.push(Buffer.from(message));
    this.deliver(view, sint);
    return q.length === 0 ? 'delivered' : 'queued';
  }

  /** HV_X64_MSR_EOM: rescan every queue (tlfs-overlays-synic.md §5.4 rule 4). */
  eom(view: SynicView): void {
    for (let n = 0; n < HV_SYNIC_SINT_COUNT; n++) this.deliver(view, n);
  }

  /** Moves the head of SINTn's queue into its slot if the slot is free; otherwise marks MessagePending. */
  deliver(view: SynicView, sint: number): void {
    const q = this.queues[sint]!;
    if (q.length === 0) return;
    const page = view.simPage();
    if (!page || !view.enabled()) return; // stays queued: SynIC or SIM page disabled (rule 3)
    const slot = sint * HV_MESSAGE_SIZE;
    if (page.readUInt32LE(slot) !== 0) {
      page[slot + 5] = page[slot + 5]! | HV_MESSAGE_FLAG_MESSAGE_PENDING; // rule 5
      return;
    }
    const msg = q.shift()!;
    // More waiting behind this one: deliver it with MessagePending already set.
    if (q.length > 0) msg[5] = msg[5]! | HV_MESSAGE_FLAG_MESSAGE_PENDING;
    msg.copy(page, slot);
    view.assert?.(sint);
  }

  /**
   * Places `message` in SINTn's slot from a buffer of its own, outside the queue (a synthetic
   * timer's message, §5.4: one buffer per timer): 'delivered' (slot was free; SINTn asserted),
   * 'busy' (slot occupied: MessagePending is set in it unless `markPending` is false) or
   * 'unavailable' (SynIC or SIM page disabled).
   */
  place(view: SynicView, sint: number, message: Buffer, markPending = true): PlaceResult {
    if (message.length !== HV_MESSAGE_SIZE) throw new RangeError('an HV_MESSAGE is 256 bytes');
    const page = view.simPage();
    if (!page || !view.enabled()) return 'unavailable';
    const slot = sint * HV_MESSAGE_SIZE;
    if (page.readUInt32LE(slot) !== 0) {
      if (markPending) page[slot + 5] = page[slot + 5]! | HV_MESSAGE_FLAG_MESSAGE_PENDING;
      return 'busy';
    }
    message.copy(page, slot);
    // Queued messages wait behind it: the guest must write EOM after consuming this one.
    if (this.queues[sint]!.length > 0) page[slot + 5] = page[slot + 5]! | HV_MESSAGE_FLAG_MESSAGE_PENDING;
    view.assert?.(sint);
    return 'delivered';
  }

  /**
   * Sets event flag `flag` of SINTn in the SIEF page (HvCallSignalEvent semantics, §5.6). Returns
   * whether the bit was newly set (an interrupt would be raised), or a reason it could not be.
   */
  signalEvent(view: SynicView, sint: number, flag: number): boolean | 'disabled' | 'masked' {
    if (flag < 0 || flag >= HV_EVENT_FLAGS_COUNT) throw new RangeError('flag number out of range');
    const page = view.siefPage();
    if (!page || !view.enabled()) return 'disabled';
    if ((view.sint(sint) & (1n << 16n)) !== 0n) return 'masked';
    const byte = sint * HV_EVENT_FLAGS_BYTE_COUNT + (flag >> 3);
    const bit = 1 << (flag & 7);
    const was = (page[byte]! & bit) !== 0;
    page[byte] = page[byte]! | bit;
    if (!was) view.assert?.(sint);
    return !was;
  }

  get queuedCount(): number {
    return this.queues.reduce((a, q) => a + q.length, 0);
  }
}
