import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { chmod, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BLOCK_SIZE } from '../layers/erofs.js';
import { MemTree, type TreeNode } from '../layers/memtree.js';
import { cleanComponents } from '../layers/safe-path.js';
import { exists } from '../util/fs.js';
import { BlockFile, finishErofs, loadTree, saveTree, type ImageUnit, type Levels } from './erofs-build.js';
import type { TreeCache } from './cache.js';
import { readLayer } from './unpack.js';

/**
 * A root filesystem as a stack of EROFS images, one per snapshot, for
 * overlayfs to merge (`lowerdir=TOP:...:BASE`): the base snapshot's image
 * is a whole root, each later snapshot's image holds only what it changed
 * in the tree below it, with overlayfs's own markers for what it removed (a
 * character device 0:0, a "whiteout") and for folders that hide what is
 * below them (`trusted.overlay.opaque`).
 *
 * Why: a self-contained image of base + home must hold a copy of the base's
 * blocks, and on a file system without reflinks (ext4) copying 200 MB costs
 * more than everything else a warm build does. In a stack the base's image
 * is one cached file that every workspace on that base shares by hardlink,
 * and a build after a new home snapshot writes only the home's image.
 *
 * Each image is computed as a difference of trees, not by turning the
 * layers' OCI whiteouts into overlay ones: the snapshot's layers are applied
 * (with the OCI rules of memtree.ts) on top of the cached tree below, and
 * the merged tree is compared with the tree below, path by path. What
 * overlayfs then shows is the tree the OCI rules give, including what the
 * two disagree on: a file hardlinked to one of a lower image is written
 * into the new image with all of its names (an inode cannot span two
 * images), and a folder over what was a file below is marked opaque.
 *
 * Reading the whole tree below (a Debian base has about 7,000 entries) would
 * cost a warm build more than the rest of its work. A home or personal
 * snapshot's layers can only touch its folder (memtree.ts resolves every
 * path as if chrooted there) and the folders leading to it, so a build
 * normally reads only that part of the tree below: the "part" (the folders
 * down to the home, each with only that child, and everything under the
 * home). The whole tree is read instead when the part cannot be used: the
 * way to the home goes through a symlink, or a file the layers change also
 * has names outside the home (a hardlink made by the base).
 *
 * The cache (`rootfs-stack`) holds, per snapshot in the chain, the image, the
 * part of the tree up to it for each home it was built for
 * (`part-HASH.json`), and the whole tree (`tree.json`) when it was read
 * whole, each saying which image holds each file's blocks; `ids` names the
 * entry and the images below that those block numbers point into. Images
 * are made read-only and handed out by hardlink; each entry records its
 * image's size and modification time (`stamp`), and an entry whose image no
 * longer matches them (someone wrote to a hardlinked output) is rebuilt.
 */

/** A layer whose result overlayfs cannot be given as a stacked image (fallback: one self-contained image). */
export class NotStackable extends Error {}

/** A build on the part of a tree below found it needs the whole tree (`applied`: layers it applied before it found out). */
class NeedWholeTree extends Error {
  applied = 0;
}

/**
 * A cached entry went away while it was read (another process evicted it),
 * or cannot be read (cut short by a power loss): the build starts again
 * without the cache, which replaces the entries.
 */
export class StackEntryGone extends Error {}

function idOf(dir: string): string | undefined {
  try {
    return readFileSync(join(dir, 'ids'), 'utf8').split('\n')[0];
  } catch {
    return undefined;
  }
}

const WHITEOUT: TreeNode = { kind: 'char', mode: 0, uid: 0, gid: 0, mtime: 0, mtimeNs: 0, major: 0, minor: 0 };
const OPAQUE_XATTR = 'trusted.overlay.opaque';
const TREE = 'tree.json';

/** The file of an entry's part for a home (entries can have one for each home they were built for). */
function partFile(home: readonly string[]): string {
  return `part-${createHash('sha256').update(home.join('/')).digest('hex').slice(0, 16)}.json`;
}

type Mode = 'part' | 'whole';

export interface StackLevel {
  /** The units of this snapshot, as indexes into the build's units. */
  first: number;
  last: number;
}

export interface BuildStackOptions {
  units: readonly ImageUnit[];
  /** The cache key after each unit (a level's key is its last unit's). */
  keys: readonly string[];
  levels: readonly StackLevel[];
  cacheAt: (level: number) => TreeCache;
  emptiesAfter: (i: number) => readonly string[];
  /** Where the snapshots above the base land (the owner's home), as components: the part of the tree they can touch. */
  home: readonly string[];
  /** Whether a level is made from a private store (its image is readable by the user alone). */
  isPrivate?: (level: number) => boolean;
  phase: (phase: string) => void;
}

/** The images of a stack, base first (the cache's: read-only; link them, never write them), and how many layers were applied. */
export interface BuiltStack {
  images: string[];
  layersApplied: number;
  cachedLayers: number;
}

/** A cached level: its image, its random id, the ids of the images below it that its trees name blocks of, which trees it has. */
interface LevelEntry {
  dir: string;
  image: string;
  id: string;
  below: string[];
  whole: boolean;
  part: boolean;
}

async function readLevel(cache: TreeCache, key: string, home: readonly string[]): Promise<LevelEntry | undefined> {
  if (!(await cache.has(key))) return undefined;
  const dir = cache.entryPath(key);
  const image = join(dir, 'image');
  const [stamp, info, ids, whole, part] = await Promise.all([
    readFile(join(dir, 'stamp'), 'utf8').catch(() => undefined),
    stat(image).catch(() => undefined),
    readFile(join(dir, 'ids'), 'utf8').catch(() => undefined),
    exists(join(dir, TREE)),
    exists(join(dir, partFile(home))),
  ]);
  const [id = '', ...below] = (ids ?? '').split('\n').filter((line) => line !== '');
  if (stamp !== undefined && info !== undefined && stamp === stampOf(info) && id !== '') return { dir, image, id, below, whole, part };
  // Written to through a hardlinked output, cut short by a power loss, or half gone: it is built again.
  await cache.remove(key);
  return undefined;
}

function stampOf(info: { size: number; mtimeMs: number }): string {
  return `${info.size} ${info.mtimeMs}`;
}

/** A tree (whole or a part) with, for each file, the level whose image holds its blocks, and (in a part) the files with names outside it. */
interface LevelTree {
  level: number;
  mode: Mode;
  root: TreeNode;
  levels: Levels;
  outside: Set<TreeNode>;
}

/**
 * The images of every level, from the cache where they are, built where
 * they are not. Only the levels that are missing are built, each on the
 * tree of the level below (from this run, or read from the cache).
 *
 * A level's trees say which image below holds each file's blocks, and are
 * good only with the images they were made with: an entry lists their ids,
 * and a level below that was evicted and made again since (a new id) makes
 * the entry's trees unusable to build on (its image is still good:
 * overlayfs reads the images below by path, never by block).
 */
export async function buildErofsStack(options: BuildStackOptions, useCache = true): Promise<BuiltStack> {
  try {
    return await buildIn('part', options, useCache);
  } catch (error) {
    if (!(error instanceof NeedWholeTree)) throw error;
    // Levels the first pass made are in the cache now: they count as applied, not as cached.
    const built = await buildIn('whole', options, true);
    return { ...built, layersApplied: built.layersApplied + error.applied, cachedLayers: built.cachedLayers - error.applied };
  }
}

async function buildIn(mode: Mode, options: BuildStackOptions, useCache: boolean): Promise<BuiltStack> {
  const { units, keys, levels, cacheAt, home } = options;
  const keyOf = (level: number): string => keys[(levels[level] as StackLevel).last] as string;
  const entries: (LevelEntry | undefined)[] = [];
  for (let level = 0; level < levels.length; level++) entries.push(useCache ? await readLevel(cacheAt(level), keyOf(level), home) : undefined);
  // A level to build needs the level below with the tree this mode reads, made over the images below it.
  const rebuild = entries.map((entry) => entry === undefined);
  for (let level = levels.length - 1; level > 0; level--) {
    const entry = entries[level - 1];
    if (!rebuild[level] || !entry) continue;
    if (entry.below.join() !== entries.slice(0, level - 1).map((e) => e?.id).join()) rebuild[level - 1] = true;
    else if (mode === 'whole' && !entry.whole) rebuild[level - 1] = true;
    // Made for another home, or the way to the home is not a plain one: the whole tree is read.
    else if (mode === 'part' && !entry.part) throw new NeedWholeTree('the level below has no part for this home');
  }

  const out: string[] = [];
  const images = new OpenImages();
  let below: LevelTree | undefined;
  let layersApplied = 0;
  try {
    for (let level = 0; level < levels.length; level++) {
      const cache = cacheAt(level);
      const key = keyOf(level);
      const entry = useCache ? entries[level] : await readLevel(cache, key, home);
      if (!rebuild[level] && entry) {
        await cache.touch(key);
        out.push(entry.image);
        continue;
      }
      if (level > 0 && below?.level !== level - 1) {
        below = await images.load(entries.slice(0, level) as LevelEntry[], mode, home);
        // A whole tree read for want of its part: the part is kept beside it for the next build.
        if (mode === 'whole' && !entries[level - 1]?.part) await addPart(entries[level - 1] as LevelEntry, below, home);
      }
      const span = levels[level] as StackLevel;
      const work = await cache.workDir();
      try {
        const image = join(work, 'image');
        const made = await buildLevel({ ...options, level, span, image, below, fds: images.fds, mode });
        layersApplied += span.last - span.first + 1;
        const id = randomBytes(16).toString('hex');
        // The part for the home, from a whole tree only once: saved with the entry, and built on next in this mode.
        const part = made.mode === 'part' ? made : partOf(made, home);
        await writeTrees(work, made, part, home);
        await writeFile(join(work, 'ids'), [id, ...images.ids.slice(0, level)].join('\n'));
        // Read-only: outputs are hardlinks of it (and one from a private store stays the user's alone).
        await chmod(image, options.isPrivate?.(level) ? 0o400 : 0o444);
        await writeFile(join(work, 'stamp'), stampOf(await stat(image)));
        await rm(join(work, 'rootfs'), { recursive: true, force: true });
        // Opened before the commit: if another build's entry wins, this tree still reads this image's blocks
        // (and the next level, built on it, names this image's id, which no entry has: its trees are not reused).
        images.set(level, openSync(image, 'r'), id);
        below = mode === 'part' ? part : made;
        if (entry) await cache.remove(key);
        await cache.commit(key, work);
      } catch (error) {
        await rm(work, { recursive: true, force: true });
        throw error;
      }
      const committed = await readLevel(cache, key, home);
      if (!committed) throw new StackEntryGone(`the cache entry for ${key} went away as it was made`);
      entries[level] = committed;
      out.push(committed.image);
      if (!below && level < levels.length - 1) {
        const need = new NeedWholeTree('the way to the home is not a plain one');
        need.applied = layersApplied;
        throw need;
      }
    }
  } finally {
    images.close();
  }
  return { images: out, layersApplied, cachedLayers: units.length - layersApplied };
}

/** An entry's trees: the whole one when it was read whole, and the part for the home whenever there is one. */
async function writeTrees(work: string, made: LevelTree, part: LevelTree | undefined, home: readonly string[]): Promise<void> {
  if (made.mode === 'whole') await writeFile(join(work, TREE), saveTree(made.root, 0, levelOf(made)));
  if (part) await writeFile(join(work, partFile(home)), saveTree(part.root, 0, levelOf(part), part.outside));
}

function levelOf(tree: LevelTree): (node: TreeNode) => number {
  return (node) => tree.levels.get(node) ?? tree.level;
}

/** Add the part for `home` to a committed entry (written beside it and renamed in: a reader sees all of it or none). */
async function addPart(entry: LevelEntry, tree: LevelTree, home: readonly string[]): Promise<void> {
  const part = partOf(tree, home);
  if (!part) return;
  const temp = join(entry.dir, `.${partFile(home)}.${process.pid}`);
  try {
    await writeFile(temp, saveTree(part.root, 0, levelOf(part), part.outside));
    // Only into the entry the tree came from (not one made again since, whose blocks may lie elsewhere).
    if (idOf(entry.dir) !== entry.id) throw new Error('the entry was made again');
    await rename(temp, join(entry.dir, partFile(home)));
  } catch {
    // Only a saving for later builds: an entry evicted meanwhile needs none.
    await rm(temp, { force: true });
  }
}

/**
 * The part of a whole tree that a snapshot landing in `home` can touch: the
 * folders down to it, each with only the next one in it, and all below the
 * home. Undefined when the way goes through anything but folders (a symlink
 * would lead elsewhere in the tree).
 */
function partOf(tree: LevelTree, home: readonly string[]): LevelTree | undefined {
  const path: TreeNode[] = [tree.root];
  for (const name of home) {
    const next = path[path.length - 1]?.children?.get(name);
    if (next === undefined) break;
    if (next.kind !== 'dir') return undefined;
    path.push(next);
  }
  let root = path[path.length - 1] as TreeNode;
  for (let i = path.length - 2; i >= 0; i--) {
    const { children: _, ...metadata } = path[i] as TreeNode;
    root = { ...metadata, children: new Map([[home[i] as string, root]]) };
  }
  // Files under the home that also have names elsewhere.
  const everywhere = new Map<TreeNode, number>();
  const inside = new Map<TreeNode, number>();
  countNames(tree.root, everywhere);
  countNames(path[path.length - 1] as TreeNode, inside);
  const outside = new Set<TreeNode>();
  for (const [node, count] of inside) if ((everywhere.get(node) ?? 0) > count) outside.add(node);
  return { level: tree.level, mode: 'part', root, levels: tree.levels, outside };
}

function forEachFile(dir: TreeNode, visit: (node: TreeNode) => void): void {
  for (const child of dir.children?.values() ?? []) {
    if (child.kind === 'dir') forEachFile(child, visit);
    else visit(child);
  }
}

function countNames(dir: TreeNode, counts: Map<TreeNode, number>): void {
  for (const child of dir.children?.values() ?? []) {
    if (child.kind === 'dir') countNames(child, counts);
    else counts.set(child, (counts.get(child) ?? 0) + 1);
  }
}

/** Images of the levels below, open: an eviction cannot swap them while their blocks are copied. */
class OpenImages {
  readonly fds: number[] = [];
  readonly ids: string[] = [];

  set(level: number, fd: number, id: string): void {
    if (this.fds[level] !== undefined) closeSync(this.fds[level] as number);
    this.fds[level] = fd;
    this.ids[level] = id;
  }

  /** The tree of the top one of `entries`, with all their images opened; each entry is checked to be unchanged after. */
  async load(entries: readonly LevelEntry[], mode: Mode, home: readonly string[]): Promise<LevelTree> {
    const top = entries[entries.length - 1] as LevelEntry;
    const text = await readFile(join(top.dir, mode === 'whole' ? TREE : partFile(home)), 'utf8').catch((error: { code?: string }) => {
      throw error.code === 'ENOENT' ? new StackEntryGone('a cache entry went away while it was read') : error;
    });
    entries.forEach((entry, level) => {
      try {
        this.set(level, openSync(entry.image, 'r'), entry.id);
      } catch (error) {
        throw (error as { code?: string }).code === 'ENOENT' ? new StackEntryGone(`a cache entry went away while it was read (${entry.image})`) : error;
      }
    });
    // Entries are folders renamed into place whole, with a random id: one that still has its id now is the one read.
    for (const entry of entries) if (idOf(entry.dir) !== entry.id) throw new StackEntryGone('a cache entry was made again while it was read');
    if (top.below.join() !== entries.slice(0, -1).map((e) => e.id).join()) throw new StackEntryGone('a cached tree was made over other images than the ones below it');
    const levels: Levels = new Map();
    const outside = new Set<TreeNode>();
    try {
      const { root } = loadTree(text, levels, outside);
      return { level: entries.length - 1, mode, root, levels, outside };
    } catch (error) {
      // Cut short by a power loss (trees are not synced before their entry is committed): the entry goes, and is made again.
      throw new StackEntryGone(`a cached tree cannot be read (${error instanceof Error ? error.message : String(error)})`, { cause: error });
    }
  }

  close(): void {
    for (const fd of this.fds) if (fd !== undefined) closeSync(fd);
    this.fds.length = 0;
  }
}

async function buildLevel(args: BuildStackOptions & { level: number; span: StackLevel; image: string; below: LevelTree | undefined; fds: readonly number[]; mode: Mode }): Promise<LevelTree> {
  const { units, level, span, image, below, phase } = args;
  // The tree below stays as it was (the difference is taken against it): folders are copied, since
  // applying layers changes them in place; everything else is replaced, never changed, so it is shared.
  const tree = new MemTree(below ? cloneFolders(below.root) : undefined);
  await writeFile(image, Buffer.alloc(BLOCK_SIZE), { flag: 'wx' });
  const fd = openSync(image, 'r+');
  try {
    const blocks = new BlockFile(fd);
    for (let i = span.first; i <= span.last; i++) {
      const unit = units[i] as ImageUnit;
      phase(`apply layer ${i + 1}/${units.length} (${unit.kind})`);
      await readLayer(unit, (tar) => tree.applyLayer({ tar, under: cleanComponents(unit.under), blocks }), { hashHere: true });
      tree.emptyDirs(args.emptiesAfter(i));
    }
    phase(below ? `write erofs (${units[span.first]?.kind ?? 'snapshot'} over the images below)` : 'write erofs');
    if (!below) {
      finishErofs(fd, tree.root, blocks);
      return { level, mode: 'whole', root: tree.root, levels: new Map(), outside: new Set() };
    }
    // Which image holds each file's blocks: this one, unless the file came from one below.
    const levels = new Map(below.levels);
    forEachFile(below.root, (node) => {
      if (!levels.has(node)) levels.set(node, below.level);
    });
    const made: LevelTree = { level, mode: below.mode, root: tree.root, levels, outside: below.outside };
    const top = overlayDifference(below.root, tree.root, levels, below.mode === 'part' ? below.outside : undefined);
    // Files of the images below that this image must hold (see the header): their blocks, copied.
    for (const [from, copy] of top.copies) {
      const source = args.fds[levels.get(from) ?? -1];
      if (source === undefined) throw new StackEntryGone('a file of the tree below has no image');
      copy.block = await blocks.writeFile(readBlocks(source, from.block ?? 0, from.size ?? 0), from.size ?? 0, '(a file of the image below)');
    }
    finishErofs(fd, top.root, blocks);
    return made;
  } finally {
    closeSync(fd);
  }
}

async function* readBlocks(fd: number, block: number, size: number): AsyncGenerator<Buffer> {
  let at = 0;
  while (at < size) {
    const chunk = Buffer.allocUnsafe(Math.min(1 << 20, size - at));
    const got = readSync(fd, chunk, 0, chunk.length, block * BLOCK_SIZE + at);
    if (got === 0) throw new StackEntryGone('an image below is shorter than its tree says');
    at += got;
    yield chunk.subarray(0, got);
  }
}

function cloneFolders(node: TreeNode): TreeNode {
  const children = new Map<string, TreeNode>();
  for (const [name, child] of node.children ?? []) children.set(name, child.kind === 'dir' ? cloneFolders(child) : child);
  return { ...node, children };
}

/**
 * What overlayfs must find in an image over `lower` to show `merged`: the
 * folders on the way to every change (with the merged tree's metadata,
 * which overlayfs takes from the topmost image that has a folder), files
 * that are new or whose set of names changed, and a whiteout for every name
 * that went. `copies` are files of the images below to write into this one.
 */
export function overlayDifference(lower: TreeNode, merged: TreeNode, lowerFiles: ReadonlyMap<TreeNode, number>, outside?: ReadonlySet<TreeNode>): { root: TreeNode; copies: Map<TreeNode, TreeNode> } {
  const lowerNames = namesOfLinked(lower, outside);
  const mergedNames = namesOfLinked(merged, outside);
  // In a part of a tree, a file with names outside it that lost or gained a name would need them all written.
  for (const node of outside ?? []) {
    if (lowerNames.get(node)?.join('\0') !== mergedNames.get(node)?.join('\0')) throw new NeedWholeTree('a file with names outside the home changed');
  }
  const copies = new Map<TreeNode, TreeNode>();
  const placed = new Map<TreeNode, TreeNode>();

  const moved = (node: TreeNode): boolean => {
    const before = lowerNames.get(node);
    const after = mergedNames.get(node);
    if (before === undefined && after === undefined) return false;
    return before?.join('\0') !== after?.join('\0');
  };
  const place = (node: TreeNode, path: string): TreeNode => {
    let copy = placed.get(node);
    if (!copy) {
      checkStackable(node, path);
      if (lowerFiles.has(node)) {
        copy = { ...node };
        if (node.kind === 'file' && (node.size ?? 0) > 0) copies.set(node, copy);
      } else copy = node;
      placed.set(node, copy);
    }
    return copy;
  };
  const walk = (below: TreeNode | undefined, above: TreeNode, path: string): TreeNode | undefined => {
    const children = new Map<string, TreeNode>();
    for (const [name, child] of above.children ?? []) {
      const under = below?.children?.get(name);
      const at = `${path}/${name}`;
      if (child.kind === 'dir') {
        const inner = walk(under?.kind === 'dir' ? under : undefined, child, at);
        if (!inner) continue;
        // A folder over a file of the image below: overlayfs would ignore the file anyway; the marker says so.
        if (under && under.kind !== 'dir') inner.xattrs = new Map([...(inner.xattrs ?? []), [OPAQUE_XATTR, Buffer.from('y')]]);
        children.set(name, inner);
        continue;
      }
      if (under === child && !moved(child)) continue;
      children.set(name, place(child, at));
    }
    for (const name of below?.children?.keys() ?? []) if (!above.children?.has(name)) children.set(name, WHITEOUT);
    if (below && children.size === 0 && sameMetadata(below, above)) return undefined;
    checkStackable(above, path || '/');
    const { children: _, ...metadata } = above;
    return { ...metadata, children };
  };
  const root = walk(lower, merged, '') ?? { ...merged, children: new Map() };
  return { root, copies };
}

/** For every file reached by more than one name (and every one of `keep`), its names, sorted. */
function namesOfLinked(root: TreeNode, keep?: ReadonlySet<TreeNode>): Map<TreeNode, string[]> {
  const counts = new Map<TreeNode, number>();
  countNames(root, counts);
  const names = new Map<TreeNode, string[]>();
  for (const [node, count] of counts) if (count > 1 || keep?.has(node)) names.set(node, []);
  if (names.size === 0) return names;
  const walk = (dir: TreeNode, path: string): void => {
    for (const [name, child] of dir.children ?? []) {
      if (child.kind === 'dir') walk(child, `${path}/${name}`);
      else names.get(child)?.push(`${path}/${name}`);
    }
  };
  walk(root, '');
  for (const list of names.values()) list.sort();
  return names;
}

function sameMetadata(a: TreeNode, b: TreeNode): boolean {
  if (a.mode !== b.mode || a.uid !== b.uid || a.gid !== b.gid || a.mtime !== b.mtime || a.mtimeNs !== b.mtimeNs) return false;
  const x = a.xattrs ?? new Map<string, Buffer>();
  const y = b.xattrs ?? new Map<string, Buffer>();
  if (x.size !== y.size) return false;
  for (const [name, value] of x) if (!y.get(name)?.equals(value)) return false;
  return true;
}

/** What overlayfs would read as its own markers cannot sit in an image over another. */
function checkStackable(node: TreeNode, path: string): void {
  if (node.kind === 'char' && node.major === 0 && node.minor === 0) throw new NotStackable(`${path} is a character device 0:0, which overlayfs reads as a whiteout`);
  for (const name of node.xattrs?.keys() ?? []) {
    if (name.startsWith('trusted.overlay.')) throw new NotStackable(`${path} has the extended attribute ${name}, which overlayfs reads as its own`);
  }
}
