// @vsm/client: a guest's console read from ExecutionService.StreamConsole into text.
import type { pb } from '@vsm/api';

/** A console stream being read: its text so far (bytes as latin1) and, once the stream ended, the run's end. */
export interface ConsoleCapture {
  /** Everything printed so far. */
  readonly text: string;
  /** The run's end, once the stream carried it. */
  readonly end: pb.GuestRunEnd | undefined;
  /** Settles when the stream ends (rejects with its error), with the run's end if it carried one. */
  readonly done: Promise<pb.GuestRunEnd | undefined>;
}

/** Reads `stream` (client.execution.streamConsole(...)) to its end in the background. */
export function captureConsole(stream: AsyncIterable<pb.StreamConsoleResponse>): ConsoleCapture {
  const c = { text: '', end: undefined as pb.GuestRunEnd | undefined, done: undefined as unknown as Promise<pb.GuestRunEnd | undefined> };
  c.done = (async () => {
    for await (const m of stream) {
      if (m.kind?.$case === 'chunk') c.text += Buffer.from(m.kind.value.data).toString('latin1');
      else if (m.kind?.$case === 'end') c.end = m.kind.value;
    }
    return c.end;
  })();
  return c;
}
