import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, createWriteStream } from 'node:fs';
import { appendFile, chmod, lstat, mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { hostEntries, packEntries, unescapeAttrPath } from '../layers/pack.js';
import { cleanComponents, RootResolver } from '../layers/safe-path.js';
import { openImageContext, pullImage, userReference, type ImageContext } from '../oci/image.js';
import type { Descriptor } from '../oci/manifest.js';
import type { ContentStore } from '../oci/store.js';
import { formatReference } from '../oci/reference.js';
import { CsError, ExitCode, InputError } from '../util/errors.js';
import { dataDir, type Env } from '../util/paths.js';
import { run } from '../util/process.js';
import { CACHE_FOLDERS, TreeCache } from './cache.js';
import { buildWithOwners, escapeAttrPath, readDeferred, withOwners, type Deferred } from './owners.js';
import { chainIds } from './chain.js';
import { buildErofsImage, linkOrCopy } from './erofs-build.js';
import { buildErofsStack, NotStackable, StackEntryGone, type BuiltStack, type StackLevel } from './erofs-stack.js';
import { readImageLayers, unpackLayer } from './unpack.js';

/**
 * Assembling a chain of snapshots (base, then home, then personal) into one
 * root filesystem, as a folder, a tar, an erofs image or an ext4 image.
 *
 * Each layer is an "apply unit": where it lands (the root for a base
 * snapshot, the owner's home for home and personal ones) and its diff_id.
 * Chain ids over those units key a cache of finished trees, so when only the
 * top snapshot changes, only its layers are applied again.
 */

export type SnapshotKind = 'base' | 'home' | 'personal';
export type OutputFormat = 'dir' | 'tar' | 'erofs' | 'ext4';

export interface AssembleSnapshot {
  /** An image reference (local store name or registry reference). */
  reference: string;
  kind: SnapshotKind;
  /** The store holding it (a personal snapshot's private store); default the common one, pulling when absent. */
  store?: ContentStore;
}

export interface AssembleOptions {
  snapshots: readonly AssembleSnapshot[];
  /**
   * Where to write. A function gets the chain id: that is how shared images
   * are named by content (`images/CHAIN.erofs`); such an output is written
   * under a temporary name and renamed into place, and an existing one is
   * reused as it is. With `stack`, it is called for each image of the stack
   * (the chain id up to that snapshot), and a string is a folder to fill.
   */
  out: string | ((chainId: string, level?: StackedImage) => string);
  format: OutputFormat;
  /**
   * erofs only: one image per snapshot, to be stacked by overlayfs, instead
   * of one self-contained image (see erofs-stack.ts). Images are hardlinks
   * of the cache's, so a warm build writes only the snapshots that changed.
   */
  stack?: boolean;
  /** Replace `out` if it exists. */
  force?: boolean;
  /**
   * A folder only this user can read. Trees cached after a layer from a
   * private store (a personal snapshot) are kept here instead of in the
   * shared cache; write `out` under it too.
   */
  privateDir?: string;
  /** The owner's home inside the root (home and personal snapshots land here). */
  home?: string;
  env?: Env;
  context?: ImageContext;
  onPhase?: (phase: string) => void;
}

/** One image of a stack, as the `out` function is told of it. */
export interface StackedImage {
  /** 0 for the base snapshot's, then one per later snapshot. */
  index: number;
  kind: SnapshotKind;
  /** Made from a private store (a personal snapshot's): keep it where only the user can read. */
  private: boolean;
}

export interface AssembleResult {
  out: string;
  /** With `stack`: the images, the top one first (overlayfs's order for lowerdir). */
  lowers?: string[];
  format: OutputFormat;
  chainId: string;
  layers: number;
  /** Layers applied in this run (0 when the whole chain was cached). */
  layersApplied: number;
  cachedLayers: number;
  bytes: number;
}

/**
 * What a base snapshot never carries: runtime and kernel-provided folders.
 * The folders stay (empty) as mount points; their contents go.
 */
export const RUNTIME_DIRS = ['proc', 'sys', 'dev', 'run', 'tmp'] as const;

const DEFAULT_HOME = '/home/owner';

interface Unit {
  store: ContentStore;
  /** From a private store: this tree and every later one are private. */
  private: boolean;
  layer: Descriptor;
  diffId: string;
  kind: SnapshotKind;
  /** Where it applies, relative to the root ('' for the root). */
  under: string;
  /** Last layer of its snapshot: a checkpoint worth caching. */
  boundary: boolean;
}

export async function assemble(options: AssembleOptions): Promise<AssembleResult> {
  const phase = options.onPhase ?? (() => undefined);
  if (options.snapshots.length === 0) throw new InputError('nothing to assemble: give at least a base snapshot');
  if (options.snapshots[0]?.kind !== 'base') throw new InputError('the first snapshot must be a base snapshot');
  if (options.stack && options.format !== 'erofs') throw new InputError('only erofs images can be stacked (--stack goes with --format erofs)');
  const home = (options.home ?? DEFAULT_HOME).replace(/^\/+|\/+$/g, '');
  // Fix: stat() follows symlinks, so an --out that was a dangling symlink
  // counted as absent (even with --force) and the write failed at the very end
  // with a raw ENOENT/EEXIST, reported as an internal error (exit 1).
  const shared = typeof options.out === 'function';
  const fixedOut = typeof options.out === 'string' ? options.out : undefined;
  const outInfo = fixedOut === undefined ? undefined : await lstat(fixedOut).catch(() => undefined);
  if (outInfo && !options.force) throw new InputError(`${fixedOut} already exists; use --force to replace it`);
  // Fix: an --out in a folder that did not exist failed only after the whole
  // build, with a raw ENOENT for tar (exit 1) and mkfs's usage text for erofs
  // and ext4 (exit 5), while `dir` created its missing parents. Create them
  // for every format, before the build, and say plainly when that fails.
  if (fixedOut !== undefined) {
    await mkdir(dirname(fixedOut), { recursive: true }).catch((error: Error) => {
      throw new InputError(`cannot create the folder of ${fixedOut}: ${error.message}`, { cause: error });
    });
  }

  const context = options.context ?? (await openImageContext(options.env ? { env: options.env } : {}));
  const units: Unit[] = [];
  let sawPrivate = false;
  for (const snapshot of options.snapshots) {
    const name = formatReference(userReference(snapshot.reference));
    const store = snapshot.store ?? context.store;
    if (snapshot.store) {
      if (!options.privateDir) throw new InputError(`${name} comes from a private store; assembling it needs a private folder`);
      sawPrivate = true;
    }
    let descriptor = await store.resolveTag(name);
    if (!descriptor && snapshot.store) throw new InputError(`image ${name} is not in its store`);
    if (!descriptor) {
      phase(`pull ${name}`);
      await pullImage({ reference: name, context });
      descriptor = await context.store.resolveTag(name);
    }
    if (!descriptor) throw new InputError(`image ${name} is not in the local store`);
    const { manifest, diffIds } = await readImageLayers(store, descriptor, name);
    const isPrivate = sawPrivate;
    manifest.layers.forEach((layer, i) => {
      units.push({ store, private: isPrivate, layer, diffId: diffIds[i] ?? '', kind: snapshot.kind, under: snapshot.kind === 'base' ? '' : home, boundary: i === manifest.layers.length - 1 });
    });
  }
  if (units.length === 0) throw new InputError('the snapshots have no layers');

  // Fix: the runtime folders are emptied after the last base layer, but the
  // key did not say so: a tree cached for base image [L1] (emptied) was reused
  // as the start of base image [L1, L2] (where L2 still sees L1's /tmp), so the
  // result depended on what had been assembled before (a hardlink in L2 to a
  // file of L1's /tmp failed only with a warm cache). Emptying is keyed as a
  // step of its own, as if it were a layer.
  const ids: string[] = [];
  const keyAt: number[] = [];
  units.forEach((u, i) => {
    ids.push(u.under === '' ? u.diffId : `sha256:${createHash('sha256').update(`${u.diffId} under /${u.under}`).digest('hex')}`);
    if (emptiesRuntime(units, i)) ids.push(RUNTIME_EMPTIED);
    keyAt.push(ids.length - 1);
  });
  const chain = chainIds(ids);
  const keys = keyAt.map((j) => chain[j] as string);
  const finalChain = keys[keys.length - 1] as string;
  if (options.stack) return assembleStack(options, units, keys, home, outInfo !== undefined, phase);
  const out = typeof options.out === 'string' ? options.out : options.out(finalChain);
  if (shared && existsSync(out)) {
    return { out, format: options.format, chainId: finalChain, layers: units.length, layersApplied: 0, cachedLayers: units.length, bytes: (await stat(out)).size };
  }
  if (options.format === 'erofs') return assembleImage(options, units, keys, out, outInfo !== undefined, phase);
  const sharedCache = new TreeCache(join(dataDir(options.env), CACHE_FOLDERS[0]));
  const privateCache = options.privateDir ? new TreeCache(join(options.privateDir, CACHE_FOLDERS[0])) : sharedCache;
  await sharedCache.prune();
  if (privateCache !== sharedCache) await privateCache.prune();
  // The tree after unit i lives in the private cache from the first private unit on.
  const cacheAt = (i: number): TreeCache => (units[i]?.private ? privateCache : sharedCache);
  const cache = cacheAt(units.length - 1);

  let cached = -1;
  for (let i = keys.length - 1; i >= 0; i--) {
    if (await cacheAt(i).has(keys[i] as string)) {
      cached = i;
      break;
    }
  }
  let layersApplied = 0;
  // Fix: only a partial hit (cloneInto) refreshed an entry's last use, so a
  // chain that was always found whole in the cache aged as if unused and was
  // the first evicted, however often it was assembled.
  if (cached === keys.length - 1) await cache.touch(finalChain);
  if (cached < keys.length - 1) {
    const work = await cache.workDir();
    const tree = join(work, 'rootfs');
    try {
      if (cached >= 0) {
        phase('reuse cached layers');
        await cacheAt(cached).cloneInto(keys[cached] as string, work);
      }
      const privileged = process.getuid?.() === 0;
      // Paths that have a record (from cached layers too): a later layer that gives one back to root must say so.
      const recorded = new Set<string>();
      if (!privileged) {
        for (const line of (await readFile(join(work, 'deferred.jsonl'), 'utf8').catch(() => '')).split('\n')) {
          const path = /^\{"path":("(?:[^"\\]|\\.)*")/.exec(line)?.[1];
          if (path) recorded.add(JSON.parse(path) as string);
        }
      }
      for (let i = cached + 1; i < units.length; i++) {
        const unit = units[i] as Unit;
        phase(`apply layer ${i + 1}/${units.length} (${unit.kind})`);
        // Where a home snapshot lands is resolved inside the tree as if chrooted:
        // a base layer may have made /home a symlink, even one pointing outside.
        const under = unit.under === '' ? '' : new RootResolver(tree).resolveDir(cleanComponents(unit.under), 0o755);
        if (under === undefined) throw new InputError(`cannot create /${unit.under} in the root filesystem`);
        const root = under === '' ? tree : join(tree, under);
        const deferred: Deferred[] = [];
        const batch = new LayerXattrs(tree, under);
        await unpackLayer({
          store: unit.store,
          layer: unit.layer,
          diffId: unit.diffId,
          root,
          privileged,
          reportRootOwners: !privileged,
          onDeferred: (d) => {
            const path = under ? `${under}/${d.path}` : d.path;
            if (d.uid === 0 && d.gid === 0 && !d.device && !d.xattrs && !recorded.has(path)) return;
            recorded.add(path);
            // The inode it is for: a later layer that replaces the path must not inherit it (see owners.ts).
            // Folders are told by their type instead: a cached tree's copy (`cp -al`) links files but makes new folders.
            const info = (() => {
              try {
                return lstatSync(join(tree, path));
              } catch {
                return undefined;
              }
            })();
            deferred.push({ ...d, path, layer: i, ...(info?.isDirectory() ? { dir: true } : info ? { ino: info.ino } : {}) });
          },
          onXattrs: (path, values) => batch.set(path, values),
          onDirectoryKept: (path, values) => batch.kept(path, values),
        });
        layersApplied++;
        await batch.apply();
        if (emptiesRuntime(units, i)) await clearRuntimeDirs(tree);
        if (deferred.length > 0) await appendFile(join(work, 'deferred.jsonl'), deferred.map((d) => JSON.stringify(d)).join('\n') + '\n');
        if (unit.boundary && i < units.length - 1) await cacheAt(i).commitCopy(keys[i] as string, work);
      }
      await cache.commit(finalChain, work);
    } catch (error) {
      await rm(work, { recursive: true, force: true });
      throw error;
    }
  }

  const tree = cache.treePath(finalChain);
  phase(`write ${options.format}`);
  if (!shared) {
    if (outInfo) await rm(out, { recursive: true, force: true });
    const bytes = await writeOutput(tree, out, options.format, phase);
    // A root with a personal snapshot in it is as private as the snapshot, wherever it is written.
    if (units.some((u) => u.private)) await chmod(out, options.format === 'dir' ? 0o700 : 0o600);
    return { out, format: options.format, chainId: finalChain, layers: units.length, layersApplied, cachedLayers: cached + 1, bytes };
  }
  await mkdir(dirname(out), { recursive: true });
  const temp = `${out}.tmp-${process.pid}-${Date.now()}`;
  let bytes: number;
  try {
    bytes = await writeOutput(tree, temp, options.format, phase);
    await rename(temp, out);
  } catch (error) {
    await rm(temp, { recursive: true, force: true });
    throw error;
  }
  return { out, format: options.format, chainId: finalChain, layers: units.length, layersApplied, cachedLayers: cached + 1, bytes };
}

/**
 * An EROFS image, built straight from the layers (erofs-build.ts), with its
 * own cache of trees beside the folder cache, under a temporary name and
 * renamed into place.
 */
async function assembleImage(options: AssembleOptions, units: readonly Unit[], keys: readonly string[], out: string, replace: boolean, phase: (phase: string) => void): Promise<AssembleResult> {
  const shared = typeof options.out === 'function';
  const sharedCache = new TreeCache(join(dataDir(options.env), CACHE_FOLDERS[1]));
  const privateCache = options.privateDir ? new TreeCache(join(options.privateDir, CACHE_FOLDERS[1])) : sharedCache;
  await sharedCache.prune();
  if (privateCache !== sharedCache) await privateCache.prune();
  // Built under a temporary name beside `out` and renamed into place: a failed
  // build leaves no half image, and an old `out` (--force) is replaced only by a finished one.
  const target = `${out}.tmp-${process.pid}-${Date.now()}`;
  await mkdir(dirname(out), { recursive: true });
  try {
    const built = await buildErofsImage({
      units,
      keys,
      cacheAt: (i) => (units[i]?.private ? privateCache : sharedCache),
      emptiesAfter: (i) => (emptiesRuntime(units, i) ? RUNTIME_DIRS : []),
      out: target,
      share: shared,
      phase,
    });
    if (!shared && units.some((u) => u.private)) await chmod(target, 0o600);
    // A shared image is named by its chain and reused as it is once there: it must be on disk before it has that name.
    if (shared) await syncFile(target);
    // A folder cannot be renamed over; anything else at `out` can.
    if (replace && (await lstat(out).catch(() => undefined))?.isDirectory()) await rm(out, { recursive: true, force: true });
    await rename(target, out);
    return { out, format: 'erofs', chainId: keys[keys.length - 1] as string, layers: units.length, layersApplied: built.layersApplied, cachedLayers: built.cachedLayers, bytes: built.bytes };
  } catch (error) {
    await rm(target, { force: true });
    throw error;
  }
}

/**
 * A stack of EROFS images (erofs-stack.ts), hardlinked from the cache: into
 * the folder `out` as `0-base.erofs`, `1-home.erofs`..., or each under the
 * name the `out` function gives (reused when already there).
 */
async function assembleStack(options: AssembleOptions, units: readonly Unit[], keys: readonly string[], home: string, replace: boolean, phase: (phase: string) => void): Promise<AssembleResult> {
  const sharedCache = new TreeCache(join(dataDir(options.env), CACHE_FOLDERS[2]));
  const privateCache = options.privateDir ? new TreeCache(join(options.privateDir, CACHE_FOLDERS[2])) : sharedCache;
  await sharedCache.prune();
  if (privateCache !== sharedCache) await privateCache.prune();
  const levels: StackLevel[] = [];
  units.forEach((unit, i) => {
    if (i === 0 || units[i - 1]?.boundary) levels.push({ first: i, last: i });
    (levels[levels.length - 1] as StackLevel).last = i;
  });
  const described = levels.map((level, index): StackedImage => ({ index, kind: (units[level.first] as Unit).kind, private: (units[level.last] as Unit).private }));
  const stackOptions = {
    units,
    keys,
    levels,
    cacheAt: (level: number) => ((described[level] as StackedImage).private ? privateCache : sharedCache),
    emptiesAfter: (i: number) => (emptiesRuntime(units, i) ? RUNTIME_DIRS : []),
    home: cleanComponents(home),
    isPrivate: (level: number) => (described[level] as StackedImage).private,
    phase,
  };
  // Images named by their chains (a function `out`) that are all there already are used as they are
  // (their cache entries may be long gone).
  const name = options.out;
  const named = typeof name === 'function' ? levels.map((level, i) => name(keys[level.last] as string, described[i])) : undefined;
  if (named?.every((file) => existsSync(file))) return stackResult(named, named[named.length - 1] as string, units, keys, { layersApplied: 0, cachedLayers: units.length });
  // A cache entry taken by another process's eviction while this one read or linked it, or one cut short by a
  // power loss: once more, without the cache (which replaces the entries).
  for (let attempt = 0; ; attempt++) {
    try {
      return await placeStack(options, await buildErofsStack(stackOptions, attempt === 0), described, named, units, keys, replace);
    } catch (error) {
      if (error instanceof StackEntryGone && attempt === 0) continue;
      if (error instanceof StackEntryGone) {
        throw new CsError(`the image cache (${sharedCache.root}) kept changing while this build read it: ${error.message}`, { code: 'CACHE_CHANGED', exitCode: ExitCode.external, suggestions: ['run the command again; if it keeps failing, remove that folder (it is only a cache)'] });
      }
      if (error instanceof NotStackable) throw new InputError(`these snapshots cannot be given as a stack of images: ${error.message}; assemble them without --stack`, { cause: error });
      throw error;
    }
  }
}

/** What an assembly of a stack returns: `files` base first, reported top first. */
async function stackResult(files: readonly string[], out: string, units: readonly Unit[], keys: readonly string[], counts: { layersApplied: number; cachedLayers: number }): Promise<AssembleResult> {
  return { out, lowers: [...files].reverse(), format: 'erofs', chainId: keys[keys.length - 1] as string, layers: units.length, ...counts, bytes: await totalSize(files) };
}

/** The built stack at `out` (a folder), or at `named` (the names a function `out` gave): hardlinks of the cache's images. */
async function placeStack(options: AssembleOptions, built: BuiltStack, described: readonly StackedImage[], named: readonly string[] | undefined, units: readonly Unit[], keys: readonly string[], replace: boolean): Promise<AssembleResult> {
  const counts = { layersApplied: built.layersApplied, cachedLayers: built.cachedLayers };
  const link = (from: string, to: string): Promise<void> =>
    linkOrCopy(from, to).catch((error: { code?: string }) => {
      throw error.code === 'ENOENT' && !existsSync(from) ? new StackEntryGone(`a cached image went away before it was linked (${from})`) : error;
    });
  if (!named) {
    const folder = options.out as string;
    const temp = `${folder}.tmp-${process.pid}-${Date.now()}`;
    try {
      await mkdir(temp, { mode: units.some((u) => u.private) ? 0o700 : 0o755 });
      const names = described.map((level) => `${level.index}-${level.kind}.erofs`);
      for (const [i, image] of built.images.entries()) await link(image, join(temp, names[i] as string));
      if (replace) await rm(folder, { recursive: true, force: true });
      await rename(temp, folder);
      return await stackResult(names.map((name) => join(folder, name)), folder, units, keys, counts);
    } catch (error) {
      await rm(temp, { recursive: true, force: true });
      throw error;
    }
  }
  for (const [i, image] of built.images.entries()) {
    const file = named[i] as string;
    if (existsSync(file)) continue;
    await mkdir(dirname(file), { recursive: true });
    const temp = `${file}.tmp-${process.pid}-${Date.now()}`;
    try {
      await link(image, temp);
      // Named by its chain and reused as it is once there: it must be on disk before it has that name.
      await syncFile(temp);
      await rename(temp, file);
    } catch (error) {
      await rm(temp, { force: true });
      throw error;
    }
  }
  return stackResult(named, named[named.length - 1] as string, units, keys, counts);
}

async function totalSize(files: readonly string[]): Promise<number> {
  let bytes = 0;
  for (const file of files) bytes += (await stat(file)).size;
  return bytes;
}

async function syncFile(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.datasync();
  } finally {
    await handle.close();
  }
}

/**
 * The xattrs one layer asks for, applied after it (setfattr runs once per
 * layer, not per entry). Each path is remembered with its inode: a later
 * entry of the layer may replace it. `under` is where the layer lands in the
 * tree (a home snapshot's folder), since the applier reports paths relative
 * to that.
 */
export class LayerXattrs {
  private readonly toSet: { path: string; xattrs: Record<string, string>; ino: number }[] = [];
  private readonly toKeep: { path: string; keep: Set<string>; ino: number }[] = [];

  constructor(
    private readonly tree: string,
    private readonly under = '',
  ) {}

  private full(path: string): string {
    return this.under ? `${this.under}/${path}` : path;
  }

  set(path: string, xattrs: Record<string, string>): void {
    const full = this.full(path);
    this.toSet.push({ path: full, xattrs, ino: lstatSync(join(this.tree, full)).ino });
  }

  /** A re-declared folder: the last declaration in a layer says what it holds, so what an earlier one asked to set is dropped. */
  kept(path: string, xattrs: Record<string, string>): void {
    const full = this.full(path);
    for (let j = this.toSet.length - 1; j >= 0; j--) if (this.toSet[j]?.path === full) this.toSet.splice(j, 1);
    this.toKeep.push({ path: full, keep: new Set(Object.keys(xattrs)), ino: lstatSync(join(this.tree, full)).ino });
  }

  async apply(): Promise<void> {
    if (this.toKeep.length > 0) await clearUndeclaredXattrs(this.tree, this.toKeep);
    if (this.toSet.length > 0) await applyXattrs(this.tree, this.toSet);
  }
}

/** The pseudo diff_id of "the runtime folders were emptied" in cache keys. */
const RUNTIME_EMPTIED = `sha256:${createHash('sha256').update(`cs: emptied /${RUNTIME_DIRS.join(' /')}`).digest('hex')}`;

/** Whether the runtime folders are emptied after unit `i`: it ends a run of base layers. */
function emptiesRuntime(units: readonly Unit[], i: number): boolean {
  return units[i]?.kind === 'base' && (units[i + 1]?.kind ?? 'end') !== 'base';
}

/** Empty the runtime folders of a base root. A runtime folder that is a symlink is left alone, never followed. */
async function clearRuntimeDirs(root: string): Promise<void> {
  for (const dir of RUNTIME_DIRS) {
    const path = join(root, dir);
    const info = await lstat(path).catch(() => undefined);
    if (!info?.isDirectory()) continue;
    // rm removes a symlink child itself, never what it points at.
    for (const name of await readdir(path)) await rm(join(path, name), { recursive: true, force: true });
  }
}

/**
 * Set extended attributes with one `setfattr --restore` run per layer. Only
 * paths whose folders are still real directories inside the root are
 * included, and `-h` keeps setfattr from following a final symlink, so a
 * later entry that planted a symlink cannot redirect the write.
 */
async function applyXattrs(root: string, entries: readonly { path: string; xattrs: Record<string, string>; ino: number }[]): Promise<void> {
  const resolver = new RootResolver(root);
  const lines: string[] = [];
  for (const entry of entries) {
    const parts = entry.path.split('/');
    if (!resolver.isRealDir(parts.slice(0, -1).join('/'))) continue;
    // Fix: a file with xattrs replaced later in the same layer by a symlink
    // (`f` with SCHILY.xattr.user.x, then `f -> /elsewhere`) made the whole
    // assemble fail: `setfattr -h` cannot set user.* xattrs on a symlink
    // (EPERM), and one failing line fails the --restore run. The xattrs
    // belonged to the replaced file; skip a path that is now a symlink or gone.
    const now = await lstat(join(root, entry.path)).catch(() => undefined);
    if (!now || now.isSymbolicLink()) continue;
    // The path now names another file (replaced later in the layer): these xattrs were not for it.
    if (now.ino !== entry.ino) continue;
    lines.push(`# file: ${escapeAttrPath(entry.path)}`);
    for (const [name, value] of Object.entries(entry.xattrs)) {
      if (!/^[A-Za-z0-9._-]+$/.test(name)) continue;
      lines.push(`${name}=0s${Buffer.from(value, 'latin1').toString('base64')}`);
    }
    lines.push('');
  }
  if (lines.length === 0) return;
  const dump = join(root, '..', 'xattrs.dump');
  await writeFile(dump, lines.join('\n'));
  try {
    await run('setfattr', ['-h', `--restore=${dump}`], { cwd: root });
  } finally {
    await rm(dump, { force: true });
  }
}

/**
 * A directory a layer re-declares keeps its inode, and with it the xattrs of
 * the lower layer: those the new entry does not declare are removed (as
 * umoci does), so the result is what the layers say. One getfattr run lists
 * what the kept directories hold; the rare removals are one setfattr each.
 * security.selinux is the kernel's label, not the image's: left alone.
 */
async function clearUndeclaredXattrs(root: string, dirs: readonly { path: string; keep: Set<string>; ino: number }[]): Promise<void> {
  const resolver = new RootResolver(root);
  const byPath = new Map<string, Set<string>>();
  for (const dir of dirs) {
    if (!resolver.isRealDir(dir.path)) continue;
    const now = await lstat(join(root, dir.path)).catch(() => undefined);
    if (now?.ino === dir.ino) byPath.set(dir.path, dir.keep);
  }
  if (byPath.size === 0) return;
  // In batches: a layer can re-declare tens of thousands of folders, more than one command line holds.
  const paths = [...byPath.keys()];
  let stdout = '';
  for (let i = 0; i < paths.length; i += 1000) {
    const listing = await run('getfattr', ['-h', '-m', '-', '--absolute-names', '--', ...paths.slice(i, i + 1000).map((p) => `./${p}`)], { cwd: root, okExitCodes: [0, 1] });
    stdout += `${listing.stdout}\n`;
  }
  let current: string | undefined;
  for (const line of stdout.split('\n')) {
    if (line.startsWith('# file: ')) {
      current = unescapeAttrPath(line.slice('# file: '.length)).replace(/^\.\//, '');
      continue;
    }
    const name = line.split('=')[0] ?? '';
    if (!current || name === '' || name === 'security.selinux') continue;
    const keep = byPath.get(current);
    if (keep && !keep.has(name)) await run('setfattr', ['-h', '-x', name, '--', `./${current}`], { cwd: root });
  }
}

/** The output in its format; an unprivileged run's records applied as it is built (see owners.ts). */
async function writeOutput(tree: string, out: string, format: Exclude<OutputFormat, 'erofs'>, onPhase: (phase: string) => void = () => undefined): Promise<number> {
  const entryDir = dirname(tree);
  const privileged = process.getuid?.() === 0;
  switch (format) {
    case 'dir': {
      // A real copy: the cached tree must not share inodes with a folder the user may edit.
      await mkdir(out, { recursive: true });
      await run('cp', ['-a', '--reflink=auto', '--', `${tree}/.`, out]);
      if (!privileged) {
        // A folder cannot hold other users' files without root: what it should hold is written beside it.
        const deferred = await readDeferred(entryDir, tree);
        await rm(`${out}.owners.jsonl`, { force: true });
        if (deferred.size > 0) {
          // One line per path, as it stands after every layer (the cache's inodes mean nothing beside a copy).
          const lines = [...deferred.values()].map(({ ino: _ino, layer: _layer, dir: _dir, ...rest }) => JSON.stringify(rest));
          await writeFile(`${out}.owners.jsonl`, lines.join('\n') + '\n', { mode: 0o600 });
          onPhase(`owners, devices and xattrs that need root are listed in ${out}.owners.jsonl (every other file is root's in the image)`);
        }
      }
      return 0;
    }
    case 'tar': {
      const entries = hostEntries(tree, { xattrs: true });
      const source = privileged ? entries : withOwners(entries, await readDeferred(entryDir, tree));
      await pipeline(packEntries(source), createWriteStream(out, { flags: 'wx' }));
      return (await stat(out)).size;
    }
    case 'ext4': {
      // Fix: the size came from `du -sb` (apparent bytes) and the inode count
      // from mke2fs's default ratio, so a tree of many small files (a home
      // with node_modules, 20k files of a few bytes) ran out of inodes or
      // blocks: "Could not allocate inode". Count inodes and whole blocks.
      const { inodes, bytes } = measureTree(tree);
      const inodeCount = Math.ceil(inodes * 1.1) + 1024;
      const size = Math.ceil((bytes * 1.3 + inodeCount * 256 + 64 * 1024 * 1024) / (1024 * 1024));
      await buildWithOwners(tree, entryDir, ['mke2fs', '-q', '-t', 'ext4', '-F', '-N', String(inodeCount), '-d', tree, out, `${size}M`]);
      return (await stat(out)).size;
    }
  }
}

/** What a tree needs in an ext4 image: one inode per entry (hardlinks once), and whole 4 KiB blocks per file, folder and long symlink. */
function measureTree(root: string): { inodes: number; bytes: number } {
  const BLOCK = 4096;
  const seen = new Set<string>();
  let inodes = 1;
  let bytes = BLOCK;
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      const info = lstatSync(path);
      if (!info.isDirectory() && info.nlink > 1) {
        const id = `${info.dev}:${info.ino}`;
        if (seen.has(id)) continue;
        seen.add(id);
      }
      inodes++;
      if (info.isFile() || info.isDirectory() || (info.isSymbolicLink() && info.size >= 60)) bytes += Math.ceil(info.size / BLOCK) * BLOCK;
      if (info.isDirectory()) walk(path);
    }
  };
  walk(root);
  return { inodes, bytes };
}
