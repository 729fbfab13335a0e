// Hardening (issue #19, finding 4, transport side): a Monitor that never reads its responses
// cannot make the service grow without bound. The stream's sink has a per-stream cap on unsent
// responses; past it (or when the client takes nothing for the stall timeout while a backlog
// waits) the stream ends with RESOURCE_EXHAUSTED saying the client lagged, and the service stops
// reading that client's requests meanwhile. Intercepts it did not take stay pending and go to the
// next monitor.
import { connect, pb, type VsmClient } from '@vsm/client';
import { spawnService, type ChildService } from '../support/child-service';
import { waitFor } from '../support/wait';
import { type LogLine, VTL1_LAYOUT, setupVtl1Partition, startSecured } from './support';
import { MiB, frame, openCall, sampleRss, writeWithin } from './raw-grpc';

const clients: VsmClient[] = [];
afterAll(() => {
  for (const c of clients) c.close();
});
const subscribeBytes = (name: string) =>
  frame(pb.MonitorRequest.encode(pb.MonitorRequest.fromPartial({ kind: { $case: 'subscribe', value: { name, accessMask: 0 } } })).finish());

test('intercepts pushed to a monitor that reads nothing: the stream ends RESOURCE_EXHAUSTED at the cap, the intercepts stay pending for the next monitor', async () => {
  const { srv, lines } = await startSecured({ streamBuffer: { maxMessages: 8, resetAfterMs: 2000 } });
  try {
    const c = connect(srv.address, { retries: 0, deadlineMs: 60_000 });
    clients.push(c);
    const vpCount = 24;
    const { name, vps } = await setupVtl1Partition(c, 'bp', vpCount, Buffer.from('secret'));
    await c.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
    // A monitor that subscribes and then reads nothing at all.
    const m = openCall(srv.address, '/vsm.v1.InterceptService/Monitor', { paused: true });
    m.stream.write(subscribeBytes(name));
    await waitFor('the monitor to be registered', () => srv.guard.streams.active === 1);
    // Every VP writes 64 KiB to the protected page: each write intercepts and waits for a monitor.
    const data = Buffer.alloc(64 * 1024, 0x5a);
    const writes = vps.map((vp) =>
      c.guest.writeMemory({ name: vp, gpa: VTL1_LAYOUT.secretGpa, data }).then(
        () => 'ok',
        (e: Error) => e.message,
      ),
    );
    await waitFor('all intercepts pending', async () => (await c.intercepts.listPendingIntercepts({ name })).intercepts.length === vpCount);
    // The cap (8 unsent messages here) ended the stream: logged, slot returned.
    await waitFor('the lagging stream to end', () => lines.some((l) => l.msg === 'stream ended' && l.code === 8));
    const ended = lines.find((l) => l.msg === 'stream ended' && l.code === 8) as LogLine;
    expect(ended.error).toMatch(
      /^the client did not take its responses: 8 messages \(\d+ bytes\) were still unsent, over the per-stream limit of 8 messages \/ 16777216 bytes; the client lagged/,
    );
    await waitFor('the slot to come back', () => srv.guard.streams.active === 0);
    // The client reads nothing, so it gets no trailers either: the HTTP/2 stream is reset
    // (ENHANCE_YOUR_CALM, which gRPC clients read as RESOURCE_EXHAUSTED) after the grace period.
    const how = await m.ended;
    expect(how.grpcStatus === 8 || how.rstCode === 11).toBe(true);
    m.session.destroy();
    // Nothing was lost: monitors that read get every intercept and answer them (one monitor per
    // VP here: with a cap of 8 unsent messages, the redelivery of all 24 at once would not fit).
    const pending = (await c.intercepts.listPendingIntercepts({ name })).intercepts;
    expect(pending).toHaveLength(vpCount);
    const seen: bigint[] = [];
    for (let vp = 0; vp < vpCount; vp++) {
      const good = c.intercepts.monitor();
      good.send({ kind: { $case: 'subscribe', value: { name, accessMask: 0, vpIndex: vp } as pb.MonitorSubscribe } });
      for await (const ev of good.events) {
        if (ev.kind?.$case !== 'intercept') continue;
        seen.push(ev.kind.value.interceptId);
        good.send({
          kind: {
            $case: 'reply',
            value: { interceptId: ev.kind.value.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_SKIP, data: Buffer.alloc(0) } as pb.InterceptReply,
          },
        });
        good.close();
      }
    }
    expect(seen.sort()).toEqual(pending.map((x) => x.interceptId).sort());
    expect(await Promise.all(writes)).toEqual(Array(vpCount).fill('ok'));
  } finally {
    await srv.shutdown('test');
  }
}, 120_000);

describe('the service process (RSS)', () => {
  let svc: ChildService;
  beforeAll(async () => {
    svc = await spawnService(['--stream-stall-timeout-ms', '2000'], { name: 'vsm-service (backpressure)' });
  });
  afterAll(async () => {
    await svc?.stop();
  });

  test('a monitor that sends update_events as fast as it can and never reads: memory stays bounded, the stream ends RESOURCE_EXHAUSTED', async () => {
    const c = connect(svc.address, { retries: 0, deadlineMs: 30_000 });
    clients.push(c);
    await c.partitions.createPartition({ partitionId: 'flood', partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 } as pb.Partition });
    const pid = svc.child.pid!;
    const m = openCall(svc.address, '/vsm.v1.InterceptService/Monitor', { paused: true });
    m.stream.write(subscribeBytes('partitions/flood'));
    // ~6,000 update_events per 64 KiB write; up to 1 million in all (before the fix: +~200 MiB).
    const one = frame(
      pb.MonitorRequest.encode(
        pb.MonitorRequest.fromPartial({ kind: { $case: 'updateEvents', value: { op: pb.EventMaskOp.EVENT_MASK_OP_ENABLE, accessMask: 2 } } }),
      ).finish(),
    );
    const perChunk = Math.floor((64 * 1024) / one.length);
    const chunk = Buffer.concat(Array(perChunk).fill(one));
    await new Promise((r) => setTimeout(r, 200));
    const base = (await import('./raw-grpc')).rssOf(pid);
    const rss = sampleRss(pid);
    let sent = 0;
    // Write until the service stops taking requests (flow control: no progress for 3 s) or ends the stream.
    while (sent < 1_000_000 && (await writeWithin(m.stream, chunk, 3000))) sent += perChunk;
    // Now read: the responses that were sent, then the end of the stream.
    m.stream.on('data', () => undefined);
    m.stream.resume();
    const how = await m.ended;
    const peak = rss.stop();
    m.session.destroy();
    console.log(`update_events sent ${sent}; service RSS ${Math.round(base / MiB)} MiB -> peak ${Math.round(peak / MiB)} MiB; ended ${JSON.stringify(how)}`);
    expect(how.grpcStatus === 8 || how.rstCode === 11).toBe(true);
    if (how.grpcStatus === 8) expect(how.grpcMessage).toMatch(/the client lagged/);
    expect(peak - base).toBeLessThan(100 * MiB);
    // The service is fine afterwards.
    expect((await c.partitions.getPartition({ name: 'partitions/flood' })).name).toBe('partitions/flood');
  }, 180_000);
});
