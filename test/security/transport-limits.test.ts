// Hardening (issue #19, finding 9): grpc.health.v1.Health/Watch streams need no credentials, so
// they are counted per peer address and in total (beyond: RESOURCE_EXHAUSTED); every connection
// advertises an HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS. And the transport flags parse.
import * as http2 from 'node:http2';
import { parseConfig, UsageError } from '@vsm/vsm-v1';
import { waitFor } from '../support/wait';
import { startSecured } from './support';
import { frame, openCall } from './raw-grpc';

/** HealthCheckRequest { service } encoded by hand (field 1, string). */
const healthRequest = (service: string) => frame(Buffer.concat([Buffer.from([0x0a, service.length]), Buffer.from(service)]));

test('health watches are bounded per peer (default 16) and in total; refused ones get RESOURCE_EXHAUSTED; slots come back', async () => {
  const { srv } = await startSecured();
  try {
    const session = http2.connect(`http://${srv.address}`);
    session.on('error', () => undefined);
    session.setMaxListeners(0);
    // 40 watches on one connection, each for a different (unknown) service name. An accepted watch
    // answers at once with the current status; a refused one ends.
    const watches = Array.from({ length: 40 }, (_, i) => {
      const c = openCall(srv.address, '/grpc.health.v1.Health/Watch', { session });
      const first = new Promise<'accepted'>((r) => c.stream.once('data', () => r('accepted')));
      c.stream.end(healthRequest(`svc-${i}`));
      return { c, outcome: Promise.race([first, c.ended]) };
    });
    const refused = await Promise.all(watches.map((w) => w.outcome));
    const open = refused.filter((r) => r === 'accepted').length;
    expect(open).toBe(16);
    expect(srv.guard.healthWatches.active).toBe(16);
    const ended = refused.filter((r) => r !== 'accepted') as { grpcStatus?: number; grpcMessage?: string }[];
    expect(ended).toHaveLength(24);
    expect(ended.every((r) => r.grpcStatus === 8)).toBe(true);
    expect(ended[0]!.grpcMessage).toBe('too many concurrent health watches for client peer:127.0.0.1 (limit 16); close some first');
    session.destroy();
    await waitFor('the watches to be released', () => srv.guard.healthWatches.active === 0);
  } finally {
    await srv.shutdown('test');
  }
}, 60_000);

test('each connection advertises SETTINGS_MAX_CONCURRENT_STREAMS (default 1000, or as configured)', async () => {
  for (const [opt, want] of [
    [undefined, 1000],
    [32, 32],
  ] as const) {
    const { srv } = await startSecured(opt === undefined ? {} : { maxConcurrentStreams: opt });
    try {
      const session = http2.connect(`http://${srv.address}`);
      const settings = await new Promise<http2.Settings>((resolve) => session.once('remoteSettings', resolve));
      expect(settings.maxConcurrentStreams).toBe(want);
      session.destroy();
    } finally {
      await srv.shutdown('test');
    }
  }
});

test('transport flags and their environment variables', () => {
  const t = parseConfig(
    [
      '--max-request-bytes',
      '96M',
      '--max-request-bytes-per-client',
      '32M',
      '--max-stream-buffer',
      '4M',
      '--max-stream-buffer-messages',
      '100',
      '--stream-stall-timeout-ms',
      '5000',
      '--first-message-timeout-ms',
      '2000',
      '--max-health-watches',
      '8',
      '--max-concurrent-streams',
      '50',
    ],
    {},
  ).transport;
  expect(t).toEqual({
    maxRequestBytes: 96 << 20,
    maxRequestBytesPerClient: 32 << 20,
    maxStreamBufferBytes: 4 << 20,
    maxStreamBufferMessages: 100,
    streamStallMs: 5000,
    firstMessageTimeoutMs: 2000,
    maxHealthWatches: 8,
    maxConcurrentStreams: 50,
  });
  expect(parseConfig([], { VSM_FIRST_MESSAGE_TIMEOUT_MS: '3000', VSM_MAX_STREAM_BUFFER: '1M' }).transport).toMatchObject({
    firstMessageTimeoutMs: 3000,
    maxStreamBufferBytes: 1 << 20,
  });
  expect(parseConfig([], {}).transport).toEqual({});
  expect(() => parseConfig(['--first-message-timeout-ms', '5'], {})).toThrow(UsageError);
  expect(() => parseConfig(['--max-stream-buffer', '1000'], {})).toThrow(/--max-stream-buffer must be a positive multiple of 4096 bytes/);
  expect(() => parseConfig(['--max-concurrent-streams', '0'], {})).toThrow(/--max-concurrent-streams must be an integer 1\.\./);
});
