/** Port-I/O device models for guests (no KVM, no I/O): COM1, fw_cfg, isa-debug-exit, hyperv-testdev, the port bus. */
export { type PortIoDevice, allOnes } from './port-io';
export { UART, UART_COM1, Uart16550, type Uart16550Options } from './uart16550';
export { FW_CFG, FW_CFG_PORT_DATA, FW_CFG_PORT_SEL, FW_CFG_VERSION, FwCfg, type FwCfgOptions } from './fw-cfg';
export { DEBUG_EXIT_PORT, DebugExit, type DebugExitEvent, type DebugExitOptions, debugExitStatus } from './debug-exit';
export {
  HV_TEST_DEV,
  HYPERV_TESTDEV_PORT,
  HypervTestDevControl,
  type HypervTestDevHandler,
  type HypervTestDevOp,
  type HypervTestDevOpName,
  decodeHypervTestDevControl,
  encodeHypervTestDevControl,
} from './hyperv-testdev';
export { PortBus, type PortRange, type UnknownPortAccesses } from './port-bus';
