// vsmctl: exit codes and how an error is printed. 0 ok, 2 usage error, 3 server error, 4 server
// unreachable (UNAVAILABLE or DEADLINE_EXCEEDED), 1 anything unexpected.
import { CommanderError } from 'commander';
import { VsmError } from '@vsm/client';
import type { Io } from './context';
import { UsageError } from './parse';

export const EXIT = { OK: 0, INTERNAL: 1, USAGE: 2, SERVER: 3, UNAVAILABLE: 4 } as const;

/** The gRPC status codes vsmctl tells apart. */
export const GRPC = { DEADLINE_EXCEEDED: 4, UNIMPLEMENTED: 12, UNAVAILABLE: 14 } as const;

/** A guest access gave up (its gRPC deadline) while the VP still waits for a monitor's answer. */
export class StillSuspended extends VsmError {
  /** `part`: the partition id, for the commands the message suggests. */
  constructor(
    e: VsmError,
    readonly vp: string,
    readonly interceptId: bigint,
    part: string,
  ) {
    super(
      e.code,
      e.reason,
      e.domain,
      e.metadata,
      `${vp} is still suspended on intercept ${interceptId}, waiting for a monitor's answer; vsmctl stopped waiting (--timeout) but the intercept stays pending ` +
        `(vsmctl intercepts pending ${part}; answer it with vsmctl intercepts watch ${part} --reply ACTION)`,
    );
  }
}

/** A command that ends with an exit code of its own (`vsmctl run`: the guest's); `message` goes to stderr when not empty. */
export class ExitCode extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

/** Prints an error and returns the exit code for it. */
export function report(e: unknown, io: Pick<Io, 'stderr'>, address: string): number {
  if (e instanceof CommanderError) return e.exitCode === 0 ? EXIT.OK : EXIT.USAGE; // commander printed it
  if (e instanceof ExitCode) {
    if (e.message) io.stderr.write(`${e.message}\n`);
    return e.code;
  }
  if (e instanceof UsageError) {
    io.stderr.write(`error: ${e.message}\n`);
    return EXIT.USAGE;
  }
  if (e instanceof VsmError) {
    const head = [e.codeName, e.reason].filter(Boolean).join(' ');
    const unreachable = e.code === GRPC.UNAVAILABLE || e.code === GRPC.DEADLINE_EXCEEDED;
    const hint =
      unreachable && !(e instanceof StillSuspended) ? ` (server at ${address} not reachable${e.code === GRPC.DEADLINE_EXCEEDED ? ' in time' : ''})` : '';
    io.stderr.write(`error: ${head}: ${e.message}${hint}\n`);
    return unreachable ? EXIT.UNAVAILABLE : EXIT.SERVER;
  }
  io.stderr.write(`error: ${e instanceof Error ? e.message : String(e)}\n`);
  return EXIT.INTERNAL;
}
