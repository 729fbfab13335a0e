// Forked by the emulator suite: the real vsm-service (emulator backend) on 127.0.0.1:0, in its own
// process as in production.
import pino from 'pino';
import { CoreBackend, startServer } from '@vsm/vsm-v1';
import { announceReady, exitWithParent } from '../lib/serve';

startServer({ listen: '127.0.0.1:0', backend: new CoreBackend(), logger: pino({ level: 'silent' }) }).then(
  (srv) => {
    exitWithParent(() => srv.server.forceShutdown());
    announceReady(srv.port, { backend: 'emulator' });
  },
  (e: Error) => {
    process.stderr.write(`vsm-emulator-server: ${e.message}\n`);
    process.exit(1);
  },
);
