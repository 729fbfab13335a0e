#!/usr/bin/env node
// vsmctl entry point: runs the command line and exits with its code (0 ok, 2 usage, 3 server error,
// 4 server unreachable). See clients/cli/README.md.
import { main } from './cli';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // Channels are closed by main(); this only guards against a handle keeping the process alive.
    setTimeout(() => process.exit(code), 2000).unref();
  },
  (e: unknown) => {
    process.stderr.write(`error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
