// StreamConsole's pull loop (backends/execution.ts followConsole) against the platform's ConsoleHub and
// a sink whose back-pressure the test controls: a watcher that takes nothing holds at most the sink's
// high-water mark and never holds the guest back (the hub keeps taking output); once it drains it
// reads on from its own position, and bytes no longer kept show as a jump in the offsets; the end
// comes after every byte written before it; abort ends the stream without an end message.
import { ConsoleHub } from '@vsm/platform-kvm';
import type { pb } from '@vsm/api';
import type { StreamSink } from '../src/backend';
import { CONSOLE_MESSAGE_BYTES, followConsole, type GuestRunEnd } from '../src/backends/execution';

/** A sink that accepts `budget` messages, then reports back-pressure until release(). */
class ControlledSink implements StreamSink<pb.StreamConsoleResponse> {
  readonly got: pb.StreamConsoleResponse[] = [];
  private waiters: (() => void)[] = [];
  constructor(public budget: number) {}
  write(m: pb.StreamConsoleResponse): boolean {
    this.got.push(m);
    this.budget--;
    return this.budget > 0;
  }
  drained(): Promise<void> {
    return this.budget > 0 ? Promise.resolve() : new Promise((r) => this.waiters.push(r));
  }
  release(budget: number): void {
    this.budget = budget;
    for (const w of this.waiters.splice(0)) w();
  }
  chunks(): { offset: bigint; text: string }[] {
    return this.got.flatMap((m) => (m.kind?.$case === 'chunk' ? [{ offset: m.kind.value.offset, text: Buffer.from(m.kind.value.data).toString() }] : []));
  }
  end(): pb.GuestRunEnd | undefined {
    const last = this.got.at(-1)?.kind;
    return last?.$case === 'end' ? last.value : undefined;
  }
}

/** Lets the stream's promise reactions run. */
const settle = () => new Promise((r) => setImmediate(r));
const END: GuestRunEnd = { state: 'stopped', exitCode: 3, reason: 'debug exit', vpIndex: 0, at: new Date(1_700_000_000_000) };

describe('followConsole', () => {
  test('history from an offset, then live output, then the end after the last byte', async () => {
    const hub = new ConsoleHub();
    hub.push(Buffer.from('hello '));
    const sink = new ControlledSink(1000);
    let end: GuestRunEnd | undefined;
    const done = followConsole(hub, 2n, () => end, sink, new AbortController().signal);
    await settle();
    hub.push(Buffer.from('world'));
    await settle();
    hub.push(Buffer.from('!'));
    end = END;
    hub.end();
    await done;
    expect(
      sink
        .chunks()
        .map((c) => c.text)
        .join(''),
    ).toBe('llo world!');
    expect(sink.chunks()[0]!.offset).toBe(2n);
    expect(sink.end()).toEqual({ state: 5, exitCode: 3, reason: 'debug exit', vpIndex: 0, endTimeUnixMs: 1_700_000_000_000n });
  });

  test("a watcher that takes nothing holds the sink's bound only; later it reads on and sees the gap of what was no longer kept", async () => {
    const hub = new ConsoleHub(64); // keeps the last 64 bytes
    const sink = new ControlledSink(2);
    const done = followConsole(hub, undefined, () => END, sink, new AbortController().signal);
    await settle();
    hub.push(Buffer.from('a'.repeat(10)));
    await settle();
    hub.push(Buffer.from('b'.repeat(10)));
    await settle();
    // Back-pressure now: the guest goes on writing, the stream writes nothing more.
    for (let i = 0; i < 100; i++) hub.push(Buffer.from(`line ${String(i).padStart(3, '0')}\n`));
    await settle();
    expect(sink.got.length).toBe(2);
    expect(hub.written).toBe(20n + 900n);
    sink.release(1000);
    hub.end();
    await done;
    const chunks = sink.chunks();
    expect(chunks.slice(0, 2)).toEqual([
      { offset: 0n, text: 'a'.repeat(10) },
      { offset: 10n, text: 'b'.repeat(10) },
    ]);
    // The rest starts at the oldest byte the hub still kept: a jump past the bytes it dropped.
    const rest = chunks.slice(2);
    expect(rest[0]!.offset).toBe(hub.oldestKept);
    expect(rest[0]!.offset).toBeGreaterThan(20n);
    expect(rest.map((c) => c.text).join('')).toBe(Buffer.concat(hub.history(hub.oldestKept).map((c) => Buffer.from(c.data))).toString());
    expect(sink.end()?.exitCode).toBe(3);
  });

  test('contiguous output is merged into messages of at most CONSOLE_MESSAGE_BYTES', async () => {
    const hub = new ConsoleHub(1 << 20);
    for (let i = 0; i < 300; i++) hub.push(Buffer.alloc(1000, 0x41 + (i % 26)));
    hub.end();
    const sink = new ControlledSink(1000);
    await followConsole(hub, 0n, () => END, sink, new AbortController().signal);
    const chunks = sink.got.flatMap((m) => (m.kind?.$case === 'chunk' ? [m.kind.value] : []));
    expect(chunks.every((c) => c.data.length <= CONSOLE_MESSAGE_BYTES)).toBe(true);
    expect(chunks.length).toBe(Math.ceil(300_000 / CONSOLE_MESSAGE_BYTES));
    let at = 0n;
    for (const c of chunks) {
      expect(c.offset).toBe(at);
      at += BigInt(c.data.length);
    }
    expect(at).toBe(300_000n);
  });

  test('abort ends the stream without an end message and unsubscribes', async () => {
    const hub = new ConsoleHub();
    const sink = new ControlledSink(1000);
    const ac = new AbortController();
    const done = followConsole(hub, undefined, () => END, sink, ac.signal);
    await settle();
    expect(hub.watchers).toBe(1);
    hub.push(Buffer.from('x'));
    await settle();
    ac.abort();
    await done;
    expect(hub.watchers).toBe(0);
    expect(sink.chunks()).toEqual([{ offset: 0n, text: 'x' }]);
    expect(sink.end()).toBeUndefined();
  });
});
