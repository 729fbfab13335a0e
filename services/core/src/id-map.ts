// core: a map keyed by u64 ids (intercept ids) for the hot path of a partition's intercepts, used
// where a JS Map would be set and deleted once per intercept.
//
// Why not a Map: V8 replaces a Map's hash table when it fills up with deleted entries or shrinks
// below a quarter, and allocates the new table in the old generation when the old one is there. A
// Map holding a few entries at a time with one set and one delete per intercept is rebuilt every few
// operations; once its table had been promoted (a partition idle while another ran), every rebuild
// was old-generation garbage: ≈1 MB per scavenge, a major GC every ~1.5 s and the emulator's CPU per
// intercept up by half, for every partition used after the first (bench/README.md "Intercept
// throughput", session 8). This table is open addressing with linear probing over preallocated
// arrays (a multiplicative hash, so sequential ids scatter) and backward-shift deletion (no
// tombstones): a set or delete allocates nothing unless the
// table grows past half full (capacity doubles) or falls under an eighth (halves, not below
// MIN_CAPACITY). Ids at or above 2^53 (only after importing such a state) live in a plain Map.
//
// Iteration (values, keys, entries, forEach, for…of) is in ascending id order, i.e. the order the
// intercepts were raised (ids are allocated in sequence): a snapshot taken when it starts, so the
// map may be changed while iterating.

const MIN_CAPACITY = 16;
const TWO_32 = 0x100000000;
/** Bits 0-31 of an id held exactly as a number (below 2^53). */
export const low32 = (n: number): number => n % TWO_32;
/** Bits 32-52 of an id held exactly as a number (below 2^53). */
export const high32 = (n: number): number => Math.floor(n / TWO_32);

export class IdMap<V> {
  private capacity = MIN_CAPACITY;
  /** 32 - log2(capacity): home() keeps the hash's top log2(capacity) bits. */
  private shift = 32 - Math.log2(MIN_CAPACITY);
  /** The id held by each slot (a number: ids below 2^53). */
  private ids = new Float64Array(MIN_CAPACITY);
  /** 1 where a slot holds an entry. */
  private used = new Uint8Array(MIN_CAPACITY);
  private vals: (V | undefined)[] = new Array<V | undefined>(MIN_CAPACITY).fill(undefined);
  private count = 0;
  /** Entries whose id is not exact as a number (>= 2^53). */
  private readonly big = new Map<bigint, V>();

  get size(): number {
    return this.count + this.big.size;
  }

  has(id: bigint): boolean {
    const n = Number(id);
    if (n > Number.MAX_SAFE_INTEGER) return this.big.has(id);
    return this.slotOf(n) >= 0;
  }

  get(id: bigint): V | undefined {
    const n = Number(id);
    if (n > Number.MAX_SAFE_INTEGER) return this.big.get(id);
    const s = this.slotOf(n);
    return s >= 0 ? this.vals[s] : undefined;
  }

  set(id: bigint, value: V): this {
    const n = Number(id);
    if (n > Number.MAX_SAFE_INTEGER) {
      this.big.set(id, value);
      return this;
    }
    const existing = this.slotOf(n);
    if (existing >= 0) {
      this.vals[existing] = value;
      return this;
    }
    if ((this.count + 1) * 2 > this.capacity) this.resize(this.capacity * 2);
    let s = this.home(n);
    while (this.used[s] === 1) s = (s + 1) & (this.capacity - 1);
    this.used[s] = 1;
    this.ids[s] = n;
    this.vals[s] = value;
    this.count++;
    return this;
  }

  delete(id: bigint): boolean {
    const n = Number(id);
    if (n > Number.MAX_SAFE_INTEGER) return this.big.delete(id);
    let hole = this.slotOf(n);
    if (hole < 0) return false;
    // Backward-shift deletion: later entries of the probe run move into the hole when their home
    // slot does not lie cyclically in (hole, j].
    const mask = this.capacity - 1;
    let j = hole;
    for (;;) {
      j = (j + 1) & mask;
      if (this.used[j] === 0) break;
      const h = this.home(this.ids[j]!);
      const stays = hole <= j ? hole < h && h <= j : hole < h || h <= j;
      if (stays) continue;
      this.ids[hole] = this.ids[j]!;
      this.vals[hole] = this.vals[j];
      hole = j;
    }
    this.used[hole] = 0;
    this.vals[hole] = undefined;
    this.count--;
    if (this.capacity > MIN_CAPACITY && this.count * 8 < this.capacity) this.resize(this.capacity / 2);
    return true;
  }

  clear(): void {
    this.capacity = MIN_CAPACITY;
    this.shift = 32 - Math.log2(MIN_CAPACITY);
    this.ids = new Float64Array(MIN_CAPACITY);
    this.used = new Uint8Array(MIN_CAPACITY);
    this.vals = new Array<V | undefined>(MIN_CAPACITY).fill(undefined);
    this.count = 0;
    this.big.clear();
  }

  /** The entries in ascending id order (a snapshot). */
  entries(): IterableIterator<[bigint, V]> {
    const out: [bigint, V][] = [];
    for (let s = 0; s < this.capacity; s++) if (this.used[s] === 1) out.push([BigInt(this.ids[s]!), this.vals[s] as V]);
    for (const e of this.big) out.push(e);
    out.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    return out[Symbol.iterator]();
  }
  keys(): IterableIterator<bigint> {
    return Array.from(this.entries(), (e) => e[0])[Symbol.iterator]();
  }
  values(): IterableIterator<V> {
    return Array.from(this.entries(), (e) => e[1])[Symbol.iterator]();
  }
  forEach(fn: (value: V, id: bigint, map: this) => void): void {
    for (const [k, v] of this.entries()) fn(v, k, this);
  }
  [Symbol.iterator](): IterableIterator<[bigint, V]> {
    return this.entries();
  }

  /** The slot holding id `n`, or -1. */
  private slotOf(n: number): number {
    const mask = this.capacity - 1;
    for (let s = this.home(n); this.used[s] === 1; s = (s + 1) & mask) if (this.ids[s] === n) return s;
    return -1;
  }

  /**
   * Home slot of id `n`: a multiplicative (Fibonacci) hash of its two 32-bit halves, top bits. Not
   * the low bits: sequential ids would fill one run of consecutive slots, and a deletion scans the
   * run after its slot (backward shift), O(entries) per delete.
   */
  private home(n: number): number {
    return Math.imul(low32(n) ^ Math.imul(high32(n), 0x85ebca6b), 0x9e3779b1) >>> this.shift;
  }

  private resize(capacity: number): void {
    const { ids, used, vals } = this;
    const old = this.capacity;
    this.capacity = capacity;
    this.shift = 32 - Math.log2(capacity);
    this.ids = new Float64Array(capacity);
    this.used = new Uint8Array(capacity);
    this.vals = new Array<V | undefined>(capacity).fill(undefined);
    const mask = capacity - 1;
    for (let s = 0; s < old; s++) {
      if (used[s] !== 1) continue;
      let t = this.home(ids[s]!);
      while (this.used[t] === 1) t = (t + 1) & mask;
      this.used[t] = 1;
      this.ids[t] = ids[s]!;
      this.vals[t] = vals[s];
    }
  }
}
