// vsmctl: options and arguments shared by the command groups: commander adapters for the parsers
// in parse.ts (a bad value is a usage error, exit 2), the <partition> and <partition> <vp>
// arguments, and the server limits vsmctl checks or splits requests by.
import { type Command, InvalidArgumentError } from 'commander';
import { UsageError, parseCount, parseIndex, parseSize, parseU64, partitionName } from './parse';

export const MAX_VP = 4096;
const MAX_VTL = 15;
/** Largest ReadGpa/WriteGpa (host) transfer. */
export const HOST_CHUNK = 1 << 20;

/** Adapts a vsmctl parser to commander (UsageError -> InvalidArgumentError -> exit 2). */
export function arg<T>(f: (s: string, prev?: T) => T): (s: string, prev: T) => T {
  return (s: string, prev?: T) => {
    try {
      return f(s, prev);
    } catch (e) {
      if (e instanceof UsageError) throw new InvalidArgumentError(e.message);
      throw e;
    }
  };
}
export const indexArg = (what: string, max: number) => arg((s) => parseIndex(s, what, max));
export const countArg = (what: string, max: number) => arg((s) => parseCount(s, what, max));
export const sizeArg = (what: string) => arg((s) => parseSize(s, what));
export const u64Arg = (what: string) => arg((s) => parseU64(s, what));
export const vpArg = indexArg('VP index', MAX_VP);
export const vtlArg = indexArg('VTL', MAX_VTL);
/** Appends each value of a repeatable argument or option to a list. */
export const listArg = <T>(f: (s: string) => T) => arg((s: string, prev?: T[]) => [...(prev ?? []), f(s)]);

/** `parent <name> <partition>`: a command on one partition (its action gets the partition's name). */
export const partitionCommand = (parent: Command, name: string, description: string): Command =>
  parent.command(name).description(description).argument('<partition>', 'partitions/ID or ID', arg(partitionName));

/** `parent <name> <partition> <vp>`: a command on one VP (its action gets the partition and the VP index). */
export const vpCommand = (parent: Command, name: string, description: string): Command =>
  partitionCommand(parent, name, description).argument('<vp>', 'VP index', vpArg);
