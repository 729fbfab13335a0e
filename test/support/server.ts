// Test support: start the real vsm-service (or use VSM_ADDRESS / the backend chosen by
// VSM_BACKEND) on an ephemeral loopback port and connect the generated client to it.
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { connect, type pb, type VsmClient, VsmError } from '@vsm/client';
import { type Backend, CoreBackend, KvmBackend, RemoteBackend, startServer, type RunningServer } from '@vsm/vsm-v1';
import { kvmUnavailableReason } from './kvm-gate';

export interface Harness {
  client: VsmClient;
  address: string;
  backend: string;
  stop(): Promise<void>;
}

/** Why the chosen backend cannot run here (the conformance suite then reports the tests skipped). */
export function backendUnavailable(): string | undefined {
  const backend = process.env.VSM_BACKEND ?? 'emulator';
  if (backend === 'emulator') return undefined;
  if (backend !== 'agent') return `VSM_BACKEND=${backend} is not a backend (emulator or agent)`;
  const why = kvmUnavailableReason();
  return why === undefined ? undefined : `VSM_BACKEND=agent needs KVM: ${why}`;
}

/**
 * VSM_BACKEND=emulator (default): the service with the in-process emulator.
 * VSM_BACKEND=agent: a KVM host agent (KvmBackend on /dev/kvm) on its own loopback port, and the
 * service in front of it with the agent backend, as deployed.
 */
export async function startHarness(): Promise<Harness> {
  const backend = process.env.VSM_BACKEND ?? 'emulator';
  const why = backendUnavailable();
  if (why) throw new Error(why);
  const logger = pino({ level: 'silent' });
  const servers: RunningServer[] = [];
  let front: Backend = new CoreBackend();
  if (backend === 'agent') {
    const agent = await startServer({ listen: '127.0.0.1:0', backend: new KvmBackend(), logger, shutdownGraceMs: 500 });
    servers.push(agent);
    front = new RemoteBackend([agent.address]);
  }
  const srv = await startServer({ listen: '127.0.0.1:0', backend: front, logger, shutdownGraceMs: 500 });
  servers.unshift(srv);
  const client = connect(srv.address, { deadlineMs: 10_000 });
  return {
    client,
    address: srv.address,
    backend,
    async stop() {
      client.close();
      for (const s of servers) await s.shutdown('test');
    },
  };
}

/** Awaits a rejected call and returns its VsmError (fails the test if the call succeeded). */
export async function failure(p: Promise<unknown>): Promise<VsmError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof VsmError) return e;
    throw e;
  }
  throw new Error('expected the call to fail, but it succeeded');
}

/**
 * The standard gRPC health check of a server (grpc.health.v1.Health/Check, empty service name):
 * the ServingStatus number (1 SERVING, 2 NOT_SERVING) or `error CODE` when the call failed.
 */
export async function healthStatus(address: string): Promise<number | string> {
  const Client = grpc.makeGenericClientConstructor({}, 'Health');
  const c = new Client(address, grpc.credentials.createInsecure());
  try {
    return await new Promise((resolve) => {
      c.makeUnaryRequest(
        '/grpc.health.v1.Health/Check',
        (x: Buffer) => x,
        (b: Buffer) => b,
        Buffer.alloc(0),
        new grpc.Metadata(),
        { deadline: Date.now() + 5000 },
        (err: grpc.ServiceError | null, res?: Buffer) => resolve(err ? `error ${err.code}` : (res?.[1] ?? 0)),
      );
    });
  } finally {
    c.close();
  }
}

/**
 * ListAgents of a fleet-mode replica, or none while the replica has not loaded from etcd yet (it
 * answers UNAVAILABLE then, health NOT_SERVING): for waits on agents right after a replica starts.
 */
export async function listFleetAgents(c: VsmClient): Promise<pb.Agent[]> {
  try {
    return (await c.fleet.listAgents({})).agents;
  } catch (e) {
    if (e instanceof VsmError && e.code === grpc.status.UNAVAILABLE) return [];
    throw e;
  }
}

export const GiB = 1n << 30n;
