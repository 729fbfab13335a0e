// vsm.v1 implementation: what both processes (vsm-service, vsm-kvm-agent) do the same way, written
// once: a logger that can never crash or hang the process when its reader is gone, the server
// options that follow from the shared transport/authorization/limit flags, and a graceful shutdown
// on SIGTERM/SIGINT that ends the process whatever happens.
import pino, { type Logger } from 'pino';
import type { Config } from './config';
import type { ServerOptions } from './server';
import { FdLogDestination } from './log-destination';

/** Graceful shutdown gives unary calls 5 s; after this the process exits regardless. */
export const SHUTDOWN_WATCHDOG_MS = 20_000;

/**
 * The process's JSON logger on stdout. A reader of stdout/stderr that went away (EPIPE) must not
 * crash or hang the process: failed writes through process.stdout/stderr (console, usage messages)
 * are ignored, and the logger writes through FdLogDestination, which turns itself off on such an
 * error.
 */
export function processLogger(svc: string, level: string): { log: Logger; dest: FdLogDestination } {
  for (const s of [process.stdout, process.stderr]) s.on('error', () => undefined);
  const dest = new FdLogDestination(1);
  return { log: pino({ level, base: { svc } }, dest), dest };
}

/** Resolves with the first SIGTERM/SIGINT (install before starting, so none meets the default action). */
export function shutdownSignal(): Promise<NodeJS.Signals> {
  return new Promise<NodeJS.Signals>((resolve) => {
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => resolve(sig));
  });
}

/** The server options that the shared flags decide (security, limits, transport). */
export function serverOptionsFrom(
  cfg: Config,
): Pick<ServerOptions, 'tls' | 'allowInsecureRemote' | 'security' | 'streamBuffer' | 'firstMessageTimeoutMs' | 'maxConcurrentStreams'> {
  const t = cfg.transport;
  return {
    tls: cfg.tls,
    allowInsecureRemote: cfg.insecureAllowRemote,
    security: {
      authzPolicy: cfg.authzPolicy ? { file: cfg.authzPolicy } : undefined,
      limits: { maxStreams: cfg.limits.maxStreams, maxStreamsPerClient: cfg.limits.maxStreamsPerClient },
      requestBudget: { maxBytes: t.maxRequestBytes, maxBytesPerClient: t.maxRequestBytesPerClient },
      healthWatches:
        t.maxHealthWatches === undefined ? undefined : { maxStreams: t.maxHealthWatches, maxStreamsPerClient: Math.max(1, Math.ceil(t.maxHealthWatches / 4)) },
    },
    streamBuffer: { maxBytes: t.maxStreamBufferBytes, maxMessages: t.maxStreamBufferMessages, stallMs: t.streamStallMs },
    firstMessageTimeoutMs: t.firstMessageTimeoutMs,
    maxConcurrentStreams: t.maxConcurrentStreams,
  };
}

/**
 * Waits for the signal, shuts the server down gracefully (bounded by a watchdog), flushes the log,
 * runs `after` and exits: 0 after a clean shutdown, 1 otherwise.
 */
export async function exitOnSignal(
  signalled: Promise<NodeJS.Signals>,
  shutdown: (reason: string) => Promise<void>,
  dest: FdLogDestination,
  after?: () => void,
): Promise<never> {
  const sig = await signalled;
  setTimeout(() => process.exit(1), SHUTDOWN_WATCHDOG_MS).unref();
  const code = await shutdown(sig).then(
    () => 0,
    () => 1,
  );
  try {
    after?.();
  } catch {
    // best effort (e.g. removing a unix socket)
  }
  await dest.flush(1000);
  process.exit(code);
}
