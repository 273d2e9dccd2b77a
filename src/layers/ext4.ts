import { Readable } from 'node:stream';
import { LayerError } from '../util/errors.js';
import { dirEntries } from './ext4-dir.js';
import { blockContent, collect } from './ext4-extents.js';
import { EXT4_INLINE_DATA_FL, I_BLOCK, I_BLOCK_BYTES, MAX_SYMLINK_BYTES, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, type Ext4Inode, type RawInode } from './ext4-format.js';
import { Ext4Volume } from './ext4-volume.js';
import { fileXattrs, inlineData } from './ext4-xattr.js';
import type { TreeEntry } from './tree-entry.js';

/**
 * A read-only reader of ext2/3/4 disk images, so a workspace's writable
 * layer can be snapshotted from the host without root and without mounting.
 * The image may come from a compromised guest: every number read from it is
 * checked before it is used (offsets, lengths, depths, block and inode
 * numbers), and what is wrong is a LayerError naming the image, the inode
 * and the fault. Nothing reads the whole image: positioned reads of single
 * metadata blocks (kept in a small cache) and large reads of file content.
 *
 * Read: extent trees (any depth up to 5), classic block maps (ext2/3),
 * holes and unwritten extents (as zeros), inline data, linear and hashed
 * (htree) directories, fast and slow symlinks, attributes in the inode, in
 * a block and (ea_inode) in inodes of their own; flex_bg, meta_bg, 64bit,
 * bigalloc, block sizes 1 to 64 KiB. Refused: a journal that needs
 * replaying, and the incompatible features compression, journal_dev,
 * dirdata, encrypt and any unknown one. Checksums are not verified: a
 * hostile guest can forge them, so the bounds checks are what protect.
 *
 * Format facts are from the kernel's Documentation/filesystems/ext4/
 * (globals.rst: super block and group descriptors; dynamic.rst: inodes,
 * i_block / extent tree, directories, extended attributes).
 *
 * The parts: ext4-format.ts (limits, constants, superblock checks),
 * ext4-volume.ts (blocks, group descriptors, inodes), ext4-extents.ts
 * (extent trees and block maps), ext4-xattr.ts (attributes, ACLs, inline
 * data), ext4-dir.ts (directory entries); this file puts them together.
 */

export type { Ext4Inode } from './ext4-format.js';

export interface WalkOptions {
  /** Paths (relative, `/`-separated) to leave out, with everything under them. */
  exclude?: (path: string) => boolean;
}

export class Ext4Image {
  /** The image file's name, which starts every error message. */
  readonly name: string;

  private constructor(private readonly vol: Ext4Volume) {
    this.name = vol.name;
  }

  /** Opens and checks an image; refuses what is not ext2/3/4, needs journal recovery, or uses features this reader cannot read. */
  /** `format` when the caller knows it (a workspace's record does); else the file's first bytes decide. */
  static async open(path: string, options: { format?: 'raw' | 'qcow2' } = {}): Promise<Ext4Image> {
    return new Ext4Image(await Ext4Volume.open(path, options));
  }

  async close(): Promise<void> {
    await this.vol.close();
  }

  async inode(ino: number): Promise<Ext4Inode> {
    const { raw: _raw, extraIsize: _extra, fileAcl: _acl, ...inode } = await this.vol.readInode(ino);
    return inode;
  }

  /** The inode at `path` from the root ('/upper' or 'upper'), following no symlinks. */
  async lookup(path: string): Promise<number | undefined> {
    let ino = 2;
    for (const part of path.split('/')) {
      if (part === '' || part === '.') continue;
      if (part === '..') throw new LayerError(`${this.name}: lookup of ${path}: ".." is not supported`, { code: 'LAYER_EXT4_BAD_PATH' });
      const dir = await this.vol.readInode(ino);
      if ((dir.mode & S_IFMT) !== S_IFDIR) return undefined;
      const wanted = Buffer.from(part, 'utf8');
      const found = (await dirEntries(this.vol, dir)).find((e) => e.raw.equals(wanted));
      if (!found) return undefined;
      ino = found.ino;
    }
    return ino;
  }

  /**
   * A directory's entries without '.' and '..'. Names are decoded as UTF-8;
   * bytes that are not valid UTF-8 become U+FFFD (walkTree refuses a
   * folder where that makes two names the same).
   */
  async readDir(ino: number): Promise<{ name: string; ino: number }[]> {
    const dir = await this.vol.readInode(ino);
    if ((dir.mode & S_IFMT) !== S_IFDIR) this.vol.fail(`inode ${ino} is not a directory`, 'LAYER_EXT4_NOT_A_DIRECTORY');
    return (await dirEntries(this.vol, dir)).filter((e) => e.name !== '.' && e.name !== '..').map(({ name, ino: child }) => ({ name, ino: child }));
  }

  async readlink(ino: number): Promise<string> {
    const inode = await this.vol.readInode(ino);
    if ((inode.mode & S_IFMT) !== S_IFLNK) this.vol.fail(`inode ${ino} is not a symlink`, 'LAYER_EXT4_NOT_A_SYMLINK');
    if (inode.size === 0) this.vol.fail(`inode ${ino}: symlink has an empty target`);
    if (inode.size > MAX_SYMLINK_BYTES) this.vol.fail(`inode ${ino}: symlink target of ${inode.size} bytes is longer than ${MAX_SYMLINK_BYTES}`);
    // A fast symlink keeps its target in i_block (dynamic.rst, "Symbolic Links").
    const target =
      inode.size < I_BLOCK_BYTES && !(inode.flags & EXT4_INLINE_DATA_FL) ? inode.raw.subarray(I_BLOCK, I_BLOCK + inode.size) : await collect(this.content(inode));
    if (target.includes(0)) this.vol.fail(`inode ${ino}: symlink target contains a NUL byte`);
    return target.toString('utf8');
  }

  /**
   * Extended attributes by full name, values as latin1 byte strings, from
   * the inode body and the attribute block. POSIX ACLs are given in the
   * form getxattr(2) returns (ext4 keeps a shorter one on disk).
   */
  async xattrs(ino: number): Promise<Record<string, string>> {
    return fileXattrs(this.vol, await this.vol.readInode(ino));
  }

  /** A regular file's content, exactly i_size bytes; holes and unwritten extents read as zeros. */
  readFile(ino: number): Readable {
    const self = this;
    async function* chunks(): AsyncGenerator<Buffer> {
      const inode = await self.vol.readInode(ino);
      if ((inode.mode & S_IFMT) !== S_IFREG) self.vol.fail(`inode ${ino} is not a regular file`, 'LAYER_EXT4_NOT_A_FILE');
      yield* self.content(inode);
    }
    return Readable.from(chunks(), { objectMode: false });
  }

  /** A file's content, inline or in blocks. */
  private async *content(inode: RawInode): AsyncGenerator<Buffer> {
    if (inode.flags & EXT4_INLINE_DATA_FL) {
      const { head, tail } = await inlineData(this.vol, inode);
      if (inode.size > head.length + tail.length) this.vol.fail(`inode ${inode.ino}: inline data is shorter than the size ${inode.size}`);
      yield Buffer.concat([head, tail]).subarray(0, inode.size);
      return;
    }
    yield* blockContent(this.vol, inode);
  }
}

/**
 * The tree under `dirIno` (not the folder itself) as TreeEntry values, in
 * the order every source gives: depth-first, each folder's names in
 * bytewise order, a folder before its contents. Sockets are skipped; a
 * regular file seen before (nlink > 1, same inode) is a 'hardlink' to its
 * first path. A folder met twice (a cycle or a hardlinked folder) is refused.
 */
export async function* walkTree(image: Ext4Image, dirIno: number, options: WalkOptions = {}): AsyncGenerator<TreeEntry> {
  const fail = (message: string): never => {
    throw new LayerError(`${image.name}: ${message}`, { code: 'LAYER_EXT4_CORRUPT' });
  };
  const seenDirs = new Set<number>([dirIno]);
  const firstPaths = new Map<number, string>();
  const listing = async (ino: number, path: string): Promise<{ name: string; ino: number }[]> => {
    const keyed = (await image.readDir(ino)).map((e) => ({ ...e, key: Buffer.from(e.name, 'utf8') }));
    keyed.sort((a, b) => Buffer.compare(a.key, b.key));
    for (let i = 1; i < keyed.length; i++) {
      if ((keyed[i] as { key: Buffer }).key.equals((keyed[i - 1] as { key: Buffer }).key)) {
        fail(`directory ${path === '' ? '.' : path} (inode ${ino}) has two entries named ${JSON.stringify((keyed[i] as { name: string }).name)}`);
      }
    }
    return keyed;
  };
  // An explicit stack: a deep tree must not mean deep recursion.
  const stack: { prefix: string; entries: { name: string; ino: number }[]; next: number }[] = [{ prefix: '', entries: await listing(dirIno, ''), next: 0 }];
  while (stack.length > 0) {
    const top = stack[stack.length - 1] as (typeof stack)[number];
    const entry = top.entries[top.next++];
    if (!entry) {
      stack.pop();
      continue;
    }
    const path = top.prefix === '' ? entry.name : `${top.prefix}/${entry.name}`;
    if (options.exclude?.(path)) continue;
    const inode = await image.inode(entry.ino);
    const type = inode.mode & S_IFMT;
    if (type === S_IFSOCK) continue; // a runtime object; tar cannot hold it
    const common = { path, mode: inode.mode & 0o7777, uid: inode.uid, gid: inode.gid, mtime: inode.mtime, size: 0 };
    if (type === S_IFREG && inode.nlink > 1) {
      const first = firstPaths.get(entry.ino);
      if (first !== undefined) {
        yield { ...common, type: 'hardlink', linkname: first };
        continue;
      }
      firstPaths.set(entry.ino, path);
    }
    const attrs = await image.xattrs(entry.ino);
    const withAttrs = Object.keys(attrs).length > 0 ? { xattrs: attrs } : {};
    switch (type) {
      case S_IFDIR:
        if (seenDirs.has(entry.ino)) fail(`directory ${path} (inode ${entry.ino}) is reached twice: the tree has a cycle or a hardlinked directory`);
        seenDirs.add(entry.ino);
        yield { ...common, ...withAttrs, type: 'directory' };
        stack.push({ prefix: path, entries: await listing(entry.ino, path), next: 0 });
        break;
      case S_IFREG: {
        const ino = entry.ino;
        yield { ...common, ...withAttrs, type: 'file', size: inode.size, open: () => image.readFile(ino) };
        break;
      }
      case S_IFLNK:
        yield { ...common, ...withAttrs, type: 'symlink', linkname: await image.readlink(entry.ino) };
        break;
      case S_IFIFO:
        yield { ...common, ...withAttrs, type: 'fifo' };
        break;
      case S_IFCHR:
      case S_IFBLK:
        yield { ...common, ...withAttrs, type: type === S_IFCHR ? 'char' : 'block', devmajor: inode.rdev?.major ?? 0, devminor: inode.rdev?.minor ?? 0 };
        break;
      default:
        fail(`${path} (inode ${entry.ino}) has an unknown file type (mode 0${inode.mode.toString(8)})`);
    }
  }
}

