// A server stream whose handler writes a burst and returns at once still delivers every message: the
// wrapper waits for the sink to drain before it ends the call (before the fix, ending aborted the sink and
// dropped what it still queued: the tail of a stream, e.g. ExportPartition's trailer through the agent
// proxy). The backend here is the emulator's with one stream RPC replaced.
import pino from 'pino';
import { connect, pb } from '@vsm/client';
import { CoreBackend, startServer } from '@vsm/vsm-v1';
import type { StreamSink } from '../src/backend';

const MESSAGES = 3000;

class BurstBackend extends CoreBackend {
  override async streamConsole(_r: pb.StreamConsoleRequest, sink: StreamSink<pb.StreamConsoleResponse>): Promise<void> {
    // Far more than the sink's in-flight window, written without waiting for back-pressure.
    for (let i = 0; i < MESSAGES; i++) sink.write({ kind: { $case: 'chunk', value: { offset: BigInt(i * 16), data: Buffer.alloc(16, i & 0xff) } } });
    sink.write({ kind: { $case: 'end', value: pb.GuestRunEnd.fromPartial({ state: pb.RunState.RUN_STATE_STOPPED, exitCode: 0, reason: 'burst' }) } });
  }
}

test('every message written before the handler returned reaches the client, the last one included', async () => {
  const srv = await startServer({ listen: '127.0.0.1:0', backend: new BurstBackend(), logger: pino({ level: 'silent' }), shutdownGraceMs: 500 });
  const client = connect(srv.address, { deadlineMs: 30_000 });
  try {
    let chunks = 0;
    let end: pb.GuestRunEnd | undefined;
    for await (const m of client.execution.streamConsole({ name: 'partitions/any' })) {
      if (m.kind?.$case === 'chunk') {
        expect(m.kind.value.offset).toBe(BigInt(chunks * 16));
        chunks++;
      } else if (m.kind?.$case === 'end') end = m.kind.value;
    }
    expect(chunks).toBe(MESSAGES);
    expect(end?.reason).toBe('burst');
  } finally {
    client.close();
    await srv.shutdown('test');
  }
}, 60_000);
