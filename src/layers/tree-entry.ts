import type { Readable } from 'node:stream';

/**
 * One file system object as the layer packer sees it, whatever it was read
 * from: a host folder (lstat and getfattr) or a workspace's ext4 disk read
 * directly (ext4.ts). Sources yield entries depth-first, each folder's
 * names in bytewise order (compareNames), a folder before its contents, so
 * the packed tar is the same for the same tree.
 */

export type EntryType = 'file' | 'directory' | 'symlink' | 'hardlink' | 'fifo' | 'char' | 'block';

export interface TreeEntry {
  /** Relative to the tree's root, `/`-separated, no leading or trailing `/`. */
  path: string;
  type: EntryType;
  /** Permission bits with setuid, setgid and sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Modification time, whole seconds since the epoch. */
  mtime: number;
  /** Bytes of a regular file's content; 0 for everything else. */
  size: number;
  /** A symlink's target, or for a hardlink the path of the first entry of the same inode. */
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** Extended attributes; values are byte strings (latin1, one character per byte). */
  xattrs?: Record<string, string>;
  /** A regular file's content. */
  open?: () => Readable;
}

/** Bytewise comparison of names (UTF-8), the order of a folder's entries in every source. */
export function compareNames(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}
