/**
 * One oracle run: build a stack as an image in the store, unpack it with
 * umoci and with cs, snapshot both trees and list their differences.
 *
 * umoci 0.4.7 cannot read zstd layers ("blob is not correct mediatype"), so
 * umoci unpacks the same stack with its zstd layers gzipped instead, and cs
 * unpacks the stack as written: the trees must still be the same.
 *
 * Two things are normalised before comparing, both umoci's doing:
 * - mtimes at or after the run started are "unpack-time": directories that
 *   no layer has an entry for (created as implicit parents) get the time of
 *   unpacking in both tools, so only the class is compared;
 * - the root directory's mtime is not compared: umoci leaves the rootfs
 *   folder at the epoch (mtime 0) or at the unpack time depending on the
 *   layers, whatever the layers say, unless a layer has a "./" entry.
 *   The root's mode and owner are compared.
 * - a lower directory whose contents a layer changed (through a whiteout or
 *   an opaque marker) without an entry for it: cs gives it back the time the
 *   lower layer set, so the tree does not depend on when it was unpacked;
 *   umoci leaves some of these at the unpack time. Where umoci has
 *   "unpack-time" and cs a time from the layers, cs is the deterministic one
 *   and the difference is not counted.
 */
import { join } from 'node:path';
import type { ContentStore } from '../../../src/oci/store.js';
import { buildImage } from './image.js';
import type { Stack } from './stacks.js';
import { diffTrees, snapshot, type Tree } from './tree.js';
import { csUnpack, umociUnpack } from './unpackers.js';

export interface OracleRun {
  diffs: string[];
  umoci: Tree;
  cs: Tree;
}

/** umoci's variant of a stack: zstd layers gzipped. */
function forUmoci(stack: Stack): Stack {
  return { ...stack, layers: stack.layers.map((l) => (l.compression === 'zstd' ? { ...l, compression: 'gzip' as const } : l)) };
}

export function usesZstd(stack: Stack): boolean {
  return stack.layers.some((l) => l.compression === 'zstd');
}

export interface OracleContext {
  store: ContentStore;
  tmp: string;
  /** Nanoseconds: mtimes from here on were set while unpacking. */
  startNs: bigint;
}

export function normalise(tree: Tree, startNs: bigint): Tree {
  for (const node of tree.values()) if (BigInt(node.mtime) >= startNs) node.mtime = 'unpack-time';
  return tree;
}

export async function runOracle(ctx: OracleContext, stack: Stack): Promise<OracleRun> {
  const umociTag = `${stack.name}-umoci`;
  const csTag = usesZstd(stack) ? `${stack.name}-cs` : umociTag;
  await buildImage(ctx.store, umociTag, forUmoci(stack).layers);
  if (csTag !== umociTag) await buildImage(ctx.store, csTag, stack.layers);
  const csRoot = join(ctx.tmp, `cs-${stack.name}`);
  const [umociRoot] = await Promise.all([umociUnpack(ctx.store.root, umociTag, join(ctx.tmp, `umoci-${stack.name}`)), csUnpack(ctx.store, csTag, csRoot)]);
  const [umoci, cs] = await Promise.all([snapshot(umociRoot), snapshot(csRoot)]);
  normalise(umoci, ctx.startNs);
  normalise(cs, ctx.startNs);
  return { diffs: oracleDiff(umoci, cs), umoci, cs };
}

/** The differences between umoci's tree and cs's (both normalised), with the rules above. */
export function oracleDiff(umoci: Tree, cs: Tree): string[] {
  return diffTrees(umoci, cs, {
    ignore: (path, field) =>
      field === 'mtime' &&
      (path === '.' || (umoci.get(path)?.mtime === 'unpack-time' && cs.get(path)?.type === 'dir' && cs.get(path)?.mtime !== 'unpack-time')),
  });
}
