// Forked by the snapshot-stream suite: the real vsm-service (emulator backend) on 127.0.0.1:0 in its
// own process, as vsm-emulator-server.ts, so that its RSS is the service's alone. Started with
// --expose-gc: SIGUSR2 runs two full garbage collections (the suite's "collected baseline" variant);
// nothing else differs from production.
import pino from 'pino';
import { CoreBackend, startServer } from '@vsm/vsm-v1';
import { announceReady, exitWithParent } from '../lib/serve';

const gc = (globalThis as { gc?: () => void }).gc;
process.on('SIGUSR2', () => {
  gc?.();
  gc?.();
});

// VSM_BENCH_MEMLOG=ms: the process's memory every ms milliseconds on stderr (for finding what grows).
const memlog = Number(process.env.VSM_BENCH_MEMLOG ?? 0);
if (memlog > 0) {
  const MiB = 1 << 20;
  setInterval(() => {
    const m = process.memoryUsage();
    process.stderr.write(
      `mem ${Date.now() % 1e6} rss ${(m.rss / MiB).toFixed(0)} heap ${(m.heapUsed / MiB).toFixed(0)}/${(m.heapTotal / MiB).toFixed(0)} external ${(m.external / MiB).toFixed(0)} arrayBuffers ${(m.arrayBuffers / MiB).toFixed(0)}\n`,
    );
  }, memlog).unref();
}

startServer({ listen: '127.0.0.1:0', backend: new CoreBackend(), logger: pino({ level: 'silent' }) }).then(
  (srv) => {
    exitWithParent(() => srv.server.forceShutdown());
    announceReady(srv.port, { backend: 'emulator', gc: gc !== undefined });
  },
  (e: Error) => {
    process.stderr.write(`vsm-snapshot-server: ${e.message}\n`);
    process.exit(1);
  },
);
