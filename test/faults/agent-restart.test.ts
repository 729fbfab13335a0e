// Fault: the KVM agent behind the service dies and comes back. While it is down, calls for its
// partitions fail UNAVAILABLE promptly (never hang); after it restarts, the partitions it hosted are
// gone (the agent keeps VMs in memory only): NOT_FOUND, and new partitions work.
import pino from 'pino';
import { status } from '@grpc/grpc-js';
import { connect, type pb, VsmError } from '@vsm/client';
import { KvmBackend, RemoteBackend, type RunningServer, startServer } from '@vsm/vsm-v1';
import { HvMsr } from '@vsm/core';
import { describeKvm } from '../support/kvm-gate';
import { freePort } from '../support/ports';

describeKvm('KVM agent killed and restarted behind the service', () => {
  test('UNAVAILABLE while down (fast), NOT_FOUND for its old partitions after restart', async () => {
    const logger = pino({ level: 'silent' });
    const agentAddr = `127.0.0.1:${await freePort()}`;
    let agent: RunningServer = await startServer({ listen: agentAddr, backend: new KvmBackend(), logger, shutdownGraceMs: 200 });
    const svc = await startServer({ listen: '127.0.0.1:0', backend: new RemoteBackend([agentAddr]), logger, shutdownGraceMs: 200 });
    const c = connect(svc.address, { deadlineMs: 15_000 });
    try {
      const p = await c.partitions.createPartition({ partitionId: 'ar', partition: { vpCount: 1, memoryBytes: 1n << 30n } as pb.Partition });
      await c.guest.writeMsr({ name: `${p.name}/vps/0`, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 5n });
      agent.server.forceShutdown(); // the agent dies
      await agent.shutdown('test');
      const t0 = Date.now();
      const down = await c.guest.readMsr({ name: `${p.name}/vps/0`, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(down).toBeInstanceOf(VsmError);
      expect((down as VsmError).code).toBe(status.UNAVAILABLE);
      expect(Date.now() - t0).toBeLessThan(10_000);
      agent = await startServer({ listen: agentAddr, backend: new KvmBackend(), logger, shutdownGraceMs: 200 });
      let gone: unknown;
      for (let i = 0; i < 50; i++) {
        gone = await c.guest.readMsr({ name: `${p.name}/vps/0`, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID }).then(
          () => undefined,
          (e: unknown) => e,
        );
        if ((gone as VsmError | undefined)?.code !== status.UNAVAILABLE) break;
        await new Promise((r) => setTimeout(r, 200)); // the channel reconnects with backoff
      }
      expect([(gone as VsmError).code, (gone as VsmError).reason]).toEqual([status.NOT_FOUND, 'HV_STATUS_INVALID_PARTITION_ID']);
      const again = await c.partitions.createPartition({ partitionId: 'ar2', partition: { vpCount: 1, memoryBytes: 1n << 30n } as pb.Partition });
      expect((await c.guest.readMsr({ name: `${again.name}/vps/0`, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID })).value).toBe(0n);
    } finally {
      c.close();
      await svc.shutdown('test');
      await agent.shutdown('test');
    }
  }, 60_000);
});
