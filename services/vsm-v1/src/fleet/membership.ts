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

export class Membership {
  readonly incarnation = crypto.randomBytes(8).toString('hex');
  private lease: Lease | undefined;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private attempt = 0;
  private everRegistered = false;
  private registered: (() => void) | undefined;
  /** Resolves the first time the membership is written. */
  readonly firstRegistration = new Promise<void>((resolve) => {
    this.registered = resolve;
  });

  constructor(private readonly o: MembershipOptions) {}

  start(): void {
    void this.register();
  }

  private schedule(): void {
    if (this.closed) return;
    const delay = Math.min(5000, 250 * 2 ** Math.min(this.attempt++, 5));
    this.timer = setTimeout(() => void this.register(), delay);
    this.timer.unref();
  }

  private async register(): Promise<void> {
    if (this.closed) return;
    const { store, ttlSeconds, log } = this.o;
    const lease = store.ns.lease(ttlSeconds, { autoKeepAlive: true });
    this.lease = lease;
    lease.on('lost', (err) => {
      if (this.closed || this.lease !== lease) return;
      if (this.everRegistered) log.warn({ err: err.message, endpoints: store.config.endpoints }, 'fleet membership lease lost; registering again');
      else
        log.error(
          { err: err.message, endpoints: store.config.endpoints },
          'cannot register in the fleet: etcd unreachable; retrying (the agent serves meanwhile)',
        );
      this.lease = undefined;
      this.schedule();
    });
    const member: AgentMember = { ...this.o.member, format: FLEET_FORMAT, incarnation: this.incarnation, registerTimeUnixMs: Date.now() };
    try {
      await lease.grant();
      await lease.put(agentKey(member.name)).value(encodeMember(member));
      if (this.closed) return;
      this.attempt = 0;
      this.everRegistered = true;
      log.info(
        { name: member.name, address: member.address, incarnation: this.incarnation, ttlSeconds, prefix: store.config.prefix },
        'registered in the fleet (etcd membership under a lease)',
      );
      this.registered?.();
    } catch (e) {
      if (this.closed || this.lease !== lease) return;
      this.lease = undefined;
      lease.release();
      log.error(
        { err: e instanceof Error ? e.message : String(e), endpoints: store.config.endpoints },
        'cannot register in the fleet: etcd unreachable; retrying (the agent serves meanwhile)',
      );
      this.schedule();
    }
  }

  /** Leaves the fleet: revokes the lease (the membership key goes with it). Bounded by the store's call deadline. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    const lease = this.lease;
    this.lease = undefined;
    if (lease) await lease.revoke().catch(() => lease.release());
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
  private lease: Lease | undefined;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly store: FleetStore,
    private readonly ttlSeconds: number,
    private readonly log: Logger,
  ) {}

  start(): void {
    void this.register();
  }

  private retry(): void {
    if (this.closed) return;
    this.timer = setTimeout(() => void this.register(), 1000);
    this.timer.unref();
  }

  private async register(): Promise<void> {
    if (this.closed) return;
    const lease = this.store.ns.lease(this.ttlSeconds, { autoKeepAlive: true });
    this.lease = lease;
    lease.on('lost', () => {
      if (this.closed || this.lease !== lease) return;
      this.lease = undefined;
      this.retry();
    });
    try {
      await lease.grant();
      await lease.put(replicaKey(this.id)).value(encodeReplica({ format: FLEET_FORMAT, id: this.id, host: os.hostname(), startTimeUnixMs: Date.now() }));
      this.log.info({ replica: this.id, ttlSeconds: this.ttlSeconds }, 'fleet: replica presence registered');
      this.onRegistered?.();
    } catch {
      if (this.closed || this.lease !== lease) return;
      this.lease = undefined;
      lease.release();
      this.retry();
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    const lease = this.lease;
    this.lease = undefined;
    if (lease) await lease.revoke().catch(() => lease.release());
  }
}
