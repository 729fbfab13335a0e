// vsmctl: guest actions that may wait for a monitor (route MONITOR) and the text for one that did
// not complete.
import { VsmError, type pb } from '@vsm/client';
import type { Ctx } from './context';
import { GRPC, StillSuspended } from './exit';
import { interceptLines, outcomeText } from './outcome';

/** How often a guest access that has not come back checks whether its VP waits for a monitor. */
const WAIT_POLL_MS = 750;

/** `partitions/demo/vps/0` -> `demo`, for the commands a message suggests. */
const partitionId = (vp: string): string => vp.replace(/\/vps\/\d+$/, '').replace(/^partitions\//, '');

/**
 * Runs a guest memory access. On the monitor route the server holds the call until a monitor
 * answers: after WAIT_POLL_MS vsmctl checks the VP and says on stderr that it waits (once); when the
 * call's deadline passes meanwhile, the error says the VP is still suspended.
 */
export async function guestAccess<T>(ctx: Ctx, vp: string, call: () => Promise<T>): Promise<T> {
  let finished = false;
  let noted = false;
  const suspendedOn = async (): Promise<bigint | undefined> => {
    const v = await ctx.client.vps.getVirtualProcessor({ name: vp }, { deadlineMs: 5000 });
    return v.vtlStatus?.interceptSuspended ? v.vtlStatus.suspendedInterceptId : undefined;
  };
  const timer = setInterval(() => {
    if (noted) return;
    suspendedOn().then(
      (id) => {
        if (id === undefined || finished || noted) return;
        noted = true;
        ctx.note(
          `waiting: ${vp} is suspended on intercept ${id} until a monitor answers (route MONITOR); e.g. vsmctl intercepts watch ${partitionId(vp)} --reply allow`,
        );
      },
      () => undefined,
    );
  }, WAIT_POLL_MS);
  try {
    return await call();
  } catch (e) {
    if (e instanceof VsmError && e.code === GRPC.DEADLINE_EXCEEDED) {
      const id = await suspendedOn().catch(() => undefined);
      if (id !== undefined) throw new StillSuspended(e, vp, id, partitionId(vp));
    }
    throw e;
  } finally {
    finished = true;
    clearInterval(timer);
  }
}

/** Text for a guest access that did not complete (exception, intercept, crash), with `what` like "guest write at 0x..". */
export function notCompletedText(what: string, o: pb.GuestActionOutcome, vp: number, progress: string): string {
  if (o.intercept) return [`${what}: INTERCEPTED; ${progress}`, ...interceptLines(o, vp).map((l) => `  ${l}`)].join('\n');
  if (o.partitionCrashed) return `${what}: the partition was stopped (a monitor answered CRASH); ${progress}`;
  return `${what}: ${o.exception ? 'REFUSED, ' : ''}${outcomeText(o)}; ${progress}`;
}
