/**
 * A 16550A UART (COM1 at 0x3f8 by default) as QEMU's hw/char/serial.c presents it to a guest, minus
 * the interrupt line (IIR is still kept right, so a guest that polls IIR sees what it would see):
 *
 *   +0 RBR (read) / THR (write); DLL with LCR.DLAB     +4 MCR (5 bits; bit 4 loopback)
 *   +1 IER (4 bits) / DLM with LCR.DLAB                +5 LSR (THRE|TEMT always; DR while input waits)
 *   +2 IIR (read) / FCR (write)                        +6 MSR (DCD|DSR|CTS; from MCR in loopback)
 *   +3 LCR                                             +7 SCR
 *
 * Transmission is instantaneous (THR → output at once, as QEMU with a writable backend). Received
 * bytes come from a host queue (pushInput), unbounded, so there are no overruns; LSR.DR is set while it
 * is not empty. In loopback (MCR bit 4) transmitted bytes are received instead of output (as QEMU).
 * Accesses wider than a byte are split into byte accesses on consecutive ports (QEMU: impl.max_access_size 1).
 *
 * Output batching: by default every THR write is handed to onOutput at once (so the order with any other
 * console path stays exact); with `bufferBytes` > 0 bytes are collected and handed over when the buffer is
 * full, on '\n', or on flush(). outString() takes a whole `rep outsb` in one call.
 */
import { type PortIoDevice, mask } from './port-io';

export const UART_COM1 = 0x3f8;

/** Register offsets and bits (QEMU serial.c / the 16550A data sheet). */
export const UART = {
  RBR_THR: 0,
  IER: 1,
  IIR_FCR: 2,
  LCR: 3,
  MCR: 4,
  LSR: 5,
  MSR: 6,
  SCR: 7,
  LCR_DLAB: 0x80,
  IER_RDI: 0x01,
  IER_THRI: 0x02,
  IER_RLSI: 0x04,
  IER_MSI: 0x08,
  IIR_NO_INT: 0x01,
  IIR_THRI: 0x02,
  IIR_RDI: 0x04,
  IIR_RLSI: 0x06,
  IIR_ID: 0x06,
  IIR_FE: 0xc0,
  FCR_FE: 0x01,
  FCR_RFR: 0x02,
  FCR_XFR: 0x04,
  MCR_DTR: 0x01,
  MCR_RTS: 0x02,
  MCR_OUT1: 0x04,
  MCR_OUT2: 0x08,
  MCR_LOOP: 0x10,
  LSR_DR: 0x01,
  LSR_OE: 0x02,
  LSR_BI: 0x10,
  LSR_THRE: 0x20,
  LSR_TEMT: 0x40,
  LSR_INT_ANY: 0x1e,
  MSR_CTS: 0x10,
  MSR_DSR: 0x20,
  MSR_RI: 0x40,
  MSR_DCD: 0x80,
  MSR_ANY_DELTA: 0x0f,
} as const;

export interface Uart16550Options {
  /** Receives transmitted bytes (a fresh array each call; never empty). */
  onOutput(bytes: Uint8Array): void;
  /** First port (default 0x3f8). */
  base?: number;
  /** 0 (default): deliver each write at once. N > 0: collect up to N bytes; deliver when full, on '\n' or flush(). */
  bufferBytes?: number;
  /** Called when the state fastPath() describes changes outside an I/O access (input arrived or was consumed). */
  onChange?(): void;
}

export class Uart16550 implements PortIoDevice {
  readonly base: number;
  readonly portCount = 8;
  private divider = 0x0c; // 9600 baud
  private ier = 0;
  private lcr = 0;
  private mcr: number = UART.MCR_OUT2;
  private lsrErrors = 0; // BI/OE/PE/FE bits: never set here (no breaks, no overruns), kept for the IIR logic
  private msr: number = UART.MSR_DCD | UART.MSR_DSR | UART.MSR_CTS;
  private scr = 0;
  private fcr = 0;
  private thrIpending = false;
  private readonly input: Uint8Array[] = [];
  private inputHead = 0; // index into input[0]
  private readonly buf: Uint8Array;
  private buffered = 0;
  /** Bytes transmitted so far (output and loopback). */
  transmitted = 0;

  constructor(private readonly opts: Uart16550Options) {
    this.base = opts.base ?? UART_COM1;
    this.buf = new Uint8Array(Math.max(0, opts.bufferBytes ?? 0));
  }

  // ---- host side ------------------------------------------------------------------------------------

  /** Queues bytes for the guest to read from RBR. */
  pushInput(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    const was = this.inputPending;
    this.input.push(Uint8Array.from(bytes));
    if (!was) this.opts.onChange?.();
  }

  /** Bytes queued for the guest and not read yet. */
  get inputPending(): number {
    let n = -this.inputHead;
    for (const c of this.input) n += c.length;
    return n;
  }

  /** Hands buffered output to onOutput (no-op when nothing is buffered). */
  flush(): void {
    if (this.buffered === 0) return;
    const out = this.buf.slice(0, this.buffered);
    this.buffered = 0;
    this.opts.onOutput(out);
  }

  /** The interrupt line the 16550 would drive (IIR shows an interrupt pending); not wired to anything yet. */
  get interruptPending(): boolean {
    return (this.iir() & 0x0f) !== UART.IIR_NO_INT;
  }

  /**
   * Whether a VP thread may finish THR writes and LSR reads itself (without this model): true while
   * DLAB, loopback and the THR-empty interrupt are off; `lsr` is what LSR reads then. Re-read it after
   * any access to the UART and on onChange.
   */
  fastPath(): { enabled: boolean; lsr: number } {
    const enabled = (this.lcr & UART.LCR_DLAB) === 0 && (this.mcr & UART.MCR_LOOP) === 0 && (this.ier & UART.IER_THRI) === 0;
    return { enabled, lsr: this.lsr() };
  }

  /** A `rep outsb` to THR in one call (same effect as one ioOut per byte). */
  outString(port: number, bytes: Uint8Array): void {
    if (port - this.base !== UART.RBR_THR || (this.lcr & UART.LCR_DLAB) !== 0 || (this.mcr & UART.MCR_LOOP) !== 0) {
      for (const b of bytes) this.ioOut(port, 1, b);
      return;
    }
    if (bytes.length === 0) return;
    this.transmitted += bytes.length;
    this.thrIpending = true; // transmitted at once: THR is empty again
    if (this.buf.length === 0) {
      this.opts.onOutput(Uint8Array.from(bytes));
      return;
    }
    for (const b of bytes) this.emit(b);
  }

  // ---- guest side -----------------------------------------------------------------------------------

  ioIn(port: number, size: 1 | 2 | 4): number {
    let v = 0;
    for (let i = 0; i < size; i++) v |= this.readByte(port + i - this.base) << (8 * i);
    return mask(v, size);
  }

  ioOut(port: number, size: 1 | 2 | 4, value: number): void {
    for (let i = 0; i < size; i++) this.writeByte(port + i - this.base, (value >>> (8 * i)) & 0xff);
  }

  private lsr(): number {
    return UART.LSR_THRE | UART.LSR_TEMT | this.lsrErrors | (this.inputPending > 0 ? UART.LSR_DR : 0);
  }

  /** IIR as QEMU's serial_update_irq computes it (no character timeout: no timers here). */
  private iir(): number {
    const lsr = this.lsr();
    let id: number = UART.IIR_NO_INT;
    if (this.ier & UART.IER_RLSI && lsr & UART.LSR_INT_ANY) id = UART.IIR_RLSI;
    else if (this.ier & UART.IER_RDI && lsr & UART.LSR_DR) id = UART.IIR_RDI;
    else if (this.ier & UART.IER_THRI && this.thrIpending) id = UART.IIR_THRI;
    else if (this.ier & UART.IER_MSI && this.msr & UART.MSR_ANY_DELTA) id = 0x00;
    return id | (this.fcr & UART.FCR_FE ? UART.IIR_FE : 0);
  }

  private readByte(reg: number): number {
    switch (reg) {
      case UART.RBR_THR: {
        if (this.lcr & UART.LCR_DLAB) return this.divider & 0xff;
        const c = this.input[0];
        if (!c) return 0;
        const b = c[this.inputHead++]!;
        if (this.inputHead >= c.length) {
          this.input.shift();
          this.inputHead = 0;
          if (this.input.length === 0) this.opts.onChange?.();
        }
        return b;
      }
      case UART.IER:
        return this.lcr & UART.LCR_DLAB ? (this.divider >> 8) & 0xff : this.ier;
      case UART.IIR_FCR: {
        const v = this.iir();
        if ((v & UART.IIR_ID) === UART.IIR_THRI && (v & 0x01) === 0) this.thrIpending = false; // reading IIR acknowledges THRE
        return v;
      }
      case UART.LCR:
        return this.lcr;
      case UART.MCR:
        return this.mcr;
      case UART.LSR: {
        const v = this.lsr();
        this.lsrErrors &= ~(UART.LSR_BI | UART.LSR_OE); // reading LSR clears break and overrun
        return v;
      }
      case UART.MSR:
        if (this.mcr & UART.MCR_LOOP) {
          // loopback: the modem outputs appear on the inputs (OUT2→DCD, OUT1→RI, RTS→CTS, DTR→DSR)
          return ((this.mcr & 0x0c) << 4) | ((this.mcr & UART.MCR_RTS) << 3) | ((this.mcr & UART.MCR_DTR) << 5);
        }
        return this.msr;
      case UART.SCR:
        return this.scr;
      default:
        return 0xff; // a byte of a wide access past the UART's 8 ports: nobody decodes it
    }
  }

  private writeByte(reg: number, v: number): void {
    switch (reg) {
      case UART.RBR_THR:
        if (this.lcr & UART.LCR_DLAB) {
          this.divider = (this.divider & 0xff00) | v;
          return;
        }
        this.transmitted++;
        this.thrIpending = true; // sent at once: THR empty again, THRE interrupt (if enabled) pending
        if (this.mcr & UART.MCR_LOOP) {
          this.input.push(Uint8Array.of(v));
          return;
        }
        if (this.buf.length === 0) this.opts.onOutput(Uint8Array.of(v));
        else this.emit(v);
        return;
      case UART.IER:
        if (this.lcr & UART.LCR_DLAB) {
          this.divider = (this.divider & 0x00ff) | (v << 8);
          return;
        }
        this.ier = v & 0x0f;
        this.thrIpending = true; // THR is always empty: enabling THRI raises it (QEMU: if LSR.THRE, thr_ipending = 1)
        return;
      case UART.IIR_FCR: {
        if (v === this.fcr) return;
        // FIFO reset (RFR/XFR): nothing to drop — transmission is instantaneous, and received bytes wait in the
        // host queue (as unread bytes wait in QEMU's character backend), not in a FIFO of the model.
        this.fcr = v & 0xc9;
        return;
      }
      case UART.LCR:
        this.lcr = v;
        return;
      case UART.MCR:
        this.mcr = v & 0x1f;
        return;
      case UART.LSR:
      case UART.MSR:
        return; // read-only (QEMU ignores the writes)
      case UART.SCR:
        this.scr = v;
        return;
      default:
        return;
    }
  }

  private emit(b: number): void {
    this.buf[this.buffered++] = b;
    if (this.buffered === this.buf.length || b === 0x0a) this.flush();
  }
}
