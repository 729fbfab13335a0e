// Test support: builds the C guest of test/guests/vsm-scenario (its build.sh, gcc) into a temporary
// directory with the given build settings (WRITES_PER_VP, SINT0_AUTO_EOI, SECURE_IPIS, MSR_WRITES, ...;
// see its README) and reads its symbol table, for the agent tests that run it as a whole guest; runs
// it to its end (console text and end) and watches a VP's VTL transitions meanwhile.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { captureConsole, pb, type VsmClient } from '@vsm/client';
import { waitFor } from '../../../test/support/wait';

export const VSM_SCENARIO_DIR = path.resolve(__dirname, '../../../test/guests/vsm-scenario');

export interface VsmScenarioGuest {
  /** The ELF64 image. */
  image: Buffer;
  /** Its symbols (nm), by name. */
  symbols: Map<string, bigint>;
  /** The build directory; the caller removes it. */
  dir: string;
}

export function buildVsmScenario(settings: Record<string, string | number>): VsmScenarioGuest {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-scenario-'));
  const env = { ...process.env, ...Object.fromEntries(Object.entries(settings).map(([k, v]) => [k, String(v)])) };
  const elf = execFileSync('sh', [path.join(VSM_SCENARIO_DIR, 'build.sh'), dir], { encoding: 'utf8', env }).trim();
  const symbols = new Map<string, bigint>();
  for (const line of execFileSync('nm', [elf], { encoding: 'utf8' }).split('\n')) {
    const [addr, , name] = line.trim().split(/\s+/);
    if (addr && name) symbols.set(name, BigInt(`0x${addr}`));
  }
  return { image: fs.readFileSync(elf), symbols, dir };
}

/** What running the guest to its end printed: its console text and its end (exit code, state). */
export interface GuestRun {
  loaded: pb.LoadGuestImageResponse;
  text: string;
  end: pb.GuestRunEnd | undefined;
  /** From StartPartition to the console stream's end. */
  runMs: number;
}

/** Loads `image` (ELF64) into partition `name`, starts it and reads its console until the run ends. */
export async function runGuestToEnd(client: VsmClient, name: string, image: Buffer): Promise<GuestRun> {
  const loaded = await client.execution.loadGuestImage({ name, image, format: pb.GuestImageFormat.GUEST_IMAGE_FORMAT_ELF64 });
  const output = captureConsole(client.execution.streamConsole({ name }));
  const started = Date.now();
  await client.execution.startPartition({ name });
  const end = await output.done;
  return { loaded, text: output.text, end, runMs: Date.now() - started };
}

/**
 * Every VTL transition of VP `vpIndex` of `name` from now on (WatchTransitions, registered when this
 * resolves), collected into `transitions` until `signal` aborts; `watching` settles then.
 */
export async function watchTransitions(
  client: VsmClient,
  name: string,
  vpIndex: number,
  signal: AbortSignal,
): Promise<{ transitions: pb.VtlTransition[]; watching: Promise<void> }> {
  const transitions: pb.VtlTransition[] = [];
  let subscribed = false;
  const watching = (async () => {
    for await (const m of client.vtl.watchTransitions({ name, vpIndex }, signal)) {
      if (m.event?.$case === 'subscribed') subscribed = true;
      else if (m.event?.$case === 'transition') transitions.push(m.event.value);
    }
  })().catch(() => undefined);
  await waitFor('the transition watch to be registered', () => subscribed);
  return { transitions, watching };
}
