// service layer: waiting for a stream's next message OR the stream's end, per message, without
// leaking. `Promise.race([it.next(), ended])` adds a reaction to `ended` on every call, and a promise
// that stays pending for the stream's life keeps every one of them: ≈300 bytes per message read,
// 297 MiB after 10^6 messages of one Monitor or RunGuestActions stream (measured with
// `node --expose-gc`, heap after GC). A StopLatch keeps only the waiters pending right now.

/**
 * Fires once (stop), waking every `race` pending at that moment with the stop value; a `race` after
 * that resolves with it at once. Holds at most the waiters currently pending.
 */
export class StopLatch<S> {
  private stopped: { value: S } | undefined;
  /**
   * The waiters of the races pending now (usually one): an array, not a Set. A Set added to and
   * deleted from once per message rebuilds its hash table every few messages, and once the table
   * is in V8's old generation every rebuild is old-generation garbage (core id-map.ts).
   */
  private readonly waiting: ((v: S) => void)[] = [];

  /** Ends every pending and later race with `value` (the first call wins). */
  stop(value: S): void {
    if (this.stopped) return;
    this.stopped = { value };
    for (const w of this.waiting.splice(0)) w(value);
  }

  /** `p`'s outcome, or the stop value if the latch stops first. */
  race<T>(p: Promise<T>): Promise<T | S> {
    if (this.stopped) return Promise.resolve(this.stopped.value);
    return new Promise<T | S>((resolve, reject) => {
      const onStop = (v: S) => resolve(v);
      this.waiting.push(onStop);
      p.then(
        (v) => {
          this.forget(onStop);
          resolve(v);
        },
        (e: unknown) => {
          this.forget(onStop);
          reject(e);
        },
      );
    });
  }

  /** Races pending now (for tests: stays 0 between messages). */
  get pending(): number {
    return this.waiting.length;
  }

  private forget(w: (v: S) => void): void {
    const i = this.waiting.indexOf(w);
    if (i < 0) return;
    const last = this.waiting.pop()!;
    if (last !== w) this.waiting[i] = last;
  }
}

/** A latch stopped with `value` when `signal` aborts (at once if it already has). */
export function abortLatch<S>(signal: AbortSignal, value: S): StopLatch<S> {
  const l = new StopLatch<S>();
  if (signal.aborted) l.stop(value);
  else signal.addEventListener('abort', () => l.stop(value), { once: true });
  return l;
}
