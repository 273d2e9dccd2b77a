import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmError } from '../util/errors.js';
import { compareVersions, findKernel, installKernelTree, moduleLoadOrder, type Kernel } from './kernel.js';

/**
 * Kernel versions and module order, on kernel folders made here: a
 * modules.dep shaped like Debian's cloud kernel's (dependencies listed
 * nearest first, as depmod writes them) and a modules.builtin.
 */

describe('compareVersions', () => {
  it('orders Debian kernel versions numerically, not as text', () => {
    const versions = ['6.1.0-9-cloud-amd64', '6.1.0-56-cloud-amd64', '5.10.0-28-cloud-amd64', '6.1.0-10-cloud-amd64', '6.10.0-1-cloud-amd64', '6.1.0-56-cloud-amd64'];
    expect([...versions].sort(compareVersions)).toEqual([
      '5.10.0-28-cloud-amd64',
      '6.1.0-9-cloud-amd64',
      '6.1.0-10-cloud-amd64',
      '6.1.0-56-cloud-amd64',
      '6.1.0-56-cloud-amd64',
      '6.10.0-1-cloud-amd64',
    ]);
  });

  it('is antisymmetric and says equal versions are equal', () => {
    expect(compareVersions('6.1.0-56', '6.1.0-9')).toBeGreaterThan(0);
    expect(compareVersions('6.1.0-9', '6.1.0-56')).toBeLessThan(0);
    expect(compareVersions('6.1.0-56-cloud-amd64', '6.1.0-56-cloud-amd64')).toBe(0);
  });

  it('puts a shorter version before a longer one that extends it', () => {
    expect(compareVersions('6.1', '6.1.0')).toBeLessThan(0);
    expect(compareVersions('6.1.0-56', '6.1.0')).toBeGreaterThan(0);
  });
});

/** depmod's format: `path: dep dep`, paths relative to the modules folder. */
const MODULES_DEP = [
  'kernel/fs/overlayfs/overlay.ko.xz:',
  'kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko',
  'kernel/lib/libcrc32c.ko:',
  'kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko',
  'kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko',
  'kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko',
  'kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko',
  'kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko',
  'kernel/net/core/failover.ko:',
  'kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko',
  'kernel/drivers/virtio/virtio_ring.ko:',
  'kernel/drivers/hid/hid-generic.ko:',
  '',
].join('\n');

const MODULES_BUILTIN = ['kernel/fs/ext4/ext4.ko', 'kernel/drivers/char/tpm/tpm.ko', ''].join('\n');

function base(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1).replace(/\.ko(\.xz)?$/, '');
}

describe('moduleLoadOrder', () => {
  let work: string;
  let kernel: Kernel;

  async function fakeKernel(version: string, dep: string, builtin?: string): Promise<Kernel> {
    const modules = join(work, version, 'lib', 'modules', version);
    await mkdir(modules, { recursive: true });
    await writeFile(join(modules, 'modules.dep'), dep);
    if (builtin !== undefined) await writeFile(join(modules, 'modules.builtin'), builtin);
    return { version, dir: join(work, version), vmlinuz: join(work, version, 'vmlinuz'), modules, source: 'test' };
  }

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'cs-kernel-'));
    kernel = await fakeKernel('6.1.0-56-cloud-amd64', MODULES_DEP, MODULES_BUILTIN);
  });

  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  it('loads what the guest needs with every dependency before the module using it, each once', async () => {
    const order = await moduleLoadOrder(kernel, ['virtio_mmio', 'virtio_blk', 'virtio_console', 'virtio_net', 'erofs', 'overlay']);
    expect(order.map(base)).toEqual(['virtio_ring', 'virtio', 'virtio_mmio', 'virtio_blk', 'virtio_console', 'failover', 'net_failover', 'virtio_net', 'libcrc32c', 'erofs', 'overlay']);
    // The paths are the ones in modules.dep, so the caller can read the files.
    expect(order).toContain('kernel/fs/overlayfs/overlay.ko.xz');
    expect(new Set(order).size).toBe(order.length);
  });

  it('checks the order against modules.dep: no module comes before one it depends on', async () => {
    const order = await moduleLoadOrder(kernel, ['virtio_net', 'erofs', 'virtio_console']);
    for (const line of MODULES_DEP.split('\n').filter(Boolean)) {
      const [path, deps = ''] = line.split(':') as [string, string?];
      if (!order.includes(path)) continue;
      for (const dep of deps.trim().split(/\s+/).filter(Boolean)) {
        expect(order.indexOf(dep), `${dep} before ${path}`).toBeGreaterThanOrEqual(0);
        expect(order.indexOf(dep), `${dep} before ${path}`).toBeLessThan(order.indexOf(path));
      }
    }
  });

  it('accepts dashes or underscores in names, as modprobe does', async () => {
    expect(await moduleLoadOrder(kernel, ['hid_generic'])).toEqual(['kernel/drivers/hid/hid-generic.ko']);
    expect((await moduleLoadOrder(kernel, ['virtio-blk'])).map(base)).toEqual(['virtio_ring', 'virtio', 'virtio_blk']);
  });

  it('needs nothing for a module built into the kernel', async () => {
    expect(await moduleLoadOrder(kernel, ['ext4'])).toEqual([]);
    expect((await moduleLoadOrder(kernel, ['ext4', 'overlay'])).map(base)).toEqual(['overlay']);
  });

  it('refuses a module the kernel has neither built in nor in modules.dep, naming it', async () => {
    const error = await moduleLoadOrder(kernel, ['virtio_mmio', 'vsock_no_such']).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VmError);
    expect((error as VmError).code).toBe('KERNEL_INVALID');
    expect((error as VmError).exitCode).toBe(5);
    expect((error as VmError).message).toContain('vsock_no_such');
    expect((error as VmError).message).toContain('6.1.0-56-cloud-amd64');
  });

  it('works without a modules.builtin file, and then knows of no built-in modules', async () => {
    const bare = await fakeKernel('6.1.0-1-bare', MODULES_DEP);
    expect((await moduleLoadOrder(bare, ['erofs'])).map(base)).toEqual(['libcrc32c', 'erofs']);
    await expect(moduleLoadOrder(bare, ['ext4'])).rejects.toThrow(VmError);
  });

  it('reports a dependency loop instead of recursing forever', async () => {
    const loop = await fakeKernel('6.1.0-2-loop', 'kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/c.ko\nkernel/c.ko: kernel/a.ko\n', '');
    await expect(moduleLoadOrder(loop, ['a'])).rejects.toThrow(/dependency loop/);
  });
});

describe('kernels on disk', () => {
  let work: string;

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'cs-kernels-'));
  });

  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  /** An unpacked kernel package: boot/vmlinuz-V and lib/modules/V with an index. */
  async function packageTree(name: string, versions: string[], options: { modules?: boolean } = {}): Promise<string> {
    const tree = join(work, name);
    await mkdir(join(tree, 'boot'), { recursive: true });
    for (const v of versions) {
      await writeFile(join(tree, 'boot', `vmlinuz-${v}`), `kernel image ${v}`);
      if (options.modules === false) continue;
      const modules = join(tree, 'lib', 'modules', v);
      await mkdir(join(modules, 'kernel'), { recursive: true });
      await writeFile(join(modules, 'modules.dep'), 'kernel/virtio.ko:\n');
      await writeFile(join(modules, 'kernel', 'virtio.ko'), 'module');
      await symlink('/usr/src/linux-headers-' + v, join(modules, 'build'));
    }
    return tree;
  }

  it('installs the newest kernel of a package tree and finds it again, newest first', async () => {
    const root = join(work, 'home', 'kernels');
    await mkdir(root, { recursive: true });
    const tree = await packageTree('pkg-a', ['6.1.0-9-cloud-amd64', '6.1.0-10-cloud-amd64']);
    const installed = await installKernelTree({ tree, root, source: 'linux-image-test' });
    expect(installed.version).toBe('6.1.0-10-cloud-amd64');
    expect(await readFile(installed.vmlinuz, 'utf8')).toBe('kernel image 6.1.0-10-cloud-amd64');
    expect(existsSync(join(installed.modules, 'kernel', 'virtio.ko'))).toBe(true);
    // A link into the build machine's headers means nothing here.
    expect(existsSync(join(installed.modules, 'build'))).toBe(false);
    expect(JSON.parse(await readFile(join(installed.dir, 'kernel.json'), 'utf8'))).toEqual({ version: '6.1.0-10-cloud-amd64', source: 'linux-image-test' });

    const older = await packageTree('pkg-b', ['6.1.0-9-cloud-amd64']);
    await installKernelTree({ tree: older, root, source: 'linux-image-old' });
    const found = await findKernel({ env: { CS_HOME: join(work, 'home') } });
    expect(found?.version).toBe('6.1.0-10-cloud-amd64');
    expect(found?.source).toBe('linux-image-test');
  });

  it('finds no kernel in an empty home, and skips half-installed ones', async () => {
    const home = join(work, 'empty-home');
    expect(await findKernel({ env: { CS_HOME: home } })).toBeUndefined();
    await mkdir(join(home, 'kernels', '7.0.0-1'), { recursive: true });
    await writeFile(join(home, 'kernels', '7.0.0-1', 'kernel.json'), JSON.stringify({ version: '7.0.0-1', source: 'x' }));
    expect(await findKernel({ env: { CS_HOME: home } })).toBeUndefined();
  });

  it('refuses a tree without a kernel image, or without the modules of its kernel', async () => {
    const root = join(work, 'refuse');
    await mkdir(root, { recursive: true });
    const none = join(work, 'no-boot');
    await mkdir(none);
    await expect(installKernelTree({ tree: none, root, source: 'empty-pkg' })).rejects.toThrow(/empty-pkg holds no boot\/vmlinuz-VERSION/);
    const noModules = await packageTree('no-modules', ['6.1.0-3-cloud-amd64'], { modules: false });
    await expect(installKernelTree({ tree: noModules, root, source: 'x' })).rejects.toThrow(/no lib\/modules\/6.1.0-3-cloud-amd64/);
  });
});
