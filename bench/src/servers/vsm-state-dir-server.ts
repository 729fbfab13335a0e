// Forked by the state-dir suite: vsm-service's emulator backend with durable partitions in the state
// directory given as the first argument (what `vsm-service --state-dir DIR` runs), on 127.0.0.1:0.
import pino from 'pino';
import { CoreBackend, StateStore, persistentBackend, startServer } from '@vsm/vsm-v1';
import { announceReady, exitWithParent } from '../lib/serve';

const dir = process.argv[2];
if (!dir) {
  process.stderr.write('usage: vsm-state-dir-server DIR\n');
  process.exit(2);
}
const log = pino({ level: 'silent' });
const backend = persistentBackend(new CoreBackend(), new StateStore(dir), log);
startServer({ listen: '127.0.0.1:0', backend, logger: log }).then(
  (srv) => {
    exitWithParent(() => srv.server.forceShutdown());
    announceReady(srv.port, { backend: 'emulator', stateDir: dir });
  },
  (e: Error) => {
    process.stderr.write(`vsm-state-dir-server: ${e.message}\n`);
    process.exit(1);
  },
);
