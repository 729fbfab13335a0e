// service layer: the StreamSink behind every server stream (WatchVtlTransitions, Monitor), with
// back-pressure and a per-stream cap on what the client has not taken yet.
//
// Messages are encoded when written and kept in the sink's own queue; only a few at a time are
// handed to grpc-js (whose buffer cannot be emptied). write() returns false once the backlog
// reaches the high-water mark and drained() resolves when it is empty again, so a producer that
// honours back-pressure never holds more than that. A producer that cannot wait (intercepts are
// pushed to monitors as they happen) is bounded by the cap: once the unsent backlog would exceed
// `maxBytes` or `maxMessages`, or nothing was taken by the client for `stallMs` while a backlog
// waited, the stream is ended with RESOURCE_EXHAUSTED (the client lagged) and the queue is dropped.
// Whatever was dropped is not lost for a monitor: intercepts stay pending in the partition and go to
// the next monitor, flagged redelivered.
import type { StreamSink } from './backend';

export interface StreamBufferLimits {
  /** Unsent bytes per stream before it is ended (default 16 MiB). */
  maxBytes?: number;
  /** Unsent messages per stream before it is ended (default 4096). */
  maxMessages?: number;
  /** How long a backlog may wait with the client taking nothing before the stream is ended (default 30 s). */
  stallMs?: number;
  /**
   * After the stream was ended for lagging, how long the client gets to take the rest and the
   * status before the HTTP/2 stream is reset (RST_STREAM ENHANCE_YOUR_CALM = RESOURCE_EXHAUSTED
   * for gRPC clients) and its buffers freed (default 10 s).
   */
  resetAfterMs?: number;
}

export const DEFAULT_STREAM_BUFFER = { maxBytes: 16 * 1024 * 1024, maxMessages: 4096, stallMs: 30_000, resetAfterMs: 10_000 } as const;

/** What the sink needs from a grpc-js server stream. */
export interface WritableCall {
  write(chunk: Buffer, cb: (err?: Error | null) => void): boolean;
}

/** Handed to grpc-js at once, at most (bytes are the sum of whole messages; one may be larger). */
const IN_FLIGHT_MESSAGES = 16;
const IN_FLIGHT_BYTES = 256 * 1024;
/** write() returns false from this backlog on (capped by the limits). */
const HIGH_WATER_MESSAGES = 64;
const HIGH_WATER_BYTES = 1024 * 1024;

export class BoundedSink<T> implements StreamSink<T> {
  private readonly queue: Buffer[] = [];
  private queuedBytes = 0;
  private inFlight = 0;
  private inFlightBytes = 0;
  private closed = false;
  private drainWaiters: (() => void)[] = [];
  private stallTimer: NodeJS.Timeout | undefined;
  private lastProgress = Date.now();
  readonly maxBytes: number;
  readonly maxMessages: number;
  private readonly stallMs: number;
  private readonly hwmBytes: number;
  private readonly hwmMessages: number;
  /** Messages and bytes the client took (grpc-js wrote them to the HTTP/2 stream). */
  sentMessages = 0;

  constructor(
    private readonly call: WritableCall,
    private readonly encode: (m: T) => Buffer,
    limits: StreamBufferLimits,
    /** Called once when the cap or the stall timeout ends the stream. */
    private readonly onLag: (why: string) => void,
    signal: AbortSignal,
  ) {
    this.maxBytes = limits.maxBytes ?? DEFAULT_STREAM_BUFFER.maxBytes;
    this.maxMessages = limits.maxMessages ?? DEFAULT_STREAM_BUFFER.maxMessages;
    this.stallMs = limits.stallMs ?? DEFAULT_STREAM_BUFFER.stallMs;
    this.hwmBytes = Math.min(HIGH_WATER_BYTES, this.maxBytes);
    this.hwmMessages = Math.min(HIGH_WATER_MESSAGES, this.maxMessages);
    if (signal.aborted) this.close();
    else signal.addEventListener('abort', () => this.close(), { once: true });
  }

  get pendingMessages(): number {
    return this.queue.length + this.inFlight;
  }
  get pendingBytes(): number {
    return this.queuedBytes + this.inFlightBytes;
  }

  write(msg: T): boolean {
    if (this.closed) return false;
    const b = this.encode(msg);
    if (this.pendingMessages + 1 > this.maxMessages || this.pendingBytes + b.length > this.maxBytes) {
      this.lag(
        `the client did not take its responses: ${this.pendingMessages} messages (${this.pendingBytes} bytes) were still unsent, ` +
          `over the per-stream limit of ${this.maxMessages} messages / ${this.maxBytes} bytes; the client lagged, the stream is ended (read faster, or reconnect)`,
      );
      return false;
    }
    // The stall clock runs from when a backlog starts, not from the last message of a quiet stream.
    if (this.pendingMessages === 0) this.lastProgress = Date.now();
    this.queue.push(b);
    this.queuedBytes += b.length;
    this.pump();
    const below = this.pendingMessages < this.hwmMessages && this.pendingBytes < this.hwmBytes;
    if (!below) this.armStall();
    return below;
  }

  drained(): Promise<void> {
    if (this.closed || this.pendingMessages === 0) return Promise.resolve();
    return new Promise((res) => this.drainWaiters.push(res));
  }

  private pump(): void {
    while (
      !this.closed &&
      this.queue.length > 0 &&
      this.inFlight < IN_FLIGHT_MESSAGES &&
      (this.inFlight === 0 || this.inFlightBytes + this.queue[0]!.length <= IN_FLIGHT_BYTES)
    ) {
      const b = this.queue.shift()!;
      this.queuedBytes -= b.length;
      this.inFlight++;
      this.inFlightBytes += b.length;
      this.call.write(b, () => {
        this.inFlight--;
        this.inFlightBytes -= b.length;
        this.sentMessages++;
        this.lastProgress = Date.now();
        this.pump();
        if (this.pendingMessages === 0) this.wake();
      });
    }
  }

  /** While a backlog waits, checks that the client keeps taking messages. */
  private armStall(): void {
    if (this.stallTimer || this.closed) return;
    const check = () => {
      this.stallTimer = undefined;
      if (this.closed || this.pendingMessages === 0) return;
      const idle = Date.now() - this.lastProgress;
      if (idle >= this.stallMs) {
        this.lag(
          `the client took none of its ${this.pendingMessages} unsent responses (${this.pendingBytes} bytes) for ${Math.round(idle / 1000)} s; the client lagged, the stream is ended`,
        );
        return;
      }
      this.stallTimer = setTimeout(check, this.stallMs - idle);
      this.stallTimer.unref();
    };
    this.stallTimer = setTimeout(check, Math.max(1, this.stallMs - (Date.now() - this.lastProgress)));
    this.stallTimer.unref();
  }

  private lag(why: string): void {
    if (this.closed) return;
    this.close();
    this.onLag(why);
  }

  private wake(): void {
    for (const w of this.drainWaiters.splice(0)) w();
  }

  /** No more writes: the queue is dropped, waiters are released. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.queuedBytes = 0;
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = undefined;
    this.wake();
  }
}
