// vsmctl agents: the KVM host agents behind a vsm-service in --backend agent mode (FleetService):
// in fleet mode the agents registered in etcd with their capacity and load (from the partition records).
import type { Command } from 'commander';
import { pb } from '@vsm/client';
import type { Cli } from '../context';
import { formatSize, safeEnum, shortEnum, table, toJson } from '../format';

const stateText = (s: number) => shortEnum(safeEnum(pb.agentStateToJSON)(s), 'AGENT_STATE_').toLowerCase();
const used = (load: bigint | number, cap: bigint | number) => (Number(cap) > 0 ? `${load}/${cap}` : `${load}`);

export function register(program: Command, { run }: Cli): void {
  program
    .command('agents')
    .description('list the KVM host agents behind the service (fleet mode: registered in etcd) with their load')
    .action(
      run(async (ctx) => {
        const agents: pb.Agent[] = [];
        let pageToken = '';
        do {
          const r = await ctx.client.fleet.listAgents({ pageSize: 1000, pageToken });
          agents.push(...r.agents);
          pageToken = r.nextPageToken;
        } while (pageToken);
        ctx.emit(
          agents.map((a) => ({ ...(toJson(a) as Record<string, unknown>), state: safeEnum(pb.agentStateToJSON)(a.state) })),
          () =>
            table(
              ['NAME', 'ADDRESS', 'STATE', 'PARTITIONS', 'VPS', 'MEMORY', 'LABELS', 'REASON'],
              agents.map((a) => [
                a.name.replace(/^agents\//, ''),
                a.address,
                stateText(a.state),
                used(a.load?.partitions ?? 0, a.capacity?.partitions ?? 0),
                used(a.load?.vps ?? 0, a.capacity?.vps ?? 0),
                a.capacity ? `${formatSize(a.load?.memoryBytes ?? 0n)}/${formatSize(a.capacity.memoryBytes)}` : '',
                Object.entries(a.labels)
                  .map(([k, v]) => `${k}=${v}`)
                  .join(','),
                a.stateReason,
              ]),
            ),
        );
      }),
    );
}
