import { EXT4_EA_INODE_FL, EXT4_INLINE_DATA_FL, GOOD_OLD_INODE_SIZE, I_BLOCK, I_BLOCK_BYTES, INCOMPAT, MAX_XATTR_VALUE, S_IFMT, S_IFREG, type RawInode } from './ext4-format.js';
import { blockContent, collect } from './ext4-extents.js';
import type { Ext4Volume } from './ext4-volume.js';
import { compareNames } from './tree-entry.js';

/**
 * Extended attributes (dynamic.rst, "Extended Attributes"): in the inode
 * body, in an attribute block, and (ea_inode) in inodes of their own. Also
 * inline data, which ext4 keeps partly in an attribute of its own.
 */

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

/** The file's own attributes (system.data left out), in name order, with POSIX ACLs converted as aclToXattr says; values as latin1 byte strings. */
export async function fileXattrs(vol: Ext4Volume, inode: RawInode): Promise<Record<string, string>> {
  const attrs = await xattrMap(vol, inode);
  attrs.delete(INLINE_DATA_XATTR);
  const out: Record<string, string> = {};
  for (const name of [...attrs.keys()].sort(compareNames)) {
    let value = attrs.get(name) as Buffer;
    if (name === 'system.posix_acl_access' || name === 'system.posix_acl_default') value = aclToXattr(vol, inode.ino, name, value);
    out[name] = value.toString('latin1');
  }
  return out;
}

/** Inline data: the first 60 bytes in i_block, the rest in the system.data attribute. */
export async function inlineData(vol: Ext4Volume, inode: RawInode): Promise<{ head: Buffer; tail: Buffer }> {
  const tail = (await xattrMap(vol, inode, true)).get(INLINE_DATA_XATTR);
  if (!tail) vol.fail(`inode ${inode.ino}: inline data without its system.data attribute`);
  return { head: inode.raw.subarray(I_BLOCK, I_BLOCK + I_BLOCK_BYTES), tail };
}

/** All attributes, system.data included. `bodyOnly` reads just the inode body (where inline data keeps it). */
async function xattrMap(vol: Ext4Volume, inode: RawInode, bodyOnly = false): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const { raw } = inode;
  const bodyStart = GOOD_OLD_INODE_SIZE + inode.extraIsize;
  if (inode.extraIsize > 0 && bodyStart + 4 <= raw.length && raw.readUInt32LE(bodyStart) === XATTR_MAGIC) {
    // In the inode, value offsets count from the first entry.
    await parseXattrs(vol, inode.ino, raw, bodyStart + 4, bodyStart + 4, 'in-inode attributes', out);
  }
  if (!bodyOnly && inode.fileAcl !== 0) {
    const what = `inode ${inode.ino}: attribute block ${inode.fileAcl}`;
    const block = await vol.block(inode.fileAcl, `inode ${inode.ino}: attribute block`);
    if (block.readUInt32LE(0) !== XATTR_MAGIC) vol.fail(`${what} has a bad magic number`);
    if (block.readUInt32LE(8) !== 1) vol.fail(`${what} claims ${block.readUInt32LE(8)} blocks, not 1`);
    await parseXattrs(vol, inode.ino, block, XATTR_BLOCK_HEADER, 0, 'attribute block', out);
  }
  return out;
}

async function parseXattrs(vol: Ext4Volume, ino: number, area: Buffer, first: number, valueBase: number, where: string, out: Map<string, Buffer>): Promise<void> {
  const what = `inode ${ino}: ${where}`;
  const end = area.length;
  for (let o = first; ; ) {
    if (o + 4 > end) vol.fail(`${what}: xattr entries overrun their area`);
    if (area.readUInt32LE(o) === 0) return; // the end of the list
    if (o + XATTR_ENTRY_HEADER > end) vol.fail(`${what}: xattr entry at ${o} overruns its area`);
    const nameLen = area.readUInt8(o);
    const index = area.readUInt8(o + 1);
    const valueOffs = area.readUInt16LE(o + 2);
    const valueInum = area.readUInt32LE(o + 4);
    const valueSize = area.readUInt32LE(o + 8);
    if (o + XATTR_ENTRY_HEADER + nameLen > end) vol.fail(`${what}: xattr name at ${o} overruns its area`);
    const prefix = XATTR_PREFIXES.get(index);
    if (prefix === undefined) vol.fail(`${what}: xattr entry at ${o} has unknown name index ${index}`);
    const name = prefix + area.toString('utf8', o + XATTR_ENTRY_HEADER, o + XATTR_ENTRY_HEADER + nameLen);
    if (valueSize > MAX_XATTR_VALUE) vol.fail(`${what}: xattr ${name} has a value of ${valueSize} bytes, more than ${MAX_XATTR_VALUE}`);
    let value: Buffer;
    if (valueInum !== 0) {
      // ea_inode: a large value is the content of an inode of its own.
      if (!(vol.sb.incompat & INCOMPAT.ea_inode)) vol.fail(`${what}: xattr ${name} is kept in inode ${valueInum}, but the ea_inode feature is off`);
      const holder = await vol.readInode(valueInum);
      // Not inline: reading inline data reads attributes, and a value must not lead back here.
      if (!(holder.flags & EXT4_EA_INODE_FL) || holder.flags & EXT4_INLINE_DATA_FL || (holder.mode & S_IFMT) !== S_IFREG) vol.fail(`${what}: xattr ${name} points at inode ${valueInum}, which holds no attribute value`);
      if (holder.size !== valueSize) vol.fail(`${what}: xattr ${name} has size ${valueSize}, its inode ${valueInum} ${holder.size}`);
      value = await collect(blockContent(vol, holder));
    } else {
      const start = valueBase + valueOffs;
      if (valueSize > 0 && (start < first || start + valueSize > end)) vol.fail(`${what}: xattr ${name} value overruns its area`);
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
function aclToXattr(vol: Ext4Volume, ino: number, name: string, disk: Buffer): Buffer {
  const bad = (): never => vol.fail(`inode ${ino}: ${name} is not a valid ext4 ACL`);
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
