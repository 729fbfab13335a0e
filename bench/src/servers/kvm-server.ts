// Forked by the kvm-grpc suite: the real vsm-service server (startServer) over KvmBackend on
// 127.0.0.1:0, in its own process, as the KVM agent serves it (services/kvm-agent/src/main.ts
// adds only flags, health and shutdown handling around the same two calls).
import pino from 'pino';
import { KvmBackend } from '@vsm/vsm-v1';
import { startServer } from '@vsm/vsm-v1';
import { announceReady, exitWithParent } from '../lib/serve';

const why = KvmBackend.unavailableReason();
if (why !== undefined) {
  process.stderr.write(`kvm-server: KVM is not usable here: ${why}\n`);
  process.exit(1);
}
const backend = new KvmBackend();
startServer({ listen: '127.0.0.1:0', backend, logger: pino({ level: 'silent' }) }).then(
  (srv) => {
    exitWithParent(() => srv.server.forceShutdown());
    announceReady(srv.port, { backend: 'kvm' });
  },
  (e: Error) => {
    process.stderr.write(`kvm-server: ${e.message}\n`);
    process.exit(1);
  },
);
