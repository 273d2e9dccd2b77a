import { LayerError } from '../util/errors.js';

/**
 * The ext4 on-disk format as the reader in ext4.ts uses it: the limits it
 * puts on a hostile image, the constants, the shapes of what it reads, and
 * the superblock checks that decide whether an image is read at all.
 * Offsets and flags are from the kernel's Documentation/filesystems/ext4/
 * (globals.rst, dynamic.rst).
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

// --- limits on what a hostile image can make us do ---
export const MAX_EXTENT_DEPTH = 5;
export const MAX_SYMLINK_BYTES = 4096;
/** A directory of this many bytes holds millions of names; beyond it is a forged size. */
export const MAX_DIR_BYTES = 256 * 1024 * 1024;
/** XATTR_SIZE_MAX of Linux. */
export const MAX_XATTR_VALUE = 65536;
export const READ_CHUNK = 1024 * 1024;
export const CACHE_BLOCKS = 1024;

// --- superblock (globals.rst, "Super Block"), at byte 1024 ---
export const SUPERBLOCK_AT = 1024;
const EXT4_MAGIC = 0xef53;

export const INCOMPAT = {
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
export const RO_COMPAT_SPARSE_SUPER = 0x1;
export const RO_COMPAT_GDT_CSUM = 0x10;
const RO_COMPAT_BIGALLOC = 0x200;
export const RO_COMPAT_METADATA_CSUM = 0x400;
export const COMPAT_SPARSE_SUPER2 = 0x200;

// --- group descriptor (globals.rst, "Block Group Descriptors") ---
export const BG_INODE_UNINIT = 0x1;

// --- inode (dynamic.rst, "Index Nodes") ---
export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;
export const EXT4_ENCRYPT_FL = 0x800;
export const EXT4_EXTENTS_FL = 0x80000;
export const EXT4_EA_INODE_FL = 0x200000;
export const EXT4_INLINE_DATA_FL = 0x10000000;
export const GOOD_OLD_INODE_SIZE = 128;
export const I_BLOCK = 0x28;
export const I_BLOCK_BYTES = 60;

export interface Superblock {
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

export interface GroupDesc {
  inodeTable: number;
  flags: number;
  itableUnused: number;
}

/** An inode as read, with its raw bytes for the parts parsed on demand. */
export interface RawInode extends Ext4Inode {
  raw: Buffer;
  extraIsize: number;
  fileAcl: number;
}

/** A stretch of a file's logical blocks: on disk at `physical`, or reading as zeros. */
export interface Run {
  logical: number;
  physical: number;
  count: number;
  zero: boolean;
}

function featureNames(bits: number, table: Record<string, number>): string[] {
  const names: string[] = [];
  for (const [name, bit] of Object.entries(table)) if (bits & bit) names.push(name);
  const known = Object.values(table).reduce((a, b) => a | b, 0);
  const unknown = (bits & ~known) >>> 0;
  for (let i = 0; i < 32; i++) if ((unknown >>> i) & 1) names.push(`unknown (0x${(2 ** i).toString(16)})`);
  return names;
}

export function parseSuperblock(raw: Buffer, name: string, fileSize: number): Superblock {
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
