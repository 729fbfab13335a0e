// vsmctl actions: streams a file of guest actions through GuestService.RunGuestActions (one stream,
// one answer per action). The file is JSON Lines, one RunGuestActionsRequest per line in proto3 JSON
// (camelCase or snake_case field names, 64-bit numbers as strings - "0x..." works - bytes as base64):
//   {"sequence":"1","writeMsr":{"name":"partitions/p/vps/0","msr":"0x40000000","value":"1"}}
//   {"readMemory":{"name":"partitions/p/vps/1","gpa":"0x40000","length":8}}
// A line without a sequence gets its line number. Blank lines and lines starting with # are skipped.
// --batch N sends the actions in `batch` messages of up to N (the answers then come in `results`
// messages); the output is the same, one line per answer.
import * as fs from 'node:fs';
import type { Command } from 'commander';
import { pb } from '@vsm/client';
import type { Cli, Ctx } from '../context';
import { EXIT, ExitCode } from '../exit';
import { hex64, toJson } from '../format';
import { arg } from '../options';
import { outcomeText } from '../outcome';
import { UsageError } from '../parse';

/** The server's per-stream cap (proto/vsm/v1/guest.proto RunGuestActions). */
const SERVER_IN_FLIGHT_CAP = 256;
/** The server's limit of actions per `batch` message (proto/vsm/v1/guest.proto RunGuestActionsBatch). */
const SERVER_BATCH_CAP = 256;

/** Parses the JSON Lines text into requests; a bad line is a usage error naming it. */
export function parseActionLines(text: string, source: string): pb.RunGuestActionsRequest[] {
  const out: pb.RunGuestActionsRequest[] = [];
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    let obj: Record<string, unknown>;
    try {
      obj = JSON.parse(line) as Record<string, unknown>;
    } catch (e) {
      throw new UsageError(`${source}:${i + 1}: not JSON: ${(e as Error).message}`);
    }
    if (!obj || typeof obj !== 'object' || Array.isArray(obj))
      throw new UsageError(`${source}:${i + 1}: a line must be one JSON object (a RunGuestActionsRequest)`);
    let req: pb.RunGuestActionsRequest;
    try {
      req = pb.RunGuestActionsRequest.fromJSON(obj);
    } catch (e) {
      throw new UsageError(`${source}:${i + 1}: ${(e as Error).message}`);
    }
    if (!req.action)
      throw new UsageError(
        `${source}:${i + 1}: no action (one of writeMsr, readMsr, hypercall, callHypercallPage, readMemory, writeMemory, executeMemory, writeControlRegister)`,
      );
    if (req.action.$case === 'batch') throw new UsageError(`${source}:${i + 1}: a line is one action, not a batch (--batch N groups the lines into batches)`);
    if (obj.sequence === undefined) req.sequence = BigInt(i + 1);
    out.push(req);
  }
  return out;
}

/** One line of human output for an answer. */
function answerText(r: pb.RunGuestActionsResponse): string {
  const res = r.result;
  const head = `#${r.sequence}`;
  if (!res) return `${head} no result`;
  if (res.$case === 'error') return `${head} ERROR ${res.value.reason}: ${res.value.message}`;
  const v = res.value as { outcome?: pb.GuestActionOutcome };
  let extra = '';
  if (res.$case === 'readMsr' && !res.value.outcome?.exception) extra = ` value ${hex64(res.value.value)}`;
  if ((res.$case === 'readMemory' || res.$case === 'executeMemory') && res.value.data.length) extra = ` data ${Buffer.from(res.value.data).toString('hex')}`;
  if (res.$case === 'hypercall') extra = ` status ${pb.hvStatusToJSON(res.value.status)}`;
  if (res.$case === 'callHypercallPage') extra = ` rax ${hex64(res.value.rax)}`;
  return `${head} ${res.$case}: ${outcomeText(v.outcome)}${extra}`;
}

/** `batch`: actions per message at most (undefined = one action per message). */
async function runActions(ctx: Ctx, file: string, inFlight: number, batch: number | undefined): Promise<void> {
  const text = file === '-' ? fs.readFileSync(0, 'utf8') : readText(file);
  const actions = parseActionLines(text, file === '-' ? 'stdin' : file);
  if (actions.length === 0) throw new UsageError(`${file}: no actions`);
  const s = ctx.client.guest.runGuestActions();
  let next = 0;
  let owed = 0;
  let failed = 0;
  const pump = () => {
    while (next < actions.length && owed < inFlight) {
      if (batch === undefined) {
        owed++;
        s.send(actions[next++]!);
        continue;
      }
      const n = Math.min(batch, inFlight - owed, actions.length - next);
      owed += n;
      s.send({ action: { $case: 'batch', value: { actions: actions.slice(next, (next += n)) } } });
    }
    if (next === actions.length && owed === 0) s.close();
  };
  pump();
  for await (const m of s.results) {
    // A `results` message carries the answers of batched actions; any other message is one answer.
    for (const r of m.result?.$case === 'results' ? m.result.value.results : [m]) {
      owed--;
      if (r.result?.$case === 'error') failed++;
      ctx.line({ sequence: r.sequence.toString(), ...(toJson({ result: r.result }) as object) }, () => answerText(r));
    }
    pump();
  }
  if (failed) throw new ExitCode(EXIT.SERVER, `${failed} of ${actions.length} actions failed`);
}

function readText(path: string): string {
  try {
    return fs.readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read actions file ${path}: ${(e as Error).message}`);
  }
}

export function register(program: Command, { run }: Cli): void {
  program
    .command('actions')
    .description(
      'stream guest actions from a JSON Lines file through one RunGuestActions stream: one line per answer (--json: one JSON object per line), ' +
        'in completion order; actions on one VP run in file order, different VPs concurrently. Exit 3 when any action failed',
    )
    .argument(
      '<file>',
      'JSON Lines of RunGuestActionsRequest in proto3 JSON ("-" = stdin), e.g. {"writeMsr":{"name":"partitions/p/vps/0","msr":"0x40000000","value":"1"}}',
    )
    .option(
      '--in-flight <n>',
      `actions sent and not yet answered at most (1..${SERVER_IN_FLIGHT_CAP}, the server's cap)`,
      arg((v: string) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 1 || n > SERVER_IN_FLIGHT_CAP) throw new UsageError(`--in-flight must be 1..${SERVER_IN_FLIGHT_CAP}`);
        return n;
      }),
      64,
    )
    .option(
      '--batch <n>',
      `send the actions in batch messages of up to n actions each (1..${SERVER_BATCH_CAP}; --in-flight still caps those unanswered); ` +
        'fewer messages both ways, the same answers. Default: one action per message',
      arg((v: string) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 1 || n > SERVER_BATCH_CAP) throw new UsageError(`--batch must be 1..${SERVER_BATCH_CAP}`);
        return n;
      }),
    )
    .action(run(async (ctx, file: string, o: { inFlight: number; batch?: number }) => runActions(ctx, file, o.inFlight, o.batch)));
}
