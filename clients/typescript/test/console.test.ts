// captureConsole: a StreamConsole stream read into text (latin1) and the run's end.
import { captureConsole, pb } from '@vsm/client';

async function* stream(msgs: pb.StreamConsoleResponse[], fail?: Error): AsyncIterable<pb.StreamConsoleResponse> {
  for (const m of msgs) {
    await Promise.resolve();
    yield m;
  }
  if (fail) throw fail;
}
const chunk = (s: string) => pb.StreamConsoleResponse.fromPartial({ kind: { $case: 'chunk', value: { data: Buffer.from(s, 'latin1') } } });

describe('captureConsole', () => {
  test('collects the chunks in order and the end, text readable while it runs', async () => {
    const end = pb.GuestRunEnd.fromPartial({ exitCode: 2 });
    const c = captureConsole(stream([chunk('PASS '), chunk('\xe9t\xe9'), pb.StreamConsoleResponse.fromPartial({ kind: { $case: 'end', value: end } })]));
    expect(c.text).toBe('');
    expect(await c.done).toEqual(end);
    expect(c.text).toBe('PASS \xe9t\xe9');
    expect(c.end).toEqual(end);
  });

  test('a stream without an end settles with undefined; a failing stream rejects with its error', async () => {
    expect(await captureConsole(stream([chunk('x')])).done).toBeUndefined();
    const c = captureConsole(stream([chunk('partial')], new Error('stream broke')));
    await expect(c.done).rejects.toThrow('stream broke');
    expect(c.text).toBe('partial');
  });
});
