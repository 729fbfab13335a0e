// Forked by the raw-grpc suite: a grpc-js server with the raw echo service on 127.0.0.1:0.
import * as grpc from '@grpc/grpc-js';
import { rawEchoDefinition, rawEchoImplementation } from '../lib/raw-echo';
import { announceReady, exitWithParent } from '../lib/serve';

const server = new grpc.Server();
server.addService(rawEchoDefinition, rawEchoImplementation);
exitWithParent(() => server.forceShutdown());
server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) {
    process.stderr.write(`raw-echo-server: bind failed: ${err.message}\n`);
    process.exit(1);
  }
  announceReady(port, { grpcJs: (require('@grpc/grpc-js/package.json') as { version: string }).version });
});
