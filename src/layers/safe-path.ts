import { lstatSync, mkdirSync, readlinkSync, type Stats } from 'node:fs';
import { LayerError } from '../util/errors.js';

/**
 * Resolving paths inside a root as if the process were chrooted there. Every
 * symlink met on the way is re-rooted (an absolute target starts again at the
 * root, `..` stops at the root) and followed at most MAX_HOPS times in all.
 * The last component is never followed: callers replace it, they do not
 * write through it. Nothing outside the root is ever touched or read.
 *
 * A layer is applied by one writer at a time, so resolving first and acting
 * afterwards is safe here: no one else changes the tree in between.
 */

export const MAX_HOPS = 255;

/** Split a tar entry name into clean components, with `..` clamped at the root (as a chroot would). */
export function cleanComponents(name: string): string[] {
  const out: string[] = [];
  for (const part of name.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') out.pop();
    else out.push(part);
  }
  return out;
}

export class RootResolver {
  /** Real directories (no symlink anywhere on their path) we created or checked, relative paths. */
  private readonly knownDirs = new Set<string>(['']);

  constructor(readonly root: string) {}

  abs(relative: string): string {
    return relative === '' ? this.root : `${this.root}/${relative}`;
  }

  /** Forget what we knew about `relative` and everything below it (it was replaced or removed). */
  forget(relative: string): void {
    if (relative === '') return;
    this.knownDirs.delete(relative);
    const prefix = `${relative}/`;
    for (const dir of this.knownDirs) if (dir.startsWith(prefix)) this.knownDirs.delete(dir);
  }

  rememberDir(relative: string): void {
    this.knownDirs.add(relative);
  }

  /**
   * Whether `relative` (a path resolveDir returned earlier) is still a real
   * directory with no symlink on the way, checked on disk, not from memory.
   * For work done after the entries (opaque folders, directory times), when
   * later entries may have replaced a folder or a parent with a symlink.
   */
  isRealDir(relative: string): boolean {
    let path = this.root;
    for (const part of relative === '' ? [] : relative.split('/')) {
      path = `${path}/${part}`;
      let info: Stats;
      try {
        info = lstatSync(path);
      } catch {
        return false;
      }
      if (!info.isDirectory()) return false;
    }
    return true;
  }

  /**
   * The real directory (relative to the root, no symlinks in it) that
   * `components` names, following symlinks inside the root. Missing
   * directories are created with `createMode` when given, else undefined is
   * returned.
   */
  resolveDir(components: readonly string[], createMode?: number, hops = { count: 0 }): string | undefined {
    let current = '';
    const queue = [...components];
    while (queue.length > 0) {
      const part = queue.shift() as string;
      if (part === '..') {
        current = current.includes('/') ? current.slice(0, current.lastIndexOf('/')) : '';
        continue;
      }
      if (part === '.' || part === '') continue;
      const next = current === '' ? part : `${current}/${part}`;
      if (this.knownDirs.has(next)) {
        current = next;
        continue;
      }
      let info: Stats | undefined;
      try {
        info = lstatSync(this.abs(next));
      } catch (error) {
        if ((error as { code?: string }).code !== 'ENOENT') throw error;
      }
      if (info === undefined) {
        if (createMode === undefined) return undefined;
        mkdirSync(this.abs(next), { mode: createMode });
        this.knownDirs.add(next);
        current = next;
        continue;
      }
      if (info.isDirectory()) {
        this.knownDirs.add(next);
        current = next;
        continue;
      }
      if (info.isSymbolicLink()) {
        if (++hops.count > MAX_HOPS) throw new LayerError(`too many levels of symbolic links resolving ${components.join('/')}`, { code: 'SYMLINK_LOOP' });
        const target = readlinkSync(this.abs(next));
        // Re-root: an absolute target starts at the root; a relative one at the link's folder.
        const base = target.startsWith('/') ? [] : current === '' ? [] : current.split('/');
        const resolved = this.resolveDir([...base, ...target.split('/')], createMode, hops);
        if (resolved === undefined) return undefined;
        current = resolved;
        continue;
      }
      // A file where a directory is needed.
      if (createMode === undefined) return undefined;
      throw new LayerError(`${components.join('/')}: "${next}" is not a directory`, { code: 'NOT_A_DIRECTORY' });
    }
    return current;
  }
}
