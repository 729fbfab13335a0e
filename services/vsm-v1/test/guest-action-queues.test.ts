// RunGuestActions runs each VP's actions in order from a per-VP queue (guest-action-stream.ts): the
// order holds for VPs whose queue empties between actions, and once a stream named more VPs than it
// keeps idle queues for (VP_QUEUES_KEPT, 1024), dropping the idle ones loses and reorders nothing.
import type { pb } from '@vsm/api';
import type { StreamSink } from '../src/backend';
import { type GuestActionMethods, runGuestActions } from '../src/guest-action-stream';

/** Executors that answer WriteMemory after a few turns of the event loop (others are not used). */
function methods(log: string[]): GuestActionMethods {
  const later = <T>(v: T, turns: number): Promise<T> => new Promise((res) => (turns === 0 ? setImmediate(() => res(v)) : setTimeout(() => res(v), turns)));
  const unused = () => Promise.reject(new Error('not used'));
  return {
    writeMsr: unused,
    readMsr: unused,
    hypercall: unused,
    callHypercallPage: unused,
    readMemory: unused,
    executeMemory: unused,
    writeControlRegister: unused,
    writeMemory: async (r) => {
      log.push(`start ${r.name} ${r.data[0]}`);
      await later(undefined, r.data[0]! % 3);
      log.push(`end ${r.name} ${r.data[0]}`);
      return { outcome: undefined };
    },
  } as GuestActionMethods;
}

async function* requests(list: pb.RunGuestActionsRequest[], pauseEvery: number): AsyncIterable<pb.RunGuestActionsRequest> {
  for (let i = 0; i < list.length; i++) {
    if (i % pauseEvery === 0) await new Promise((r) => setTimeout(r, 1));
    yield list[i]!;
  }
}

function write(name: string, byte: number, sequence: number): pb.RunGuestActionsRequest {
  return { sequence: BigInt(sequence), action: { $case: 'writeMemory', value: { name, gpa: 0n, data: Buffer.from([byte]), gva: undefined } } };
}

test('1,500 VPs named by one stream, three actions each, sent interleaved with pauses: every action answered once, each VP in order, never two of a VP at once', async () => {
  const log: string[] = [];
  const answers: pb.RunGuestActionsResponse[] = [];
  const sink: StreamSink<pb.RunGuestActionsResponse> = {
    write: (m) => {
      answers.push(m);
      return true;
    },
    drained: () => Promise.resolve(),
  };
  const VPS = 1500;
  const list: pb.RunGuestActionsRequest[] = [];
  let seq = 0;
  // Round k sends action k of every VP: each VP's queue empties and refills between rounds.
  for (let k = 0; k < 3; k++) for (let v = 0; v < VPS; v++) list.push(write(`partitions/p${v % 7}/vps/${v}`, k, seq++));
  await runGuestActions(methods(log), requests(list, 100), sink, new AbortController().signal, undefined, 10_000);
  expect(answers).toHaveLength(3 * VPS);
  expect(new Set(answers.map((a) => a.sequence)).size).toBe(3 * VPS);
  // Per VP: start 0, end 0, start 1, end 1, start 2, end 2 (in order, one at a time).
  const perVp = new Map<string, string[]>();
  for (const l of log) {
    const [what, name, b] = l.split(' ');
    perVp.set(name!, [...(perVp.get(name!) ?? []), `${what} ${b}`]);
  }
  expect(perVp.size).toBe(VPS);
  const expected = ['start 0', 'end 0', 'start 1', 'end 1', 'start 2', 'end 2'];
  const wrong = [...perVp].filter(([, seqOf]) => seqOf.join('|') !== expected.join('|'));
  expect(wrong).toEqual([]);
});
