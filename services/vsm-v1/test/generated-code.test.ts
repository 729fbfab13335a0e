// What scripts/generate.js does to ts-proto's output (shareEmptyBytes): every empty bytes field is
// one shared zero-length Buffer per generated file instead of a new Buffer.alloc(0) per message
// (bench/README.md "Session 10"). The messages must stay what they were: the same bytes on the
// wire, Buffers in every bytes field, and a field that gets bytes gets a Buffer of its own.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pb } from '@vsm/api';

const GEN = path.join(__dirname, '../../../api/src/gen');

test('no generated file makes a Buffer.alloc(0) per message: one EMPTY_BYTES per file that has bytes fields, declared after the imports', () => {
  const files = fs.readdirSync(GEN, { recursive: true }).filter((f): f is string => typeof f === 'string' && f.endsWith('.ts'));
  let shared = 0;
  for (const f of files) {
    const text = fs.readFileSync(path.join(GEN, f), 'utf8');
    const allocs = text.split('Buffer.alloc(0)').length - 1;
    if (!text.includes('EMPTY_BYTES')) {
      expect(allocs).toBe(0);
      continue;
    }
    shared++;
    expect(allocs).toBe(1); // the declaration
    const lines = text.split('\n');
    const decl = lines.findIndex((l) => l.startsWith('const EMPTY_BYTES: Buffer = Buffer.alloc(0);'));
    const lastImport = lines.reduce((at, l, i) => (/^import |^} from "/.test(l) ? i : at), -1);
    expect(decl).toBeGreaterThan(lastImport);
    expect(lines.slice(0, decl).some((l) => /EMPTY_BYTES[^:]/.test(l) && !l.startsWith('/**'))).toBe(false);
  }
  expect(shared).toBeGreaterThanOrEqual(6); // guest, intercept, memory, snapshot, synic, execution, ...
});

test('empty and non-empty bytes fields decode, default and encode as before', () => {
  const empty = pb.InterceptReply.decode(pb.InterceptReply.encode({ interceptId: 7n, action: 1, data: Buffer.alloc(0), viewGeneration: undefined }).finish());
  expect(Buffer.isBuffer(empty.data)).toBe(true);
  expect(empty.data.length).toBe(0);
  const other = pb.InterceptReply.decode(Buffer.from([8, 9]));
  expect(other.data).toBe(empty.data); // the shared one
  const full = pb.InterceptReply.decode(pb.InterceptReply.encode({ interceptId: 8n, action: 2, data: Buffer.from([1, 2, 3]), viewGeneration: 5n }).finish());
  expect(full.data).toEqual(Buffer.from([1, 2, 3]));
  expect(full.data).not.toBe(empty.data);
  expect(Buffer.isBuffer(full.data)).toBe(true);
  // The shared Buffer has nothing to change: writes into it do nothing.
  empty.data.fill(0xff);
  expect(empty.data.length).toBe(0);
  expect(pb.InterceptReply.decode(Buffer.from([8, 9])).data.length).toBe(0);
  // Defaults and wire bytes: an empty bytes field is not sent (proto3).
  expect(pb.InterceptReply.fromPartial({}).data.length).toBe(0);
  expect(Buffer.from(pb.InterceptReply.encode(pb.InterceptReply.fromPartial({ interceptId: 7n })).finish())).toEqual(Buffer.from([8, 7]));
  const ev = pb.InterceptEvent.fromJSON({ interceptId: '1' });
  expect(Buffer.isBuffer(ev.hvMessage) && ev.hvMessage.length === 0 && Buffer.isBuffer(ev.writeData)).toBe(true);
  expect(pb.InterceptEvent.toJSON(ev)).toEqual({ interceptId: '1' });
});
