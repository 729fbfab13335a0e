// The one /dev/kvm gate of the test suites (issue #18). A suite or test that needs KVM is declared
// with `describeKvm` / `kvmTest` (or gated by hand on `kvmUnavailableReason()`); where KVM is not
// usable it is reported as skipped with the reason in its name — unless the environment says KVM
// is required (VSM_REQUIRE_KVM=1, set by .ci/run where the host has /dev/kvm), where it FAILS with
// the reason instead, so a KVM device that is there but unusable cannot turn the KVM suites into
// silent skips. (.ci/run does not set it on a host without /dev/kvm and says so in its log.)
//
//   VSM_REQUIRE_KVM=1      an unusable /dev/kvm fails the gated tests instead of skipping them
//   VSM_TEST_KVM_DEVICE    the device the gate probes (default /dev/kvm; the gate's self-test
//                          points it at a path that does not exist)
//
// Plain node:fs, no native binding: the integration suites use it without loading the KVM layer.
import * as fs from 'node:fs';

export interface KvmGateOptions {
  /** The device to probe (default VSM_TEST_KVM_DEVICE, else /dev/kvm). */
  device?: string;
  /**
   * true (default): this process opens the device, so it must be read/write accessible here.
   * false: the device is handed to a container (docker --device), so it only has to exist.
   */
  hostAccess?: boolean;
}

/** The device the gate probes. */
export function kvmDevice(): string {
  return process.env.VSM_TEST_KVM_DEVICE || '/dev/kvm';
}

/** Whether the environment requires KVM (VSM_REQUIRE_KVM=1): the gate then fails instead of skipping. */
export function kvmRequired(): boolean {
  return process.env.VSM_REQUIRE_KVM === '1';
}

/** Why KVM cannot be used here, or undefined when it can. */
export function kvmUnavailableReason(o: KvmGateOptions = {}): string | undefined {
  const device = o.device ?? kvmDevice();
  let st: fs.Stats;
  try {
    st = fs.statSync(device);
  } catch (e) {
    return `${device} does not exist (${(e as Error).message})`;
  }
  if (!st.isCharacterDevice()) return `${device} is not a character device`;
  if (o.hostAccess === false) return undefined;
  try {
    fs.accessSync(device, fs.constants.R_OK | fs.constants.W_OK);
  } catch (e) {
    return `${device} is not read/write accessible (${(e as Error).message})`;
  }
  return undefined;
}

/** Whether KVM can be used here. */
export function kvmAvailable(o: KvmGateOptions = {}): boolean {
  return kvmUnavailableReason(o) === undefined;
}

type Fn = (...a: never[]) => unknown;
// jest.It seen loosely (its overloads do not matter to a gate that only forwards arguments).
type TestLike = ((name: string, fn?: Fn, timeout?: number) => unknown) & {
  skip: ((name: string, fn?: Fn, timeout?: number) => unknown) & { each: (...table: unknown[]) => (name: string, fn: Fn, timeout?: number) => unknown };
  each: (...table: unknown[]) => (name: string, fn: Fn, timeout?: number) => unknown;
};

const requiredMessage = (why: string) => `KVM is required here (VSM_REQUIRE_KVM=1) but not usable: ${why}`;

/**
 * `test` / `it` (or any jest function of that shape) gated on a reason: as is when `why` is
 * undefined; else every test declared through it is skipped with `[skipped: why]` in its name, or,
 * when `required`, declared as a test that fails naming the reason (the body is not run).
 * `.each` is gated the same way, one reported test per row.
 */
export function gateTests(it: jest.It, why: string | undefined, required = kvmRequired()): jest.It {
  if (why === undefined) return it;
  const orig = it as unknown as TestLike;
  const failing = () => {
    throw new Error(requiredMessage(why));
  };
  const one = required
    ? (name: string, _fn?: Fn, timeout?: number) => orig(`${name} [KVM required: ${why}]`, failing, timeout)
    : (name: string, fn?: Fn, timeout?: number) => orig.skip(`${name} [skipped: ${why}]`, fn, timeout);
  const each = (...table: unknown[]) =>
    required
      ? (name: string, _fn: Fn, timeout?: number) => orig.each(...table)(`${name} [KVM required: ${why}]`, failing, timeout)
      : (name: string, fn: Fn, timeout?: number) => orig.skip.each(...table)(`${name} [skipped: ${why}]`, fn, timeout);
  return Object.assign(one, orig, { each }) as unknown as jest.It;
}

/**
 * `describe` gated on a reason: as is when `why` is undefined; else the block is skipped with
 * `[skipped: why]` in its name, or, when `required`, replaced by one failing test naming the reason
 * (the block's body, its hooks included, is not run). `.each` is gated the same way.
 */
export function gateDescribe(why: string | undefined, required = kvmRequired()): jest.Describe {
  if (why === undefined) return describe;
  const failingBlock = () => {
    test(`needs KVM: ${why}`, () => {
      throw new Error(requiredMessage(why));
    });
  };
  const gated = (name: string | number | jest.FunctionLike, fn: jest.EmptyFunction) => {
    const label = typeof name === 'function' ? name.name : String(name);
    if (!required) return describe.skip(`${label} [skipped: ${why}]`, fn);
    return describe(`${label} [KVM required]`, failingBlock);
  };
  const each =
    (...table: unknown[]) =>
    (name: string, fn: Fn, timeout?: number) => {
      const d = describe as unknown as { each: TestLike['each']; skip: { each: TestLike['each'] } };
      if (!required) return d.skip.each(...table)(`${name} [skipped: ${why}]`, fn, timeout);
      return d.each(...table)(`${name} [KVM required]`, failingBlock, timeout);
    };
  return Object.assign(gated, describe, { each }) as unknown as jest.Describe;
}

/** `describe` for suites that need KVM on this host (see the file comment). */
export function describeKvm(name: string, fn: jest.EmptyFunction): void {
  gateDescribe(kvmUnavailableReason())(name, fn);
}

/** `test` for tests that need KVM on this host (see the file comment). */
export function kvmTest(name: string, fn: jest.ProvidesCallback, timeout?: number): void {
  gateTests(test, kvmUnavailableReason())(name, fn, timeout);
}
