import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { VmError } from '../util/errors.js';
import { withLock } from '../util/lock.js';
import { dataDir, type Env } from '../util/paths.js';
import { run } from '../util/process.js';
import { ensureVmlinux } from './vmlinux.js';

/**
 * The guest kernel. By default Debian's `linux-image-cloud-amd64`, fetched
 * once through the system's own package tools (`apt-get download`, so the
 * mirror and its signatures are whatever apt is configured with) and kept
 * under `$CS_HOME/kernels/VERSION/`: `vmlinuz` plus the `lib/modules/VERSION`
 * tree with a `modules.dep` (the package ships none; depmod writes it).
 */

export const DEFAULT_KERNEL_PACKAGE = 'linux-image-cloud-amd64';

export interface Kernel {
  version: string;
  /** The folder holding this kernel. */
  dir: string;
  vmlinuz: string;
  /** The `lib/modules/VERSION` folder, with `modules.dep`. */
  modules: string;
  /** Where it came from: a Debian package name or an image reference. */
  source: string;
}

export interface KernelOptions {
  env?: Env;
  onPhase?: (phase: string) => void;
}

export function kernelsDir(env?: Env): string {
  return join(dataDir(env), 'kernels');
}

const RECORD = 'kernel.json';

export async function readKernel(dir: string): Promise<Kernel | undefined> {
  try {
    const record = JSON.parse(await readFile(join(dir, RECORD), 'utf8')) as { version: string; source: string };
    const kernel: Kernel = {
      version: record.version,
      dir,
      vmlinuz: join(dir, 'vmlinuz'),
      modules: join(dir, 'lib', 'modules', record.version),
      source: record.source,
    };
    return existsSync(kernel.vmlinuz) && existsSync(join(kernel.modules, 'modules.dep')) ? kernel : undefined;
  } catch {
    return undefined;
  }
}

/** The kernel cs uses now: the newest fetched one, if any. */
export async function findKernel(options: KernelOptions = {}): Promise<Kernel | undefined> {
  const root = kernelsDir(options.env);
  const names = await readdir(root).catch(() => [] as string[]);
  const kernels: Kernel[] = [];
  for (const name of names) {
    if (name.startsWith('.') || name.startsWith('oci-')) continue;
    const kernel = await readKernel(join(root, name));
    if (kernel) kernels.push(kernel);
  }
  kernels.sort((a, b) => compareVersions(b.version, a.version));
  return kernels[0];
}

/** Dotted-number comparison that orders 6.1.0-56 after 6.1.0-9. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.\-+~]/);
  const pb = b.split(/[.\-+~]/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? '';
    const y = pb[i] ?? '';
    const nx = Number(x);
    const ny = Number(y);
    const c = Number.isInteger(nx) && Number.isInteger(ny) && x !== '' && y !== '' ? nx - ny : x.localeCompare(y);
    if (c !== 0) return c;
  }
  return 0;
}

/** The kernel, fetched first if there is none yet. */
export async function ensureKernel(options: KernelOptions = {}): Promise<Kernel> {
  const found = await findKernel(options);
  if (found) return found;
  return fetchDebianKernel(options);
}

/** Which versioned package the meta-package points at, from apt's own lists. */
async function resolvePackage(meta: string): Promise<string> {
  const result = await run('apt-cache', ['depends', '--no-recommends', '--no-suggests', meta], { okExitCodes: [0, 100] }).catch((error: unknown) => {
    throw new VmError(`cannot look up ${meta}: apt-cache is not available (${(error as Error).message})`, {
      code: 'KERNEL_UNAVAILABLE',
      suggestions: ['fetch a kernel on a Debian or Ubuntu host, or name one with `kernel: oci://REF` in the definition'],
      cause: error,
    });
  });
  const match = /Depends:\s*(linux-image-\S+)/.exec(result.stdout);
  if (result.exitCode !== 0 || !match?.[1]) {
    throw new VmError(`apt knows no package ${meta}`, {
      code: 'KERNEL_UNAVAILABLE',
      suggestions: ['run `apt-get update` (as root) so apt has its package lists, then `cs setup` again'],
    });
  }
  return match[1];
}

export async function fetchDebianKernel(options: KernelOptions = {}): Promise<Kernel> {
  const phase = options.onPhase ?? (() => undefined);
  const root = kernelsDir(options.env);
  await mkdir(root, { recursive: true });
  return withLock(join(root, '.lock'), { purpose: 'fetching the guest kernel', timeoutMs: 300_000 }, async () => {
    const again = await findKernel(options);
    if (again) return again;
    phase(`resolve ${DEFAULT_KERNEL_PACKAGE}`);
    const pkg = await resolvePackage(DEFAULT_KERNEL_PACKAGE);
    const work = await mkdtemp(join(root, '.fetch-'));
    try {
      phase(`download ${pkg}`);
      await run('apt-get', ['download', pkg], { cwd: work, timeoutMs: 600_000 });
      const debs = (await readdir(work)).filter((n) => n.endsWith('.deb'));
      if (debs.length !== 1) throw new VmError(`apt-get download ${pkg} left ${debs.length} packages, expected one`);
      phase('unpack the kernel package');
      const tree = join(work, 'tree');
      await run('dpkg-deb', ['-x', join(work, debs[0] as string), tree]);
      return await installKernelTree({ tree, root, source: pkg, phase });
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
}

/**
 * Installs a kernel from an unpacked tree holding `boot/vmlinuz-VERSION` and
 * `lib/modules/VERSION/` (a Debian package's or an image's): copies both under
 * the kernels folder and writes `modules.dep`.
 */
export async function installKernelTree(options: { tree: string; root: string; source: string; name?: string; phase?: (p: string) => void }): Promise<Kernel> {
  const boot = join(options.tree, 'boot');
  const images = (await readdir(boot).catch(() => [] as string[])).filter((n) => n.startsWith('vmlinuz-'));
  if (images.length === 0) throw new VmError(`${options.source} holds no boot/vmlinuz-VERSION`, { code: 'KERNEL_INVALID' });
  images.sort((a, b) => compareVersions(b.slice(8), a.slice(8)));
  const version = (images[0] as string).slice('vmlinuz-'.length);
  if (!/^[A-Za-z0-9][A-Za-z0-9.+_~-]*$/.test(version)) throw new VmError(`${options.source}: unusable kernel version "${version}"`, { code: 'KERNEL_INVALID' });
  const modules = join(options.tree, 'lib', 'modules', version);
  if (!existsSync(modules)) throw new VmError(`${options.source} has a kernel ${version} but no lib/modules/${version}`, { code: 'KERNEL_INVALID' });
  const stage = await mkdtemp(join(options.root, '.install-'));
  try {
    await cp(join(boot, images[0] as string), join(stage, 'vmlinuz'));
    await mkdir(join(stage, 'lib', 'modules'), { recursive: true });
    await cp(modules, join(stage, 'lib', 'modules', version), { recursive: true, verbatimSymlinks: true });
    // Links to the build tree mean nothing outside the package's own system.
    await rm(join(stage, 'lib', 'modules', version, 'build'), { force: true });
    await rm(join(stage, 'lib', 'modules', version, 'source'), { force: true });
    if (!existsSync(join(stage, 'lib', 'modules', version, 'modules.dep'))) {
      options.phase?.('index the kernel modules');
      await run('depmod', ['-b', stage, version]).catch((error: unknown) => {
        throw new VmError(`cannot index the modules of kernel ${version}: ${(error as Error).message}`, {
          code: 'KERNEL_INVALID',
          suggestions: ['install kmod (it provides depmod), or run `cs setup`'],
          cause: error,
        });
      });
    }
    await writeFile(join(stage, RECORD), JSON.stringify({ version, source: options.source }, null, 2) + '\n');
    const dir = join(options.root, options.name ?? version);
    await rm(dir, { recursive: true, force: true });
    await rename(stage, dir);
    const kernel = await readKernel(dir);
    if (!kernel) throw new VmError(`kernel ${version} did not install cleanly`);
    return kernel;
  } catch (error) {
    await rm(stage, { recursive: true, force: true });
    throw error;
  }
}

/** The modules to load, in an order busybox insmod accepts (dependencies first). */
export async function moduleLoadOrder(kernel: Kernel, wanted: readonly string[]): Promise<string[]> {
  const dep = await readFile(join(kernel.modules, 'modules.dep'), 'utf8');
  const deps = new Map<string, string[]>();
  const byName = new Map<string, string>();
  for (const line of dep.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const path = line.slice(0, colon);
    deps.set(path, line.slice(colon + 1).trim().split(/\s+/).filter(Boolean));
    byName.set(moduleName(path), path);
  }
  const builtin = new Set(
    (await readFile(join(kernel.modules, 'modules.builtin'), 'utf8').catch(() => ''))
      .split('\n')
      .filter(Boolean)
      .map(moduleName),
  );
  const order: string[] = [];
  const visit = (path: string, trail: string[]): void => {
    if (order.includes(path)) return;
    if (trail.includes(path)) throw new VmError(`kernel ${kernel.version}: module dependency loop through ${path}`);
    // modules.dep lists a module's dependencies, nearest first; load the farthest first.
    for (const d of [...(deps.get(path) ?? [])].reverse()) visit(d, [...trail, path]);
    order.push(path);
  };
  for (const name of wanted) {
    const path = byName.get(name.replace(/-/g, '_'));
    if (path) visit(path, []);
    else if (!builtin.has(name.replace(/-/g, '_'))) {
      throw new VmError(`kernel ${kernel.version} has no module ${name} (neither built in nor in modules.dep)`, { code: 'KERNEL_INVALID' });
    }
  }
  return order;
}

function moduleName(path: string): string {
  const base = path.slice(path.lastIndexOf('/') + 1);
  return base.replace(/\.ko(\.(xz|gz|zst))?$/, '').replace(/-/g, '_');
}

/**
 * What QEMU should boot for this kernel: the uncompressed vmlinux through
 * its PVH entry when the kernel has one (about half a second faster under
 * TCG, see vmlinux.ts), else the bzImage.
 */
export async function bootImage(kernel: Kernel): Promise<string> {
  return (await ensureVmlinux(kernel.vmlinuz, join(kernel.dir, 'vmlinux'))) ?? kernel.vmlinuz;
}

/** A short content id of a kernel, for cache keys. */
export async function kernelId(kernel: Kernel): Promise<string> {
  const hash = createHash('sha256');
  hash.update(kernel.version);
  hash.update(await readFile(kernel.vmlinuz));
  return hash.digest('hex').slice(0, 16);
}
