// vsmctl: the program (name, global options, help) composed from one module per command group in
// ./commands, and main(). Exit codes (exit.ts): 0 ok, 2 usage error, 3 server error, 4 server
// unreachable (UNAVAILABLE or DEADLINE_EXCEEDED), 1 anything unexpected.
import { Command } from 'commander';
import * as actions from './commands/actions';
import * as agents from './commands/agents';
import * as capabilities from './commands/capabilities';
import * as connections from './commands/connections';
import * as execution from './commands/execution';
import * as intercepts from './commands/intercepts';
import * as map from './commands/map';
import * as memory from './commands/memory';
import * as migrate from './commands/migrate';
import * as msr from './commands/msr';
import * as cr from './commands/cr';
import * as overlays from './commands/overlays';
import * as partitions from './commands/partitions';
import * as snapshot from './commands/snapshot';
import * as synic from './commands/synic';
import * as vp from './commands/vp';
import * as vtl from './commands/vtl';
import { type Ctx, type Globals, type Io, type Register, createCli } from './context';
import { EXIT, report } from './exit';
import { countArg } from './options';

export { EXIT, report } from './exit';
export type { Io } from './context';

/** The command groups, in the order `vsmctl --help` lists them. */
const GROUPS: Register[] = [
  partitions.register,
  capabilities.register,
  agents.register,
  execution.register,
  vp.register,
  vtl.register,
  msr.register,
  cr.register,
  actions.register,
  overlays.register,
  memory.register,
  map.register,
  intercepts.register,
  synic.register,
  connections.register,
  snapshot.register,
  migrate.register,
];

export function buildProgram(io: Io, state: { ctx?: Ctx }): Command {
  const program = new Command();
  program
    .name('vsmctl')
    .description('Command line for vsm-service (Hyper-V style Virtual Secure Mode over gRPC, API vsm.v1)')
    .version('0.1.0', '-V, --version')
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s) })
    .showHelpAfterError('(add --help for usage)')
    .option('--address <host:port>', 'server address (env VSM_ADDRESS)', io.env.VSM_ADDRESS || '127.0.0.1:50051')
    .option('--tls', 'use TLS with the system roots')
    .option('--ca <file>', 'TLS: CA certificate (PEM); implies --tls')
    .option('--cert <file>', 'TLS: client certificate (PEM); implies --tls')
    .option('--key <file>', 'TLS: client private key (PEM); implies --tls')
    .option('--token <token>', 'bearer token (env VSM_TOKEN)', io.env.VSM_TOKEN || undefined)
    .option('--timeout <ms>', 'deadline per call in ms (default 10000)', countArg('--timeout', 86_400_000))
    .option('--json', 'machine-readable JSON output (64-bit values as decimal strings, bytes as hex)')
    .addHelpText(
      'after',
      `
Examples:
  vsmctl partitions create --id demo --vp-count 2 --memory 1GiB --max-vtl 2
  vsmctl msr write demo 0 HV_X64_MSR_HYPERCALL 0x1001
  vsmctl vtl enable demo 1 && vsmctl vtl enable-vp demo 0 1 && vsmctl vtl call demo 0
  vsmctl memory protect demo --vtl 1 --flags r --pages 0x40:1 && vsmctl intercepts route demo monitor
  vsmctl intercepts watch demo --reply allow
  vsmctl map demo
  vsmctl run x86/hyperv_synic.flat --vps 2 --device hyperv-testdev --timeout 90   (on the KVM agent)

Exit codes: 0 ok, 2 usage error, 3 server error (error: CODE HV_STATUS: message),
4 server not reachable (UNAVAILABLE or DEADLINE_EXCEEDED). Guest exceptions (#GP, #UD)
and intercepts are results, printed with exit code 0 (and under "outcome" with --json).
vsmctl run exits with the guest's debug-exit status instead (vsmctl run --help).`,
    );
  const cli = createCli(io, state);
  for (const register of GROUPS) register(program, cli);
  return program;
}

/** Runs vsmctl with user arguments (no `node script` prefix) and returns the exit code. */
export async function main(args: string[], io: Io = { stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  const state: { ctx?: Ctx } = {};
  const program = buildProgram(io, state);
  try {
    await program.parseAsync(execution.runArguments(args), { from: 'user' });
    return EXIT.OK;
  } catch (e) {
    return report(e, io, state.ctx?.g.address ?? (program.opts() as Globals).address ?? '?');
  } finally {
    state.ctx?.close();
  }
}
