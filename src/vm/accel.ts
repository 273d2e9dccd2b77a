import { constants } from 'node:fs';
import { access, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/fs.js';
import { dataDir, type Env } from '../util/paths.js';
import { type Accelerator, QEMU_BINARY, qemuArgs } from './qemu.js';

/**
 * Which accelerator workspaces boot with. `/dev/kvm` existing and opening is
 * not enough: on nested hosts a KVM guest can spin forever after the
 * real-mode stage. So KVM counts only when a probe guest (the real kernel and
 * initramfs, told by `cs.probe=1` to power off as soon as its init runs)
 * boots and says so within a few seconds; otherwise TCG. The verdict is kept
 * per host boot and QEMU binary, so the probe runs once.
 */

export interface AccelVerdict {
  accel: Accelerator;
  reason: string;
  probedAt: string;
  bootId: string;
  probeMs?: number;
}

const PROBE_TIMEOUT_MS = 6000;

async function bootId(): Promise<string> {
  return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => 'unknown')).trim();
}

function verdictFile(env?: Env): string {
  return join(dataDir(env), 'accel.json');
}

export async function cachedVerdict(env?: Env): Promise<AccelVerdict | undefined> {
  try {
    const verdict = JSON.parse(await readFile(verdictFile(env), 'utf8')) as AccelVerdict;
    return verdict.bootId === (await bootId()) ? verdict : undefined;
  } catch {
    return undefined;
  }
}

export interface ProbeOptions {
  kernel: string;
  initrd: string;
  env?: Env;
  /** Probe again even when this boot already has a verdict. */
  fresh?: boolean;
}

export async function chooseAccelerator(options: ProbeOptions): Promise<AccelVerdict> {
  const forced = (options.env ?? process.env)['CS_ACCEL'];
  if (forced === 'tcg' || forced === 'kvm') {
    return { accel: forced, reason: `CS_ACCEL=${forced}`, probedAt: new Date().toISOString(), bootId: await bootId() };
  }
  if (!options.fresh) {
    const cached = await cachedVerdict(options.env);
    if (cached) return cached;
  }
  const verdict = await probe(options);
  await mkdir(dataDir(options.env), { recursive: true });
  await writeFileAtomic(verdictFile(options.env), JSON.stringify(verdict, null, 2) + '\n');
  return verdict;
}

async function probe(options: ProbeOptions): Promise<AccelVerdict> {
  const base = { probedAt: new Date().toISOString(), bootId: await bootId() };
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return { ...base, accel: 'tcg', reason: code === 'ENOENT' ? '/dev/kvm does not exist' : `/dev/kvm cannot be opened (${code})` };
  }
  const work = await mkdtemp(join(dataDir(options.env), '.accel-'));
  const log = join(work, 'console.log');
  try {
    const args = qemuArgs({ accel: 'kvm', cpus: 1, memoryMiB: 256, kernel: options.kernel, initrd: options.initrd, lowers: [], consoleLog: log, settings: { probe: '1' } });
    const started = Date.now();
    const { execa } = await import('execa');
    const result = await execa(QEMU_BINARY, args, { reject: false, timeout: PROBE_TIMEOUT_MS, stdin: 'ignore' });
    const probeMs = Date.now() - started;
    const console = await readFile(log, 'utf8').catch(() => '');
    if (console.includes('probe ok')) return { ...base, accel: 'kvm', reason: `a KVM probe guest booted in ${probeMs} ms`, probeMs };
    if (result.timedOut) return { ...base, accel: 'tcg', reason: `a KVM probe guest did not reach its init within ${PROBE_TIMEOUT_MS / 1000} s (nested virtualisation that does not work)` };
    const why = (result.stderr || console).trim().split('\n').slice(-1)[0] ?? '';
    return { ...base, accel: 'tcg', reason: `a KVM probe guest failed (exit ${result.exitCode ?? result.signal}): ${why}` };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
