// vsmctl: a one-line progress indicator on stderr, drawn only when stderr is a TTY (bytes by
// default, or any amount with a formatter).
import { approxSize } from './format';

const FRAMES = ['|', '/', '-', '\\'];

export class Progress {
  private frame = 0;
  private lastDraw = 0;
  private drawn = false;

  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly stream: NodeJS.WriteStream = process.stderr,
    private readonly enabled: boolean = process.stderr.isTTY === true,
    /** How amounts are shown (default: byte sizes). */
    private readonly amount: (n: number) => string = approxSize,
  ) {}

  /** `detail` (e.g. `call 2 of 5`) is appended to the line. */
  update(done: number, detail?: string): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (done < this.total && now - this.lastDraw < 80) return;
    this.lastDraw = now;
    const pct = this.total > 0 ? Math.floor((done * 100) / this.total) : 100;
    const spin = done < this.total ? FRAMES[this.frame++ % FRAMES.length] : ' ';
    this.stream.write(
      `\r\x1b[K${spin} ${this.label} ${String(pct).padStart(3)}% (${this.amount(done)} of ${this.amount(this.total)})${detail ? `, ${detail}` : ''}`,
    );
    this.drawn = true;
  }

  finish(): void {
    if (this.enabled && this.drawn) this.stream.write('\r\x1b[K');
    this.drawn = false;
  }
}
