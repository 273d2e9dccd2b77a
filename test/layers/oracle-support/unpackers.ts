/**
 * The two unpackers the oracle compares: umoci (`umoci unpack` as root, so
 * ownership, devices and xattrs are real) and cs (`readImageLayers`, then
 * `unpackLayer` for every layer in order into an empty folder).
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { readImageLayers, unpackLayer } from '../../../src/rootfs/unpack.js';
import type { ContentStore } from '../../../src/oci/store.js';
import { LayerXattrs } from '../../../src/rootfs/assemble.js';

/** umoci runs with a private HOME and nothing else from the environment. */
export async function umociUnpack(layout: string, tag: string, bundle: string): Promise<string> {
  const result = await execa('umoci', ['unpack', '--image', `${layout}:${tag}`, bundle], {
    env: { HOME: join(bundle, '..'), PATH: process.env['PATH'] ?? '/usr/bin:/bin', TMPDIR: join(bundle, '..') },
    extendEnv: false,
    stdin: 'ignore',
    reject: false,
    timeout: 60_000,
  });
  if (result.exitCode !== 0) throw new Error(`umoci unpack ${tag} exited ${String(result.exitCode)}:\n${result.stderr}`);
  return join(bundle, 'rootfs');
}

/**
 * cs: every layer applied with unpackLayer, in order, and after each layer
 * the xattrs it declared set (and those of re-declared folders it did not
 * declare removed) with the assembler's own functions.
 */
export async function csUnpack(store: ContentStore, tag: string, root: string): Promise<void> {
  await mkdir(root, { recursive: true });
  const descriptor = await store.resolveTag(tag);
  if (!descriptor) throw new Error(`no tag ${tag}`);
  const { manifest, diffIds } = await readImageLayers(store, descriptor, tag);
  for (const [index, layer] of manifest.layers.entries()) {
    // The same steps, from the same code, as cs's assembler after each layer.
    const batch = new LayerXattrs(root);
    await unpackLayer({
      store,
      layer,
      diffId: diffIds[index] as string,
      root,
      privileged: true,
      onXattrs: (path, values) => batch.set(path, values),
      onDirectoryKept: (path, values) => batch.kept(path, values),
    });
    await batch.apply();
  }
}
