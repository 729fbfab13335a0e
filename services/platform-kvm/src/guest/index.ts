/**
 * Guests that run: a partition's guest on every VP at once. session.ts (GuestSession: load, start,
 * pause, resume, stop, console) over guest-runner.ts (a thread per VP running KVM_RUN, exits handed to
 * the main thread through vcpu-channel.ts), with pure building blocks that have no KVM and no I/O:
 * image loaders and the boot plan (./image), port-I/O device models (./devices).
 */
export {
  GuestSession,
  GuestSessionError,
  type GuestSessionState,
  type GuestLoadOptions,
  type GuestLoadResult,
  type GuestDevices,
  type GuestRunStats,
} from './session';
export type { GuestEnd, VpRunState, GuestState } from './guest-runner';
export { ConsoleHub, type ConsoleChunk, type ConsoleListener } from './console';
export * from './image';
export * from './devices';
