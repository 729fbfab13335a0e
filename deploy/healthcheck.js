#!/usr/bin/env node
// gRPC health probe for the images' HEALTHCHECK and the compose healthchecks: calls
// grpc.health.v1.Health/Check and exits 0 when the status is SERVING, 1 otherwise (reason on
// stderr). No extra binary (grpc_health_probe): it uses the app's own @grpc/grpc-js,
// @grpc/proto-loader and grpc-health-check's health.proto, resolved from /app/node_modules.
//
//   node deploy/healthcheck.js [ADDRESS]
//
// ADDRESS: the argument, else VSM_HEALTH_ADDRESS, else VSM_LISTEN (what the service and the
// agent listen on), else 127.0.0.1:50051. A wildcard listen host (0.0.0.0, [::]) is probed on
// loopback; `unix:/path` works too. VSM_HEALTH_SERVICE names the service to check (default ''
// = the whole server); VSM_HEALTH_TIMEOUT_MS bounds the call (default 3000).
'use strict';
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function target(raw) {
  return raw.replace(/^0\.0\.0\.0:/, '127.0.0.1:').replace(/^\[::\]:/, '[::1]:');
}

const address = target(process.argv[2] || process.env.VSM_HEALTH_ADDRESS || process.env.VSM_LISTEN || '127.0.0.1:50051');
const service = process.env.VSM_HEALTH_SERVICE || '';
const timeoutMs = Number(process.env.VSM_HEALTH_TIMEOUT_MS || 3000);

function fail(msg) {
  process.stderr.write(`healthcheck ${address}: ${msg}\n`);
  process.exit(1);
}

let Health;
try {
  const protoPath = path.join(path.dirname(require.resolve('grpc-health-check/package.json')), 'proto/health/v1/health.proto');
  const def = protoLoader.loadSync(protoPath, { keepCase: true, enums: String, defaults: true });
  Health = grpc.loadPackageDefinition(def).grpc.health.v1.Health;
} catch (e) {
  fail(`cannot load health.proto: ${e instanceof Error ? e.message : String(e)}`);
}

const client = new Health(address, grpc.credentials.createInsecure());
client.Check({ service }, { deadline: Date.now() + timeoutMs }, (err, res) => {
  client.close();
  if (err) fail(`${grpc.status[err.code] || err.code}: ${err.details || err.message}`);
  if (res.status !== 'SERVING') fail(`status ${res.status}`);
  process.stdout.write(`healthcheck ${address}: SERVING\n`);
  process.exit(0);
});
