// vsm.v1 implementation, observability: the HTTP endpoint of a process's metrics and probes
// (--metrics-listen HOST:PORT, VSM_METRICS_LISTEN; off by default):
//   GET /metrics   the Prometheus text exposition
//   GET /livez     200 while the process's event loop runs (Kubernetes liveness)
//   GET /readyz    200 while the gRPC server serves, 503 before it listens and once shutdown began
//                  (Kubernetes readiness)
// The same rule as the gRPC port: plaintext only on loopback, unless TLS (the process's certificate
// and key, served as HTTPS and re-read when the files change) or an explicit opt-in
// (--metrics-insecure-allow-remote, or --insecure-allow-remote that already allows the gRPC port).
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import type { Logger } from 'pino';
import { isLoopbackListen, listenHost } from '../security/tls';
import type { VsmMetrics } from './metrics';

export interface MetricsServerOptions {
  listen: string;
  metrics: VsmMetrics;
  /** Whether the process serves (readiness). */
  ready: () => boolean;
  /** Serve HTTPS with this certificate and key. */
  tls?: { certFile: string; keyFile: string };
  /** Plaintext on a non-loopback address was explicitly allowed. */
  allowInsecureRemote?: boolean;
  logger?: Logger;
}

export interface RunningMetricsServer {
  port: number;
  /** http(s)://HOST:PORT */
  url: string;
  close(): Promise<void>;
}

export const METRICS_PLAINTEXT_REMOTE_REFUSED = (listen: string) =>
  `refusing to serve metrics in plaintext on the non-loopback address ${listen}: configure TLS (--tls-cert/--tls-key), ` +
  'or pass --metrics-insecure-allow-remote (or --insecure-allow-remote) to accept unencrypted remote scrapes';

export async function startMetricsServer(opts: MetricsServerOptions): Promise<RunningMetricsServer> {
  const m = /^(.*):(\d{1,5})$/.exec(opts.listen);
  if (!m) throw new Error(`--metrics-listen must be HOST:PORT, got ${JSON.stringify(opts.listen)}`);
  if (!opts.tls && !opts.allowInsecureRemote && !isLoopbackListen(opts.listen)) throw new Error(METRICS_PLAINTEXT_REMOTE_REFUSED(opts.listen));
  const host = listenHost(opts.listen);
  const handler: http.RequestListener = (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/metrics') {
      opts.metrics.text().then(
        (body) => res.writeHead(200, { 'content-type': opts.metrics.registry.contentType }).end(req.method === 'HEAD' ? undefined : body),
        (e: unknown) => {
          opts.logger?.error({ err: e }, 'metrics collection failed');
          res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics collection failed\n');
        },
      );
      return;
    }
    if (path === '/livez' || path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      return;
    }
    if (path === '/readyz') {
      const ok = opts.ready();
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ready\n' : 'not ready\n');
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: /metrics, /livez, /readyz\n');
  };
  let server: http.Server | https.Server;
  let watching: string[] = [];
  if (opts.tls) {
    const tls = opts.tls;
    const material = () => ({ cert: fs.readFileSync(tls.certFile), key: fs.readFileSync(tls.keyFile) });
    const s = https.createServer(material(), handler);
    // New certificates take effect for new connections (as the gRPC port's do).
    const reload = () => {
      try {
        s.setSecureContext(material());
      } catch (e) {
        opts.logger?.warn({ err: e }, 'metrics endpoint: the TLS files could not be re-read; keeping the previous certificate');
      }
    };
    watching = [tls.certFile, tls.keyFile];
    for (const f of watching) fs.watchFile(f, { interval: 2000, persistent: false }, reload);
    server = s;
  } else {
    server = http.createServer(handler);
  }
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(m[2]), host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : Number(m[2]);
  const url = `${opts.tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`;
  opts.logger?.info({ url, paths: ['/metrics', '/livez', '/readyz'] }, 'metrics endpoint listening');
  return {
    port,
    url,
    close: () =>
      new Promise<void>((resolve) => {
        for (const f of watching) fs.unwatchFile(f);
        server.close(() => resolve());
        server.closeAllConnections?.();
      }),
  };
}
