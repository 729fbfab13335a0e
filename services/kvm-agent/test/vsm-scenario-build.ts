// Test support: builds the C guest of test/guests/vsm-scenario (its build.sh, gcc) into a temporary
// directory with the given build settings (WRITES_PER_VP, SINT0_AUTO_EOI, SECURE_IPIS, MSR_WRITES, ...;
// see its README) and reads its symbol table, for the agent tests that run it as a whole guest.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

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
