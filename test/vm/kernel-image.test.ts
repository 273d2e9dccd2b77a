/**
 * `kernel: oci://REF`: a workspace booted with a kernel shipped as an OCI
 * image (boot/vmlinuz-VERSION and lib/modules/VERSION, as a Debian kernel
 * package lays them out), instead of the one `cs setup` fetched.
 */
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { importDirectory } from '../../src/snapshot/import-dir.js';
import { GUEST_MODULES } from '../../src/vm/initramfs.js';
import { findKernel, moduleLoadOrder } from '../../src/vm/kernel.js';
import { ensureBuilt, runCs } from '../helpers/cli.js';
import { importTinyImage, SHARED_HOME, vmHome, writeDefinition } from '../helpers/vm.js';

describe('a kernel from an OCI image', () => {
  let home: Awaited<ReturnType<typeof vmHome>>;
  let work: string;
  let version: string;

  beforeAll(async () => {
    await ensureBuilt('sandbox/create');
    home = await vmHome();
    work = await mkdtemp(join(tmpdir(), 'cs-kimg-'));
    await importTinyImage(home.env);
    // The image: the shared Debian kernel with just the modules a workspace loads.
    const kernel = await findKernel({ env: { CS_HOME: SHARED_HOME } });
    if (!kernel) throw new Error('the shared kernel is missing');
    version = kernel.version;
    const tree = join(work, 'kernel-tree');
    await mkdir(join(tree, 'boot'), { recursive: true });
    await cp(kernel.vmlinuz, join(tree, 'boot', `vmlinuz-${version}`));
    const modules = join(tree, 'lib', 'modules', version);
    for (const path of await moduleLoadOrder(kernel, GUEST_MODULES)) {
      await mkdir(join(modules, path, '..'), { recursive: true });
      await cp(join(kernel.modules, path), join(modules, path));
    }
    await cp(join(kernel.modules, 'modules.builtin'), join(modules, 'modules.builtin'));
    await cp(join(kernel.modules, 'modules.order'), join(modules, 'modules.order'));
    await importDirectory({ dir: tree, reference: 'localhost/test/kernel:1', env: home.env });
  }, 300_000);

  afterAll(async () => {
    await runCs(['sandbox', 'remove', 'kimg'], { env: home.env, timeoutMs: 60_000 });
    await home?.cleanup();
    await rm(work, { recursive: true, force: true });
  });

  it('boots the workspace with it', async () => {
    const file = await writeDefinition(
      work,
      'kimg',
      'workspaces:\n  - name: dev\n    base_snapshot: oci://localhost/test/tiny:1\n    kernel: oci://localhost/test/kernel:1\n    resources: { memory: 256Mi, disk: 1Gi }\n',
    );
    const created = await runCs(['sandbox', 'create', '-f', file, '--wait'], { env: home.env, timeoutMs: 240_000 });
    expect(created.stderr).not.toContain('Error');
    expect(created.exitCode).toBe(0);
    const uname = await runCs(['exec', '-W', 'kimg/dev', '--', 'uname', '-r'], { env: home.env });
    expect(uname.stdout).toBe(version);
    // It was installed apart from the default kernel, keyed by the image's digest.
    const record = JSON.parse(await readFile(join(home.home, 'sandboxes', 'kimg', 'dev', 'workspace.json'), 'utf8')) as { kernel: { vmlinuz: string } };
    expect(record.kernel.vmlinuz).toMatch(/\/kernels\/oci-[0-9a-f]{16}\/vmlinuz$/);
  }, 300_000);

  it('takes the kernel from the config file when the definition says default', async () => {
    await writeFile(home.env['CS_CONFIG'] as string, 'kernel: oci://localhost/test/kernel:1\n');
    try {
      const file = await writeDefinition(work, 'kcfg', 'workspaces:\n  - name: dev\n    base_snapshot: oci://localhost/test/tiny:1\n    resources: { memory: 256Mi, disk: 1Gi }\n');
      const created = await runCs(['sandbox', 'create', '-f', file], { env: home.env, timeoutMs: 240_000 });
      expect(created.exitCode, created.stderr).toBe(0);
      const record = JSON.parse(await readFile(join(home.home, 'sandboxes', 'kcfg', 'dev', 'workspace.json'), 'utf8')) as { kernel: { vmlinuz: string } };
      expect(record.kernel.vmlinuz).toMatch(/\/kernels\/oci-[0-9a-f]{16}\/vmlinuz$/);
      const uname = await runCs(['exec', '-W', 'kcfg/dev', '--', 'uname', '-r'], { env: home.env, timeoutMs: 180_000 });
      expect(uname.stdout, `exit ${uname.exitCode}: ${uname.stderr}`).toBe(version);
    } finally {
      await runCs(['sandbox', 'remove', 'kcfg'], { env: home.env, timeoutMs: 60_000 });
      await rm(home.env['CS_CONFIG'] as string, { force: true });
    }
    const bad = join(work, 'bad-config.yaml');
    await writeFile(bad, 'kernel: linux-6.1\n');
    const file = await writeDefinition(work, 'kbad', 'workspaces:\n  - name: dev\n    base_snapshot: oci://localhost/test/tiny:1\n');
    const refused = await runCs(['sandbox', 'create', '-f', file], { env: { ...home.env, CS_CONFIG: bad }, timeoutMs: 60_000 });
    expect(refused.exitCode).toBe(3);
    expect(refused.stderr).toContain('kernel: must be "default" or oci://REF of a kernel image');
  }, 300_000);

  it('refuses an image without a kernel', async () => {
    const file = await writeDefinition(
      work,
      'nokernel',
      'workspaces:\n  - name: dev\n    base_snapshot: oci://localhost/test/tiny:1\n    kernel: oci://localhost/test/tiny:1\n    resources: { memory: 256Mi, disk: 1Gi }\n',
    );
    const created = await runCs(['sandbox', 'create', '-f', file], { env: home.env, timeoutMs: 120_000 });
    expect(created.exitCode).toBe(3);
    expect(created.stderr).toContain('has no /boot/vmlinuz-VERSION');
    const list = JSON.parse((await runCs(['sandbox', 'list', '--json'], { env: home.env })).stdout) as { workspaces: { sandbox: string }[] };
    expect(list.workspaces.map((w) => w.sandbox)).not.toContain('nokernel');
  }, 180_000);
});
