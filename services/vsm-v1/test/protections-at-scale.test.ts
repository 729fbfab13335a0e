// Protections at scale through the backend (issue #17): GetVtlProtections in pages, a large
// ModifyVtlProtectionMask applied in slices yet seen all at once, and the unary snapshot's size check.
import { pb } from '@vsm/api';
import { HvError } from '@vsm/core';
import { CoreBackend } from '@vsm/vsm-v1';
import { assertSnapshotFits } from '../src/backends/protections-at-scale';

const GiB = 1n << 30n;

async function protectedPartition(b: CoreBackend, id: string) {
  const p = await b.createPartition(
    pb.CreatePartitionRequest.fromPartial({ partitionId: id, partition: { vpCount: 1, memoryBytes: 4n * GiB, maximumVtl: 1 } }),
  );
  await b.enablePartitionVtl(pb.EnablePartitionVtlRequest.fromPartial({ name: p.name, targetVtl: 1 }));
  await b.enableVpVtl(pb.EnableVpVtlRequest.fromPartial({ name: `${p.name}/vps/0`, targetVtl: 1 }));
  await b.setVpRegisters(
    pb.SetVpRegistersRequest.fromPartial({
      name: `${p.name}/vps/0`,
      vtl: 1,
      registers: [{ name: pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, value: { value: { $case: 'reg64', value: 1n | (0xfn << 1n) } } }],
    }),
  );
  return p.name;
}

const ranges = (n: number, stride = 2, from = 0) => Array.from({ length: n }, (_, i) => ({ startPage: BigInt(from + i * stride), pageCount: 1n }));
const get = (b: CoreBackend, name: string, pageSize = 0, pageToken = '') =>
  b.getVtlProtections(pb.GetVtlProtectionsRequest.fromPartial({ name, protectingVtl: 1, pageSize, pageToken }));

test('GetVtlProtections in pages: every range once, in order; bad tokens and sizes refused', async () => {
  const b = new CoreBackend();
  const name = await protectedPartition(b, 'pages');
  await b.modifyVtlProtectionMask(pb.ModifyVtlProtectionMaskRequest.fromPartial({ name, protectingVtl: 1, mapFlags: 1, ranges: ranges(250) }));
  const seen: bigint[] = [];
  let token = '';
  let calls = 0;
  do {
    const r = await get(b, name, 100, token);
    expect(r.protectionEnabled).toBe(true);
    seen.push(...r.ranges.map((x) => x.pages!.startPage));
    token = r.nextPageToken;
    calls++;
  } while (token);
  expect(calls).toBe(3);
  expect(seen).toEqual(ranges(250).map((x) => x.startPage));
  // Without page_size: all of them (up to 100,000), no token.
  const all = await get(b, name);
  expect(all.ranges).toHaveLength(250);
  expect(all.nextPageToken).toBe('');
  // Exactly one page's worth: no token left.
  expect((await get(b, name, 250)).nextPageToken).toBe('');
  await expect(get(b, name, 10, 'bm90IGEgdG9rZW4')).rejects.toThrow(/page_token/);
  await expect(get(b, name, -1)).rejects.toThrow(/page_size/);
  // A change between pages: the next page goes on after the last page number already returned.
  const first = await get(b, name, 10);
  await b.modifyVtlProtectionMask(
    pb.ModifyVtlProtectionMaskRequest.fromPartial({ name, protectingVtl: 1, mapFlags: 3, ranges: [{ startPage: 1n, pageCount: 1n }] }),
  );
  const second = await get(b, name, 10, first.nextPageToken);
  expect(second.ranges[0]!.pages!.startPage).toBe(20n);
});

test('a large ModifyVtlProtectionMask is applied in slices but seen all at once; a change between slices is kept', async () => {
  const b = new CoreBackend();
  const name = await protectedPartition(b, 'sliced');
  const p = b.partition(name);
  const map = p.protections.get(1)!;
  const counts = new Set<number>();
  let running = true;
  // Readers between the slices: only the state before or after the request.
  const watch = (async () => {
    while (running) {
      counts.add(map.rangeCount);
      await new Promise((r) => setImmediate(r));
    }
  })();
  const res = await b.modifyVtlProtectionMask(pb.ModifyVtlProtectionMaskRequest.fromPartial({ name, protectingVtl: 1, mapFlags: 1, ranges: ranges(20_000) }));
  running = false;
  await watch;
  expect(res.pagesChanged).toBe(20_000n);
  expect([...counts].every((n) => n === 0 || n === 20_000)).toBe(true);
  expect(counts.has(0)).toBe(true); // the reader did run while the request was in progress
  // A change made between slices (as a guest's hypercall would) is not lost: the request applies over it.
  const pending = b.modifyVtlProtectionMask(
    pb.ModifyVtlProtectionMaskRequest.fromPartial({ name, protectingVtl: 1, mapFlags: 3, ranges: ranges(10_000, 2, 1) }),
  );
  await new Promise((r) => setImmediate(r));
  p.modifyVtlProtectionMask('host', 1, 0x1, [{ start: 100_000n, count: 1n }]);
  await pending;
  expect(p.protectionOf(1, 100_000)).toBe(0x1);
  expect(p.protectionOf(1, 1)).toBe(0x3);
  expect(p.protectionOf(1, 19_999)).toBe(0x3);
  // Bad input is refused before anything changes.
  await expect(
    b.modifyVtlProtectionMask(
      pb.ModifyVtlProtectionMaskRequest.fromPartial({
        name,
        protectingVtl: 1,
        mapFlags: 7,
        ranges: [...ranges(5000, 2, 200_000), { startPage: 1n << 40n, pageCount: 1n }],
      }),
    ),
  ).rejects.toThrow(HvError);
  expect(p.protectionOf(1, 200_000)).toBe(0xf);
});

test('a unary snapshot that cannot fit one reply is refused naming its size and the limit', async () => {
  const b = new CoreBackend();
  const p = await b.createPartition(pb.CreatePartitionRequest.fromPartial({ partitionId: 'big', partition: { vpCount: 1, memoryBytes: GiB } }));
  await b.writeGpa(pb.WriteGpaRequest.fromPartial({ name: p.name, gpa: 0n, data: Buffer.alloc(3 * 4096, 1) }));
  expect(() => assertSnapshotFits(b.partition(p.name), p.name, 8192)).toThrow(
    /too large for one SavePartition reply: at least 12312 bytes \(3 touched RAM pages/,
  );
  expect(() => assertSnapshotFits(b.partition(p.name), p.name)).not.toThrow();
  await expect(b.savePartition({ name: p.name })).resolves.toBeDefined();
});
