// service layer, security: limits on long-lived calls. Server streams and bidi streams
// (WatchVtlTransitions, Monitor) hold resources until the client goes away, so their number is
// bounded in total and per client (the authenticated principal, else the peer's address).
export interface StreamLimits {
  /** Concurrent streams over all clients (default 256). */
  maxStreams?: number;
  /** Concurrent streams of one client (default 64). */
  maxStreamsPerClient?: number;
}

export const DEFAULT_STREAM_LIMITS = { maxStreams: 256, maxStreamsPerClient: 64 } as const;

export class StreamLimiter {
  readonly maxStreams: number;
  readonly maxStreamsPerClient: number;
  private total = 0;
  private readonly perClient = new Map<string, number>();

  constructor(l: StreamLimits = {}) {
    this.maxStreams = l.maxStreams ?? DEFAULT_STREAM_LIMITS.maxStreams;
    this.maxStreamsPerClient = l.maxStreamsPerClient ?? DEFAULT_STREAM_LIMITS.maxStreamsPerClient;
  }

  /** Takes a slot for `client`, or returns why not. The returned release is idempotent. */
  acquire(client: string): { ok: true; release: () => void } | { ok: false; why: string } {
    const mine = this.perClient.get(client) ?? 0;
    if (mine >= this.maxStreamsPerClient)
      return { ok: false, why: `too many concurrent streams for client ${client} (limit ${this.maxStreamsPerClient}); close some first` };
    if (this.total >= this.maxStreams) return { ok: false, why: `too many concurrent streams on this server (limit ${this.maxStreams}); retry later` };
    this.total++;
    this.perClient.set(client, mine + 1);
    let released = false;
    return {
      ok: true,
      release: () => {
        if (released) return;
        released = true;
        this.total--;
        const n = (this.perClient.get(client) ?? 1) - 1;
        if (n <= 0) this.perClient.delete(client);
        else this.perClient.set(client, n);
      },
    };
  }

  get active(): number {
    return this.total;
  }
}

/** The client part of a grpc-js peer string (`1.2.3.4:5678`, `[::1]:5678`) without the port. */
export function peerHost(peer: string): string {
  const m = /^\[([^\]]+)\]:\d+$/.exec(peer) ?? /^([^:]+):\d+$/.exec(peer);
  return m ? m[1]! : peer;
}

/**
 * Bytes of request messages still being received (a message whose length prefix arrived but not
 * all of its bytes), per client and in total. grpc-js buffers a message until it is complete; a
 * client that starts many 8 MiB requests and never finishes them would otherwise hold that memory
 * for as long as it likes. A call that would go over either bound is refused RESOURCE_EXHAUSTED.
 */
export interface RequestBudgetLimits {
  /** All clients together (default 256 MiB). */
  maxBytes?: number;
  /** One client: the authenticated principal, else the peer's address (default 64 MiB). */
  maxBytesPerClient?: number;
}

export const DEFAULT_REQUEST_BUDGET = { maxBytes: 256 * 1024 * 1024, maxBytesPerClient: 64 * 1024 * 1024 } as const;

export class RequestBudget {
  readonly maxBytes: number;
  readonly maxBytesPerClient: number;
  private total = 0;
  private readonly perClient = new Map<string, number>();

  constructor(l: RequestBudgetLimits = {}) {
    this.maxBytes = l.maxBytes ?? DEFAULT_REQUEST_BUDGET.maxBytes;
    this.maxBytesPerClient = l.maxBytesPerClient ?? DEFAULT_REQUEST_BUDGET.maxBytesPerClient;
  }

  /** Takes `n` more bytes for `client`, or says why not (nothing is taken then). */
  take(client: string, n: number): { ok: true } | { ok: false; why: string } {
    const mine = this.perClient.get(client) ?? 0;
    if (mine + n > this.maxBytesPerClient)
      return {
        ok: false,
        why: `requests of client ${client} still being received would hold more than ${this.maxBytesPerClient} bytes; finish or cancel some first`,
      };
    if (this.total + n > this.maxBytes)
      return { ok: false, why: `requests still being received on this server would hold more than ${this.maxBytes} bytes; retry later` };
    this.total += n;
    this.perClient.set(client, mine + n);
    return { ok: true };
  }

  give(client: string, n: number): void {
    if (n <= 0) return;
    this.total -= n;
    const left = (this.perClient.get(client) ?? n) - n;
    if (left <= 0) this.perClient.delete(client);
    else this.perClient.set(client, left);
  }

  get held(): number {
    return this.total;
  }
  heldBy(client: string): number {
    return this.perClient.get(client) ?? 0;
  }
}

/**
 * Follows the gRPC length-prefixed framing of a request body (1 byte flags, 4 bytes big-endian
 * length, then the message) chunk by chunk, and reports how many bytes of the message currently
 * being received have arrived: what grpc-js holds for it until it is complete.
 */
export class FrameTracker {
  private header = Buffer.alloc(5);
  private headerFill = 0;
  private remaining = 0;
  /** Bytes of the incomplete message (header included) received so far. */
  partial = 0;

  /** Consumes a chunk; returns the change of `partial` (negative when a message completed). */
  push(chunk: Buffer): number {
    const before = this.partial;
    let i = 0;
    while (i < chunk.length) {
      if (this.headerFill < 5) {
        const n = Math.min(5 - this.headerFill, chunk.length - i);
        chunk.copy(this.header, this.headerFill, i, i + n);
        this.headerFill += n;
        this.partial += n;
        i += n;
        if (this.headerFill === 5) {
          this.remaining = this.header.readUInt32BE(1);
          if (this.remaining === 0) this.complete();
        }
        continue;
      }
      const n = Math.min(this.remaining, chunk.length - i);
      this.remaining -= n;
      this.partial += n;
      i += n;
      if (this.remaining === 0) this.complete();
    }
    return this.partial - before;
  }

  private complete(): void {
    this.headerFill = 0;
    this.partial = 0;
  }
}
