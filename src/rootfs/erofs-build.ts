import { closeSync, createReadStream, createWriteStream, ftruncateSync, openSync, writeSync } from 'node:fs';
import { copyFile, link, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { BLOCK_SIZE, buildErofs, type ErofsKind } from '../layers/erofs.js';
import { MemTree, type BlockStore, type TreeNode } from '../layers/memtree.js';
import { cleanComponents } from '../layers/safe-path.js';
import { writeSparse, type Sparse } from '../layers/sparse.js';
import { LayerError } from '../util/errors.js';
import type { TreeCache } from './cache.js';
import { readLayer, type StoredLayer } from './unpack.js';

/**
 * Building an EROFS root filesystem straight from the layers: each layer is
 * inflated and read once, file contents are appended as whole blocks to the
 * image file, the tree is kept in memory, and the metadata is written at the
 * end. No file of the tree is ever created on the host.
 *
 * The cache is keyed like the folder cache (chain ids at snapshot
 * boundaries). An entry holds `image` (the image file as it stood at that
 * point: its content blocks, then metadata for a finished image) and
 * `tree.json` (the tree, with where each file's blocks are). Building on a
 * cached entry copies its content blocks (copy_file_range: the kernel copies,
 * nothing passes through cs) and goes on from there, so when only the top
 * snapshot changed only its layers are read.
 */

export interface ImageUnit extends StoredLayer {
  kind: string;
  /** Where it lands ('' for the root, else the owner's home). */
  under: string;
  /** Last layer of its snapshot: its tree is cached. */
  boundary: boolean;
}

export interface BuildErofsOptions {
  units: readonly ImageUnit[];
  /** The cache key after each unit. */
  keys: readonly string[];
  /** The cache for the tree after unit i (private from the first private unit on). */
  cacheAt: (i: number) => TreeCache;
  /** Whether folders are emptied after unit i (the end of the base snapshot), and which. */
  emptiesAfter: (i: number) => readonly string[];
  /** The file to write (it must not exist). */
  out: string;
  /** The output is cs's own and never written to: it may share its inode with the cache entry. */
  share: boolean;
  phase: (phase: string) => void;
}

export interface BuildErofsResult {
  layersApplied: number;
  cachedLayers: number;
  bytes: number;
}

const TREE_FORMAT = 1;

/**
 * A cache entry's image is "full" (its `image` file holds the image from
 * block 0) or a delta over a full entry: `image` then holds only the blocks
 * from `from` on, the `parent` file names the full entry and `from`, and
 * `head` holds block 0 (the superblock) of a finished image. An entry
 * saved at a boundary on the way holds contents only (up to its
 * `dataBlocks`); one saved at the end of a build is a finished image, marked
 * by a `finished` file.
 * The blocks a layer sequence gets are a function of the sequence alone, so
 * a parent rebuilt after eviction fits its deltas still.
 */
interface EntryImage {
  dir: string;
  /** The image is a finished one (metadata and superblock), not only the contents up to a boundary. */
  finished: boolean;
  parent?: { dir: string; from: number };
}

function writeAt(path: string, bytes: Buffer, position: number): void {
  const fd = openSync(path, 'r+');
  try {
    writeAll(fd, bytes, position);
  } finally {
    closeSync(fd);
  }
}

async function linkOrCopy(from: string, to: string): Promise<void> {
  try {
    await link(from, to);
  } catch (error) {
    if ((error as { code?: string }).code !== 'EXDEV') throw error;
    await copyFile(from, to);
  }
}

async function readEntry(cache: TreeCache, key: string): Promise<EntryImage | undefined> {
  if (!(await cache.has(key))) return undefined;
  const dir = cache.entryPath(key);
  const finished = await stat(join(dir, 'finished')).then(() => true, () => false);
  const parentText = await readFile(join(dir, 'parent'), 'utf8').catch(() => undefined);
  if (parentText === undefined) return { dir, finished };
  const [parentDir, fromText] = parentText.split('\n');
  const from = Number(fromText);
  // A delta whose full entry was evicted is no use.
  const parentSize = await stat(join(parentDir ?? '', 'image')).then((s) => s.size, () => -1);
  const complete = await stat(join(parentDir ?? '', 'complete')).then(() => true, () => false);
  if (!parentDir || !Number.isInteger(from) || !complete || parentSize < from * BLOCK_SIZE) return undefined;
  return { dir, finished, parent: { dir: parentDir, from } };
}

/** Write an entry's image into `target` (replacing it); `blocks` cuts it to that many. */
async function materialize(entry: EntryImage, target: string, blocks?: number): Promise<void> {
  if (!entry.parent) {
    await copyFile(join(entry.dir, 'image'), target);
  } else {
    await copyFile(join(entry.parent.dir, 'image'), target);
    await truncate(target, entry.parent.from * BLOCK_SIZE);
    await pipeline(createReadStream(join(entry.dir, 'image')), createWriteStream(target, { flags: 'r+', start: entry.parent.from * BLOCK_SIZE }));
    // Block 0 (the superblock) of a finished image is the delta's own.
    const head = await readFile(join(entry.dir, 'head')).catch(() => undefined);
    if (head) writeAt(target, head, 0);
  }
  if (blocks !== undefined) await truncate(target, blocks * BLOCK_SIZE);
}

/**
 * Make `target` an entry of `cache` for `key`: a delta over `parent` when
 * there is one (only the blocks `target` has past it are copied), else a
 * full entry (a hardlink when `target` may share its inode, else a copy).
 */
async function saveEntry(options: { cache: TreeCache; key: string; target: string; tree: MemTree; dataBlocks: number; parent?: { dir: string; from: number } | undefined; link: boolean; blocks?: number }): Promise<void> {
  const { cache, key, target } = options;
  if (await cache.has(key)) return;
  const work = await cache.workDir();
  try {
    const image = join(work, 'image');
    if (options.parent) {
      const end = options.blocks === undefined ? undefined : options.blocks * BLOCK_SIZE - 1;
      await pipeline(createReadStream(target, { start: options.parent.from * BLOCK_SIZE, ...(end === undefined ? {} : { end }) }), createWriteStream(image, { flags: 'wx' }));
      if (end === undefined) await pipeline(createReadStream(target, { start: 0, end: BLOCK_SIZE - 1 }), createWriteStream(join(work, 'head'), { flags: 'wx' }));
      await writeFile(join(work, 'parent'), `${options.parent.dir}\n${options.parent.from}`);
    } else if (options.link) {
      await linkOrCopy(target, image);
    } else {
      await copyFile(target, image);
      if (options.blocks !== undefined) await truncate(image, options.blocks * BLOCK_SIZE);
    }
    await writeFile(join(work, 'tree.json'), saveTree(options.tree.root, options.dataBlocks));
    if (options.blocks === undefined) await writeFile(join(work, 'finished'), '');
    await cache.commit(key, work);
  } catch (error) {
    await rm(work, { recursive: true, force: true });
    throw error;
  }
}

export async function buildErofsImage(options: BuildErofsOptions): Promise<BuildErofsResult> {
  const { units, keys, cacheAt, phase, out } = options;
  const last = units.length - 1;
  let cached = -1;
  let entry: EntryImage | undefined;
  for (let i = last; i >= 0 && !entry; i--) {
    if (!units[i]?.boundary) continue;
    entry = await readEntry(cacheAt(i), keys[i] as string);
    if (entry) cached = i;
  }
  const finalKey = keys[last] as string;
  if (entry && cached === last) {
    await cacheAt(last).touch(finalKey);
    if (entry.finished) {
      if (options.share && !entry.parent) await linkOrCopy(join(entry.dir, 'image'), out);
      else await materialize(entry, out);
      return { layersApplied: 0, cachedLayers: units.length, bytes: (await stat(out)).size };
    }
    // Cached as a boundary on the way to a longer chain: contents only, the metadata is written now.
    phase('reuse cached layers');
    const saved = loadTree(await readFile(join(entry.dir, 'tree.json'), 'utf8'));
    await materialize(entry, out, saved.dataBlocks);
    const fd = openSync(out, 'r+');
    try {
      phase('write erofs');
      return { layersApplied: 0, cachedLayers: units.length, bytes: finishErofs(fd, saved.root, new BlockFile(fd, saved.dataBlocks * BLOCK_SIZE)) };
    } finally {
      closeSync(fd);
    }
  }

  // The image is built in place at `out`; the cache keeps a full copy of the
  // first snapshot boundary, and deltas over it after.
  let tree: MemTree;
  let dataBlocks: number;
  let full: { dir: string; from: number } | undefined;
  if (entry) {
    phase('reuse cached layers');
    const saved = loadTree(await readFile(join(entry.dir, 'tree.json'), 'utf8'));
    tree = new MemTree(saved.root);
    dataBlocks = saved.dataBlocks;
    await materialize(entry, out, dataBlocks);
    await cacheAt(cached).touch(keys[cached] as string);
    full = entry.parent ?? { dir: entry.dir, from: dataBlocks };
  } else {
    tree = new MemTree();
    // Block 0 holds the superblock; contents start at block 1.
    await writeFile(out, Buffer.alloc(BLOCK_SIZE), { flag: 'wx' });
    dataBlocks = 1;
  }
  const fd = openSync(out, 'r+');
  let bytes: number;
  try {
    const blocks = new BlockFile(fd, dataBlocks * BLOCK_SIZE);
    for (let i = cached + 1; i <= last; i++) {
      const unit = units[i] as ImageUnit;
      phase(`apply layer ${i + 1}/${units.length} (${unit.kind})`);
      // The main thread mostly waits for inflated data here: it hashes, the worker only inflates.
      await readLayer(unit, (tar) => tree.applyLayer({ tar, under: cleanComponents(unit.under), blocks }), { hashHere: true });
      tree.emptyDirs(options.emptiesAfter(i));
      if (unit.boundary && i < last) {
        blocks.flush();
        const key = keys[i] as string;
        await saveEntry({ cache: cacheAt(i), key, target: out, tree, dataBlocks: blocks.blocks, parent: full, link: false, blocks: blocks.blocks });
        full ??= { dir: cacheAt(i).entryPath(key), from: blocks.blocks };
      }
    }
    phase('write erofs');
    dataBlocks = blocks.blocks;
    bytes = finishErofs(fd, tree.root, blocks);
  } finally {
    closeSync(fd);
  }
  // A full entry made by someone else at the same time may have a different
  // inode but the same blocks: the delta still fits.
  await saveEntry({ cache: cacheAt(last), key: finalKey, target: out, tree, dataBlocks, parent: full, link: options.share });
  return { layersApplied: last - cached, cachedLayers: cached + 1, bytes };
}

/**
 * Build an image of the given layers, applied in order at the root, with no
 * cache: the builder's core on its own (tests compare it with other
 * unpackers layer stack by layer stack).
 */
export async function erofsFromLayers(layers: readonly StoredLayer[], out: string): Promise<number> {
  await writeFile(out, Buffer.alloc(BLOCK_SIZE), { flag: 'wx' });
  const fd = openSync(out, 'r+');
  try {
    const tree = new MemTree();
    const blocks = new BlockFile(fd);
    for (const layer of layers) await readLayer(layer, (tar) => tree.applyLayer({ tar, blocks }), { hashHere: true });
    return finishErofs(fd, tree.root, blocks);
  } finally {
    closeSync(fd);
  }
}

/**
 * Write the metadata after the content blocks and the superblock at the
 * start: `fd` is then a finished image. Returns its size.
 */
export function finishErofs(fd: number, root: TreeNode, blocks: BlockFile): number {
  blocks.flush();
  const built = buildErofs(root, blocks.blocks);
  writeAll(fd, built.meta, built.metaOffset);
  writeAll(fd, built.head, 0);
  ftruncateSync(fd, built.bytes);
  return built.bytes;
}

function writeAll(fd: number, buffer: Buffer, position: number): void {
  let done = 0;
  while (done < buffer.length) done += writeSync(fd, buffer, done, buffer.length - done, position + done);
}

/**
 * File contents appended to the image as whole blocks, through one reused
 * 1 MiB buffer (fresh memory is costly to touch; see PLATFORM.md).
 */
export class BlockFile implements BlockStore {
  private readonly buffer = Buffer.allocUnsafe(1 << 20);
  private used = 0;

  constructor(
    private readonly fd: number,
    /** Where the buffer's first byte goes: a block boundary (block 0, the superblock's, is skipped). */
    private offset: number = BLOCK_SIZE,
  ) {}

  /** Blocks written (or buffered) so far: the next file starts here. */
  get blocks(): number {
    return (this.offset + this.used) / BLOCK_SIZE;
  }

  async writeFile(body: AsyncIterable<Buffer>, size: number, entry: string): Promise<number> {
    if (size === 0) return 0;
    const block = this.blocks;
    let written = 0;
    for await (const chunk of body) {
      this.append(chunk);
      written += chunk.length;
    }
    if (written !== size) throw new LayerError(`entry ${entry} holds ${written} bytes, its header says ${size}`, { code: 'LAYER_BAD_HEADER' });
    this.pad();
    return block;
  }

  async writeSparse(body: AsyncIterable<Buffer>, sparse: Sparse, dataSize: number, entry: string): Promise<{ block: number; bytes: number }> {
    this.flush();
    const base = this.offset;
    const bytes = await writeSparse(this.fd, body, sparse, dataSize, entry, base);
    this.offset = base + Math.ceil(sparse.realSize / BLOCK_SIZE) * BLOCK_SIZE;
    return { block: sparse.realSize === 0 ? 0 : base / BLOCK_SIZE, bytes };
  }

  private append(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      const take = Math.min(chunk.length - at, this.buffer.length - this.used);
      chunk.copy(this.buffer, this.used, at, at + take);
      this.used += take;
      at += take;
      if (this.used === this.buffer.length) this.flush();
    }
  }

  /** Zeros up to the next block boundary (the buffer is whole blocks long, so they always fit). */
  private pad(): void {
    const rest = this.used % BLOCK_SIZE;
    if (rest === 0) return;
    this.buffer.fill(0, this.used, this.used + BLOCK_SIZE - rest);
    this.used += BLOCK_SIZE - rest;
    if (this.used === this.buffer.length) this.flush();
  }

  flush(): void {
    writeAll(this.fd, this.buffer.subarray(0, this.used), this.offset);
    this.offset += this.used;
    this.used = 0;
  }
}

/** The tree in the cache: nodes in an array (hardlinks are one node), children as [name, index]. */
interface SavedNode {
  k: ErofsKind;
  m: number;
  u: number;
  g: number;
  t: number;
  n: number;
  x?: [string, string][];
  b?: number;
  s?: number;
  l?: string;
  d?: [number, number];
  c?: [string, number][];
}

function saveTree(root: TreeNode, dataBlocks: number): string {
  const index = new Map<TreeNode, number>([[root, 0]]);
  const order: TreeNode[] = [root];
  const nodes: SavedNode[] = [];
  for (let i = 0; i < order.length; i++) {
    const node = order[i] as TreeNode;
    const saved: SavedNode = { k: node.kind, m: node.mode, u: node.uid, g: node.gid, t: node.mtime, n: node.mtimeNs };
    if (node.xattrs) saved.x = [...node.xattrs].map(([name, value]) => [name, value.toString('base64')]);
    if (node.kind === 'file') {
      saved.b = node.block ?? 0;
      saved.s = node.size ?? 0;
    }
    if (node.target !== undefined) saved.l = node.target;
    if (node.kind === 'char' || node.kind === 'block') saved.d = [node.major ?? 0, node.minor ?? 0];
    if (node.children) {
      saved.c = [];
      for (const [name, child] of node.children) {
        let at = index.get(child);
        if (at === undefined) {
          at = order.length;
          index.set(child, at);
          order.push(child);
        }
        saved.c.push([name, at]);
      }
    }
    nodes.push(saved);
  }
  return JSON.stringify({ format: TREE_FORMAT, dataBlocks, nodes });
}

function loadTree(text: string): { root: TreeNode; dataBlocks: number } {
  const parsed = JSON.parse(text) as { format?: number; dataBlocks: number; nodes: SavedNode[] };
  if (parsed.format !== TREE_FORMAT) throw new Error(`cached tree has format ${String(parsed.format)}, expected ${TREE_FORMAT}`);
  const nodes: TreeNode[] = parsed.nodes.map((s) => ({
    kind: s.k,
    mode: s.m,
    uid: s.u,
    gid: s.g,
    mtime: s.t,
    mtimeNs: s.n,
    ...(s.x ? { xattrs: new Map(s.x.map(([name, value]) => [name, Buffer.from(value, 'base64')])) } : {}),
    ...(s.k === 'file' ? { block: s.b ?? 0, size: s.s ?? 0 } : {}),
    ...(s.l !== undefined ? { target: s.l } : {}),
    ...(s.d ? { major: s.d[0], minor: s.d[1] } : {}),
    ...(s.c ? { children: new Map<string, TreeNode>() } : {}),
  }));
  parsed.nodes.forEach((s, i) => {
    for (const [name, at] of s.c ?? []) (nodes[i] as TreeNode).children?.set(name, nodes[at] as TreeNode);
  });
  return { root: nodes[0] as TreeNode, dataBlocks: parsed.dataBlocks };
}
