import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { KernelRef } from '../definition/model.js';
import { openImageContext, pullImage, userReference } from '../oci/image.js';
import { formatReference } from '../oci/reference.js';
import { assemble } from '../rootfs/assemble.js';
import { InputError } from '../util/errors.js';
import { withLock } from '../util/lock.js';
import type { Env } from '../util/paths.js';
import { ensureKernel, installKernelTree, kernelsDir, readKernel, type Kernel } from '../vm/kernel.js';

/**
 * The kernel a workspace boots: Debian's (fetched by `cs setup`), or one
 * shipped as an OCI image (`kernel: oci://REF`) holding
 * `boot/vmlinuz-VERSION` and `lib/modules/VERSION/`, as a Debian kernel
 * package unpacked into an image would. Image kernels are kept under
 * `$CS_HOME/kernels/oci-DIGEST/`, so each image is unpacked once.
 */
export async function resolveKernel(ref: KernelRef, options: { env?: Env; onPhase?: (p: string) => void } = {}): Promise<Kernel> {
  const envOpt = options.env ? { env: options.env } : {};
  if (ref.kind === 'default') return ensureKernel({ ...envOpt, ...(options.onPhase ? { onPhase: options.onPhase } : {}) });
  const name = formatReference(userReference(formatReference(ref.reference)));
  const context = await openImageContext(envOpt);
  let descriptor = await context.store.resolveTag(name);
  if (!descriptor) {
    options.onPhase?.(`pull kernel ${name}`);
    await pullImage({ reference: name, context });
    descriptor = await context.store.resolveTag(name);
  }
  if (!descriptor) throw new Error(`kernel image ${name} is not in the local store after pulling it`);
  const root = kernelsDir(options.env);
  const dirName = `oci-${descriptor.digest.replace(/^sha256:/, '').slice(0, 16)}`;
  const known = await readKernel(join(root, dirName));
  if (known) return known;
  await mkdir(root, { recursive: true });
  return withLock(join(root, '.lock'), { purpose: 'installing a kernel image', timeoutMs: 300_000 }, async () => {
    const again = await readKernel(join(root, dirName));
    if (again) return again;
    const work = await mkdtemp(join(root, '.image-'));
    try {
      options.onPhase?.(`unpack kernel ${name}`);
      const tree = join(work, 'tree');
      await assemble({ snapshots: [{ reference: name, kind: 'base' }], out: tree, format: 'dir', context, ...envOpt });
      if (!existsSync(join(tree, 'boot'))) {
        throw new InputError(`kernel image ${name} has no /boot/vmlinuz-VERSION`, { code: 'KERNEL_INVALID' });
      }
      return await installKernelTree({ tree, root, source: name, name: dirName });
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
}
