// Test support: start the real vsm-service (or use VSM_ADDRESS / the backend chosen by
// VSM_BACKEND) on an ephemeral loopback port and connect the generated client to it.
import pino from 'pino';
import { connect, VsmClient, VsmError } from '@vsm/client';
import { EmulatorBackend, startServer, RunningServer } from '@vsm/service';

export interface Harness {
  client: VsmClient;
  address: string;
  backend: string;
  stop(): Promise<void>;
}

export async function startHarness(): Promise<Harness> {
  const backend = process.env.VSM_BACKEND ?? 'emulator';
  if (backend !== 'emulator') {
    // The agent backend needs a running KVM agent; the conformance suite reports why it cannot run.
    throw new Error(`VSM_BACKEND=${backend} is not available in this build: only the emulator backend exists so far`);
  }
  const srv: RunningServer = await startServer({ listen: '127.0.0.1:0', backend: new EmulatorBackend(), logger: pino({ level: 'silent' }), shutdownGraceMs: 500 });
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

export const GiB = 1n << 30n;
