// vsmctl intercepts: where memory intercepts go (route), which wait for an answer (pending), and a
// monitor that watches and answers them (watch, the Monitor stream).
import { Argument, type Command, Option } from 'commander';
import { pb } from '@vsm/client';
import { type Cli, untilInterrupted } from '../context';
import { count, hex64, safeEnum, shortEnum, table, toJson } from '../format';
import { arg, countArg, partitionCommand, u64Arg, vpArg, vtlArg } from '../options';
import { interceptEventText } from '../outcome';
import { UsageError, parseHexBytes } from '../parse';
import { ACTIONS, ROUTES, accessMaskText, accessTypeText, actionText, parseAccessMask, routeText } from '../protect';

interface WatchOptions {
  vp?: number;
  vtl?: number;
  gpaStart?: bigint;
  gpaEnd?: bigint;
  access?: number;
  reply?: string;
  skipData?: Buffer;
  checkGeneration?: boolean;
  count?: number;
  batch?: boolean;
  quiet?: boolean;
}

/** What `intercepts watch` watches (its filters), for the "subscribed" line. */
function filtersText(o: WatchOptions): string {
  return [
    o.vp !== undefined ? `VP ${o.vp}` : 'any VP',
    o.vtl !== undefined ? `accesses in VTL ${o.vtl}` : 'any VTL',
    o.gpaStart !== undefined || o.gpaEnd !== undefined
      ? `GPA ${o.gpaStart !== undefined ? hex64(o.gpaStart) : 'start'}..${o.gpaEnd !== undefined ? hex64(o.gpaEnd) : 'end'}`
      : 'any GPA',
  ].join(', ');
}

export function register(program: Command, { run }: Cli): void {
  const intercepts = program
    .command('intercepts')
    .description('memory intercepts: where they go, which wait for an answer, and a monitor that watches and answers them');
  partitionCommand(intercepts, 'route', 'choose where memory intercepts go (SetInterceptRoute), and what happens to monitor intercepts nobody answers')
    .addArgument(
      new Argument(
        '<route>',
        'higher-vtl: the protecting VTL handles them (default); monitor: external monitors answer, the VP waits; both: the VTL handles them, monitors observe',
      ).choices(Object.keys(ROUTES)),
    )
    .option(
      '--deadline-ms <ms>',
      'apply --deadline-action to an intercept no monitor answered within MS (1..86400000; default: wait forever)',
      countArg('--deadline-ms', 86_400_000),
    )
    .addOption(new Option('--deadline-action <action>', 'what the deadline does (with --deadline-ms)').choices(Object.keys(ACTIONS)))
    .action(
      run(async (ctx, name: string, route: string, o: { deadlineMs?: number; deadlineAction?: string }) => {
        if ((o.deadlineMs === undefined) !== (o.deadlineAction === undefined)) throw new UsageError('--deadline-ms and --deadline-action go together');
        const r = await ctx.client.intercepts.setInterceptRoute({
          name,
          route: ROUTES[route]!,
          answerDeadlineMs: o.deadlineMs !== undefined ? BigInt(o.deadlineMs) : undefined,
          deadlineAction: o.deadlineAction ? ACTIONS[o.deadlineAction]! : pb.InterceptAction.INTERCEPT_ACTION_UNSPECIFIED,
        });
        ctx.emit({ name, ...(toJson(r) as object) }, () => {
          const where: Record<string, string> = {
            'higher-vtl': 'to the protecting VTL (route HIGHER_VTL): the message goes to its SINT0 and the VP enters it',
            monitor: 'to external monitors (route MONITOR): the VP waits at the instruction for an answer',
            both: 'to the protecting VTL, with an observe-only copy for monitors (route BOTH)',
          };
          const deadline =
            r.answerDeadlineMs !== undefined
              ? `an intercept no monitor answered within ${r.answerDeadlineMs} ms gets ${actionText(r.deadlineAction)}`
              : 'intercepts waiting for a monitor wait until one answers (no deadline)';
          return `${name}: intercepts go ${where[routeText(r.route)] ?? `by route ${r.route}`}; ${deadline}`;
        });
      }),
    );
  partitionCommand(intercepts, 'pending', "intercepts waiting for a monitor's answer (ListPendingIntercepts), oldest first").action(
    run(async (ctx, name: string) => {
      const r = await ctx.client.intercepts.listPendingIntercepts({ name });
      ctx.emit({ name, intercepts: toJson(r.intercepts) }, () => {
        if (!r.intercepts.length) return `no intercepts of ${name} wait for an answer`;
        const rows = r.intercepts.map((e) => [
          String(e.interceptId),
          String(e.vpIndex),
          String(e.vtl),
          accessTypeText(e.accessType),
          hex64(e.gpa),
          String(e.length),
          hex64(e.rip),
          String(e.protectingVtl),
          String(e.viewGeneration),
        ]);
        const n = r.intercepts.length;
        return `${count(n, 'intercept')} of ${name} wait${n === 1 ? 's' : ''} for a monitor's answer:\n${table(['ID', 'VP', 'VTL', 'ACCESS', 'GPA', 'LEN', 'RIP', 'BY VTL', 'GENERATION'], rows)}`;
      });
    }),
  );
  partitionCommand(
    intercepts,
    'watch',
    'an external monitor (Monitor stream): prints intercepts as they happen and, with --reply, answers each one that needs a reply',
  )
    .option('--vp <n>', 'only intercepts of this VP', vpArg)
    .option('--vtl <n>', 'only accesses made in this VTL', vtlArg)
    .option('--gpa-start <gpa>', 'only GPAs >= this', u64Arg('--gpa-start'))
    .option('--gpa-end <gpa>', 'only GPAs < this', u64Arg('--gpa-end'))
    .option('--access <kinds>', 'only these accesses: r,w,x (read, write, execute; default all)', arg(parseAccessMask))
    .addOption(new Option('--reply <action>', 'answer every intercept that needs a reply (route MONITOR) with this action').choices(Object.keys(ACTIONS)))
    .option('--skip-data <hex>', 'with --reply skip: the bytes a skipped read returns (zero-filled to its length)', arg(parseHexBytes))
    .option(
      '--check-generation',
      "with --reply: send the intercept's view generation, so the answer is refused (STALE_GENERATION) when protections or overlays changed since the fault",
    )
    .option('--count <n>', 'exit after N intercepts (and the answers to them)', countArg('--count', 1_000_000_000))
    .option(
      '--batch',
      'subscribe with batch: the intercepts raised together come in one message (two once they reach half the VP count) and each is answered with one replies message (printed one line each, as without it)',
    )
    .option(
      '--quiet',
      'with --batch and --reply: send quiet replies, so the service reports only answers it did not apply (printed as without it); applied answers print no line. With --count the last answers are sent without it, to wait for their results',
    )
    .addHelpText(
      'after',
      `
Without --reply the monitor only watches: intercepts that need an answer stay pending for other
monitors (vsmctl intercepts pending). Intercepts still unanswered when a monitor subscribes are
delivered to it first (flagged redelivered when an earlier monitor saw them). Ctrl-C exits 0.`,
    )
    .action(
      run(async (ctx, name: string, o: WatchOptions) => {
        if (o.skipData && o.reply !== 'skip') throw new UsageError('--skip-data goes with --reply skip');
        if (o.checkGeneration && !o.reply) throw new UsageError('--check-generation goes with --reply');
        if (o.quiet && !(o.batch && o.reply)) throw new UsageError('--quiet goes with --batch and --reply (it makes the replies messages quiet)');
        if (o.gpaStart !== undefined && o.gpaEnd !== undefined && o.gpaEnd <= o.gpaStart) throw new UsageError('--gpa-end must be above --gpa-start');
        const action = o.reply ? ACTIONS[o.reply]! : undefined;
        const answering =
          action !== undefined ? `answering ${actionText(action)}${o.checkGeneration ? ' with generation check' : ''}` : 'watching only, not answering';
        await untilInterrupted(async (signal) => {
          const m = ctx.client.intercepts.monitor(signal);
          let seen = 0;
          let full = false;
          const outstanding = new Set<bigint>();
          try {
            m.send({
              kind: {
                $case: 'subscribe',
                value: { name, vpIndex: o.vp, vtl: o.vtl, gpaStart: o.gpaStart, gpaEnd: o.gpaEnd, accessMask: o.access ?? 0, batch: o.batch === true },
              },
            });
            /** Prints one intercept; returns the answer to send for it (with --reply, when it needs one). */
            const take = (e: pb.InterceptEvent): pb.InterceptReply | undefined => {
              seen++;
              ctx.line({ name, intercept: toJson(e) }, () => interceptEventText(e));
              let answer: pb.InterceptReply | undefined;
              if (action !== undefined && e.needsReply) {
                answer = {
                  interceptId: e.interceptId,
                  action,
                  data: action === pb.InterceptAction.INTERCEPT_ACTION_SKIP ? (o.skipData ?? Buffer.alloc(0)) : Buffer.alloc(0),
                  viewGeneration: o.checkGeneration ? e.viewGeneration : undefined,
                };
                outstanding.add(e.interceptId);
              }
              if (o.count !== undefined && seen >= o.count) full = true;
              return answer;
            };
            const result = (x: pb.ReplyResult) => {
              outstanding.delete(x.interceptId);
              const status = safeEnum(pb.replyStatusToJSON)(x.status);
              ctx.line(
                {
                  name,
                  replyResult: { interceptId: x.interceptId.toString(), status, detail: x.detail, viewGeneration: x.viewGeneration.toString() },
                  action: action !== undefined ? safeEnum(pb.interceptActionToJSON)(action) : null,
                },
                () =>
                  `  reply ${action !== undefined ? actionText(action) : ''} to intercept ${x.interceptId}: ${shortEnum(status, 'REPLY_STATUS_')}${x.detail ? ` (${x.detail})` : ''}; view generation ${x.viewGeneration}`,
              );
            };
            ctx.watching(`intercepts of ${name}`);
            for await (const r of m.events) {
              const k = r.kind;
              if (!k) continue;
              if (k.$case === 'subscription') {
                ctx.line(
                  { name, subscription: toJson(k.value) },
                  () =>
                    `subscribed to intercepts of ${name}: ${accessMaskText(k.value.accessMask)}; ${filtersText(o)}; ${answering}; view generation ${k.value.viewGeneration}`,
                );
              } else if (k.$case === 'intercept') {
                if (full) continue; // after --count: not ours to print or answer
                const answer = take(k.value);
                if (answer) m.send({ kind: { $case: 'reply', value: answer } });
              } else if (k.$case === 'intercepts') {
                const replies: pb.InterceptReply[] = [];
                for (const e of k.value.intercepts) {
                  if (full) break; // after --count: not ours to print or answer
                  const answer = take(e);
                  if (answer) replies.push(answer);
                }
                if (replies.length) {
                  // Quiet: only refused answers come back, so nothing waits for the others (the last
                  // answers before --count are sent without it, to see them applied before exiting).
                  const quiet = o.quiet === true && !full;
                  if (quiet) for (const r of replies) outstanding.delete(r.interceptId);
                  m.send({ kind: { $case: 'replies', value: { replies, quiet } } });
                }
              } else if (k.$case === 'replyResult') {
                result(k.value);
              } else if (k.$case === 'replyResults') {
                for (const x of k.value.results) result(x);
              }
              if (full && outstanding.size === 0) break;
            }
          } finally {
            m.cancel();
          }
        });
      }),
    );
}
