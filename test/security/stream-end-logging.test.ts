// Hardening (issue #19, finding 13, logging part): a stream the client ends - its deadline passes,
// or it cancels - is the client's doing: logged at debug as CANCELLED, never as a
// server failure (`internal error: Premature close`, code 13).
import * as http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { pb } from '@vsm/client';
import { waitFor } from '../support/wait';
import { type LogLine, captureLogger, partitionSpec } from './support';
import { CoreBackend, type RunningServer, startServer } from '@vsm/vsm-v1';

let srv: RunningServer;
let lines: LogLine[];
beforeAll(async () => {
  const cap = captureLogger('debug');
  lines = cap.lines;
  srv = await startServer({ listen: '127.0.0.1:0', backend: new CoreBackend(), logger: cap.logger, shutdownGraceMs: 200 });
});
afterAll(() => srv.shutdown('test'));

test('Monitor and WatchVtlTransitions ended by the client (deadline, cancel) are never logged as failures', async () => {
  const client = new pb.InterceptServiceClient(srv.address, grpc.credentials.createInsecure());
  const vtl = new pb.VtlServiceClient(srv.address, grpc.credentials.createInsecure());
  const parts = new pb.PartitionServiceClient(srv.address, grpc.credentials.createInsecure());
  await new Promise<void>((res, rej) =>
    parts.createPartition(pb.CreatePartitionRequest.fromPartial({ partitionId: 'le', partition: partitionSpec() }), (e) => (e ? rej(e) : res())),
  );
  const subscribe = pb.MonitorRequest.fromPartial({ kind: { $case: 'subscribe', value: { name: 'partitions/le', accessMask: 0 } } });
  const ended = () => lines.filter((l) => l.msg === 'stream closed').length;
  const rounds = 10;
  const codes: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const before = ended();
    // 1. The client's deadline passes while the server waits for the monitor's next message.
    const m = client.monitor(new grpc.Metadata(), { deadline: Date.now() + 150 + (i % 3) * 50 });
    m.write(subscribe);
    codes.push(
      await new Promise<number>((resolve) => {
        m.on('data', () => undefined);
        m.on('error', (e: grpc.ServiceError) => resolve(e.code));
      }),
    );
    // 2. The client cancels a monitor right after subscribing.
    const c = client.monitor();
    c.on('error', () => undefined);
    c.on('data', () => c.cancel());
    c.write(subscribe);
    // 3. A watch whose deadline passes.
    const w = vtl.watchVtlTransitions(pb.WatchVtlTransitionsRequest.fromPartial({ name: 'partitions/le' }), new grpc.Metadata(), {
      deadline: Date.now() + 100,
    });
    w.on('data', () => undefined);
    codes.push(await new Promise<number>((resolve) => w.on('error', (e: grpc.ServiceError) => resolve(e.code))));
    // 4. A client that sets a deadline (grpc-timeout) but never cancels: the server's own deadline
    //    timer ends the call while the monitor waits for the next request.
    codes.push(await rawMonitorWithServerDeadline(srv.address, pb.MonitorRequest.encode(subscribe).finish()));
    await waitFor('the four streams to close on the server', () => ended() >= before + 4);
  }
  expect(codes).toEqual(Array(rounds * 3).fill(grpc.status.DEADLINE_EXCEEDED));
  // Nothing at warn or above, no INTERNAL, no "Premature close" anywhere.
  expect(lines.filter((l) => l.level >= 40)).toEqual([]);
  expect(lines.filter((l) => l.code === grpc.status.INTERNAL || /Premature close|internal error/i.test(JSON.stringify(l)))).toEqual([]);
  // Each client-ended stream is one debug line with CANCELLED.
  const byClient = lines.filter((l) => l.msg === 'stream ended by the client');
  expect(byClient.length).toBeGreaterThanOrEqual(rounds * 3);
  expect(byClient.every((l) => l.level === 20 && l.code === grpc.status.CANCELLED)).toBe(true);
  client.close();
  vtl.close();
  parts.close();
}, 120_000);

/** A Monitor over raw HTTP/2 with `grpc-timeout: 200m` that never cancels; resolves with the grpc-status the server ends it with. */
function rawMonitorWithServerDeadline(address: string, subscribe: Uint8Array): Promise<number> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://${address}`);
    session.on('error', reject);
    const req = session.request({
      ':method': 'POST',
      ':path': '/vsm.v1.InterceptService/Monitor',
      'content-type': 'application/grpc',
      te: 'trailers',
      'grpc-timeout': '200m',
    });
    const frame = Buffer.alloc(5 + subscribe.length);
    frame.writeUInt32BE(subscribe.length, 1);
    Buffer.from(subscribe).copy(frame, 5);
    req.write(frame);
    req.on('data', () => undefined);
    req.on('error', reject);
    // The trailers end the call; this client never ends its own side, so it closes the session.
    req.on('trailers', (t) => {
      session.destroy();
      resolve(Number(t['grpc-status']));
    });
    req.on('close', () => {
      session.destroy();
      reject(new Error('the stream closed without trailers'));
    });
  });
}
