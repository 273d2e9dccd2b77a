/**
 * A small, strict EROFS reader for tests, written from the kernel's
 * erofs_fs.h and independent of src/layers/erofs.ts: it reads an image back
 * into the oracle's Tree (test/layers/oracle-support/tree.ts), so an image
 * can be compared with a folder path by path. fsck.erofs checks the image
 * too, but its extraction drops setuid bits and cannot show device numbers
 * or xattrs as they are on disk; this reads the inodes themselves.
 *
 * Uncompressed images only (flat plain, flat inline), inline xattrs only;
 * anything else, or anything inconsistent (a dirent type that disagrees with
 * the inode, a wrong `.` or `..`, unsorted names, inline data crossing a
 * block), is an error.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Node, Tree } from '../layers/oracle-support/tree.js';

const BLOCK = 4096;
const TYPES: Record<number, Node['type']> = { 0o040000: 'dir', 0o100000: 'file', 0o120000: 'symlink', 0o010000: 'fifo', 0o020000: 'char', 0o060000: 'block', 0o140000: 'socket' };
const DIRENT_TYPES: Record<Node['type'], number> = { file: 1, dir: 2, char: 3, block: 4, fifo: 5, socket: 6, symlink: 7 };
const PREFIXES: Record<number, string> = { 1: 'user.', 2: 'system.posix_acl_access', 3: 'system.posix_acl_default', 4: 'trusted.', 6: 'security.' };

export interface ErofsInode {
  nid: number;
  type: Node['type'];
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: bigint;
  nlink: number;
  size: number;
  rdev: number;
  xattrs: Map<string, Buffer>;
  data: Buffer;
}

export class ErofsImage {
  readonly image: Buffer;
  readonly metaBlock: number;
  readonly rootNid: number;
  readonly blocks: number;
  readonly inodeCount: number;
  private readonly buildTime: bigint;

  constructor(path: string) {
    this.image = readFileSync(path);
    const sb = 1024;
    if (this.image.readUInt32LE(sb) !== 0xe0f5e1e2) throw new Error('not an EROFS image (bad magic)');
    if (this.image.readUInt8(sb + 12) !== 12) throw new Error('block size is not 4 KiB');
    if (this.image.readUInt32LE(sb + 80) !== 0) throw new Error(`incompatible features ${this.image.readUInt32LE(sb + 80)}`);
    this.rootNid = this.image.readUInt16LE(sb + 14);
    this.inodeCount = Number(this.image.readBigUInt64LE(sb + 16));
    this.buildTime = this.image.readBigUInt64LE(sb + 24);
    this.blocks = this.image.readUInt32LE(sb + 36);
    this.metaBlock = this.image.readUInt32LE(sb + 40);
    if (this.blocks * BLOCK !== this.image.length) throw new Error(`superblock says ${this.blocks} blocks, the file has ${this.image.length / BLOCK}`);
  }

  inode(nid: number): ErofsInode {
    const at = this.metaBlock * BLOCK + nid * 32;
    const format = this.image.readUInt16LE(at);
    const extended = (format & 1) === 1;
    const layout = (format >> 1) & 7;
    if (layout !== 0 && layout !== 2) throw new Error(`nid ${nid}: data layout ${layout} is not supported here`);
    const icount = this.image.readUInt16LE(at + 2);
    const mode = this.image.readUInt16LE(at + 4);
    const type = TYPES[mode & 0o170000];
    if (!type) throw new Error(`nid ${nid}: unknown file type in mode ${mode.toString(8)}`);
    const isize = extended ? 64 : 32;
    const size = extended ? Number(this.image.readBigUInt64LE(at + 8)) : this.image.readUInt32LE(at + 8);
    const iu = this.image.readUInt32LE(at + 16);
    const inode: ErofsInode = {
      nid,
      type,
      mode,
      uid: extended ? this.image.readUInt32LE(at + 24) : this.image.readUInt16LE(at + 24),
      gid: extended ? this.image.readUInt32LE(at + 28) : this.image.readUInt16LE(at + 26),
      mtimeNs: extended ? this.image.readBigUInt64LE(at + 32) * 1_000_000_000n + BigInt(this.image.readUInt32LE(at + 40)) : this.buildTime * 1_000_000_000n,
      nlink: extended ? this.image.readUInt32LE(at + 44) : this.image.readUInt16LE(at + 6),
      size,
      rdev: type === 'char' || type === 'block' ? iu : 0,
      xattrs: new Map(),
      data: Buffer.alloc(0),
    };
    const xsize = icount === 0 ? 0 : 12 + 4 * (icount - 1);
    if (xsize > 0) {
      const start = at + isize;
      if (this.image.readUInt8(start + 4) !== 0) throw new Error(`nid ${nid}: shared xattrs are not supported here`);
      let p = start + 12;
      while (p < start + xsize) {
        const nameLen = this.image.readUInt8(p);
        const index = this.image.readUInt8(p + 1);
        const valueLen = this.image.readUInt16LE(p + 2);
        const prefix = PREFIXES[index];
        if (prefix === undefined) throw new Error(`nid ${nid}: xattr name index ${index}`);
        const name = prefix + this.image.subarray(p + 4, p + 4 + nameLen).toString('utf8');
        inode.xattrs.set(name, Buffer.from(this.image.subarray(p + 4 + nameLen, p + 4 + nameLen + valueLen)));
        p += Math.ceil((4 + nameLen + valueLen) / 4) * 4;
      }
      if (p !== start + xsize) throw new Error(`nid ${nid}: xattr entries overrun their area`);
    }
    if (type === 'file' || type === 'dir' || type === 'symlink') {
      if (layout === 0) inode.data = this.image.subarray(iu * BLOCK, iu * BLOCK + size);
      else {
        const tail = size % BLOCK;
        if (tail === 0) throw new Error(`nid ${nid}: inline layout with no tail`);
        const tailAt = at + isize + xsize;
        if ((tailAt % BLOCK) + tail > BLOCK) throw new Error(`nid ${nid}: inline data crosses a block boundary`);
        inode.data = Buffer.concat([this.image.subarray(iu * BLOCK, iu * BLOCK + size - tail), this.image.subarray(tailAt, tailAt + tail)]);
      }
      if (inode.data.length !== size) throw new Error(`nid ${nid}: data runs past the image`);
    }
    return inode;
  }

  /** A directory's entries in on-disk order, checked: sorted names, sane offsets. */
  entries(dir: ErofsInode): { name: string; nid: number; type: number }[] {
    const out: { name: string; nid: number; type: number; raw: Buffer }[] = [];
    for (let b = 0; b < dir.data.length; b += BLOCK) {
      const block = dir.data.subarray(b, Math.min(b + BLOCK, dir.data.length));
      const first = block.readUInt16LE(8);
      if (first % 12 !== 0 || first === 0 || first > block.length) throw new Error(`nid ${dir.nid}: bad first name offset ${first}`);
      const count = first / 12;
      for (let i = 0; i < count; i++) {
        const nameoff = block.readUInt16LE(i * 12 + 8);
        const end = i + 1 < count ? block.readUInt16LE((i + 1) * 12 + 8) : block.length;
        let raw = block.subarray(nameoff, end);
        if (i + 1 === count && raw.includes(0)) raw = raw.subarray(0, raw.indexOf(0));
        if (raw.length === 0) throw new Error(`nid ${dir.nid}: an empty name`);
        out.push({ name: raw.toString('utf8'), raw, nid: Number(block.readBigUInt64LE(i * 12)), type: block.readUInt8(i * 12 + 10) });
      }
    }
    for (let i = 1; i < out.length; i++) if (Buffer.compare((out[i - 1] as { raw: Buffer }).raw, (out[i] as { raw: Buffer }).raw) >= 0) throw new Error(`nid ${dir.nid}: names out of order`);
    return out.map(({ name, nid, type }) => ({ name, nid, type }));
  }

  /** The whole tree as the oracle sees a folder (user.* xattrs only, as its snapshot reads them). */
  tree(): Tree {
    const tree: Tree = new Map();
    const byNid = new Map<number, string[]>();
    const visit = (nid: number, rel: string, parentNid: number): void => {
      const inode = this.inode(nid);
      const node: Node = {
        type: inode.type,
        perm: (inode.mode & 0o7777).toString(8).padStart(4, '0'),
        uid: inode.uid,
        gid: inode.gid,
        mtime: inode.mtimeNs.toString(),
      };
      if (inode.type === 'file') node.sha256 = createHash('sha256').update(inode.data).digest('hex');
      if (inode.type === 'symlink') node.target = inode.data.toString('utf8');
      if (inode.type === 'char' || inode.type === 'block') node.device = `${(inode.rdev & 0xfff00) >>> 8}:${(inode.rdev & 0xff) | ((inode.rdev >>> 12) & 0xfff00)}`;
      const user = [...inode.xattrs].filter(([name]) => name.startsWith('user.')).sort(([a], [b]) => (a < b ? -1 : 1));
      if (user.length > 0) node.xattrs = Object.fromEntries(user.map(([name, value]) => [name, pythonString(value)]));
      tree.set(rel, node);
      if (inode.type !== 'dir') {
        byNid.set(nid, [...(byNid.get(nid) ?? []), rel]);
        return;
      }
      let subdirs = 0;
      for (const entry of this.entries(inode)) {
        if (entry.name === '.' || entry.name === '..') {
          const want = entry.name === '.' ? nid : parentNid;
          if (entry.nid !== want) throw new Error(`${rel}: "${entry.name}" points at nid ${entry.nid}, not ${want}`);
          continue;
        }
        const child = this.inode(entry.nid);
        if (DIRENT_TYPES[child.type] !== entry.type) throw new Error(`${rel}/${entry.name}: dirent type ${entry.type} but the inode is a ${child.type}`);
        if (child.type === 'dir') subdirs++;
        visit(entry.nid, rel === '.' ? entry.name : `${rel}/${entry.name}`, nid);
      }
      if (inode.nlink !== 2 + subdirs) throw new Error(`${rel}: nlink ${inode.nlink}, expected ${2 + subdirs}`);
    };
    visit(this.rootNid, '.', this.rootNid);
    for (const [nid, paths] of byNid) {
      const inode = this.inode(nid);
      if (inode.nlink !== paths.length) throw new Error(`${paths.join(', ')}: nlink ${inode.nlink}, but ${paths.length} names`);
      if (paths.length < 2) continue;
      for (const path of paths) (tree.get(path) as Node).links = paths.filter((p) => p !== path).sort().join(',');
    }
    return tree;
  }
}

/** How the oracle's python snapshot shows xattr bytes: UTF-8, with undecodable bytes as lone surrogates. */
function pythonString(value: Buffer): string {
  const text = value.toString('utf8');
  if (Buffer.from(text, 'utf8').equals(value)) return text;
  return [...value].map((b) => (b < 0x80 ? String.fromCharCode(b) : String.fromCharCode(0xdc00 + b))).join('');
}
