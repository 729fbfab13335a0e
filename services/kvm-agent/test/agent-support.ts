// Test support for the KVM agent suites: a real vsm.v1 server over KvmBackend on an ephemeral
// loopback port (what test/support/server.ts does for the emulator); the /dev/kvm gate is the shared
// one of test/support/kvm-gate.ts, re-exported.
import pino from 'pino';
import { connect, type VsmClient, VsmError } from '@vsm/client';
import { type Backend, type RunningServer, startServer } from '@vsm/vsm-v1';
import { KvmBackend } from '@vsm/vsm-v1';
import { describeKvm, kvmTest, kvmUnavailableReason } from '../../../test/support/kvm-gate';

export const GiB = 1n << 30n;

/** Why the real-KVM suites cannot run here (undefined = they can): the shared gate's reason. */
export const kvmUnavailable = kvmUnavailableReason();

/** The shared KVM gate (test/support/kvm-gate.ts): skips with the reason, fails when VSM_REQUIRE_KVM=1. */
export { describeKvm, kvmTest };

export interface AgentHarness {
  client: VsmClient;
  address: string;
  backend: Backend;
  stop(): Promise<void>;
}

export async function startAgent(backend: Backend = new KvmBackend()): Promise<AgentHarness> {
  const srv: RunningServer = await startServer({ listen: '127.0.0.1:0', backend, logger: pino({ level: 'silent' }), shutdownGraceMs: 500 });
  const client = connect(srv.address, { deadlineMs: 10_000 });
  return {
    client,
    address: srv.address,
    backend,
    async stop() {
      client.close();
      await srv.shutdown('test');
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
