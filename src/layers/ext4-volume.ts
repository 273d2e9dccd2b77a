import { basename } from 'node:path';
import { LayerError } from '../util/errors.js';
import {
  BG_INODE_UNINIT,
  CACHE_BLOCKS,
  COMPAT_SPARSE_SUPER2,
  EXT4_ENCRYPT_FL,
  GOOD_OLD_INODE_SIZE,
  I_BLOCK,
  INCOMPAT,
  RO_COMPAT_GDT_CSUM,
  RO_COMPAT_METADATA_CSUM,
  RO_COMPAT_SPARSE_SUPER,
  S_IFBLK,
  S_IFCHR,
  S_IFMT,
  S_IFREG,
  SUPERBLOCK_AT,
  parseSuperblock,
  type GroupDesc,
  type RawInode,
  type Superblock,
} from './ext4-format.js';
import { openDiskImage, type DiskImage } from './qcow2.js';

/**
 * The image file as ext4 lays it out: positioned reads, single metadata
 * blocks through a small cache, group descriptors and inodes. Every block
 * and inode number is checked against the superblock before it is read,
 * and every fault is a LayerError that starts with the image's name. The
 * file is a raw image or a qcow2 chain (see qcow2.ts); either way the
 * device is the virtual disk.
 */
export class Ext4Volume {
  private readonly cache = new Map<number, Buffer>();
  private readonly groups = new Map<number, GroupDesc>();

  private constructor(
    private readonly disk: DiskImage,
    /** The image file's name, which starts every error message. */
    readonly name: string,
    readonly sb: Superblock,
  ) {}

  /** Opens an image and checks its superblock (see parseSuperblock). */
  static async open(path: string, options: { format?: 'raw' | 'qcow2' } = {}): Promise<Ext4Volume> {
    const name = basename(path);
    let disk: DiskImage;
    try {
      disk = await openDiskImage(path, options);
    } catch (error) {
      // The file itself cannot be opened: the code this reader has always given.
      if (error instanceof LayerError && error.code === 'LAYER_DISK_OPEN') throw new LayerError(error.message, { code: 'LAYER_EXT4_OPEN', cause: error.cause });
      throw error;
    }
    try {
      const raw = Buffer.alloc(1024);
      if (disk.size >= SUPERBLOCK_AT + 1024) await disk.read(raw, 0, 1024, SUPERBLOCK_AT);
      return new Ext4Volume(disk, name, parseSuperblock(raw, name, disk.size));
    } catch (error) {
      await disk.close();
      throw error;
    }
  }

  async close(): Promise<void> {
    this.cache.clear();
    await this.disk.close();
  }

  fail(message: string, code = 'LAYER_EXT4_CORRUPT'): never {
    throw new LayerError(`${this.name}: ${message}`, { code });
  }

  async readAt(position: number, length: number): Promise<Buffer> {
    const buffer = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.disk.read(buffer, done, length - done, position + done));
      } catch (error) {
        // A qcow2 image's own faults already say what is wrong, and where.
        if (error instanceof LayerError) throw error;
        throw new LayerError(`${this.name}: cannot read at byte ${position + done}: ${(error as Error).message}`, { code: 'LAYER_EXT4_IO', cause: error });
      }
      if (bytesRead === 0) this.fail(`the image file ends at byte ${position + done}`, 'LAYER_EXT4_TRUNCATED');
      done += bytesRead;
    }
    return buffer;
  }

  /** One metadata block, through a small cache. */
  async block(n: number, what: string): Promise<Buffer> {
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

  checkRange(physical: number, count: number, what: string): void {
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

  async readInode(ino: number): Promise<RawInode> {
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
}
