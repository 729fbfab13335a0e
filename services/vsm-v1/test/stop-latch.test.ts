// The stream loops' "next message or the stream's end" (services/vsm-v1/src/stop-latch.ts): a latch
// keeps only the waits pending now, never one per message read (Promise.race with a promise pending
// for the stream's life kept ≈300 bytes per message).
import { StopLatch, abortLatch } from '../src/stop-latch';

test('a race resolves with the promise when it settles first, and leaves nothing behind', async () => {
  const l = new StopLatch<'stop'>();
  for (let i = 0; i < 10_000; i++) {
    const r = l.race(Promise.resolve(i));
    expect(l.pending).toBe(1);
    await expect(r).resolves.toBe(i);
    expect(l.pending).toBe(0);
  }
  await expect(l.race(Promise.reject(new Error('bad message')))).rejects.toThrow('bad message');
  expect(l.pending).toBe(0);
});

test('stop wakes every pending race with its value, once; later races resolve with it at once', async () => {
  const l = new StopLatch<string>();
  const never = new Promise<number>(() => undefined);
  const a = l.race(never);
  const b = l.race(never);
  expect(l.pending).toBe(2);
  l.stop('deleted');
  l.stop('crashed'); // the first stop wins
  await expect(a).resolves.toBe('deleted');
  await expect(b).resolves.toBe('deleted');
  expect(l.pending).toBe(0);
  await expect(l.race(Promise.resolve(1))).resolves.toBe('deleted');
});

test('abortLatch: stops when the signal aborts, or at once for an aborted signal', async () => {
  const c = new AbortController();
  const l = abortLatch(c.signal, 'aborted' as const);
  const r = l.race(new Promise<number>(() => undefined));
  c.abort();
  await expect(r).resolves.toBe('aborted');
  const done = new AbortController();
  done.abort();
  await expect(abortLatch(done.signal, 'gone').race(Promise.resolve(5))).resolves.toBe('gone');
});
