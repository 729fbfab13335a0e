// vsmctl: what every command runs with. `Ctx` is one invocation (the global options, a lazily opened
// client, output to stdout/stderr); `Cli` is what a command group's `register` gets to build its
// commands (`run` turns an implementation into a commander action).
import * as fs from 'node:fs';
import type { Command } from 'commander';
import { type ConnectOptions, type VsmClient, connect } from '@vsm/client';
import type { Json } from './format';
import { UsageError } from './parse';
import { Progress } from './progress';

export interface Io {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
}

/** The global options (cli.ts declares them). */
export interface Globals {
  address: string;
  tls?: boolean;
  ca?: string;
  cert?: string;
  key?: string;
  token?: string;
  timeout?: number;
  json?: boolean;
}

/** Per-invocation state: the global options and a lazily opened client. */
export class Ctx {
  private c?: VsmClient;
  constructor(
    readonly g: Globals,
    readonly io: Io,
  ) {}

  get client(): VsmClient {
    if (!this.c) {
      const o: ConnectOptions = {};
      if (this.g.timeout !== undefined) o.deadlineMs = this.g.timeout;
      if (this.g.token) o.token = this.g.token;
      if (this.g.ca || this.g.cert || this.g.key) {
        if (!!this.g.cert !== !!this.g.key) throw new UsageError('--cert and --key go together (client certificate and its private key)');
        o.tls = {
          ca: this.g.ca ? readFile(this.g.ca, '--ca') : undefined,
          cert: this.g.cert ? readFile(this.g.cert, '--cert') : undefined,
          key: this.g.key ? readFile(this.g.key, '--key') : undefined,
        };
      } else if (this.g.tls) o.tls = true;
      this.c = connect(this.g.address, o);
    }
    return this.c;
  }
  get json(): boolean {
    return this.g.json === true;
  }
  out(text: string): void {
    this.io.stdout.write(text.endsWith('\n') ? text : text + '\n');
  }
  /** The result of a command: pretty JSON with --json, else the human text. */
  emit(json: Json, human: () => string): void {
    this.out(this.json ? JSON.stringify(json, null, 2) : human());
  }
  /** One line of a stream (watch commands): one JSON object per line with --json. */
  line(json: Json, human: () => string): void {
    this.out(this.json ? JSON.stringify(json) : human());
  }
  note(text: string): void {
    this.io.stderr.write(text + '\n');
  }
  /** Says on stderr what a watch command watches, when a person is looking (a TTY, no --json). */
  watching(what: string): void {
    if (this.io.stderr.isTTY && !this.json) this.note(`watching ${what} (Ctrl-C to stop)`);
  }
  /**
   * Runs `body` with a progress line on stderr, drawn when stderr is a TTY and `big` (more than one
   * call); the line is cleared however `body` ends.
   */
  async withProgress<T>(label: string, total: number, big: boolean, body: (p: Progress) => Promise<T>, amount?: (n: number) => string): Promise<T> {
    const progress = new Progress(label, total, process.stderr, this.io.stderr.isTTY === true && big, amount);
    try {
      return await body(progress);
    } finally {
      progress.finish();
    }
  }
  close(): void {
    this.c?.close();
    this.c = undefined;
  }
}

export function readFile(path: string, what: string): Buffer {
  try {
    return fs.readFileSync(path);
  } catch (e) {
    throw new UsageError(`cannot read ${what} ${path}: ${(e as Error).message}`);
  }
}

/** Runs `body` until it ends or SIGINT/SIGTERM aborts its signal (Ctrl-C ends a watch with exit 0). */
export async function untilInterrupted<T>(body: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  const stop = () => ac.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    return await body(ac.signal);
  } finally {
    process.removeListener('SIGINT', stop);
    process.removeListener('SIGTERM', stop);
  }
}

/** A command implementation: the invocation, then commander's processed arguments and options. */
export type Action<A extends unknown[]> = (ctx: Ctx, ...a: A) => Promise<void>;

/** What a command group's `register(program, cli)` builds its commands with. */
export interface Cli {
  /** Wraps a command implementation as a commander action: creates the invocation's Ctx from the global options. */
  run<A extends unknown[]>(fn: Action<A>): (...a: unknown[]) => Promise<void>;
}

/** The Cli of one invocation; `state.ctx` is the Ctx once a command ran (main closes it). */
export function createCli(io: Io, state: { ctx?: Ctx }): Cli {
  return {
    run<A extends unknown[]>(fn: Action<A>) {
      return async (...a: unknown[]) => {
        const cmd = a[a.length - 1] as Command;
        state.ctx ??= new Ctx(cmd.optsWithGlobals() as Globals, io);
        await fn(state.ctx, ...([...cmd.processedArgs, cmd.opts()] as A));
      };
    },
  };
}

/** A command group: adds its commands to the program. */
export type Register = (program: Command, cli: Cli) => void;
