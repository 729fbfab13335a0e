// service layer: where the process's JSON log lines go. A small asynchronous writer to a file
// descriptor (stdout by default) that can never keep the process alive or block it:
//   - writes go through fs.write one at a time (a slow reader costs a thread-pool write, never the
//     event loop); at most `maxPendingBytes` wait, later lines are dropped and counted;
//   - a write error other than EAGAIN (EPIPE once the reader is gone, EBADF, ...) turns logging off
//     for good: nothing is retried, nothing loops;
//   - no exit hook: shutdown calls flush(timeout) before exiting, which resolves at the latest after
//     the timeout.
// (pino's own destination, sonic-boom, flushes synchronously in a process 'exit' hook and retries a
// failed write every 100 ms forever when the pipe is broken: SIGTERM then never ended the process.)
import * as fs from 'node:fs';

export class FdLogDestination {
  private readonly queue: Buffer[] = [];
  private pendingBytes = 0;
  private writing = false;
  private waiters: (() => void)[] = [];
  /** Set once a write failed for good; everything after is dropped. */
  broken: NodeJS.ErrnoException | undefined;
  /** Lines dropped because too much was pending or the destination broke. */
  dropped = 0;

  constructor(
    private readonly fd = 1,
    private readonly maxPendingBytes = 8 * 1024 * 1024,
  ) {}

  write(line: string): boolean {
    if (this.broken) {
      this.dropped++;
      return true;
    }
    const b = Buffer.from(line, 'utf8');
    if (this.pendingBytes + b.length > this.maxPendingBytes) {
      this.dropped++;
      return false;
    }
    this.queue.push(b);
    this.pendingBytes += b.length;
    this.pump();
    return this.pendingBytes < this.maxPendingBytes / 2;
  }

  private pump(): void {
    if (this.writing || this.broken) return;
    if (this.queue.length === 0) {
      for (const w of this.waiters.splice(0)) w();
      return;
    }
    const chunk = this.queue.length === 1 ? this.queue[0]! : Buffer.concat(this.queue);
    this.queue.length = 0;
    this.writing = true;
    const attempt = (buf: Buffer) =>
      fs.write(this.fd, buf, 0, buf.length, null, (err, n) => {
        if (err) {
          if (err.code === 'EAGAIN') return void setTimeout(() => attempt(buf), 10).unref();
          this.writing = false;
          this.broken = err;
          this.dropped += 1 + this.queue.length;
          this.queue.length = 0;
          this.pendingBytes = 0;
          for (const w of this.waiters.splice(0)) w();
          return;
        }
        if (n < buf.length) return attempt(buf.subarray(n));
        this.writing = false;
        this.pendingBytes -= chunk.length;
        this.pump();
      });
    attempt(chunk);
  }

  /** Resolves once everything written so far is out, the destination broke, or after `timeoutMs`. */
  flush(timeoutMs = 1000): Promise<void> {
    if (this.broken || (!this.writing && this.queue.length === 0)) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, timeoutMs);
      t.unref();
      this.waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }
}
