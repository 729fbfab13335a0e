/**
 * platform (kvm), guests that run: a guest's console as watchers see it. Output is kept in a bounded
 * history (the last `historyBytes`), each byte with its absolute offset, so a watcher that joins late
 * gets what is still kept and then follows; any number of watchers, none can hold the guest back
 * (a watcher's own stream applies backpressure in the vsm.v1 layer, with its own bound).
 */

export interface ConsoleChunk {
  /** Offset of data[0] in the guest's whole output. */
  offset: bigint;
  data: Uint8Array;
}

export type ConsoleListener = (chunk: ConsoleChunk) => void;

export class ConsoleHub {
  private readonly chunks: ConsoleChunk[] = [];
  private kept = 0;
  private total = 0n;
  private readonly listeners = new Set<{ onData: ConsoleListener; onEnd: () => void }>();
  private ended = false;

  constructor(readonly historyBytes = 1 << 20) {}

  /** Bytes the guest wrote so far. */
  get written(): bigint {
    return this.total;
  }

  /** Offset of the oldest byte still kept. */
  get oldestKept(): bigint {
    return this.total - BigInt(this.kept);
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** A migrated guest's console: its offsets continue from the source's (only before any output). */
  continueAt(offset: bigint): void {
    if (this.total !== 0n || this.chunks.length) throw new Error('the console already has output');
    this.total = offset;
  }

  /** Appends guest output and tells every watcher. */
  push(data: Uint8Array): void {
    if (data.length === 0 || this.ended) return;
    const chunk = { offset: this.total, data: Uint8Array.from(data) };
    this.total += BigInt(data.length);
    this.chunks.push(chunk);
    this.kept += data.length;
    while (this.kept - (this.chunks[0]?.data.length ?? 0) >= this.historyBytes && this.chunks.length > 1) this.kept -= this.chunks.shift()!.data.length;
    for (const l of [...this.listeners]) l.onData(chunk);
  }

  /** The kept output from `offset` on (clamped to what is kept). */
  history(offset = 0n): ConsoleChunk[] {
    const out: ConsoleChunk[] = [];
    for (const c of this.chunks) {
      const end = c.offset + BigInt(c.data.length);
      if (end <= offset) continue;
      if (c.offset >= offset) out.push(c);
      else out.push({ offset, data: c.data.subarray(Number(offset - c.offset)) });
    }
    return out;
  }

  /**
   * Follows the console: first the kept history from `fromOffset` (if given), then new output.
   * `onEnd` is called when the guest's run ended (immediately if it already has). Returns the unsubscribe.
   */
  subscribe(onData: ConsoleListener, onEnd: () => void, fromOffset?: bigint): () => void {
    if (fromOffset !== undefined) for (const c of this.history(fromOffset)) onData(c);
    if (this.ended) {
      onEnd();
      return () => {};
    }
    const l = { onData, onEnd };
    this.listeners.add(l);
    return () => {
      this.listeners.delete(l);
    };
  }

  /** The run ended: every watcher is told, and later ones get the history and the end. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    for (const l of [...this.listeners]) l.onEnd();
    this.listeners.clear();
  }

  get watchers(): number {
    return this.listeners.size;
  }
}
