// Port-I/O device models (src/guest/devices): 16550 UART, fw_cfg, isa-debug-exit, the hyperv-testdev
// control port and the port bus, driven the way kvm-unit-tests' lib/x86 drives them.
import fc from 'fast-check';
import {
  DebugExit,
  FW_CFG,
  FwCfg,
  HV_TEST_DEV,
  type HypervTestDevHandler,
  type HypervTestDevOp,
  HypervTestDevControl,
  PortBus,
  type PortIoDevice,
  UART,
  Uart16550,
  debugExitStatus,
  decodeHypervTestDevControl,
  encodeHypervTestDevControl,
} from '../../src/guest';

const COM1 = 0x3f8;
const text = (chunks: Uint8Array[]) => Buffer.concat(chunks.map((c) => Buffer.from(c))).toString('latin1');

describe('Uart16550', () => {
  const make = (o: { bufferBytes?: number } = {}) => {
    const out: Uint8Array[] = [];
    let changes = 0;
    const uart = new Uart16550({ onOutput: (b) => out.push(b), onChange: () => changes++, ...o });
    return { uart, out, changes: () => changes };
  };

  it('resets like QEMU: LSR THRE|TEMT, IIR no interrupt, MCR OUT2, MSR DCD|DSR|CTS, divisor 12 (9600 baud)', () => {
    const { uart } = make();
    expect(uart.ioIn(COM1 + UART.LSR, 1)).toBe(0x60);
    expect(uart.ioIn(COM1 + UART.IIR_FCR, 1)).toBe(0x01);
    expect(uart.ioIn(COM1 + UART.IER, 1)).toBe(0);
    expect(uart.ioIn(COM1 + UART.LCR, 1)).toBe(0);
    expect(uart.ioIn(COM1 + UART.MCR, 1)).toBe(0x08);
    expect(uart.ioIn(COM1 + UART.MSR, 1)).toBe(0xb0);
    expect(uart.ioIn(COM1 + UART.SCR, 1)).toBe(0);
    uart.ioOut(COM1 + UART.LCR, 1, 0x83);
    expect([uart.ioIn(COM1, 1), uart.ioIn(COM1 + 1, 1)]).toEqual([0x0c, 0x00]);
  });

  it('THR writes go to onOutput at once by default, one call per write; a rep outsb in one call', () => {
    const { uart, out } = make();
    for (const c of Buffer.from('hi\n')) uart.ioOut(COM1, 1, c);
    expect(out.map((b) => Array.from(b))).toEqual([[0x68], [0x69], [0x0a]]);
    uart.outString(COM1, Buffer.from('PASS: smptest\n'));
    expect(out).toHaveLength(4);
    expect(text(out)).toBe('hi\nPASS: smptest\n');
    expect(uart.transmitted).toBe(17);
    expect(uart.ioIn(COM1 + UART.LSR, 1)).toBe(0x60); // transmitted at once: THR/transmitter empty
  });

  it('with bufferBytes, output is handed over on newline, when full and on flush()', () => {
    const { uart, out } = make({ bufferBytes: 4 });
    for (const c of Buffer.from('ab')) uart.ioOut(COM1, 1, c);
    expect(out).toHaveLength(0);
    uart.ioOut(COM1, 1, 0x0a);
    expect(text(out)).toBe('ab\n');
    uart.outString(COM1, Buffer.from('123456'));
    expect(out.map((b) => text([b]))).toEqual(['ab\n', '1234']);
    uart.flush();
    uart.flush();
    expect(out.map((b) => text([b]))).toEqual(['ab\n', '1234', '56']);
  });

  it('input from the host: DR while bytes wait, RBR in order, onChange on arrival and when drained', () => {
    const { uart, changes } = make();
    uart.pushInput(Buffer.from('ok'));
    uart.pushInput(Buffer.from('!'));
    expect(changes()).toBe(1);
    expect(uart.inputPending).toBe(3);
    expect(uart.ioIn(COM1 + UART.LSR, 1)).toBe(0x61);
    const got: number[] = [];
    while (uart.ioIn(COM1 + UART.LSR, 1) & UART.LSR_DR) got.push(uart.ioIn(COM1, 1));
    expect(Buffer.from(got).toString()).toBe('ok!');
    expect(changes()).toBe(2);
    expect(uart.ioIn(COM1, 1)).toBe(0); // empty RBR
  });

  it('IIR follows QEMU priorities: RDI over THRI; reading IIR acknowledges THRI; a THR write re-arms it; FIFO bits', () => {
    const { uart } = make();
    uart.ioOut(COM1 + UART.IER, 1, 0xff);
    expect(uart.ioIn(COM1 + UART.IER, 1)).toBe(0x0f);
    expect(uart.interruptPending).toBe(true);
    expect(uart.ioIn(COM1 + UART.IIR_FCR, 1)).toBe(0x02); // THRE
    expect(uart.ioIn(COM1 + UART.IIR_FCR, 1)).toBe(0x01); // acknowledged by the read
    uart.ioOut(COM1, 1, 0x41);
    expect(uart.ioIn(COM1 + UART.IIR_FCR, 1)).toBe(0x02);
    uart.pushInput(Uint8Array.of(0x42));
    expect(uart.ioIn(COM1 + UART.IIR_FCR, 1)).toBe(0x04); // received data first
    uart.ioIn(COM1, 1);
    uart.ioOut(COM1 + UART.IIR_FCR, 1, 0xc7); // FIFO on (trigger 14), both FIFOs reset
    expect(uart.ioIn(COM1 + UART.IIR_FCR, 1)).toBe(0xc1);
    uart.ioOut(COM1 + UART.IER, 1, 0);
    expect(uart.interruptPending).toBe(false);
  });

  it('DLAB switches ports 0/1 to the divisor latch (no output), LCR/MCR/SCR read back, LSR/MSR ignore writes', () => {
    const { uart, out } = make();
    uart.ioOut(COM1 + UART.LCR, 1, 0x80);
    uart.ioOut(COM1, 1, 0x01);
    uart.ioOut(COM1 + 1, 1, 0x02);
    expect([uart.ioIn(COM1, 1), uart.ioIn(COM1 + 1, 1)]).toEqual([0x01, 0x02]);
    expect(out).toHaveLength(0);
    uart.ioOut(COM1 + UART.LCR, 1, 0x03);
    expect(uart.ioIn(COM1 + UART.IER, 1)).toBe(0); // IER untouched by the latch writes
    uart.ioOut(COM1 + UART.MCR, 1, 0xff);
    expect(uart.ioIn(COM1 + UART.MCR, 1)).toBe(0x1f);
    uart.ioOut(COM1 + UART.SCR, 1, 0x5a);
    expect(uart.ioIn(COM1 + UART.SCR, 1)).toBe(0x5a);
    uart.ioOut(COM1 + UART.LSR, 1, 0);
    uart.ioOut(COM1 + UART.MCR, 1, 0x08);
    uart.ioOut(COM1 + UART.MSR, 1, 0);
    expect([uart.ioIn(COM1 + UART.LSR, 1), uart.ioIn(COM1 + UART.MSR, 1)]).toEqual([0x60, 0xb0]);
  });

  it('loopback: transmitted bytes are received, not output; MSR mirrors MCR', () => {
    const { uart, out } = make();
    uart.ioOut(COM1 + UART.MCR, 1, UART.MCR_LOOP | UART.MCR_OUT2 | UART.MCR_RTS);
    expect(uart.ioIn(COM1 + UART.MSR, 1)).toBe(UART.MSR_DCD | UART.MSR_CTS);
    uart.ioOut(COM1, 1, 0x55);
    expect(out).toHaveLength(0);
    expect(uart.ioIn(COM1 + UART.LSR, 1)).toBe(0x61);
    expect(uart.ioIn(COM1, 1)).toBe(0x55);
  });

  it('wider accesses are byte accesses on consecutive ports', () => {
    const { uart, out } = make();
    uart.ioOut(COM1 + UART.LCR, 2, 0x0b03); // LCR = 3, MCR = 0x0b
    expect(uart.ioIn(COM1 + UART.LCR, 2)).toBe(0x0b03);
    expect(uart.ioIn(COM1 + UART.LSR, 4)).toBe(0xff00b060); // LSR, MSR, SCR, then a port past the UART
    uart.ioOut(COM1, 2, 0x0058); // THR 'X', IER 0
    expect(text(out)).toBe('X');
  });

  it('fastPath(): on unless DLAB, loopback or the THRE interrupt; LSR value with DR', () => {
    const { uart } = make();
    expect(uart.fastPath()).toEqual({ enabled: true, lsr: 0x60 });
    uart.pushInput(Uint8Array.of(1));
    expect(uart.fastPath()).toEqual({ enabled: true, lsr: 0x61 });
    uart.ioOut(COM1 + UART.LCR, 1, 0x80);
    expect(uart.fastPath().enabled).toBe(false);
    uart.ioOut(COM1 + UART.LCR, 1, 0x03);
    uart.ioOut(COM1 + UART.IER, 1, UART.IER_THRI);
    expect(uart.fastPath().enabled).toBe(false);
    uart.ioOut(COM1 + UART.IER, 1, 0);
    uart.ioOut(COM1 + UART.MCR, 1, UART.MCR_LOOP);
    expect(uart.fastPath().enabled).toBe(false);
  });
});

describe('FwCfg', () => {
  // lib/x86/fwcfg.c fwcfg_get_u(): outw(index, 0x510); `bytes` × inb(0x511), little-endian
  const get = (fw: PortIoDevice, key: number, bytes: number): bigint => {
    fw.ioOut(0x510, 2, key);
    let r = 0n;
    for (let i = 0; i < bytes; i++) r |= BigInt(fw.ioIn(0x511, 1)) << BigInt(8 * i);
    return r;
  };

  it('answers what kvm-unit-tests reads: signature, id, RAM size, CPU counts; unknown keys (MAX_RAM) read 0', () => {
    const fw = new FwCfg({ ramBytes: 0x1_2345_6000n, cpus: 2, maxCpus: 4 });
    expect(Buffer.from([0, 1, 2, 3].map(() => fw.ioIn(0x511, 1))).equals(Buffer.alloc(4))).toBe(true); // nothing selected
    fw.ioOut(0x510, 2, FW_CFG.SIGNATURE);
    expect(Buffer.from([0, 1, 2, 3].map(() => fw.ioIn(0x511, 1))).toString()).toBe('QEMU');
    expect(get(fw, FW_CFG.ID, 4)).toBe(1n);
    expect(get(fw, FW_CFG.RAM_SIZE, 8)).toBe(0x1_2345_6000n);
    expect(get(fw, FW_CFG.NB_CPUS, 2)).toBe(2n);
    expect(get(fw, FW_CFG.MAX_CPUS, 2)).toBe(4n);
    expect(get(fw, FW_CFG.MAX_RAM, 8)).toBe(0n);
    expect(get(fw, 0x1234, 8)).toBe(0n);
    expect(get(fw, FW_CFG.UUID, 16)).toBe(0n);
    expect(get(fw, FW_CFG.NUMA, 8)).toBe(0n);
  });

  it('reads past an item are 0; selecting again rewinds; 0x510 reads data too; invalid sizes read all-ones and write nothing', () => {
    const fw = new FwCfg({ ramBytes: 64n << 20n, cpus: 1 });
    expect(get(fw, FW_CFG.NB_CPUS, 4)).toBe(1n);
    fw.ioOut(0x510, 2, FW_CFG.SIGNATURE);
    expect(fw.ioIn(0x510, 1)).toBe(0x51);
    expect(fw.ioIn(0x511, 1)).toBe(0x45);
    expect(fw.ioIn(0x511, 4)).toBe(0xffffffff);
    expect(fw.ioIn(0x511, 2)).toBe(0xffff);
    fw.ioOut(0x511, 1, 0x99); // legacy data write: ignored
    fw.ioOut(0x510, 4, FW_CFG.RAM_SIZE); // not a valid selector write
    expect(fw.ioIn(0x511, 1)).toBe(0x4d); // still the signature, next byte
    fw.ioOut(0x510, 2, FW_CFG.SIGNATURE);
    expect(fw.ioIn(0x511, 1)).toBe(0x51);
    expect(fw.selected).toBe(FW_CFG.SIGNATURE);
    fw.ioOut(0x510, 2, 0x7777);
    expect(fw.selected).toBe(FW_CFG.INVALID);
  });

  it('extra items; bad options are refused', () => {
    const fw = new FwCfg({ ramBytes: 1n << 30n, cpus: 1, items: new Map([[FW_CFG.KERNEL_ADDR, Uint8Array.of(0, 0, 0x40, 0)]]) });
    expect(get(fw, FW_CFG.KERNEL_ADDR, 4)).toBe(0x400000n);
    expect(() => new FwCfg({ ramBytes: -1n, cpus: 1 })).toThrow(RangeError);
    expect(() => new FwCfg({ ramBytes: 1n, cpus: 0 })).toThrow(RangeError);
    expect(() => new FwCfg({ ramBytes: 1n, cpus: 4, maxCpus: 2 })).toThrow(RangeError);
  });
});

describe('DebugExit', () => {
  it('QEMU isa-debug-exit status (code << 1) | 1 for every write size; reads 0', () => {
    const seen: [number, number][] = [];
    const d = new DebugExit({ onExit: (code, status) => seen.push([code, status]) });
    d.ioOut(0xf4, 4, 0); // kvm-unit-tests exit(0)
    d.ioOut(0xf4, 4, 1);
    d.ioOut(0xf4, 1, 0x17f); // a byte write: 0x7f
    expect(seen).toEqual([
      [0, 1],
      [1, 3],
      [0x7f, 0xff],
    ]);
    expect(debugExitStatus(0xffffffff)).toEqual({ code: 0xffffffff, status: 0x1ffffffff, status8: 0xff });
    expect(d.last).toEqual({ code: 0x7f, status: 0xff, status8: 0xff });
    expect(d.ioIn()).toBe(0);
  });
});

describe('HypervTestDevControl', () => {
  it('decodes conn_id << 24 | ctl << 16 | vcpu << 8 | sint into typed ops (x86/hyperv.c values)', () => {
    const v = encodeHypervTestDevControl(HV_TEST_DEV.MSG_CONN_CREATE, 1, 5, 0x7f);
    expect(v).toBe(0x7f040105);
    expect(decodeHypervTestDevControl(v)).toEqual({ op: 'msg-conn-create', vpIndex: 1, sint: 5, connectionId: 0x7f, raw: 0x7f040105 });
    const names = [1, 2, 3, 4, 5, 6, 7].map((ctl) => decodeHypervTestDevControl(encodeHypervTestDevControl(ctl, 0, 2)).op);
    expect(names).toEqual([
      'sint-route-create',
      'sint-route-destroy',
      'sint-route-set-sint',
      'msg-conn-create',
      'msg-conn-destroy',
      'evt-conn-create',
      'evt-conn-destroy',
    ]);
    expect(decodeHypervTestDevControl(encodeHypervTestDevControl(0, 1, 2, 3))).toEqual({
      op: 'unknown',
      ctl: 0,
      size: 4,
      vpIndex: 1,
      sint: 2,
      connectionId: 3,
      raw: 0x03000102,
    });
    expect(decodeHypervTestDevControl(encodeHypervTestDevControl(8, 0, 0))).toMatchObject({ op: 'unknown', ctl: 8 });
    expect(decodeHypervTestDevControl(0x00010002, 2)).toMatchObject({ op: 'unknown', size: 2, raw: 0x0002 });
  });

  it('calls the handler method of each op with the right arguments; unknown ops are not thrown', () => {
    const calls: unknown[][] = [];
    const rec =
      (name: string) =>
      (...a: number[]) => {
        calls.push([name, ...a]);
      };
    const handler: HypervTestDevHandler = {
      sintRouteCreate: rec('sintRouteCreate'),
      sintRouteDestroy: rec('sintRouteDestroy'),
      sintRouteSet: rec('sintRouteSet'),
      messageConnectionCreate: rec('messageConnectionCreate'),
      messageConnectionDestroy: rec('messageConnectionDestroy'),
      eventConnectionCreate: rec('eventConnectionCreate'),
      eventConnectionDestroy: rec('eventConnectionDestroy'),
    };
    const dev = new HypervTestDevControl(handler);
    const out = (ctl: number, vcpu: number, sint: number, conn = 0) => dev.ioOut(0x3000, 4, encodeHypervTestDevControl(ctl, vcpu, sint, conn));
    out(1, 1, 2);
    out(3, 0, 2);
    out(2, 1, 2);
    out(4, 1, 3, 0x11);
    out(5, 0, 0, 0x11);
    out(6, 0, 4, 0x22);
    out(7, 0, 0, 0x22);
    out(9, 0, 0);
    dev.ioOut(0x3000, 1, 0x01);
    expect(calls).toEqual([
      ['sintRouteCreate', 1, 2],
      ['sintRouteSet', 0, 2],
      ['sintRouteDestroy', 1, 2],
      ['messageConnectionCreate', 0x11, 1, 3],
      ['messageConnectionDestroy', 0x11],
      ['eventConnectionCreate', 0x22, 0, 4],
      ['eventConnectionDestroy', 0x22],
    ]);
    expect(dev.unknownOps).toBe(2);
    expect(dev.recent).toHaveLength(9);
    expect(dev.ioIn()).toBe(0);
  });

  it('a function handler gets every typed op, unknown ones included', () => {
    const ops: HypervTestDevOp[] = [];
    const dev = new HypervTestDevControl((op) => ops.push(op));
    dev.ioOut(0x3000, 4, encodeHypervTestDevControl(6, 1, 3, 9));
    dev.ioOut(0x3000, 4, 0xff_ff_ff_ff);
    expect(ops).toEqual([
      { op: 'evt-conn-create', vpIndex: 1, sint: 3, connectionId: 9, raw: 0x09060103 },
      { op: 'unknown', ctl: 0xff, size: 4, vpIndex: 0xff, sint: 0xff, connectionId: 0xff, raw: 0xffffffff },
    ]);
  });
});

describe('PortBus', () => {
  it('dispatches by port, reads all-ones and ignores writes on unmapped ports, counting them', () => {
    const out: Uint8Array[] = [];
    const exits: number[] = [];
    const uart = new Uart16550({ onOutput: (b) => out.push(b) });
    const bus = new PortBus([
      { from: 0x3f8, to: 0x3ff, device: uart, name: 'COM1' },
      { from: 0x510, to: 0x511, device: new FwCfg({ ramBytes: 128n << 20n, cpus: 2 }) },
      { from: 0xf4, to: 0xf7, device: new DebugExit({ onExit: (code) => exits.push(code) }) },
    ]);
    for (const c of Buffer.from('PASS\n')) {
      while (!(bus.ioIn(0x3fd, 1) & UART.LSR_THRE));
      bus.ioOut(0x3f8, 1, c);
    }
    bus.ioOut(0x510, 2, FW_CFG.NB_CPUS);
    expect(bus.ioIn(0x511, 1) | (bus.ioIn(0x511, 1) << 8)).toBe(2);
    expect(bus.ioIn(0x80, 1)).toBe(0xff);
    expect(bus.ioIn(0x2f8, 2)).toBe(0xffff);
    expect(bus.ioIn(0xcf8, 4)).toBe(0xffffffff);
    bus.ioOut(0x8900, 1, 0x53); // kvm-unit-tests' Bochs shutdown fallback: nobody there
    bus.ioOut(0x80, 1, 0x1ff);
    bus.ioOut(0xf4, 4, 0);
    expect(text(out)).toBe('PASS\n');
    expect(exits).toEqual([0]);
    expect(bus.unknown.reads).toBe(3);
    expect(bus.unknown.writes).toBe(2);
    expect(bus.unknown.byPort.get(0x80)).toBe(2);
    expect(bus.unknown.last).toEqual({ port: 0x80, size: 1, direction: 'out', value: 0xff });
    expect(bus.deviceAt(0x3fd)).toBe(uart);
    expect(bus.mapped().map((r) => r.name)).toEqual(['COM1', '0x510-0x511', '0xf4-0xf7']);
  });

  it('refuses overlapping and bad ranges', () => {
    const dev: PortIoDevice = { ioIn: () => 0, ioOut: () => {} };
    const bus = new PortBus([{ from: 0x3f8, to: 0x3ff, device: dev, name: 'COM1' }]);
    expect(() => bus.add({ from: 0x3ff, to: 0x400, device: dev })).toThrow(/overlaps COM1 at port 0x3ff/);
    expect(() => bus.add({ from: 0x10, to: 0x0f, device: dev })).toThrow(RangeError);
    expect(() => bus.add({ from: 0, to: 0x10000, device: dev })).toThrow(RangeError);
    bus.add({ from: 0, to: 0, device: dev }).add({ from: 0xffff, to: 0xffff, device: dev });
    expect(bus.deviceAt(0xffff)).toBe(dev);
  });

  it('random accesses never throw and reads stay within their size', () => {
    const bus = new PortBus([
      { from: 0x3f8, to: 0x3ff, device: new Uart16550({ onOutput: () => {}, bufferBytes: 16 }) },
      { from: 0x510, to: 0x511, device: new FwCfg({ ramBytes: 1n << 30n, cpus: 2 }) },
      { from: 0xf4, to: 0xf7, device: new DebugExit({ onExit: () => {} }) },
      { from: 0x3000, to: 0x3003, device: new HypervTestDevControl(() => {}) },
    ]);
    const access = fc.record({
      port: fc.oneof(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0x3f6, max: 0x401 }), fc.integer({ min: 0x50e, max: 0x513 })),
      size: fc.constantFrom(1 as const, 2 as const, 4 as const),
      out: fc.boolean(),
      value: fc.integer({ min: -(2 ** 31), max: 2 ** 32 - 1 }),
    });
    fc.assert(
      fc.property(fc.array(access, { maxLength: 64 }), (accesses) => {
        for (const a of accesses) {
          if (a.out) bus.ioOut(a.port, a.size, a.value);
          else {
            const v = bus.ioIn(a.port, a.size);
            expect(Number.isInteger(v) && v >= 0 && v < 2 ** (8 * a.size)).toBe(true);
          }
        }
      }),
      { numRuns: 300 },
    );
  });
});
