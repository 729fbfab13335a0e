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
    if (mine >= this.maxStreamsPerClient) return { ok: false, why: `too many concurrent streams for client ${client} (limit ${this.maxStreamsPerClient}); close some first` };
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
