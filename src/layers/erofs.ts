import { createHash } from 'node:crypto';
import { LayerError } from '../util/errors.js';

/**
 * Writing the metadata of an EROFS image (the read-only file system the
 * guest mounts as its lower layer) for a tree held in memory, whose file
 * contents were already written as whole blocks by the caller.
 *
 * Written by hand: no maintained JavaScript library writes EROFS, and
 * running mkfs.erofs needs the tree on disk first, which is the cost this
 * avoids (creating every file costs more than inflating the layers). The
 * on-disk format is the kernel's `fs/erofs/erofs_fs.h`; only the
 * uncompressed subset that every kernel since 5.4 reads is used:
 *
 * - 4 KiB blocks; block 0 holds the superblock at byte 1024;
 * - blocks 1 .. dataBlocks-1 hold file contents (the caller's);
 * - then the metadata area: 64-byte extended inodes (32-bit ids, 64-bit
 *   sizes, per-inode mtimes) at 32-byte slots, each followed by its inline
 *   xattrs and, for directories and symlinks, the tail of its content
 *   ("flat inline"), never crossing a block boundary;
 * - then whole blocks of directories too big to inline.
 *
 * The same tree always gives the same bytes: names are sorted, inodes laid
 * out breadth first, and the volume id is a hash of the content.
 */

export const BLOCK_SIZE = 4096;
const BLOCK_BITS = 12;
const SUPER_OFFSET = 1024;
const MAGIC = 0xe0f5e1e2;
const INODE_SIZE = 64;
const SLOT = 32;
const DIRENT_SIZE = 12;
const XATTR_HEADER = 12;
/** i_format: bit 0 set = extended inode; data layout in bits 1-3. */
const FLAT_PLAIN = 0;
const FLAT_INLINE = 2;
/** Inline xattrs of one inode: ext4 hosts allow one block; so does this. */
const MAX_XATTR_BYTES = 3072;

export type ErofsKind = 'dir' | 'file' | 'symlink' | 'fifo' | 'char' | 'block';

/** A node of the tree to write. Hardlinks are one node reached by several names. */
export interface ErofsNode {
  kind: ErofsKind;
  /** Permission bits with setuid, setgid and sticky. */
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  mtimeNs: number;
  /** Name to raw value; names with their namespace (`user.x`, `security.capability`). */
  xattrs?: ReadonlyMap<string, Buffer> | undefined;
  /** A regular file: its content's first block (absolute) and its size. */
  block?: number;
  size?: number;
  /** A symlink's target. */
  target?: string;
  major?: number;
  minor?: number;
  children?: ReadonlyMap<string, ErofsNode>;
}

const TYPE_BITS: Record<ErofsKind, number> = { dir: 0o040000, file: 0o100000, symlink: 0o120000, fifo: 0o010000, char: 0o020000, block: 0o060000 };
const DIRENT_TYPE: Record<ErofsKind, number> = { file: 1, dir: 2, char: 3, block: 4, fifo: 5, symlink: 7 };

/** xattr namespaces EROFS stores by index (erofs_xattr.h); the rest of the name follows. */
const XATTR_PREFIXES: readonly [string, number][] = [
  ['system.posix_acl_access', 2],
  ['system.posix_acl_default', 3],
  ['user.', 1],
  ['trusted.', 4],
  ['security.', 6],
];

interface Placed {
  node: ErofsNode;
  nid: number;
  /** Byte offset of the inode inside the metadata area. */
  offset: number;
  nlink: number;
  xattrs: Buffer;
  layout: number;
  size: number;
  /** Bytes of content inlined after the inode (the last partial block of a directory or symlink). */
  tailBytes: number;
  /** Whole blocks of content written after the metadata area (directories, rare long symlinks). */
  blockCount: number;
  /** Directories: names in bytewise order with their nodes, `.` and `..` included, cut into blocks. */
  entries?: DirEntry[];
  chunks?: DirChunk[];
}

interface DirEntry {
  name: string;
  bytes: number;
  /** The name is printable ASCII: plain string order is bytewise order. */
  ascii: boolean;
  node: ErofsNode;
}

/** One block of a directory: entries [start, end), `used` bytes of dirents and names. */
interface DirChunk {
  start: number;
  end: number;
  used: number;
}

export interface ErofsImage {
  /** The bytes to write at `metaOffset` (metadata area, then directory blocks). */
  meta: Buffer;
  metaOffset: number;
  /** The 4 KiB block 0 (superblock at 1024). */
  head: Buffer;
  /** Size of the whole image in bytes. */
  bytes: number;
}

/**
 * Lay out the metadata for `root`, given that file contents occupy blocks
 * [1, dataBlocks). The caller writes `head` at 0 and `meta` at `metaOffset`.
 * Everything is written in place into one buffer: a root has tens of
 * thousands of inodes, and a small buffer for each would cost more than the
 * layout itself.
 */
export function buildErofs(root: ErofsNode, dataBlocks: number): ErofsImage {
  if (root.kind !== 'dir') throw new Error('the root of an EROFS image must be a directory');
  const start = Math.max(1, dataBlocks);
  // Breadth first from the root: every node once (hardlinks share one inode), parents known.
  const order: ErofsNode[] = [root];
  const seen = new Set<ErofsNode>([root]);
  const parent = new Map<ErofsNode, ErofsNode>([[root, root]]);
  const links = new Map<ErofsNode, number>();
  for (let i = 0; i < order.length; i++) {
    const node = order[i] as ErofsNode;
    for (const child of node.children?.values() ?? []) {
      if (child.kind !== 'dir') links.set(child, (links.get(child) ?? 0) + 1);
      if (seen.has(child)) {
        if (child.kind === 'dir') throw new Error('a directory is reachable by two names');
        continue;
      }
      seen.add(child);
      order.push(child);
      if (child.kind === 'dir') parent.set(child, node);
    }
  }

  const placed: Placed[] = order.map((node) => prepare(node, links.get(node) ?? 1, parent.get(node)));
  // Inodes at 32-byte slots; an inode with inline content starts a new block if its tail would cross one.
  // Slot 0 stays empty: the root's inode number (its nid) would be 0, which readdir and stat treat as no inode.
  let offset = SLOT;
  for (const p of placed) {
    const own = INODE_SIZE + p.xattrs.length + p.tailBytes;
    if (p.tailBytes > 0 && (offset % BLOCK_SIZE) + own > BLOCK_SIZE) offset = alignUp(offset, BLOCK_SIZE);
    p.offset = offset;
    p.nid = offset / SLOT;
    offset = alignUp(offset + own, SLOT);
  }
  const rootNid = (placed[0] as Placed).nid;
  if (rootNid > 0xffff) throw new Error('the root inode must sit in the first 2 MiB of metadata');
  const metaBytes = alignUp(offset, BLOCK_SIZE);
  let nextBlock = start + metaBytes / BLOCK_SIZE;
  const blockStart: number[] = [];
  placed.forEach((p, i) => {
    if (p.blockCount === 0) return;
    blockStart[i] = nextBlock;
    nextBlock += p.blockCount;
  });
  if (nextBlock > 0xffffffff) throw new LayerError('the image would be larger than EROFS can address (16 TiB)', { code: 'LAYER_TOO_BIG' });

  const nidOf = new Map<ErofsNode, number>(placed.map((p) => [p.node, p.nid]));
  const meta = Buffer.alloc((nextBlock - start) * BLOCK_SIZE);
  placed.forEach((p, i) => {
    const at = p.offset;
    const blocksAt = blockStart[i];
    meta.writeUInt16LE(1 | (p.layout << 1), at);
    meta.writeUInt16LE(p.xattrs.length === 0 ? 0 : 1 + (p.xattrs.length - XATTR_HEADER) / 4, at + 2);
    meta.writeUInt16LE(TYPE_BITS[p.node.kind] | (p.node.mode & 0o7777), at + 4);
    writeU64(meta, p.size, at + 8);
    meta.writeUInt32LE(iU(p.node, blocksAt), at + 16);
    meta.writeUInt32LE(p.nid >>> 0, at + 20);
    meta.writeUInt32LE(p.node.uid >>> 0, at + 24);
    meta.writeUInt32LE(p.node.gid >>> 0, at + 28);
    writeU64(meta, Math.max(0, Math.floor(p.node.mtime)), at + 32);
    meta.writeUInt32LE(Math.min(999_999_999, Math.max(0, Math.floor(p.node.mtimeNs))), at + 40);
    meta.writeUInt32LE(p.nlink, at + 44);
    p.xattrs.copy(meta, at + INODE_SIZE);
    const tailAt = at + INODE_SIZE + p.xattrs.length;
    const blocksOffset = blocksAt === undefined ? -1 : (blocksAt - start) * BLOCK_SIZE;
    if (p.node.kind === 'symlink') meta.write(p.node.target ?? '', p.tailBytes > 0 ? tailAt : blocksOffset, 'utf8');
    if (p.entries && p.chunks) {
      p.chunks.forEach((chunk, c) => {
        const inline = p.tailBytes > 0 && c === (p.chunks as DirChunk[]).length - 1;
        writeDirChunk(meta, inline ? tailAt : blocksOffset + c * BLOCK_SIZE, p.entries as DirEntry[], chunk, nidOf);
      });
    }
  });

  const head = Buffer.alloc(BLOCK_SIZE);
  const sb = SUPER_OFFSET;
  head.writeUInt32LE(MAGIC, sb);
  head.writeUInt8(BLOCK_BITS, sb + 12);
  head.writeUInt16LE(rootNid, sb + 14);
  head.writeBigUInt64LE(BigInt(placed.length), sb + 16);
  head.writeUInt32LE(nextBlock, sb + 36);
  head.writeUInt32LE(start, sb + 40);
  // A volume id derived from the metadata: stable for the same tree, different for different ones.
  createHash('sha256').update(meta).digest().copy(head, sb + 48, 0, 16);
  return { meta, metaOffset: start * BLOCK_SIZE, head, bytes: nextBlock * BLOCK_SIZE };
}

/** A 64-bit little-endian field from a safe integer, without a BigInt per write (there are tens of thousands). */
function writeU64(buffer: Buffer, value: number, at: number): void {
  buffer.writeUInt32LE(value % 0x1_0000_0000, at);
  buffer.writeUInt32LE(Math.floor(value / 0x1_0000_0000), at + 4);
}

function alignUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** The inode's i_u field: a content block address, or a device number. */
function iU(node: ErofsNode, blocksAt: number | undefined): number {
  if (node.kind === 'char' || node.kind === 'block') {
    // The kernel's new_encode_dev: minor's low 8 bits, major, then minor's upper bits.
    const major = node.major ?? 0;
    const minor = node.minor ?? 0;
    return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
  }
  if (node.kind === 'file') return (node.size ?? 0) === 0 ? 0 : (node.block ?? 0);
  return blocksAt ?? 0;
}

const ASCII = /^[\x20-\x7e]*$/;

/** Bytewise order of UTF-8 names; plain comparison gives the same for ASCII and is much cheaper. */
function compareEntries(a: DirEntry, b: DirEntry): number {
  if (a.ascii && b.ascii) return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
  return Buffer.compare(Buffer.from(a.name, 'utf8'), Buffer.from(b.name, 'utf8'));
}

function prepare(node: ErofsNode, references: number, parentNode: ErofsNode | undefined): Placed {
  const xattrs = encodeXattrs(node.xattrs);
  const p: Placed = { node, nid: 0, offset: 0, nlink: references, xattrs, layout: FLAT_PLAIN, size: 0, tailBytes: 0, blockCount: 0 };
  const fits = (tail: number): boolean => INODE_SIZE + xattrs.length + tail <= BLOCK_SIZE;
  if (node.kind === 'file') {
    p.size = node.size ?? 0;
  } else if (node.kind === 'symlink') {
    const length = Buffer.byteLength(node.target ?? '', 'utf8');
    if (length === 0 || length >= BLOCK_SIZE) throw new LayerError(`a symlink target of ${length} bytes cannot be stored`, { code: 'LAYER_BAD_HEADER' });
    p.size = length;
    if (fits(length)) {
      p.tailBytes = length;
      p.layout = FLAT_INLINE;
    } else p.blockCount = 1;
  } else if (node.kind === 'dir') {
    const entries: DirEntry[] = [
      { name: '.', bytes: 1, ascii: true, node },
      { name: '..', bytes: 2, ascii: true, node: parentNode ?? node },
    ];
    let subdirs = 0;
    for (const [name, child] of node.children ?? []) {
      const bytes = Buffer.byteLength(name, 'utf8');
      if (bytes === 0 || bytes > 255) throw new LayerError(`a file name of ${bytes} bytes cannot be stored`, { code: 'LAYER_NAME_TOO_LONG' });
      entries.push({ name, bytes, ascii: bytes === name.length && ASCII.test(name), node: child });
      if (child.kind === 'dir') subdirs++;
    }
    entries.sort(compareEntries);
    const chunks = dirChunks(entries);
    const last = chunks[chunks.length - 1] as DirChunk;
    p.entries = entries;
    p.chunks = chunks;
    p.nlink = 2 + subdirs;
    p.size = (chunks.length - 1) * BLOCK_SIZE + last.used;
    if (fits(last.used)) {
      p.tailBytes = last.used;
      p.layout = FLAT_INLINE;
      p.blockCount = chunks.length - 1;
    } else p.blockCount = chunks.length;
  }
  return p;
}

/**
 * A directory's content is blocks of 12-byte dirents (nid, name offset,
 * type) followed by their names, in bytewise order across blocks (the
 * kernel looks names up by binary search). Every block but the last is
 * whole; the last is as long as it needs to be.
 */
function dirChunks(entries: readonly DirEntry[]): DirChunk[] {
  const chunks: DirChunk[] = [];
  let i = 0;
  while (i < entries.length) {
    let j = i;
    let used = 0;
    while (j < entries.length && used + DIRENT_SIZE + (entries[j] as DirEntry).bytes <= BLOCK_SIZE) {
      used += DIRENT_SIZE + (entries[j] as DirEntry).bytes;
      j++;
    }
    chunks.push({ start: i, end: j, used });
    i = j;
  }
  return chunks;
}

function writeDirChunk(meta: Buffer, at: number, entries: readonly DirEntry[], chunk: DirChunk, nidOf: ReadonlyMap<ErofsNode, number>): void {
  let nameAt = (chunk.end - chunk.start) * DIRENT_SIZE;
  for (let k = chunk.start; k < chunk.end; k++) {
    const entry = entries[k] as DirEntry;
    const d = at + (k - chunk.start) * DIRENT_SIZE;
    writeU64(meta, nidOf.get(entry.node) ?? 0, d);
    meta.writeUInt16LE(nameAt, d + 8);
    meta.writeUInt8(DIRENT_TYPE[entry.node.kind], d + 10);
    meta.write(entry.name, at + nameAt, 'utf8');
    nameAt += entry.bytes;
  }
}

/** Inline xattrs: a 12-byte header, then entries (name index, name suffix, value), each padded to 4 bytes. */
function encodeXattrs(xattrs: ReadonlyMap<string, Buffer> | undefined): Buffer {
  if (!xattrs || xattrs.size === 0) return Buffer.alloc(0);
  const parts: Buffer[] = [Buffer.alloc(XATTR_HEADER)];
  let total = XATTR_HEADER;
  for (const name of [...xattrs.keys()].sort()) {
    const value = xattrs.get(name) as Buffer;
    const prefix = XATTR_PREFIXES.find(([p]) => (p.endsWith('.') ? name.startsWith(p) && name.length > p.length : name === p));
    if (!prefix) throw new LayerError(`extended attribute ${name} is not in a namespace an image can hold (user., trusted., security., POSIX ACLs)`, { code: 'LAYER_BAD_XATTR' });
    const suffix = Buffer.from(name.slice(prefix[0].length), 'utf8');
    if (suffix.length > 255 || value.length > 0xffff) throw new LayerError(`extended attribute ${name} is too long`, { code: 'LAYER_BAD_XATTR' });
    const entry = Buffer.alloc(alignUp(4 + suffix.length + value.length, 4));
    entry.writeUInt8(suffix.length, 0);
    entry.writeUInt8(prefix[1], 1);
    entry.writeUInt16LE(value.length, 2);
    suffix.copy(entry, 4);
    value.copy(entry, 4 + suffix.length);
    parts.push(entry);
    total += entry.length;
  }
  if (total > MAX_XATTR_BYTES) throw new LayerError(`extended attributes of ${total} bytes on one file are more than an image holds (${MAX_XATTR_BYTES})`, { code: 'LAYER_BAD_XATTR' });
  return Buffer.concat(parts, total);
}
