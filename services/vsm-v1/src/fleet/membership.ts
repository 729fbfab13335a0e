// fleet, agent side: the agent registers its membership (address, capacity, capabilities) under an
// etcd lease and keeps the lease alive. etcd unreachable at start, or a lease lost while etcd was
// away, is logged and retried with backoff: the agent keeps serving meanwhile (it is reachable
// directly), and registers again, with the same incarnation, when etcd answers. close() revokes the
// lease, which removes the membership at once (graceful shutdown).
import * as crypto from 'node:crypto';
import * as os from 'node:os';
import type { Logger } from 'pino';
import type { Lease } from 'etcd3';
import { type AgentMember, FLEET_FORMAT, agentKey, encodeMember, encodeReplica, replicaKey } from './records';
import type { FleetStore } from './store';

export interface MembershipOptions {
  store: FleetStore;
  member: Omit<AgentMember, 'format' | 'incarnation' | 'registerTimeUnixMs'>;
  /** Lease TTL in seconds: how long after the agent's death its partitions turn UNAVAILABLE. */
  ttlSeconds: number;
  log: Logger;
}

interface LeasedKeyOptions {
  store: FleetStore;
  ttlSeconds: number;
  key: string;
  /** The value, made anew at each registration. */
  value: () => string;
  /** The delay before registering again after a failure or a lost lease; `attempt` counts from 0 and a registration resets it. */
  retryDelayMs: (attempt: number) => number;
  onRegistered: () => void;
  /** The lease was lost (etcd away longer than the TTL) or the registration failed; a retry is scheduled. */
  onTrouble: (err: unknown, lost: boolean, everRegistered: boolean) => void;
}

/**
 * One key written under its own etcd lease and kept alive; written again (with a new lease, after
 * retryDelayMs) when the lease is lost or a registration fails; close() revokes the lease, which
 * removes the key at once. The agent's membership and a replica's presence are each one of these.
 */
class LeasedKey {
  private lease: Lease | undefined;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private attempt = 0;
  private everRegistered = false;

  constructor(private readonly o: LeasedKeyOptions) {}

  start(): void {
    void this.register();
  }

  private schedule(): void {
    if (this.closed) return;
    this.timer = setTimeout(() => void this.register(), this.o.retryDelayMs(this.attempt++));
    this.timer.unref();
  }

  private async register(): Promise<void> {
    if (this.closed) return;
    const lease = this.o.store.ns.lease(this.o.ttlSeconds, { autoKeepAlive: true });
    this.lease = lease;
    lease.on('lost', (err) => {
      if (this.closed || this.lease !== lease) return;
      this.o.onTrouble(err, true, this.everRegistered);
      this.lease = undefined;
      this.schedule();
    });
    try {
      await lease.grant();
      await lease.put(this.o.key).value(this.o.value());
      if (this.closed) return;
      this.attempt = 0;
      this.everRegistered = true;
      this.o.onRegistered();
    } catch (e) {
      if (this.closed || this.lease !== lease) return;
      this.lease = undefined;
      lease.release();
      this.o.onTrouble(e, false, this.everRegistered);
      this.schedule();
    }
  }

  /** Revokes the lease (the key goes with it). Bounded by the store's call deadline. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    const lease = this.lease;
    this.lease = undefined;
    if (lease) await lease.revoke().catch(() => lease.release());
  }
}

export class Membership {
  readonly incarnation = crypto.randomBytes(8).toString('hex');
  private readonly key: LeasedKey;
  private registered: (() => void) | undefined;
  /** Resolves the first time the membership is written. */
  readonly firstRegistration = new Promise<void>((resolve) => {
    this.registered = resolve;
  });

  constructor(private readonly o: MembershipOptions) {
    const { store, ttlSeconds, log } = o;
    let member: AgentMember | undefined;
    this.key = new LeasedKey({
      store,
      ttlSeconds,
      key: agentKey(o.member.name),
      value: () => {
        member = { ...o.member, format: FLEET_FORMAT, incarnation: this.incarnation, registerTimeUnixMs: Date.now() };
        return encodeMember(member);
      },
      retryDelayMs: (attempt) => Math.min(5000, 250 * 2 ** Math.min(attempt, 5)),
      onRegistered: () => {
        log.info(
          { name: member?.name, address: member?.address, incarnation: this.incarnation, ttlSeconds, prefix: store.config.prefix },
          'registered in the fleet (etcd membership under a lease)',
        );
        this.registered?.();
      },
      onTrouble: (err, lost, everRegistered) => {
        const fields = { err: err instanceof Error ? err.message : String(err), endpoints: store.config.endpoints };
        if (lost && everRegistered) log.warn(fields, 'fleet membership lease lost; registering again');
        else log.error(fields, 'cannot register in the fleet: etcd unreachable; retrying (the agent serves meanwhile)');
      },
    });
  }

  start(): void {
    this.key.start();
  }

  /** Leaves the fleet: revokes the lease (the membership key goes with it). Bounded by the store's call deadline. */
  async close(): Promise<void> {
    await this.key.close();
    this.o.store.close();
  }
}

/**
 * A service replica's presence ({prefix}replicas/{id}) under its own lease: the other replicas see
 * which CREATING records still have a live creator, and share the background work (checkpoints,
 * automatic recovery, repairs) by the partition id over the live replicas. Registered again after a
 * lost lease (etcd away), with the same id; close() revokes it.
 */
export class ReplicaPresence {
  readonly id = `r-${crypto.randomBytes(8).toString('hex')}`;
  private onRegistered: (() => void) | undefined;
  /** Resolves once the presence is written the first time. */
  readonly registered = new Promise<void>((r) => {
    this.onRegistered = r;
  });
  private readonly key: LeasedKey;

  constructor(store: FleetStore, ttlSeconds: number, log: Logger) {
    this.key = new LeasedKey({
      store,
      ttlSeconds,
      key: replicaKey(this.id),
      value: () => encodeReplica({ format: FLEET_FORMAT, id: this.id, host: os.hostname(), startTimeUnixMs: Date.now() }),
      retryDelayMs: () => 1000,
      onRegistered: () => {
        log.info({ replica: this.id, ttlSeconds }, 'fleet: replica presence registered');
        this.onRegistered?.();
      },
      onTrouble: () => {},
    });
  }

  start(): void {
    this.key.start();
  }

  async close(): Promise<void> {
    await this.key.close();
  }
}
