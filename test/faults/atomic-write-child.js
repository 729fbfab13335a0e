// Child for the kill-mid-write test: saves ever larger snapshots of one partition in a loop until
// killed. Run from the compiled tree (services/vsm-v1/dist).
const { StateStore } = require('../../services/vsm-v1/dist/state-dir');
const { pb } = require('../../clients/typescript/dist');
const store = new StateStore(process.argv[2]);
(async () => {
  let n = 0;
  for (;;) {
    n++;
    const pages = Array.from({ length: 64 + (n % 64) }, (_, i) => ({ gpfn: BigInt(i), data: Buffer.alloc(4096, n & 0xff) }));
    await store.save('victim', pb.PartitionSnapshot.fromPartial({ formatVersion: 1, sourceName: `generation-${n}`, memory: pages }));
    if (n === 1) process.stdout.write('ready\n');
  }
})();
