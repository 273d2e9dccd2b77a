import { closeSync, constants, createReadStream, createWriteStream, ftruncateSync, openSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { copyFile, link, readFile, rm, stat, truncate, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { BLOCK_SIZE, buildErofs, type ErofsKind } from '../layers/erofs.js';
import { MemTree, type BlockStore, type TreeNode } from '../layers/memtree.js';
import { cleanComponents } from '../layers/safe-path.js';
import { writeSparse, type Sparse } from '../layers/sparse.js';
import { LayerError } from '../util/errors.js';
import { exists } from '../util/fs.js';
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
 * from `from` on, the `parent` file names the full entry, its random `id`
 * and `from`, and `head` holds block 0 (the superblock) of a finished
 * image. An entry saved at a boundary on the way holds contents only (up to
 * its `dataBlocks`); one saved at the end of a build is a finished image,
 * marked by a `finished` file. A delta is used only over the very full entry it was made against (same
 * id), and each use of a delta counts as a use of that entry, so eviction
 * does not take it while its deltas are in use.
 */
interface EntryImage {
  dir: string;
  /** The image is a finished one (metadata and superblock), not only the contents up to a boundary. */
  finished: boolean;
  parent?: ParentRef;
}

/** A full entry a delta is made over: where it is, its random id (a rebuilt one is another), where the delta starts. */
interface ParentRef {
  dir: string;
  id: string;
  from: number;
}

function writeAt(path: string, bytes: Buffer, position: number): void {
  const fd = openSync(path, 'r+');
  try {
    writeAll(fd, bytes, position);
  } finally {
    closeSync(fd);
  }
}

/**
 * A copy of an image file. Where the file system has reflinks (XFS, btrfs)
 * it shares the blocks, copying none (asked for first with FICLONE; the
 * copy_file_range that follows shares them there too); elsewhere (ext4) the
 * kernel copies from page cache to page cache, and nothing passes through cs.
 */
export function cloneOrCopy(from: string, to: string): Promise<void> {
  return copyFile(from, to, constants.COPYFILE_FICLONE);
}

export async function linkOrCopy(from: string, to: string): Promise<void> {
  try {
    await link(from, to);
  } catch (error) {
    if ((error as { code?: string }).code !== 'EXDEV') throw error;
    await cloneOrCopy(from, to);
  }
}

async function readEntry(cache: TreeCache, key: string): Promise<EntryImage | undefined> {
  if (!(await cache.has(key))) return undefined;
  const found = await checkEntry(cache.entryPath(key));
  // An entry that can never be used again goes, so that this build can cache the chain anew.
  if (!found) await cache.remove(key);
  return found;
}

async function checkEntry(dir: string): Promise<EntryImage | undefined> {
  if (!(await intact(dir))) return undefined;
  const finished = await exists(join(dir, 'finished'));
  const parentText = await readFile(join(dir, 'parent'), 'utf8').catch(() => undefined);
  if (parentText === undefined) return { dir, finished };
  const [parentDir = '', id = '', fromText] = parentText.split('\n');
  const from = Number(fromText);
  // A delta is no use when its full entry was evicted (or rebuilt: another id), or when it lacks its superblock.
  const parentId = await readFile(join(parentDir, 'id'), 'utf8').catch(() => undefined);
  const parentSize = await stat(join(parentDir, 'image')).then((s) => s.size, () => -1);
  if (!Number.isInteger(from) || parentId === undefined || parentId !== id || !(await exists(join(parentDir, 'complete'))) || (await exists(join(parentDir, 'parent')))) return undefined;
  if (parentSize < from * BLOCK_SIZE || !(await intact(parentDir)) || (finished && !(await exists(join(dir, 'head'))))) return undefined;
  // Its deltas are uses of the full entry: it must not age out from under them.
  const now = new Date();
  await utimes(join(parentDir, 'complete'), now, now).catch(() => undefined);
  return { dir, finished, parent: { dir: parentDir, id, from } };
}

/**
 * Whether an entry's image has the size recorded when it was made. Images
 * are not fsync'd before their entry is committed (a build would wait for
 * hundreds of MB to reach the disk); after a power loss, what ext4 leaves of
 * a file written just before is a shorter file, which this catches.
 */
async function intact(dir: string): Promise<boolean> {
  const recorded = await readFile(join(dir, 'size'), 'utf8').catch(() => undefined);
  const actual = await stat(join(dir, 'image')).then((s) => s.size, () => -1);
  return recorded !== undefined && Number(recorded) === actual;
}

/** Write an entry's image into `target` (replacing it). */
async function materialize(entry: EntryImage, target: string): Promise<void> {
  if (!entry.parent) {
    await cloneOrCopy(join(entry.dir, 'image'), target);
  } else {
    await cloneOrCopy(join(entry.parent.dir, 'image'), target);
    await truncate(target, entry.parent.from * BLOCK_SIZE);
    await pipeline(createReadStream(join(entry.dir, 'image')), createWriteStream(target, { flags: 'r+', start: entry.parent.from * BLOCK_SIZE }));
    // Block 0 (the superblock) of a finished image is the delta's own.
    if (entry.finished) writeAt(target, await readFile(join(entry.dir, 'head')), 0);
  }
}

/**
 * Make `target` an entry of `cache` for `key`: a delta over `parent` when
 * there is one (only the blocks `target` has past it are copied), else a
 * full entry (a hardlink when `target` may share its inode, else a copy).
 */
async function saveEntry(options: { cache: TreeCache; key: string; target: string; tree: MemTree; dataBlocks: number; parent?: ParentRef | undefined; link: boolean; blocks?: number }): Promise<ParentRef | undefined> {
  const { cache, key, target } = options;
  // Already cached (by an earlier build): a full one can be the parent of this build's deltas.
  if (await cache.has(key)) return options.blocks === undefined ? undefined : fullEntry(cache.entryPath(key), options.blocks);
  const work = await cache.workDir();
  try {
    const image = join(work, 'image');
    let id: string | undefined;
    if (options.parent) {
      const from = options.parent.from * BLOCK_SIZE;
      const end = options.blocks === undefined ? (await stat(target)).size : options.blocks * BLOCK_SIZE;
      // A boundary that added no content blocks (folders, symlinks, whiteouts only) has an empty delta.
      if (end > from) await pipeline(createReadStream(target, { start: from, end: end - 1 }), createWriteStream(image, { flags: 'wx' }));
      else await writeFile(image, '', { flag: 'wx' });
      if (options.blocks === undefined) await pipeline(createReadStream(target, { start: 0, end: BLOCK_SIZE - 1 }), createWriteStream(join(work, 'head'), { flags: 'wx' }));
      await writeFile(join(work, 'parent'), `${options.parent.dir}\n${options.parent.id}\n${options.parent.from}`);
    } else {
      if (options.link) await linkOrCopy(target, image);
      else {
        await cloneOrCopy(target, image);
        if (options.blocks !== undefined) await truncate(image, options.blocks * BLOCK_SIZE);
      }
      id = randomBytes(16).toString('hex');
      await writeFile(join(work, 'id'), id);
    }
    await writeFile(join(work, 'size'), String((await stat(image)).size));
    await writeFile(join(work, 'tree.json'), saveTree(options.tree.root, options.dataBlocks));
    if (options.blocks === undefined) await writeFile(join(work, 'finished'), '');
    await cache.commit(key, work);
    // Read back: a full entry made by someone else at the same time may have won the commit, with its own id.
    return id !== undefined && options.blocks !== undefined ? fullEntry(cache.entryPath(key), options.blocks) : undefined;
  } catch (error) {
    await rm(work, { recursive: true, force: true });
    throw error;
  }
}

/** The entry at `dir` as the parent of deltas starting at block `from`, when it is a full entry (it has an id). */
async function fullEntry(dir: string, from: number): Promise<ParentRef | undefined> {
  const id = await readFile(join(dir, 'id'), 'utf8').catch(() => undefined);
  return id !== undefined && !(await exists(join(dir, 'parent'))) ? { dir, id, from } : undefined;
}

/** A cached entry went away between finding it and reading it (another process evicted it). */
class EntryGone extends Error {}

function fromEntry<T>(work: Promise<T>): Promise<T> {
  return work.catch((error: unknown) => {
    throw (error as { code?: string }).code === 'ENOENT' ? new EntryGone('a cache entry went away while it was read', { cause: error }) : error;
  });
}

export async function buildErofsImage(options: BuildErofsOptions): Promise<BuildErofsResult> {
  try {
    return await build(options, true);
  } catch (error) {
    if (!(error instanceof EntryGone)) throw error;
    await rm(options.out, { force: true });
    return build(options, false);
  }
}

async function build(options: BuildErofsOptions, useCache: boolean): Promise<BuildErofsResult> {
  const { units, keys, cacheAt, phase, out } = options;
  const last = units.length - 1;
  let cached = -1;
  let entry: EntryImage | undefined;
  for (let i = last; i >= 0 && !entry && useCache; i--) {
    if (!units[i]?.boundary) continue;
    entry = await readEntry(cacheAt(i), keys[i] as string);
    if (entry) cached = i;
  }
  const finalKey = keys[last] as string;
  // A finished image of the whole chain is copied out. (A chain cached as a boundary on the way to a longer
  // one holds contents only: the path below applies no layer to it and writes the metadata.)
  if (entry?.finished && cached === last) {
    await cacheAt(last).touch(finalKey);
    if (options.share && !entry.parent) await fromEntry(linkOrCopy(join(entry.dir, 'image'), out));
    else await fromEntry(materialize(entry, out));
    return { layersApplied: 0, cachedLayers: units.length, bytes: (await stat(out)).size };
  }

  // The image is built in place at `out`; the cache keeps a full copy of the
  // first snapshot boundary, and deltas over it after.
  let tree: MemTree;
  let dataBlocks: number;
  let full: ParentRef | undefined;
  if (entry) {
    phase('reuse cached layers');
    // The kernel copies the image (a thread of the pool waits on it) while this thread reads the tree;
    // both end before either's failure is thrown.
    const [copied, read] = await Promise.allSettled([fromEntry(materialize(entry, out)), fromEntry(readFile(join(entry.dir, 'tree.json'), 'utf8')).then(loadTree)]);
    if (read.status === 'rejected') throw read.reason;
    if (copied.status === 'rejected') throw copied.reason;
    const saved = read.value;
    tree = new MemTree(saved.root);
    dataBlocks = saved.dataBlocks;
    await truncate(out, dataBlocks * BLOCK_SIZE);
    await cacheAt(cached).touch(keys[cached] as string);
    full = entry.parent ?? (await fullEntry(entry.dir, dataBlocks));
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
        const saved = await saveEntry({ cache: cacheAt(i), key: keys[i] as string, target: out, tree, dataBlocks: blocks.blocks, parent: full, link: false, blocks: blocks.blocks });
        full ??= saved;
      }
    }
    phase('write erofs');
    dataBlocks = blocks.blocks;
    bytes = finishErofs(fd, tree.root, blocks);
  } finally {
    closeSync(fd);
  }
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

export function writeAll(fd: number, buffer: Buffer, position: number): void {
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
  /** In a stack of images (erofs-stack.ts): which one holds the file's blocks. */
  v?: number;
  /** In a part of a tree (erofs-stack.ts): the file has names outside the part too. */
  o?: 1;
}

/** Where each file's blocks are in a stack of images: the image's index (the base's is 0). */
export type Levels = Map<TreeNode, number>;

export function saveTree(root: TreeNode, dataBlocks: number, levelOf?: (node: TreeNode) => number, outside?: ReadonlySet<TreeNode>): string {
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
      if (levelOf) saved.v = levelOf(node);
    }
    if (outside?.has(node)) saved.o = 1;
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

export function loadTree(text: string, levels?: Levels, outside?: Set<TreeNode>): { root: TreeNode; dataBlocks: number } {
  const parsed = JSON.parse(text) as { format?: number; dataBlocks: number; nodes: SavedNode[] };
  if (parsed.format !== TREE_FORMAT) throw new Error(`cached tree has format ${String(parsed.format)}, expected ${TREE_FORMAT}`);
  const nodes: TreeNode[] = new Array<TreeNode>(parsed.nodes.length);
  parsed.nodes.forEach((s, i) => {
    const node: TreeNode = { kind: s.k, mode: s.m, uid: s.u, gid: s.g, mtime: s.t, mtimeNs: s.n };
    if (s.x) node.xattrs = new Map(s.x.map(([name, value]) => [name, Buffer.from(value, 'base64')]));
    if (s.k === 'file') {
      node.block = s.b ?? 0;
      node.size = s.s ?? 0;
      if (levels && s.v !== undefined) levels.set(node, s.v);
    }
    if (s.l !== undefined) node.target = s.l;
    if (s.d) {
      node.major = s.d[0];
      node.minor = s.d[1];
    }
    if (s.c) node.children = new Map<string, TreeNode>();
    if (s.o && outside) outside.add(node);
    nodes[i] = node;
  });
  parsed.nodes.forEach((s, i) => {
    const children = (nodes[i] as TreeNode).children;
    if (children && s.c) for (const [name, at] of s.c) children.set(name, nodes[at] as TreeNode);
  });
  return { root: nodes[0] as TreeNode, dataBlocks: parsed.dataBlocks };
}
