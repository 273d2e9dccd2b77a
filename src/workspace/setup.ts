import { existsSync } from 'node:fs';
import { buildDebianBase, type DebianBaseResult } from '../snapshot/debian-base.js';
import { VmError } from '../util/errors.js';
import type { Env } from '../util/paths.js';
import { run } from '../util/process.js';
import { cachedVerdict, chooseAccelerator, type AccelVerdict } from '../vm/accel.js';
import { ensureInitramfs, initramfsPrerequisites } from '../vm/initramfs.js';
import { ensureKernel, findKernel } from '../vm/kernel.js';
import { QEMU_BINARY } from '../vm/qemu.js';

/**
 * `cs setup` makes a host ready to boot workspaces, and `cs doctor` says what
 * is missing and why, without changing anything. Both are idempotent.
 */

/** Debian packages workspaces need on the host, by the program that proves each is there. */
export const HOST_PACKAGES: readonly { pkg: string; check: string }[] = [
  { pkg: 'qemu-system-x86', check: '/usr/bin/qemu-system-x86_64' },
  // qemu-img: restore points and clones put qcow2 overlays on workspace disks (only recommended by qemu-system-x86).
  { pkg: 'qemu-utils', check: '/usr/bin/qemu-img' },
  { pkg: 'busybox-static', check: '/bin/busybox' },
  { pkg: 'e2fsprogs', check: '/sbin/mke2fs' },
  { pkg: 'kmod', check: '/sbin/depmod' },
  { pkg: 'gcc', check: '/usr/bin/cc' },
  { pkg: 'libc6-dev', check: '/usr/include/stdio.h' },
  { pkg: 'lz4', check: '/usr/bin/lz4' },
  { pkg: 'xz-utils', check: '/usr/bin/xz' },
  { pkg: 'git', check: '/usr/bin/git' },
  { pkg: 'attr', check: '/usr/bin/setfattr' },
  // fakeroot: an unprivileged user's images get the owners, devices and xattrs their layers ask for (rootfs/owners.ts).
  { pkg: 'fakeroot', check: '/usr/bin/fakeroot' },
  { pkg: 'debootstrap', check: '/usr/sbin/debootstrap' },
];

function missingPackages(): string[] {
  return HOST_PACKAGES.filter((p) => !existsSync(p.check) && !existsSync(p.check.replace(/^\/(s?bin)\//, '/usr/$1/'))).map((p) => p.pkg);
}

export interface SetupOptions {
  env?: Env;
  /** Build the default Debian base image if it is missing. */
  base?: boolean;
  onPhase?: (phase: string) => void;
}

export interface SetupResult {
  installed: string[];
  kernel: { version: string; source: string };
  initramfs: { path: string; bytes: number };
  accel: AccelVerdict;
  base?: DebianBaseResult;
}

export async function setup(options: SetupOptions = {}): Promise<SetupResult> {
  const phase = options.onPhase ?? (() => undefined);
  const envOpt = options.env ? { env: options.env } : {};
  const missing = missingPackages();
  if (missing.length > 0) {
    if (process.getuid?.() !== 0) {
      throw new VmError(`missing system packages: ${missing.join(', ')}`, {
        code: 'MISSING_PACKAGES',
        suggestions: [`run \`sudo apt-get install -y ${missing.join(' ')}\`, or \`sudo cs setup\``],
      });
    }
    phase(`apt-get install ${missing.join(' ')}`);
    await run('apt-get', ['install', '-y', '--no-install-recommends', ...missing], { timeoutMs: 30 * 60_000, env: { DEBIAN_FRONTEND: 'noninteractive' } }).catch(async (error: unknown) => {
      phase('apt-get update');
      await run('apt-get', ['update'], { timeoutMs: 10 * 60_000 });
      await run('apt-get', ['install', '-y', '--no-install-recommends', ...missing], { timeoutMs: 30 * 60_000, env: { DEBIAN_FRONTEND: 'noninteractive' } }).catch((again: unknown) => {
        throw new VmError(`apt-get could not install ${missing.join(', ')}: ${(again as Error).message}`, { cause: error });
      });
    });
  }
  phase('guest kernel');
  const kernel = await ensureKernel({ ...envOpt, onPhase: phase });
  phase('initramfs');
  const initramfs = await ensureInitramfs({ kernel, ...envOpt });
  phase('accelerator');
  const accel = await chooseAccelerator({ kernel: kernel.vmlinuz, initrd: initramfs.path, ...envOpt });
  const result: SetupResult = {
    installed: missing,
    kernel: { version: kernel.version, source: kernel.source },
    initramfs: { path: initramfs.path, bytes: initramfs.bytes },
    accel,
  };
  if (options.base) result.base = await buildDebianBase({ ...envOpt, onPhase: phase });
  return result;
}

export interface DoctorCheck {
  name: string;
  ok: boolean;
  detail: string;
  fix?: string;
}

export async function doctor(options: { env?: Env; probe?: boolean } = {}): Promise<{ ok: boolean; checks: DoctorCheck[] }> {
  const envOpt = options.env ? { env: options.env } : {};
  const checks: DoctorCheck[] = [];
  const missing = missingPackages();
  checks.push(
    missing.length === 0
      ? { name: 'system packages', ok: true, detail: HOST_PACKAGES.map((p) => p.pkg).join(', ') }
      : { name: 'system packages', ok: false, detail: `missing: ${missing.join(', ')}`, fix: `sudo apt-get install -y ${missing.join(' ')} (or sudo cs setup)` },
  );
  const qemu = await run(QEMU_BINARY, ['--version']).then((r) => r.stdout.split('\n')[0] ?? '', () => undefined);
  checks.push(qemu ? { name: 'qemu', ok: true, detail: qemu } : { name: 'qemu', ok: false, detail: `${QEMU_BINARY} not found`, fix: 'apt-get install qemu-system-x86' });
  const pre = await initramfsPrerequisites();
  checks.push(pre.busybox ? { name: 'busybox', ok: true, detail: `static, ${pre.busybox}` } : { name: 'busybox', ok: false, detail: 'no static busybox', fix: 'apt-get install busybox-static' });
  checks.push(pre.cc ? { name: 'compiler', ok: true, detail: 'cc builds the guest agent' } : { name: 'compiler', ok: false, detail: 'no cc to build the guest agent', fix: 'apt-get install gcc libc6-dev' });
  const kernel = await findKernel(envOpt);
  checks.push(kernel ? { name: 'kernel', ok: true, detail: `${kernel.version} (${kernel.source})` } : { name: 'kernel', ok: false, detail: 'no guest kernel fetched yet', fix: 'cs setup' });
  let verdict = await cachedVerdict(options.env);
  if (!verdict && options.probe && kernel && pre.busybox && pre.cc && qemu) {
    const initramfs = await ensureInitramfs({ kernel, ...envOpt });
    verdict = await chooseAccelerator({ kernel: kernel.vmlinuz, initrd: initramfs.path, ...envOpt });
  }
  checks.push(
    verdict
      ? { name: 'accelerator', ok: true, detail: `${verdict.accel}: ${verdict.reason}` }
      : { name: 'accelerator', ok: true, detail: 'not probed yet on this boot (cs setup, cs doctor --probe or the first boot probes it)' },
  );
  return { ok: checks.every((c) => c.ok), checks };
}
