import { open as openFile, type FileHandle } from 'node:fs/promises';
import { basename } from 'node:path';
import { Readable } from 'node:stream';
import { LayerError } from '../util/errors.js';
import { compareNames, type TreeEntry } from './tree-entry.js';

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
 */

export interface Ext4Inode {
  ino: number;
  /** Full i_mode, type bits included. */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch. */
  mtime: number;
  nlink: number;
  /** i_flags (EXT4_*_FL). */
  flags: number;
  /** Character and block devices only. */
  rdev?: { major: number; minor: number };
}

export interface WalkOptions {
  /** Paths (relative, `/`-separated) to leave out, with everything under them. */
  exclude?: (path: string) => boolean;
}

// --- limits on what a hostile image can make us do ---
const MAX_EXTENT_DEPTH = 5;
const MAX_SYMLINK_BYTES = 4096;
/** A directory of this many bytes holds millions of names; beyond it is a forged size. */
const MAX_DIR_BYTES = 256 * 1024 * 1024;
/** XATTR_SIZE_MAX of Linux. */
const MAX_XATTR_VALUE = 65536;
const READ_CHUNK = 1024 * 1024;
const CACHE_BLOCKS = 1024;

// --- superblock (globals.rst, "Super Block"), at byte 1024 ---
const SUPERBLOCK_AT = 1024;
const EXT4_MAGIC = 0xef53;

const INCOMPAT = {
  compression: 0x1,
  filetype: 0x2,
  needs_recovery: 0x4,
  journal_dev: 0x8,
  meta_bg: 0x10,
  extent: 0x40,
  '64bit': 0x80,
  mmp: 0x100,
  flex_bg: 0x200,
  ea_inode: 0x400,
  dirdata: 0x1000,
  metadata_csum_seed: 0x2000,
  large_dir: 0x4000,
  inline_data: 0x8000,
  encrypt: 0x10000,
  casefold: 0x20000,
} as const;
/** What this reader understands. Names are stored as given under casefold; lookups here are exact. */
const INCOMPAT_READABLE =
  INCOMPAT.filetype | INCOMPAT.meta_bg | INCOMPAT.extent | INCOMPAT['64bit'] | INCOMPAT.mmp | INCOMPAT.flex_bg | INCOMPAT.ea_inode |
  INCOMPAT.metadata_csum_seed | INCOMPAT.large_dir | INCOMPAT.inline_data | INCOMPAT.casefold;
const RO_COMPAT_SPARSE_SUPER = 0x1;
const RO_COMPAT_GDT_CSUM = 0x10;
const RO_COMPAT_BIGALLOC = 0x200;
const RO_COMPAT_METADATA_CSUM = 0x400;
const COMPAT_SPARSE_SUPER2 = 0x200;

// --- group descriptor (globals.rst, "Block Group Descriptors") ---
const BG_INODE_UNINIT = 0x1;

// --- inode (dynamic.rst, "Index Nodes") ---
const S_IFMT = 0o170000;
const S_IFSOCK = 0o140000;
const S_IFLNK = 0o120000;
const S_IFREG = 0o100000;
const S_IFBLK = 0o060000;
const S_IFDIR = 0o040000;
const S_IFCHR = 0o020000;
const S_IFIFO = 0o010000;
const EXT4_ENCRYPT_FL = 0x800;
const EXT4_EXTENTS_FL = 0x80000;
const EXT4_EA_INODE_FL = 0x200000;
const EXT4_INLINE_DATA_FL = 0x10000000;
const GOOD_OLD_INODE_SIZE = 128;
const I_BLOCK = 0x28;
const I_BLOCK_BYTES = 60;

// --- extent tree (dynamic.rst, "Extent Tree") ---
const EXTENT_MAGIC = 0xf30a;
const EXT_INIT_MAX_LEN = 32768;

// --- extended attributes (dynamic.rst, "Extended Attributes") ---
const XATTR_MAGIC = 0xea020000;
const XATTR_BLOCK_HEADER = 32;
const XATTR_ENTRY_HEADER = 16;
/** Name index to prefix; for the ACL indexes the prefix is the whole name. */
const XATTR_PREFIXES = new Map<number, string>([
  [1, 'user.'],
  [2, 'system.posix_acl_access'],
  [3, 'system.posix_acl_default'],
  [4, 'trusted.'],
  [6, 'security.'],
  [7, 'system.'],
  [8, 'system.richacl'],
  [10, 'gnu.'],
]);
/** Inline data lives in this attribute; it is ext4's own, not the file's. */
const INLINE_DATA_XATTR = 'system.data';

interface Superblock {
  blockSize: number;
  blocksCount: number;
  inodesCount: number;
  inodesPerGroup: number;
  blocksPerGroup: number;
  firstDataBlock: number;
  inodeSize: number;
  descSize: number;
  groupCount: number;
  incompat: number;
  roCompat: number;
  compat: number;
  firstMetaBg: number;
  backupBgs: [number, number];
}

interface GroupDesc {
  inodeTable: number;
  flags: number;
  itableUnused: number;
}

/** An inode as read, with its raw bytes for the parts parsed on demand. */
interface RawInode extends Ext4Inode {
  raw: Buffer;
  extraIsize: number;
  fileAcl: number;
}

/** A stretch of a file's logical blocks: on disk at `physical`, or reading as zeros. */
interface Run {
  logical: number;
  physical: number;
  count: number;
  zero: boolean;
}

export class Ext4Image {
  private readonly cache = new Map<number, Buffer>();
  private readonly groups = new Map<number, GroupDesc>();

  private constructor(
    private readonly fh: FileHandle,
    /** The image file's name, which starts every error message. */
    readonly name: string,
    private readonly sb: Superblock,
  ) {}

  /** Opens and checks an image; refuses what is not ext2/3/4, needs journal recovery, or uses features this reader cannot read. */
  static async open(path: string): Promise<Ext4Image> {
    const name = basename(path);
    let fh: FileHandle;
    try {
      fh = await openFile(path, 'r');
    } catch (error) {
      throw new LayerError(`${name}: cannot open: ${(error as Error).message}`, { code: 'LAYER_EXT4_OPEN', cause: error });
    }
    try {
      const { size } = await fh.stat();
      const raw = Buffer.alloc(1024);
      if (size >= SUPERBLOCK_AT + 1024) await fh.read(raw, 0, 1024, SUPERBLOCK_AT);
      return new Ext4Image(fh, name, parseSuperblock(raw, name, size));
    } catch (error) {
      await fh.close();
      throw error;
    }
  }

  async close(): Promise<void> {
    this.cache.clear();
    await this.fh.close();
  }

  async inode(ino: number): Promise<Ext4Inode> {
    const { raw: _raw, extraIsize: _extra, fileAcl: _acl, ...inode } = await this.readInode(ino);
    return inode;
  }

  /** The inode at `path` from the root ('/upper' or 'upper'), following no symlinks. */
  async lookup(path: string): Promise<number | undefined> {
    let ino = 2;
    for (const part of path.split('/')) {
      if (part === '' || part === '.') continue;
      if (part === '..') throw new LayerError(`${this.name}: lookup of ${path}: ".." is not supported`, { code: 'LAYER_EXT4_BAD_PATH' });
      const dir = await this.readInode(ino);
      if ((dir.mode & S_IFMT) !== S_IFDIR) return undefined;
      const wanted = Buffer.from(part, 'utf8');
      const found = (await this.dirEntries(dir)).find((e) => e.raw.equals(wanted));
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
    const dir = await this.readInode(ino);
    if ((dir.mode & S_IFMT) !== S_IFDIR) this.fail(`inode ${ino} is not a directory`, 'LAYER_EXT4_NOT_A_DIRECTORY');
    return (await this.dirEntries(dir)).filter((e) => e.name !== '.' && e.name !== '..').map(({ name, ino: child }) => ({ name, ino: child }));
  }

  async readlink(ino: number): Promise<string> {
    const inode = await this.readInode(ino);
    if ((inode.mode & S_IFMT) !== S_IFLNK) this.fail(`inode ${ino} is not a symlink`, 'LAYER_EXT4_NOT_A_SYMLINK');
    if (inode.size === 0) this.fail(`inode ${ino}: symlink has an empty target`);
    if (inode.size > MAX_SYMLINK_BYTES) this.fail(`inode ${ino}: symlink target of ${inode.size} bytes is longer than ${MAX_SYMLINK_BYTES}`);
    // A fast symlink keeps its target in i_block (dynamic.rst, "Symbolic Links").
    const target =
      inode.size < I_BLOCK_BYTES && !(inode.flags & EXT4_INLINE_DATA_FL) ? inode.raw.subarray(I_BLOCK, I_BLOCK + inode.size) : await this.readAll(inode);
    if (target.includes(0)) this.fail(`inode ${ino}: symlink target contains a NUL byte`);
    return target.toString('utf8');
  }

  /**
   * Extended attributes by full name, values as latin1 byte strings, from
   * the inode body and the attribute block. POSIX ACLs are given in the
   * form getxattr(2) returns (ext4 keeps a shorter one on disk).
   */
  async xattrs(ino: number): Promise<Record<string, string>> {
    const attrs = await this.xattrMap(await this.readInode(ino));
    attrs.delete(INLINE_DATA_XATTR);
    const out: Record<string, string> = {};
    for (const name of [...attrs.keys()].sort(compareNames)) {
      let value = attrs.get(name) as Buffer;
      if (name === 'system.posix_acl_access' || name === 'system.posix_acl_default') value = this.aclToXattr(ino, name, value);
      out[name] = value.toString('latin1');
    }
    return out;
  }

  /** A regular file's content, exactly i_size bytes; holes and unwritten extents read as zeros. */
  readFile(ino: number): Readable {
    const self = this;
    async function* chunks(): AsyncGenerator<Buffer> {
      const inode = await self.readInode(ino);
      if ((inode.mode & S_IFMT) !== S_IFREG) self.fail(`inode ${ino} is not a regular file`, 'LAYER_EXT4_NOT_A_FILE');
      yield* self.content(inode);
    }
    return Readable.from(chunks(), { objectMode: false });
  }

  // --- reading the image ---

  private fail(message: string, code = 'LAYER_EXT4_CORRUPT'): never {
    throw new LayerError(`${this.name}: ${message}`, { code });
  }

  private async readAt(position: number, length: number): Promise<Buffer> {
    const buffer = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.fh.read(buffer, done, length - done, position + done));
      } catch (error) {
        throw new LayerError(`${this.name}: cannot read at byte ${position + done}: ${(error as Error).message}`, { code: 'LAYER_EXT4_IO', cause: error });
      }
      if (bytesRead === 0) this.fail(`the image file ends at byte ${position + done}`, 'LAYER_EXT4_TRUNCATED');
      done += bytesRead;
    }
    return buffer;
  }

  /** One metadata block, through a small cache. */
  private async block(n: number, what: string): Promise<Buffer> {
    if (!Number.isSafeInteger(n) || n < this.sb.firstDataBlock || n >= this.sb.blocksCount) {
      this.fail(`${what}: block ${n} is beyond the device (${this.sb.blocksCount} blocks)`);
    }
    const cached = this.cache.get(n);
    if (cached) return cached;
    const data = await this.readAt(n * this.sb.blockSize, this.sb.blockSize);
    if (this.cache.size >= CACHE_BLOCKS) this.cache.delete(this.cache.keys().next().value as number);
    this.cache.set(n, data);
    return data;
  }

  private checkRange(physical: number, count: number, what: string): void {
    if (physical < this.sb.firstDataBlock || physical + count > this.sb.blocksCount) {
      this.fail(`${what}: blocks ${physical}..${physical + count - 1} are beyond the device (${this.sb.blocksCount} blocks)`);
    }
  }

  private async group(g: number): Promise<GroupDesc> {
    const known = this.groups.get(g);
    if (known) return known;
    const { blockSize, descSize, firstDataBlock, firstMetaBg, incompat } = this.sb;
    const perBlock = blockSize / descSize;
    const descBlock = Math.floor(g / perBlock);
    let at: number;
    if (incompat & INCOMPAT.meta_bg && descBlock >= firstMetaBg) {
      // meta_bg: each meta group's descriptors sit in its own first group, after any superblock backup.
      const first = descBlock * perBlock;
      at = firstDataBlock + first * this.sb.blocksPerGroup + (this.hasSuper(first) ? 1 : 0);
      if (first === 0 && firstDataBlock === 0 && blockSize === 1024) at += 1;
    } else {
      // Right after the block holding the superblock (block 1 with 1 KiB blocks, even when bigalloc makes s_first_data_block 0).
      at = Math.floor(SUPERBLOCK_AT / blockSize) + 1 + descBlock;
    }
    const data = await this.block(at, `group descriptor ${g}`);
    const o = (g % perBlock) * descSize;
    const wide = descSize >= 64;
    const desc: GroupDesc = {
      inodeTable: data.readUInt32LE(o + 0x8) + (wide ? data.readUInt32LE(o + 0x28) * 2 ** 32 : 0),
      flags: data.readUInt16LE(o + 0x12),
      itableUnused: data.readUInt16LE(o + 0x1c) + (wide ? data.readUInt16LE(o + 0x32) * 65536 : 0),
    };
    const tableBlocks = Math.ceil((this.sb.inodesPerGroup * this.sb.inodeSize) / blockSize);
    this.checkRange(desc.inodeTable, tableBlocks, `group ${g}: inode table`);
    this.groups.set(g, desc);
    return desc;
  }

  private hasSuper(g: number): boolean {
    if (g === 0) return true;
    if (this.sb.compat & COMPAT_SPARSE_SUPER2) return g === this.sb.backupBgs[0] || g === this.sb.backupBgs[1];
    if (!(this.sb.roCompat & RO_COMPAT_SPARSE_SUPER) || g === 1) return true;
    for (const base of [3, 5, 7]) {
      let p = base;
      while (p < g) p *= base;
      if (p === g) return true;
    }
    return false;
  }

  private async readInode(ino: number): Promise<RawInode> {
    const { inodesCount, inodesPerGroup, inodeSize, blockSize, roCompat } = this.sb;
    if (!Number.isSafeInteger(ino) || ino < 1 || ino > inodesCount) this.fail(`inode ${ino} is out of range (1..${inodesCount})`);
    const g = Math.floor((ino - 1) / inodesPerGroup);
    const index = (ino - 1) % inodesPerGroup;
    const desc = await this.group(g);
    if (roCompat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) && (desc.flags & BG_INODE_UNINIT || index >= inodesPerGroup - desc.itableUnused)) {
      this.fail(`inode ${ino} is not in use (its part of the inode table was never initialized)`);
    }
    const offset = index * inodeSize;
    const data = await this.block(desc.inodeTable + Math.floor(offset / blockSize), `inode ${ino}`);
    const raw = data.subarray(offset % blockSize, (offset % blockSize) + inodeSize);
    return this.parseInode(ino, raw);
  }

  private parseInode(ino: number, raw: Buffer): RawInode {
    const mode = raw.readUInt16LE(0x0);
    const flags = raw.readUInt32LE(0x20);
    let extraIsize = 0;
    if (this.sb.inodeSize > GOOD_OLD_INODE_SIZE) {
      extraIsize = raw.readUInt16LE(0x80);
      if (GOOD_OLD_INODE_SIZE + extraIsize > this.sb.inodeSize || extraIsize % 4 !== 0) this.fail(`inode ${ino}: i_extra_isize ${extraIsize} is invalid`);
    }
    const wideSize = (mode & S_IFMT) === S_IFREG || this.sb.incompat & INCOMPAT.large_dir;
    const size = raw.readUInt32LE(0x4) + (wideSize ? raw.readUInt32LE(0x6c) * 2 ** 32 : 0);
    // The format's own limit: 2^32 logical blocks.
    if (size > 2 ** 32 * this.sb.blockSize) this.fail(`inode ${ino}: size ${size} is beyond what ext4 can hold`);
    // Seconds are signed 32 bits, extended by two epoch bits in i_mtime_extra when the inode has room for it.
    let mtime = raw.readInt32LE(0x10);
    if (extraIsize >= 0x8c - GOOD_OLD_INODE_SIZE) mtime += (raw.readUInt32LE(0x88) & 3) * 2 ** 32;
    const inode: RawInode = {
      ino,
      mode,
      uid: raw.readUInt16LE(0x2) + raw.readUInt16LE(0x78) * 65536,
      gid: raw.readUInt16LE(0x18) + raw.readUInt16LE(0x7a) * 65536,
      size,
      mtime,
      nlink: raw.readUInt16LE(0x1a),
      flags,
      raw,
      extraIsize,
      fileAcl: raw.readUInt32LE(0x68) + (this.sb.incompat & INCOMPAT['64bit'] ? raw.readUInt16LE(0x76) * 2 ** 32 : 0),
    };
    const type = mode & S_IFMT;
    if (type === S_IFCHR || type === S_IFBLK) {
      // Old encoding (8-bit major and minor) in i_block[0], else the new one in i_block[1].
      const old = raw.readUInt32LE(I_BLOCK);
      const dev = raw.readUInt32LE(I_BLOCK + 4);
      inode.rdev = old !== 0 ? { major: (old >> 8) & 0xff, minor: old & 0xff } : { major: (dev & 0xfff00) >>> 8, minor: (dev & 0xff) | ((dev >>> 12) & 0xfff00) };
    }
    if (flags & EXT4_ENCRYPT_FL) this.fail(`inode ${ino} is encrypted`, 'LAYER_EXT4_UNSUPPORTED');
    return inode;
  }

  // --- file content ---

  /** The block runs of a file in logical order, limited to its size. */
  private async *runs(inode: RawInode): AsyncGenerator<Run> {
    const blocks = Math.ceil(inode.size / this.sb.blockSize);
    if (blocks === 0) return;
    let pending: Run | undefined;
    const source = inode.flags & EXT4_EXTENTS_FL ? this.extentRuns(inode, blocks) : this.blockMapRuns(inode, blocks);
    for await (const run of source) {
      if (run.logical >= blocks) break;
      if (run.logical + run.count > blocks) run.count = blocks - run.logical;
      // Join neighbours so content is read in large pieces.
      if (pending && pending.zero === run.zero && pending.logical + pending.count === run.logical && (run.zero || pending.physical + pending.count === run.physical)) {
        pending.count += run.count;
        continue;
      }
      if (pending) yield pending;
      pending = { ...run };
    }
    if (pending) yield pending;
  }

  /** Leaf extents in order; checks magic, depth, entry counts, ordering and block numbers, and visits no tree block twice. */
  private async *extentRuns(inode: RawInode, blocks: number): AsyncGenerator<Run> {
    const what = `inode ${inode.ino}`;
    const visited = new Set<number>();
    let next = 0;
    const self = this;
    async function* node(data: Buffer, depth: number | undefined): AsyncGenerator<Run> {
      if (data.readUInt16LE(0) !== EXTENT_MAGIC) self.fail(`${what}: bad extent header magic`);
      const entries = data.readUInt16LE(2);
      const max = data.readUInt16LE(4);
      const d = data.readUInt16LE(6);
      if (depth === undefined && d > MAX_EXTENT_DEPTH) self.fail(`${what}: extent tree deeper than ${MAX_EXTENT_DEPTH}`);
      if (depth !== undefined && d !== depth) self.fail(`${what}: extent tree node at depth ${d} where ${depth} was expected`);
      if (entries > max || 12 + max * 12 > data.length) self.fail(`${what}: extent node holds ${entries} of ${max} entries, more than fit`);
      if (d > 0 && entries === 0) self.fail(`${what}: empty extent index node`);
      let last = -1;
      for (let i = 0; i < entries; i++) {
        const o = 12 + i * 12;
        const logical = data.readUInt32LE(o);
        if (logical <= last) self.fail(`${what}: extents out of order`);
        last = logical;
        if (logical >= blocks) return;
        if (d > 0) {
          const child = data.readUInt32LE(o + 4) + data.readUInt16LE(o + 8) * 2 ** 32;
          if (visited.has(child)) self.fail(`${what}: extent tree block ${child} is used twice`);
          visited.add(child);
          yield* node(await self.block(child, `${what}: extent tree`), d - 1);
        } else {
          const raw = data.readUInt16LE(o + 4);
          const zero = raw > EXT_INIT_MAX_LEN;
          const count = zero ? raw - EXT_INIT_MAX_LEN : raw;
          const physical = data.readUInt32LE(o + 8) + data.readUInt16LE(o + 6) * 2 ** 32;
          if (count === 0) self.fail(`${what}: extent of length 0`);
          if (logical < next) self.fail(`${what}: extents overlap at block ${logical}`);
          if (!zero) self.checkRange(physical, count, what);
          next = logical + count;
          yield { logical, physical, count, zero };
        }
      }
    }
    yield* node(inode.raw.subarray(I_BLOCK, I_BLOCK + I_BLOCK_BYTES), undefined);
  }

  /** Classic block maps (ext2/3): 12 direct pointers, then single, double and triple indirect blocks. */
  private async *blockMapRuns(inode: RawInode, blocks: number): AsyncGenerator<Run> {
    if (inode.flags & EXT4_INLINE_DATA_FL) this.fail(`inode ${inode.ino}: inline data where block data was expected`);
    const what = `inode ${inode.ino}`;
    const perBlock = this.sb.blockSize / 4;
    const self = this;
    async function* walk(pointer: number, level: number, logical: number): AsyncGenerator<Run> {
      if (pointer === 0 || logical >= blocks) return; // a hole
      if (level === 0) {
        self.checkRange(pointer, 1, what);
        yield { logical, physical: pointer, count: 1, zero: false };
        return;
      }
      const data = await self.block(pointer, `${what}: indirect block`);
      const span = perBlock ** (level - 1);
      for (let i = 0; i < perBlock && logical + i * span < blocks; i++) yield* walk(data.readUInt32LE(i * 4), level - 1, logical + i * span);
    }
    const ptr = (i: number): number => inode.raw.readUInt32LE(I_BLOCK + i * 4);
    for (let i = 0; i < 12; i++) yield* walk(ptr(i), 0, i);
    yield* walk(ptr(12), 1, 12);
    yield* walk(ptr(13), 2, 12 + perBlock);
    yield* walk(ptr(14), 3, 12 + perBlock + perBlock ** 2);
  }

  /** Inline data: the first 60 bytes in i_block, the rest in the system.data attribute. */
  private async inlineData(inode: RawInode): Promise<{ head: Buffer; tail: Buffer }> {
    const tail = (await this.xattrMap(inode, true)).get(INLINE_DATA_XATTR);
    if (!tail) this.fail(`inode ${inode.ino}: inline data without its system.data attribute`);
    return { head: inode.raw.subarray(I_BLOCK, I_BLOCK + I_BLOCK_BYTES), tail };
  }

  private async *content(inode: RawInode): AsyncGenerator<Buffer> {
    if (inode.flags & EXT4_INLINE_DATA_FL) {
      const { head, tail } = await this.inlineData(inode);
      if (inode.size > head.length + tail.length) this.fail(`inode ${inode.ino}: inline data is shorter than the size ${inode.size}`);
      yield Buffer.concat([head, tail]).subarray(0, inode.size);
      return;
    }
    const { blockSize } = this.sb;
    let at = 0;
    const size = inode.size;
    function* zeros(until: number): Generator<Buffer> {
      while (at < until) {
        const n = Math.min(READ_CHUNK, until - at);
        yield Buffer.alloc(n);
        at += n;
      }
    }
    for await (const run of this.runs(inode)) {
      const start = run.logical * blockSize;
      yield* zeros(start);
      const end = Math.min(size, (run.logical + run.count) * blockSize);
      if (run.zero) {
        yield* zeros(end);
        continue;
      }
      while (at < end) {
        const n = Math.min(READ_CHUNK, end - at);
        yield await this.readAt(run.physical * blockSize + (at - start), n);
        at += n;
      }
    }
    yield* zeros(size);
  }

  private async readAll(inode: RawInode): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const part of this.content(inode)) parts.push(part);
    return Buffer.concat(parts);
  }

  // --- directories (dynamic.rst, "Directory Entries") ---

  /** Every named entry, '.' and '..' included; hashed (htree) directories read the same way, their index blocks look like empty entries. */
  private async dirEntries(dir: RawInode): Promise<{ name: string; raw: Buffer; ino: number }[]> {
    const what = `inode ${dir.ino}`;
    const out: { name: string; raw: Buffer; ino: number }[] = [];
    if (dir.flags & EXT4_INLINE_DATA_FL) {
      // An inline directory starts with its parent's inode number; '.' and '..' are not stored.
      const { head, tail } = await this.inlineData(dir);
      this.parseDirBlock(dir.ino, head, 4, 'inline data', out);
      if (tail.length > 0) this.parseDirBlock(dir.ino, tail, 0, 'inline data (system.data)', out);
      return out;
    }
    if (dir.size > MAX_DIR_BYTES) this.fail(`${what}: directory of ${dir.size} bytes is larger than ${MAX_DIR_BYTES}`);
    const { blockSize } = this.sb;
    for await (const run of this.runs(dir)) {
      if (run.zero) continue; // unwritten blocks, like holes, hold no entries
      for (let done = 0; done < run.count; ) {
        const n = Math.min(run.count - done, READ_CHUNK / blockSize);
        const data = await this.readAt((run.physical + done) * blockSize, n * blockSize);
        for (let b = 0; b < n; b++) this.parseDirBlock(dir.ino, data.subarray(b * blockSize, (b + 1) * blockSize), 0, `block ${run.logical + done + b}`, out);
        done += n;
      }
    }
    return out;
  }

  /** Linear ext4_dir_entry_2 records filling `block` from `start`; `where` names the block in messages. */
  private parseDirBlock(dirIno: number, block: Buffer, start: number, where: string, out: { name: string; raw: Buffer; ino: number }[]): void {
    const what = `inode ${dirIno}: directory ${where}`;
    const narrowName = (this.sb.incompat & INCOMPAT.filetype) !== 0;
    for (let o = start; o < block.length; ) {
      if (block.length - o < 8) this.fail(`${what}: entry at ${o} overruns its block`);
      const ino = block.readUInt32LE(o);
      let recLen = block.readUInt16LE(o + 4);
      if (this.sb.blockSize >= 65536 && block.length >= 65536) recLen = recLen === 65535 || recLen === 0 ? 65536 : (recLen & 65532) | ((recLen & 3) << 16);
      const nameLen = narrowName ? block.readUInt8(o + 6) : block.readUInt16LE(o + 6);
      if (recLen < 8) this.fail(`${what}: entry at ${o} has rec_len ${recLen}, less than 8`);
      if (recLen % 4 !== 0) this.fail(`${what}: entry at ${o} has rec_len ${recLen}, not a multiple of 4`);
      if (o + recLen > block.length) this.fail(`${what}: entry at ${o} (rec_len ${recLen}) overruns its block`);
      if (nameLen > recLen - 8) this.fail(`${what}: entry at ${o} has name_len ${nameLen}, more than its rec_len ${recLen} holds`);
      if (ino !== 0) {
        const raw = block.subarray(o + 8, o + 8 + nameLen);
        if (nameLen === 0) this.fail(`${what}: entry at ${o} has an empty name`);
        if (raw.includes(0x2f) || raw.includes(0)) this.fail(`${what}: entry name ${JSON.stringify(raw.toString('utf8'))} contains "/" or NUL`);
        if (ino > this.sb.inodesCount) this.fail(`${what}: entry ${JSON.stringify(raw.toString('utf8'))} names inode ${ino}, out of range (1..${this.sb.inodesCount})`);
        out.push({ name: raw.toString('utf8'), raw: Buffer.from(raw), ino });
      }
      o += recLen;
    }
  }

  // --- extended attributes ---

  /** All attributes, system.data included. `bodyOnly` reads just the inode body (where inline data keeps it). */
  private async xattrMap(inode: RawInode, bodyOnly = false): Promise<Map<string, Buffer>> {
    const out = new Map<string, Buffer>();
    const { raw } = inode;
    const bodyStart = GOOD_OLD_INODE_SIZE + inode.extraIsize;
    if (inode.extraIsize > 0 && bodyStart + 4 <= raw.length && raw.readUInt32LE(bodyStart) === XATTR_MAGIC) {
      // In the inode, value offsets count from the first entry.
      await this.parseXattrs(inode.ino, raw, bodyStart + 4, bodyStart + 4, 'in-inode attributes', out);
    }
    if (!bodyOnly && inode.fileAcl !== 0) {
      const what = `inode ${inode.ino}: attribute block ${inode.fileAcl}`;
      const block = await this.block(inode.fileAcl, `inode ${inode.ino}: attribute block`);
      if (block.readUInt32LE(0) !== XATTR_MAGIC) this.fail(`${what} has a bad magic number`);
      if (block.readUInt32LE(8) !== 1) this.fail(`${what} claims ${block.readUInt32LE(8)} blocks, not 1`);
      await this.parseXattrs(inode.ino, block, XATTR_BLOCK_HEADER, 0, 'attribute block', out);
    }
    return out;
  }

  private async parseXattrs(ino: number, area: Buffer, first: number, valueBase: number, where: string, out: Map<string, Buffer>): Promise<void> {
    const what = `inode ${ino}: ${where}`;
    const end = area.length;
    for (let o = first; ; ) {
      if (o + 4 > end) this.fail(`${what}: xattr entries overrun their area`);
      if (area.readUInt32LE(o) === 0) return; // the end of the list
      if (o + XATTR_ENTRY_HEADER > end) this.fail(`${what}: xattr entry at ${o} overruns its area`);
      const nameLen = area.readUInt8(o);
      const index = area.readUInt8(o + 1);
      const valueOffs = area.readUInt16LE(o + 2);
      const valueInum = area.readUInt32LE(o + 4);
      const valueSize = area.readUInt32LE(o + 8);
      if (o + XATTR_ENTRY_HEADER + nameLen > end) this.fail(`${what}: xattr name at ${o} overruns its area`);
      const prefix = XATTR_PREFIXES.get(index);
      if (prefix === undefined) this.fail(`${what}: xattr entry at ${o} has unknown name index ${index}`);
      const name = prefix + area.toString('utf8', o + XATTR_ENTRY_HEADER, o + XATTR_ENTRY_HEADER + nameLen);
      if (valueSize > MAX_XATTR_VALUE) this.fail(`${what}: xattr ${name} has a value of ${valueSize} bytes, more than ${MAX_XATTR_VALUE}`);
      let value: Buffer;
      if (valueInum !== 0) {
        // ea_inode: a large value is the content of an inode of its own.
        if (!(this.sb.incompat & INCOMPAT.ea_inode)) this.fail(`${what}: xattr ${name} is kept in inode ${valueInum}, but the ea_inode feature is off`);
        const holder = await this.readInode(valueInum);
        // Not inline: reading inline data reads attributes, and a value must not lead back here.
        if (!(holder.flags & EXT4_EA_INODE_FL) || holder.flags & EXT4_INLINE_DATA_FL || (holder.mode & S_IFMT) !== S_IFREG) this.fail(`${what}: xattr ${name} points at inode ${valueInum}, which holds no attribute value`);
        if (holder.size !== valueSize) this.fail(`${what}: xattr ${name} has size ${valueSize}, its inode ${valueInum} ${holder.size}`);
        value = await this.readAll(holder);
      } else {
        const start = valueBase + valueOffs;
        if (valueSize > 0 && (start < first || start + valueSize > end)) this.fail(`${what}: xattr ${name} value overruns its area`);
        value = Buffer.from(area.subarray(start, start + valueSize));
      }
      out.set(name, value);
      o += (XATTR_ENTRY_HEADER + nameLen + 3) & ~3;
    }
  }

  /**
   * ext4 keeps POSIX ACLs as version 1 with 4-byte entries for the owner,
   * group, mask and other; getxattr(2) gives version 2 with 8-byte entries
   * (posix_acl_xattr.h), which is what a tar of a host folder records.
   */
  private aclToXattr(ino: number, name: string, disk: Buffer): Buffer {
    const bad = (): never => this.fail(`inode ${ino}: ${name} is not a valid ext4 ACL`);
    if (disk.length < 4 || disk.readUInt32LE(0) !== 1) bad();
    const parts: Buffer[] = [Buffer.from([2, 0, 0, 0])];
    for (let o = 4; o < disk.length; ) {
      if (o + 4 > disk.length) bad();
      const tag = disk.readUInt16LE(o);
      const perm = disk.readUInt16LE(o + 2);
      const entry = Buffer.alloc(8);
      entry.writeUInt16LE(tag, 0);
      entry.writeUInt16LE(perm, 2);
      if (tag === 0x02 || tag === 0x08) {
        // ACL_USER and ACL_GROUP carry an id.
        if (o + 8 > disk.length) bad();
        entry.writeUInt32LE(disk.readUInt32LE(o + 4), 4);
        o += 8;
      } else if (tag === 0x01 || tag === 0x04 || tag === 0x10 || tag === 0x20) {
        entry.writeUInt32LE(0xffffffff, 4);
        o += 4;
      } else {
        bad();
      }
      parts.push(entry);
    }
    return Buffer.concat(parts);
  }
}

function featureNames(bits: number, table: Record<string, number>): string[] {
  const names: string[] = [];
  for (const [name, bit] of Object.entries(table)) if (bits & bit) names.push(name);
  const known = Object.values(table).reduce((a, b) => a | b, 0);
  const unknown = (bits & ~known) >>> 0;
  for (let i = 0; i < 32; i++) if ((unknown >>> i) & 1) names.push(`unknown (0x${(2 ** i).toString(16)})`);
  return names;
}

function parseSuperblock(raw: Buffer, name: string, fileSize: number): Superblock {
  const fail = (message: string, code = 'LAYER_EXT4_BAD_SUPERBLOCK'): never => {
    throw new LayerError(`${name}: ${message}`, { code });
  };
  if (raw.readUInt16LE(0x38) !== EXT4_MAGIC) fail('not an ext4 file system (no superblock magic at byte 1080)', 'LAYER_NOT_EXT4');
  const incompat = raw.readUInt32LE(0x60);
  if (incompat & INCOMPAT.needs_recovery) {
    throw new LayerError(`${name}: the disk was not cleanly stopped: its journal has not been replayed (needs_recovery is set), so what is on it is not consistent`, {
      code: 'LAYER_NEEDS_RECOVERY',
      suggestions: ['Start the workspace and stop it cleanly, then try again', `Or replay the journal with: e2fsck -fy ${name}`],
    });
  }
  const refused = incompat & ~INCOMPAT_READABLE;
  if (refused) fail(`uses file system features this reader cannot read: ${featureNames(refused, INCOMPAT).join(', ')}`, 'LAYER_EXT4_UNSUPPORTED');
  const revLevel = raw.readUInt32LE(0x4c);
  if (revLevel > 1) fail(`unknown revision level ${revLevel}`, 'LAYER_EXT4_UNSUPPORTED');
  if (raw.readUInt32LE(0x48) !== 0) fail(`was not made by Linux (creator OS ${raw.readUInt32LE(0x48)})`, 'LAYER_EXT4_UNSUPPORTED');
  const logBlockSize = raw.readUInt32LE(0x18);
  if (logBlockSize > 6) fail(`invalid block size 2^${10 + logBlockSize}`);
  const blockSize = 1024 << logBlockSize;
  const wide = (incompat & INCOMPAT['64bit']) !== 0;
  const blocksCount = raw.readUInt32LE(0x4) + (wide ? raw.readUInt32LE(0x150) * 2 ** 32 : 0);
  const inodesCount = raw.readUInt32LE(0x0);
  const firstDataBlock = raw.readUInt32LE(0x14);
  const blocksPerGroup = raw.readUInt32LE(0x20);
  const inodesPerGroup = raw.readUInt32LE(0x28);
  const inodeSize = revLevel === 0 ? GOOD_OLD_INODE_SIZE : raw.readUInt16LE(0x58);
  const descSize = wide ? raw.readUInt16LE(0xfe) : 32;
  if (inodeSize < GOOD_OLD_INODE_SIZE || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0) fail(`invalid inode size ${inodeSize}`);
  if (wide && (descSize < 64 || descSize > 1024 || (descSize & (descSize - 1)) !== 0 || descSize > blockSize)) fail(`invalid group descriptor size ${descSize}`);
  // bigalloc counts groups in clusters of 2^(s_log_cluster_size - s_log_block_size) blocks.
  const logCluster = raw.readUInt32LE(0x1c);
  const clusterRatio = raw.readUInt32LE(0x64) & RO_COMPAT_BIGALLOC && logCluster >= logBlockSize && logCluster - logBlockSize <= 16 ? 2 ** (logCluster - logBlockSize) : 1;
  if (blocksPerGroup < 8 || blocksPerGroup > blockSize * 8 * clusterRatio) fail(`invalid blocks per group ${blocksPerGroup}`);
  if (inodesPerGroup < 1 || inodesPerGroup > blockSize * 8) fail(`invalid inodes per group ${inodesPerGroup}`);
  if (firstDataBlock > 1 || blocksCount <= firstDataBlock) fail(`invalid block count ${blocksCount} (first data block ${firstDataBlock})`);
  const groupCount = Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup);
  if (inodesCount < 11 || inodesCount > inodesPerGroup * groupCount) fail(`invalid inode count ${inodesCount}`);
  if (blocksCount * blockSize > fileSize) fail(`the file system needs ${blocksCount * blockSize} bytes, but the image file has ${fileSize} (truncated?)`, 'LAYER_EXT4_TRUNCATED');
  const firstMetaBg = raw.readUInt32LE(0x104);
  const descBlocks = Math.ceil(groupCount / (blockSize / descSize));
  if (incompat & INCOMPAT.meta_bg && firstMetaBg > descBlocks) fail(`invalid first meta group ${firstMetaBg}`);
  return {
    blockSize,
    blocksCount,
    inodesCount,
    inodesPerGroup,
    blocksPerGroup,
    firstDataBlock,
    inodeSize,
    descSize,
    groupCount,
    incompat,
    roCompat: raw.readUInt32LE(0x64),
    compat: raw.readUInt32LE(0x5c),
    firstMetaBg,
    backupBgs: [raw.readUInt32LE(0x24c), raw.readUInt32LE(0x250)],
  };
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

