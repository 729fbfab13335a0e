// Forked by the emulator suite: the real vsm-service (emulator backend) on 127.0.0.1:0, in its own
// process as in production. `--metrics`: with the process's metrics on, as --metrics-listen makes
// them (every call counted and timed, the backend observed, the endpoint on a loopback port).
import pino from 'pino';
import { CoreBackend, VsmMetrics, rpcTelemetry, startMetricsServer, startServer } from '@vsm/vsm-v1';
import { announceReady, exitWithParent } from '../lib/serve';

const backend = new CoreBackend();
let metrics: VsmMetrics | undefined;
if (process.argv.includes('--metrics')) {
  metrics = new VsmMetrics();
  metrics.observeBackend(backend);
  void startMetricsServer({ listen: '127.0.0.1:0', metrics, ready: () => true });
}

startServer({ listen: '127.0.0.1:0', backend, logger: pino({ level: 'silent' }), telemetry: rpcTelemetry(metrics, undefined) }).then(
  (srv) => {
    exitWithParent(() => srv.server.forceShutdown());
    announceReady(srv.port, { backend: 'emulator' });
  },
  (e: Error) => {
    process.stderr.write(`vsm-emulator-server: ${e.message}\n`);
    process.exit(1);
  },
);
