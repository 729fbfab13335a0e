// Test support: gRPC over raw node:http2, for clients that behave as no gRPC library lets them -
// a stream whose responses are never read, a request body that is never finished - and the
// resident memory of a child process.
import * as fs from 'node:fs';
import * as http2 from 'node:http2';

/** One length-prefixed gRPC message (uncompressed). */
export function frame(msg: Uint8Array): Buffer {
  const b = Buffer.alloc(5 + msg.length);
  b.writeUInt32BE(msg.length, 1);
  Buffer.from(msg.buffer, msg.byteOffset, msg.length).copy(b, 5);
  return b;
}

export interface RawCall {
  session: http2.ClientHttp2Session;
  stream: http2.ClientHttp2Stream;
  /** Resolves when the call ended: the grpc-status from the trailers (or trailers-only headers), or the RST_STREAM code. */
  ended: Promise<{ grpcStatus?: number; grpcMessage?: string; rstCode?: number }>;
}

/**
 * Opens `path` on its own HTTP/2 connection (or on `session`). Responses are read and dropped;
 * with `paused`, nothing is read at all (until the caller resumes `stream`) and the server meets
 * HTTP/2 flow control once the window is full.
 */
export function openCall(
  address: string,
  path: string,
  opts: { token?: string; session?: http2.ClientHttp2Session; paused?: boolean; headers?: Record<string, string> } = {},
): RawCall {
  const session = opts.session ?? http2.connect(`http://${address}`);
  if (!opts.session) session.on('error', () => undefined);
  const stream = session.request({
    ':method': 'POST',
    ':path': path,
    'content-type': 'application/grpc',
    te: 'trailers',
    ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
    ...opts.headers,
  });
  stream.on('error', () => undefined);
  // Unless paused, responses are consumed (and dropped), so the stream can end.
  if (opts.paused) stream.pause();
  else stream.resume();
  const ended = new Promise<{ grpcStatus?: number; grpcMessage?: string; rstCode?: number }>((resolve) => {
    let status: number | undefined;
    let message: string | undefined;
    const take = (h: http2.IncomingHttpHeaders) => {
      if (h['grpc-status'] !== undefined) {
        status = Number(h['grpc-status']);
        message = decodeURIComponent(String(h['grpc-message'] ?? ''));
      }
    };
    stream.on('response', take);
    stream.on('trailers', take);
    stream.on('close', () => resolve(status !== undefined ? { grpcStatus: status, grpcMessage: message } : { rstCode: stream.rstCode }));
  });
  return { session, stream, ended };
}

/** Writes `chunk` and resolves when it was handed to the connection, or false if the stream ended or `ms` passed first. */
export function writeWithin(stream: http2.ClientHttp2Stream, chunk: Buffer, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (stream.closed || stream.destroyed || !stream.writable) return resolve(false);
    const t = setTimeout(() => resolve(false), ms);
    stream.write(chunk, (err) => {
      clearTimeout(t);
      resolve(!err);
    });
  });
}

/** Resident set size of process `pid` in bytes (Linux /proc). */
export function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/** Samples rssOf(pid) every `everyMs` until stop(); peak() is the largest sample. */
export function sampleRss(pid: number, everyMs = 50): { peak(): number; stop(): number } {
  let peak = rssOf(pid);
  const t = setInterval(() => {
    try {
      peak = Math.max(peak, rssOf(pid));
    } catch {
      /* exited */
    }
  }, everyMs);
  return {
    peak: () => peak,
    stop: () => {
      clearInterval(t);
      try {
        peak = Math.max(peak, rssOf(pid));
      } catch {
        /* exited */
      }
      return peak;
    },
  };
}

export const MiB = 1024 * 1024;
