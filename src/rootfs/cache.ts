import { randomBytes } from 'node:crypto';
import { copyFile, lstat, mkdir, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { exists } from '../util/fs.js';
import { isAlive } from '../util/lock.js';
import { run } from '../util/process.js';

/**
 * The assembled-tree cache: `trees/HEX/rootfs/` is the root filesystem after
 * the layers whose chain id is `sha256:HEX`; beside it, `complete` marks the
 * entry finished and `deferred.jsonl` holds metadata that could not be
 * applied without privilege. cs's own files never live inside the tree, where
 * a layer could have planted a symlink in their place. An entry is built under
 * `tmp/` and renamed into `trees/` only when complete, so a crash never leaves
 * one that looks finished. The cache keeps at most `maxTrees` entries,
 * dropping the least recently used.
 *
 * Trees are shared with later builds by hardlinks (`cp -al`): the layer
 * applier never changes a file in place (it replaces it), so a build on top
 * of a cached tree never changes the cached tree.
 */

export const DEFAULT_MAX_TREES = 8;

export class TreeCache {
  constructor(
    readonly root: string,
    readonly maxTrees = DEFAULT_MAX_TREES,
  ) {}

  entryPath(chainId: string): string {
    return join(this.root, 'trees', chainId.replace(/^sha256:/, ''));
  }

  /** The root filesystem of a cached entry. */
  treePath(chainId: string): string {
    return join(this.entryPath(chainId), 'rootfs');
  }

  async has(chainId: string): Promise<boolean> {
    return exists(join(this.entryPath(chainId), 'complete'));
  }

  /** A fresh entry to build in: its tree is `WORK/rootfs` (removed by prune if its builder dies). */
  async workDir(): Promise<string> {
    const dir = join(this.root, 'tmp', `${process.pid}.${randomBytes(6).toString('hex')}`);
    await mkdir(join(dir, 'rootfs'), { recursive: true, mode: 0o755 });
    return dir;
  }

  /** Hardlink-copy a cached entry into a fresh work entry. */
  async cloneInto(chainId: string, work: string): Promise<void> {
    await run('cp', ['-al', '--', `${this.treePath(chainId)}/.`, join(work, 'rootfs')]);
    await copyDeferred(this.entryPath(chainId), work);
    await this.touch(chainId);
  }

  /** Make a work entry the cached entry for `chainId`; `work` is consumed. */
  async commit(chainId: string, work: string): Promise<void> {
    await writeFile(join(work, 'complete'), `${chainId}\n`);
    await mkdir(join(this.root, 'trees'), { recursive: true });
    try {
      await rename(work, this.entryPath(chainId));
    } catch (error) {
      // Someone else committed the same chain first: theirs is as good as ours.
      await rm(work, { recursive: true, force: true });
      if (!(await this.has(chainId))) throw error;
    }
    await this.evict();
  }

  /** Keep a copy of an entry that is still being built on (hardlinks, cheap). */
  async commitCopy(chainId: string, work: string): Promise<void> {
    if (await this.has(chainId)) return;
    const copy = await this.workDir();
    await run('cp', ['-al', '--', `${join(work, 'rootfs')}/.`, join(copy, 'rootfs')]);
    await copyDeferred(work, copy);
    await this.commit(chainId, copy);
  }

  /** Mark an entry as just used (eviction drops the least recently used). Public so a whole-chain hit counts as a use. */
  async touch(chainId: string): Promise<void> {
    const now = new Date();
    await utimes(join(this.entryPath(chainId), 'complete'), now, now).catch(() => undefined);
  }

  async list(): Promise<{ chainId: string; lastUsed: number }[]> {
    const dir = join(this.root, 'trees');
    const names = await readdir(dir).catch(() => [] as string[]);
    const out: { chainId: string; lastUsed: number }[] = [];
    for (const name of names) {
      const info = await stat(join(dir, name, 'complete')).catch(() => undefined);
      if (info) out.push({ chainId: `sha256:${name}`, lastUsed: info.mtimeMs });
    }
    return out;
  }

  private async evict(): Promise<void> {
    const trees = (await this.list()).sort((a, b) => b.lastUsed - a.lastUsed);
    for (const old of trees.slice(this.maxTrees)) await this.remove(old.chainId);
  }

  async remove(chainId: string): Promise<void> {
    // Rename out of trees/ first, so a half-removed tree never looks cached.
    const doomed = join(this.root, 'tmp', `doomed.${randomBytes(6).toString('hex')}`);
    await mkdir(join(this.root, 'tmp'), { recursive: true });
    await rename(this.entryPath(chainId), doomed).catch(() => undefined);
    await rm(doomed, { recursive: true, force: true });
  }

  /** Remove every cached tree and the leftovers of dead builders. */
  async prune(options: { all?: boolean } = {}): Promise<{ removedTrees: number }> {
    let removedTrees = 0;
    if (options.all) {
      for (const tree of await this.list()) {
        await this.remove(tree.chainId);
        removedTrees++;
      }
    }
    for (const name of await readdir(join(this.root, 'tmp')).catch(() => [] as string[])) {
      const pid = Number(name.split('.')[0]);
      if (name.startsWith('doomed.') || !Number.isInteger(pid) || !isAlive(pid)) await rm(join(this.root, 'tmp', name), { recursive: true, force: true });
    }
    return { removedTrees };
  }
}

async function copyDeferred(from: string, to: string): Promise<void> {
  await copyFile(join(from, 'deferred.jsonl'), join(to, 'deferred.jsonl')).catch(() => undefined);
}

/** The folders (under the data folder, and under a user's private folder) that hold the assembly caches. */
export const CACHE_FOLDERS = ['rootfs', 'rootfs-images', 'rootfs-stack'] as const;

/**
 * Empty the caches under each of `parents` (their CACHE_FOLDERS): every
 * entry, and the leftovers of dead builds. Bytes freed count the files whose
 * every link was in the caches (a workspace image hardlinked from an entry
 * stays, and frees nothing).
 */
export async function emptyCaches(parents: readonly string[]): Promise<{ entries: number; freedBytes: number }> {
  const inodes = new Map<string, { nlink: number; bytes: number; seen: number }>();
  const walk = async (dir: string, links: { key: string; nlink: number; bytes: number }[]): Promise<void> => {
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      const path = join(dir, name);
      const info = await lstat(path).catch(() => undefined);
      if (info?.isDirectory()) await walk(path, links);
      else if (info) links.push({ key: `${info.dev}:${info.ino}`, nlink: info.nlink, bytes: info.blocks * 512 });
    }
  };
  let entries = 0;
  for (const root of parents.flatMap((parent) => CACHE_FOLDERS.map((name) => join(parent, name)))) {
    if (!existsSync(root)) continue;
    const cache = new TreeCache(root);
    for (const { chainId } of await cache.list()) {
      const links: { key: string; nlink: number; bytes: number }[] = [];
      await walk(cache.entryPath(chainId), links);
      await cache.remove(chainId);
      // Not removed (someone else's entry in a shared cache): neither counted nor freed.
      if (await cache.has(chainId)) continue;
      entries++;
      for (const link of links) {
        const known = inodes.get(link.key) ?? { nlink: link.nlink, bytes: link.bytes, seen: 0 };
        known.seen++;
        inodes.set(link.key, known);
      }
    }
    await cache.prune();
  }
  let freedBytes = 0;
  for (const inode of inodes.values()) if (inode.seen >= inode.nlink) freedBytes += inode.bytes;
  return { entries, freedBytes };
}
