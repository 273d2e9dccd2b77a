import { readFileSync } from 'node:fs';

/**
 * The QEMU `microvm` command line for a workspace. One function builds it
 * from a typed description so the supervisor, the accelerator probe and the
 * tests all boot the same machine; see PLATFORM facts in docs/architecture.md
 * for why each setting is there.
 */

export type Accelerator = 'kvm' | 'tcg';

export interface PortForward {
  protocol: 'tcp' | 'udp';
  hostAddress: string;
  hostPort: number;
  guestPort: number;
}

export interface MachineSpec {
  qemu?: string;
  accel: Accelerator;
  cpus: number;
  memoryMiB: number;
  kernel: string;
  initrd: string;
  /** Read-only snapshot images, top first (personal, home, base). */
  lowers: readonly string[];
  /** The workspace's writable ext4 disk: a raw file, or a qcow2 overlay whose backing chain QEMU follows. */
  disk?: string;
  diskFormat?: 'raw' | 'qcow2';
  /** Unix socket paths QEMU listens on (relative to the QEMU process's cwd is fine). */
  agentSocket?: string;
  /** Unix socket of the `cs.host` port (guest requests), beside the agent's. */
  hostSocket?: string;
  qmpSocket?: string;
  consoleLog: string;
  hostname?: string;
  network?: boolean;
  forwards?: readonly PortForward[];
  /** The host's TSC rate in kHz: under TCG the guest's TSC ticks at it (see hostTscKhz). */
  tscKhz?: number;
  /** Extra `cs.*` settings for the guest init. */
  settings?: Readonly<Record<string, string>>;
}

/**
 * Kernel arguments. Under TCG the Debian kernel hangs in TSC calibration about
 * half the time; giving it the TSC frequency and skipping the timer check made
 * 20 of 20 boots succeed. `panic=-1 reboot=t` with `-no-reboot` turns a guest
 * panic into a QEMU exit instead of a hang.
 */
export function kernelCommandLine(spec: Pick<MachineSpec, 'accel' | 'hostname' | 'settings' | 'tscKhz'>, now = Date.now()): string {
  // cryptomgr.notests and skipping the SP800-108 KDF's built-in self-test:
  // together about 0.3 s of a TCG boot spent testing the kernel build, not
  // the workspace. A microvm has no PCI bus to probe.
  const args = ['console=ttyS0', 'quiet', 'panic=-1', 'reboot=t', 'rw', 'cryptomgr.notests', 'initcall_blacklist=crypto_kdf108_init', 'pci=off'];
  if (spec.accel === 'tcg') args.push(`tsc_early_khz=${spec.tscKhz ?? DEFAULT_TSC_KHZ}`, 'no_timer_check');
  args.push(`cs.time=${Math.floor(now / 1000)}`);
  if (spec.hostname) args.push(`cs.hostname=${spec.hostname}`);
  for (const [key, value] of Object.entries(spec.settings ?? {})) {
    if (!/^[a-z][a-z0-9_.-]*$/.test(key) || /\s/.test(value)) throw new Error(`bad guest setting ${key}=${value}`);
    args.push(`cs.${key}=${value}`);
  }
  return args.join(' ');
}

const DEFAULT_TSC_KHZ = 2_000_000;

/**
 * Under TCG the guest reads the host's own TSC, so the frequency the guest
 * kernel is told must be the host's, or its clock drifts (by 5% on a
 * 2.1 GHz host told 2 GHz). /proc/cpuinfo's "cpu MHz" is that rate on hosts
 * with a constant TSC; elsewhere the constant is the best guess left.
 */
export function hostTscKhz(cpuinfo?: string): number {
  let text = cpuinfo;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/cpuinfo', 'utf8');
    } catch {
      return DEFAULT_TSC_KHZ;
    }
  }
  if (!/^flags\s*:.*\bconstant_tsc\b/m.test(text)) return DEFAULT_TSC_KHZ;
  const mhz = Number(/^cpu MHz\s*:\s*([0-9.]+)/m.exec(text)?.[1]);
  return Number.isFinite(mhz) && mhz > 100 ? Math.round(mhz * 1000) : DEFAULT_TSC_KHZ;
}

/** QEMU's option syntax doubles a comma inside a value. */
function q(value: string): string {
  return value.replace(/,/g, ',,');
}

export function qemuArgs(spec: MachineSpec, now = Date.now()): string[] {
  const args = [
    // rtc=on: without an RTC the kernel's CMOS RTC driver spends about a
    // second (under TCG) timing out on the missing device.
    '-M', 'microvm,x-option-roms=off,isa-serial=on,rtc=on',
    '-accel', spec.accel,
    ...(spec.accel === 'kvm' ? ['-cpu', 'host'] : []),
    '-smp', String(spec.cpus),
    '-m', `${spec.memoryMiB}M`,
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-kernel', spec.kernel,
    '-initrd', spec.initrd,
    '-append', kernelCommandLine(spec, now),
    '-chardev', `file,id=console,path=${q(spec.consoleLog)}`,
    '-serial', 'chardev:console',
  ];
  spec.lowers.forEach((image, i) => {
    args.push('-drive', `id=lower${i},file=${q(image)},format=raw,if=none,readonly=on`);
    args.push('-device', `virtio-blk-device,drive=lower${i},serial=cs-lower${i}`);
  });
  if (spec.disk) {
    args.push('-drive', `id=disk,file=${q(spec.disk)},format=${spec.diskFormat ?? 'raw'},if=none,discard=unmap,detect-zeroes=unmap`);
    args.push('-device', 'virtio-blk-device,drive=disk,serial=cs-disk');
  }
  if (spec.agentSocket) {
    args.push('-device', 'virtio-serial-device');
    args.push('-chardev', `socket,id=agent,path=${q(spec.agentSocket)},server=on,wait=off`);
    args.push('-device', 'virtserialport,chardev=agent,name=cs.agent');
    if (spec.hostSocket) {
      // The guest's way to ask the host for something (`cs` inside a workspace).
      args.push('-chardev', `socket,id=cshost,path=${q(spec.hostSocket)},server=on,wait=off`);
      args.push('-device', 'virtserialport,chardev=cshost,name=cs.host');
    }
  }
  if (spec.network) {
    const forwards = (spec.forwards ?? []).map((f) => `,hostfwd=${f.protocol}:${f.hostAddress}:${f.hostPort}-:${f.guestPort}`).join('');
    args.push('-netdev', `user,id=net0${forwards}`);
    args.push('-device', 'virtio-net-device,netdev=net0');
  }
  if (spec.qmpSocket) args.push('-qmp', `unix:${q(spec.qmpSocket)},server=on,wait=off`);
  return args;
}

export const QEMU_BINARY = 'qemu-system-x86_64';
