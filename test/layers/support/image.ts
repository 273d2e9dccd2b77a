/**
 * Building layers into an EROFS image the way cs's image builder does
 * (memtree.ts, then erofs.ts), without its cache: what tests compare with
 * the folder applier.
 */
import { closeSync, openSync, writeFileSync } from 'node:fs';
import type { LayerLimits } from '../../../src/layers/apply.js';
import { MemTree } from '../../../src/layers/memtree.js';
import { BlockFile, finishErofs } from '../../../src/rootfs/erofs-build.js';
import { toTar, type Layer } from './inspect.js';

/** Build `layers` into a new image at `image`; resolves to the error that stopped it, or undefined. The limits go to the last layer. */
export async function buildInMemory(layers: readonly Layer[], image: string, limits?: Partial<LayerLimits>): Promise<unknown> {
  writeFileSync(image, Buffer.alloc(4096));
  const fd = openSync(image, 'r+');
  try {
    const tree = new MemTree();
    const blocks = new BlockFile(fd);
    for (const [i, layer] of layers.entries()) await tree.applyLayer({ tar: toTar(layer), blocks, ...(limits && i === layers.length - 1 ? { limits } : {}) });
    finishErofs(fd, tree.root, blocks);
    return undefined;
  } catch (error) {
    return error;
  } finally {
    closeSync(fd);
  }
}
