import { createHash, randomBytes } from 'node:crypto';
import { chmod, chown, copyFile, link, lutimes, mkdir, mkdtemp, open, readFile, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { damageRuns } from '../../test/helpers/damage.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LayerError } from '../util/errors.js';
import { Ext4Image, walkTree } from './ext4.js';
import { compareNames, type TreeEntry } from './tree-entry.js';

/**
 * The ext4 reader against real images: a folder with every kind of object
 * cs meets in an overlay upper (files with holes, long and short symlinks,
 * hardlinks, a fifo, special modes, non-ASCII names, xattrs in the inode
 * and in a block, a 5000-entry hashed directory) goes through `mke2fs -d`,
 * what needs root on the host (device nodes, whiteouts, trusted.* xattrs,
 * sockets, unwritten extents, post-2038 times) is added with debugfs, and
 * walkTree must give back exactly what was put in, for each on-disk layout
 * mke2fs can make. Then copies are corrupted the ways a hostile guest
 * could, and every fault must be a LayerError that names it.
 */

const MiB = 1024 * 1024;
const BASE_MTIME = 1_600_000_000;
const IS_ROOT = process.getuid?.() === 0;
const MY_UID = process.getuid?.() ?? 0;
const MY_GID = process.getgid?.() ?? 0;
const OWNED = { uid: 100_000, gid: 200_001 };

// --- the tree that goes in ---

type Spec = (
  | { kind: 'file'; path: string; mode: number; pieces: { at: number; data: Buffer }[]; size: number; links?: string[]; xattrs?: Record<string, Buffer>; owned?: boolean }
  | { kind: 'dir'; path: string; mode: number; xattrs?: Record<string, Buffer> }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'fifo'; path: string; mode: number }
) & { mtime?: number };

const file = (path: string, mode: number, data: string | Buffer, extra: Partial<Extract<Spec, { kind: 'file' }>> = {}): Spec => {
  const bytes = Buffer.from(data);
  return { kind: 'file', path, mode, pieces: [{ at: 0, data: bytes }], size: bytes.length, ...extra };
};
const dir = (path: string, mode: number, xattrs?: Record<string, Buffer>): Spec => ({ kind: 'dir', path, mode, ...(xattrs ? { xattrs } : {}) });
const mtimeOf = (s: Spec): number => s.mtime as number;

/** An ACL as getxattr(2) gives it: version 2, then (tag, perm, id) entries sorted by tag. */
function aclXattr(entries: [tag: number, perm: number, id?: number][]): Buffer {
  const out = Buffer.alloc(4 + entries.length * 8);
  out.writeUInt32LE(2, 0);
  entries.forEach(([tag, perm, id], i) => {
    out.writeUInt16LE(tag, 4 + i * 8);
    out.writeUInt16LE(perm, 6 + i * 8);
    out.writeUInt32LE(id ?? 0xffffffff, 8 + i * 8);
  });
  return out;
}

/** Entries of the hashed folder; images with 1 KiB blocks get fewer, as mke2fs -d takes seconds per thousand there. */
const MANY = 5000;
const MANY_SMALL = 1000;
const isMany = (s: Spec): boolean => s.path.startsWith('many/');

function sourceSpec(): Spec[] {
  const fragmented: { at: number; data: Buffer }[] = [];
  for (let i = 0; i < 16; i++) fragmented.push({ at: i * 128 * 1024, data: randomBytes(8192) });
  const spec: Spec[] = [
    dir('a', 0o755),
    dir('a/b', 0o750),
    dir('a/b/c', 0o700),
    file('a/b/c/deep.txt', 0o644, 'deep\n'),
    file('empty', 0o644, ''),
    file('small.txt', 0o644, 'hello, world\n'),
    file('block-1024.bin', 0o600, randomBytes(1024)),
    file('block-4096.bin', 0o600, randomBytes(4096)),
    file('block-65536.bin', 0o600, randomBytes(65536)),
    file('big.bin', 0o644, randomBytes(3 * MiB + 123)),
    { kind: 'file', path: 'sparse.bin', mode: 0o644, pieces: [{ at: 0, data: randomBytes(MiB) }, { at: 3 * MiB + 4096, data: randomBytes(100_000) }], size: 5 * MiB },
    { kind: 'file', path: 'fragmented.bin', mode: 0o644, pieces: fragmented, size: 2 * MiB + 5 },
    file('setuid', 0o4755, '#!/bin/sh\n'),
    file('setgid-file', 0o2711, '#!/bin/sh\n'),
    dir('sticky', 0o1777),
    dir('setgid', 0o2775),
    file('setgid/inside', 0o664, 'x'),
    { kind: 'symlink', path: 'short-link', target: 'small.txt' },
    { kind: 'symlink', path: 'long-link', target: `${'dir/'.repeat(49)}file` },
    { kind: 'symlink', path: 'link-59', target: 'y'.repeat(59) },
    { kind: 'symlink', path: 'link-60', target: 'z'.repeat(60) },
    { kind: 'symlink', path: 'a/up', target: '../small.txt' },
    file('hard1', 0o640, 'shared\n', { links: ['a/hard2', 'z-hard3'] }),
    { kind: 'fifo', path: 'fifo', mode: 0o620 },
    file('héllo wörld.txt', 0o644, 'accents\n'),
    dir('日本語', 0o755),
    file('日本語/ファイル.txt', 0o644, 'kana\n'),
    file('emoji-🙂', 0o644, 'smile\n'),
    file('xattrs.txt', 0o644, 'x', { xattrs: { 'user.x': Buffer.from('hello'), 'user.bin': Buffer.from([0, 0xff, 0x80, 0x0a]) } }),
    file('bigxattr.txt', 0o644, 'big attribute'),
    dir('acl', 0o750, {
      'system.posix_acl_access': aclXattr([[1, 7], [2, 5, 1000], [4, 5], [0x10, 5], [0x20, 0]]),
      'system.posix_acl_default': aclXattr([[1, 7], [4, 5], [8, 7, 2000], [0x10, 7], [0x20, 0]]),
    }),
    file('owned', 0o644, 'not mine', { owned: true }),
    dir('many', 0o755),
  ];
  for (let i = 0; i < MANY; i++) spec.push(file(`many/entry-${String(i).padStart(4, '0')}-${'n'.repeat(i % 37)}`, 0o644, ''));
  spec.forEach((s, i) => (s.mtime = BASE_MTIME + i));
  return spec;
}

function content(s: Extract<Spec, { kind: 'file' }>): Buffer {
  const out = Buffer.alloc(s.size);
  for (const p of s.pieces) p.data.copy(out, p.at);
  return out;
}

async function sh(command: string, args: string[], okExitCodes = [0]): Promise<string> {
  const result = await execa(command, args, { reject: false, stdin: 'ignore' });
  if (!okExitCodes.includes(result.exitCode ?? -1)) throw new Error(`${command} ${args.join(' ')} failed (${result.exitCode}): ${result.stderr}`);
  return result.stdout;
}

/** Runs debugfs commands and fails on any error it reports (debugfs itself exits 0 regardless). */
async function debugfs(image: string, commands: string[], write = true): Promise<string> {
  const result = await execa('debugfs', [...(write ? ['-w'] : []), '-f', '-', image], { input: `${commands.join('\n')}\n`, reject: false });
  const errors = result.stderr.split('\n').filter((l) => l.trim() !== '' && !/^debugfs \d/.test(l));
  if (result.exitCode !== 0 || errors.length > 0) throw new Error(`debugfs ${commands.join('; ')}: ${result.stderr}`);
  return result.stdout;
}

async function inBatches<T>(items: T[], each: (item: T) => Promise<unknown>): Promise<void> {
  for (let i = 0; i < items.length; i += 64) await Promise.all(items.slice(i, i + 64).map(each));
}

async function makeSource(root: string, spec: Spec[]): Promise<void> {
  const upper = join(root, 'upper');
  await mkdir(upper, { recursive: true });
  // Folders first (parents come before children in the spec), then the rest side by side.
  for (const s of spec) if (s.kind === 'dir') await mkdir(join(upper, s.path));
  await inBatches(spec, async (s) => {
    const full = join(upper, s.path);
    if (s.kind === 'symlink') await symlink(s.target, full);
    else if (s.kind === 'fifo') await sh('mkfifo', [full]);
    else if (s.kind === 'file') {
      const fh = await open(full, 'w');
      for (const p of s.pieces) await fh.write(p.data, 0, p.data.length, p.at);
      await fh.truncate(s.size);
      await fh.close();
      for (const other of s.links ?? []) await link(full, join(upper, other));
      if (s.owned && IS_ROOT) await chown(full, OWNED.uid, OWNED.gid);
    }
  });
  // Modes, then attributes (an ACL must match the mode it is set with), then times last.
  await inBatches(spec, (s) => (s.kind === 'symlink' ? Promise.resolve() : chmod(join(upper, s.path), s.mode)));
  for (const s of spec) {
    if (s.kind !== 'file' && s.kind !== 'dir') continue;
    for (const [name, value] of Object.entries(s.xattrs ?? {})) await sh('setfattr', ['-n', name, '-v', `0x${value.toString('hex')}`, join(upper, s.path)]);
  }
  await inBatches(spec, (s) => lutimes(join(upper, s.path), mtimeOf(s), mtimeOf(s)));
}

// --- what comes out, in a comparable form ---

/** An entry as walkTree gives it, with its content as a digest instead of a stream. */
type Seen = Omit<TreeEntry, 'open'> & { sha256?: string };

const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/** Tree order: depth-first, bytewise names per folder, a folder before its contents. */
function treeOrder(a: string, b: string): number {
  const pa = a.split('/');
  const pb = b.split('/');
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    const c = compareNames(pa[i] as string, pb[i] as string);
    if (c !== 0) return c;
  }
  return pa.length - pb.length;
}

function expectedFromSpec(spec: Spec[]): Seen[] {
  const out: Seen[] = [];
  for (const s of spec) {
    const mtime = mtimeOf(s);
    const owner = s.kind === 'file' && s.owned ? OWNED : { uid: MY_UID, gid: MY_GID };
    const base = { mode: s.kind === 'symlink' ? 0o777 : s.mode, ...owner, mtime, size: 0 };
    const xattrs = s.kind === 'file' || s.kind === 'dir' ? s.xattrs : undefined;
    const withAttrs = xattrs ? { xattrs: Object.fromEntries(Object.entries(xattrs).map(([k, v]) => [k, v.toString('latin1')])) } : {};
    if (s.kind === 'dir') out.push({ path: s.path, type: 'directory', ...base, ...withAttrs });
    else if (s.kind === 'symlink') out.push({ path: s.path, type: 'symlink', ...base, linkname: s.target });
    else if (s.kind === 'fifo') out.push({ path: s.path, type: 'fifo', ...base });
    else {
      // The first of a hardlinked file's names in tree order carries it; the others link to it.
      const names = [s.path, ...(s.links ?? [])].sort(treeOrder);
      out.push({ path: names[0] as string, type: 'file', ...base, ...withAttrs, size: s.size, sha256: sha256(content(s)) });
      for (const other of names.slice(1)) out.push({ path: other, type: 'hardlink', ...base, linkname: names[0] as string });
    }
  }
  return out;
}

async function collect(image: Ext4Image, ino: number, options: { exclude?: (path: string) => boolean } = {}): Promise<{ seen: Seen[]; maxChunk: number }> {
  const seen: Seen[] = [];
  let maxChunk = 0;
  for await (const e of walkTree(image, ino, options)) {
    const { open: openContent, ...rest } = e;
    const item: Seen = { ...rest };
    if (openContent) {
      const hash = createHash('sha256');
      let length = 0;
      for await (const chunk of openContent() as AsyncIterable<Buffer>) {
        hash.update(chunk);
        length += chunk.length;
        maxChunk = Math.max(maxChunk, chunk.length);
      }
      expect(length, e.path).toBe(e.size);
      item.sha256 = hash.digest('hex');
    }
    seen.push(item);
  }
  return { seen, maxChunk };
}

// --- images ---

interface Variant {
  name: string;
  args: string[];
  size: string;
  extents: boolean;
  inline?: boolean;
  /** Bytes of the large attribute value. */
  bigXattr: number;
  /** The value is larger than a block, so it must live in an inode of its own. */
  eaInode?: boolean;
  /** Made from the source with MANY_SMALL entries in the hashed folder. */
  small?: boolean;
}

const VARIANTS: Variant[] = [
  { name: 'ext4, 4 KiB blocks, as cs makes workspace disks', args: ['-t', 'ext4', '-b', '4096', '-N', '16384', '-m', '0', '-E', 'lazy_itable_init=1,lazy_journal_init=1'], size: '64M', extents: true, bigXattr: 3000 },
  { name: 'ext4, 1 KiB blocks (mke2fs defaults for small disks)', args: ['-t', 'ext4'], size: '64M', extents: true, bigXattr: 700, small: true },
  { name: 'ext4 with inline_data', args: ['-t', 'ext4', '-b', '4096', '-N', '16384', '-O', 'inline_data'], size: '64M', extents: true, inline: true, bigXattr: 3000 },
  { name: 'ext3 (block maps, no extents)', args: ['-t', 'ext3', '-b', '4096', '-N', '16384'], size: '64M', extents: false, bigXattr: 3000 },
  // 48 inodes in each of 32 groups: the files fill groups past 16, the second meta group.
  { name: 'ext4 with meta_bg over 32 groups', args: ['-t', 'ext4', '-b', '1024', '-O', 'meta_bg,^resize_inode', '-N', '1536'], size: '256M', extents: true, bigXattr: 700, small: true },
  { name: 'ext4 with bigalloc', args: ['-t', 'ext4', '-O', 'bigalloc', '-C', '16384', '-N', '8192'], size: '64M', extents: true, bigXattr: 700, small: true },
  { name: 'ext4 with ea_inode (a 3000-byte attribute value beside 1 KiB blocks)', args: ['-t', 'ext4', '-b', '1024', '-N', '16384', '-O', 'ea_inode'], size: '64M', extents: true, bigXattr: 3000, eaInode: true, small: true },
  { name: 'ext4 with 64 KiB blocks', args: ['-t', 'ext4', '-b', '65536', '-N', '16384'], size: '64M', extents: true, bigXattr: 3000 },
];

/** What debugfs adds, the way a guest running as root would make it. */
function additions(variant: Variant, bigValue: Buffer, bigValueFile: string): { commands: string[]; expected: Seen[] } {
  const root = { uid: 0, gid: 0, size: 0 };
  const commands = [
    'cd /upper',
    'mknod gone c 0 0',
    'sif gone mode 020000',
    'sif gone mtime @4102444800',
    'mknod tty c 4 64',
    'sif tty mode 020620',
    'mknod nvme0n1 b 259 300',
    'sif nvme0n1 mode 060660',
    'mknod sda b 8 0',
    'sif sda mode 060640',
    'ea_set a trusted.overlay.opaque y',
    'write /dev/null sock',
    'sif sock mode 0140755',
    // debugfs reads a value file one block at a time, so a value larger than a block goes on the command line (as text).
    variant.eaInode ? `ea_set bigxattr.txt user.big ${bigValue.toString('latin1')}` : `ea_set -f ${bigValueFile} bigxattr.txt user.big`,
  ];
  // mke2fs -d with inline_data (e2fsprogs 1.47.0) sets i_size to the end of the last data, dropping a trailing hole; put the sizes right.
  if (variant.inline) commands.push('sif sparse.bin size 5242880', 'sif fragmented.bin size 2097157');
  for (const name of ['tty', 'nvme0n1', 'sda']) commands.push(`sif ${name} mtime @${BASE_MTIME}`);
  for (const name of ['gone', 'tty', 'nvme0n1', 'sda']) commands.push(`sif ${name} uid 0`, `sif ${name} gid 0`);
  if (!IS_ROOT) commands.push(`sif owned uid ${OWNED.uid}`, `sif owned gid ${OWNED.gid}`);
  const expected: Seen[] = [
    { path: 'gone', type: 'char', mode: 0, ...root, mtime: 4102444800, devmajor: 0, devminor: 0 },
    { path: 'tty', type: 'char', mode: 0o620, ...root, mtime: BASE_MTIME, devmajor: 4, devminor: 64 },
    { path: 'nvme0n1', type: 'block', mode: 0o660, ...root, mtime: BASE_MTIME, devmajor: 259, devminor: 300 },
    { path: 'sda', type: 'block', mode: 0o640, ...root, mtime: BASE_MTIME, devmajor: 8, devminor: 0 },
  ];
  if (!variant.inline) {
    // An unwritten (fallocated) extent past the written data reads as zeros.
    commands.push('write /dev/null prealloc', 'fallocate prealloc 0 15', 'sif prealloc size 40000', 'sif prealloc mode 0100644', `sif prealloc mtime @${BASE_MTIME}`, 'sif prealloc uid 0', 'sif prealloc gid 0');
    expected.push({ path: 'prealloc', type: 'file', mode: 0o644, ...root, size: 40000, mtime: BASE_MTIME, sha256: sha256(Buffer.alloc(40000)) });
  }
  return { commands, expected };
}

let work: string;
/** The full tree, and the same with fewer entries in the hashed folder. */
const sources = { full: { path: '', spec: [] as Spec[] }, small: { path: '', spec: [] as Spec[] } };

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'cs-ext4-'));
  const spec = sourceSpec();
  let manySeen = 0;
  sources.full = { path: join(work, 'source'), spec };
  sources.small = { path: join(work, 'source-small'), spec: spec.filter((s) => !isMany(s) || manySeen++ < MANY_SMALL) };
  await Promise.all([makeSource(sources.full.path, sources.full.spec), makeSource(sources.small.path, sources.small.spec)]);
  // What the kernel keeps is what the expectations say (ACLs are normalised by it).
  const dump = await sh('getfattr', ['-d', '-m', '-', '-e', 'hex', join(sources.full.path, 'upper', 'acl')]);
  expect(dump).toContain(`system.posix_acl_access=0x${aclXattr([[1, 7], [2, 5, 1000], [4, 5], [0x10, 5], [0x20, 0]]).toString('hex')}`);
  // mke2fs -d links 5000 names one by one (seconds per image): make them all at once; failures surface where each is awaited.
  for (const variant of VARIANTS) imageFor(variant).catch(() => undefined);
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

async function buildImage(variant: Variant, name: string): Promise<{ path: string; expected: Seen[]; bigValue: Buffer; spec: Spec[] }> {
  const path = join(work, `${name}.ext4`);
  const source = variant.small ? sources.small : sources.full;
  await sh('mke2fs', ['-q', '-F', ...variant.args, '-d', source.path, path, variant.size]);
  // Index the directories (mke2fs -d fills them linearly) so the 5000-entry one is an htree.
  await sh('e2fsck', ['-fyD', path], [0, 1]);
  const bigValue = variant.eaInode
    ? Buffer.from('an-attribute-value-in-an-inode-of-its-own.'.repeat(100).slice(0, variant.bigXattr))
    : Buffer.from(Array.from({ length: variant.bigXattr }, (_, i) => (i * 31 + 7) % 256));
  const bigValueFile = join(work, `${name}.value`);
  await writeFile(bigValueFile, bigValue);
  const extra = additions(variant, bigValue, bigValueFile);
  await debugfs(path, extra.commands);
  const expected = expectedFromSpec(source.spec).map((e) => (e.path === 'a' ? { ...e, xattrs: { 'trusted.overlay.opaque': 'y' } } : e));
  const big = expected.find((e) => e.path === 'bigxattr.txt') as Seen;
  big.xattrs = { 'user.big': bigValue.toString('latin1') };
  expected.push(...extra.expected);
  expected.sort((x, y) => treeOrder(x.path, y.path));
  return { path, expected, bigValue, spec: source.spec };
}

type Built = Awaited<ReturnType<typeof buildImage>>;
const builds = new Map<Variant, Promise<Built>>();

/** Each variant's image is made once and shared by the tests that use it. */
function imageFor(variant: Variant): Promise<Built> {
  let build = builds.get(variant);
  if (!build) {
    build = buildImage(variant, `variant-${VARIANTS.indexOf(variant)}`);
    builds.set(variant, build);
  }
  return build;
}

/** The image of a variant, opened for the tests of one describe block (and closed after them). */
function openedImage(variant: Variant): { built: Built; image: Ext4Image; upper: number } {
  const opened = {} as { built: Built; image: Ext4Image; upper: number };
  beforeAll(async () => {
    opened.built = await imageFor(variant);
    opened.image = await Ext4Image.open(opened.built.path);
    opened.upper = (await opened.image.lookup('/upper')) as number;
  });
  afterAll(async () => {
    await opened.image?.close();
  });
  return opened;
}

describe.each(VARIANTS)('an image made by mke2fs: $name', (variant) => {
  const o = openedImage(variant);

  it('gives back the tree that was put in: types, modes, owners, mtimes, contents, links, devices and xattrs', async () => {
    const { seen, maxChunk } = await collect(o.image, o.upper);
    // Paths first (the order), then each entry: a mismatch names its path instead of diffing 5000 entries.
    expect(seen.map((e) => e.path)).toEqual(o.built.expected.map((e) => e.path));
    seen.forEach((entry, i) => expect(entry, entry.path).toEqual(o.built.expected[i]));
    // Content is read in large pieces, and never more than 1 MiB at once.
    expect(maxChunk).toBe(MiB);
  });

  it(`reads the ${variant.small ? MANY_SMALL : MANY}-entry hashed (htree) directory completely`, async () => {
    const many = (await o.image.lookup('upper/many')) as number;
    expect((await o.image.inode(many)).flags & 0x1000).toBe(0x1000); // EXT4_INDEX_FL
    const names = (await o.image.readDir(many)).map((e) => e.name);
    expect(names).toHaveLength(variant.small ? MANY_SMALL : MANY);
    expect(new Set(names)).toEqual(new Set(o.built.spec.filter(isMany).map((s) => s.path.slice('many/'.length))));
  });

});

describe('a workspace disk as cs makes it', () => {
  const variant = VARIANTS[0] as Variant;
  const o = openedImage(variant);

  it('has exercised each storage path: holes, an extent tree deeper than the inode, unwritten extents, xattrs in the inode and in a block', async () => {
    const stat = (p: string): Promise<string> => debugfs(o.built.path, [`stat ${p}`], false);
    expect(await debugfs(o.built.path, ['ex /upper/prealloc'], false)).toContain('Uninit');
    expect(await stat('/upper/fragmented.bin')).toMatch(/\(ETB0\)/);
    const sparse = await stat('/upper/sparse.bin');
    expect(Number(/Blockcount: (\d+)/.exec(sparse)?.[1]) * 512).toBeLessThan(2 * MiB);
    expect(await stat('/upper/xattrs.txt')).toMatch(/File ACL: 0\b/);
    expect(await stat('/upper/bigxattr.txt')).toMatch(/File ACL: [1-9]/);
  });

  it('looks paths up without following symlinks', async () => {
    expect(await o.image.lookup('upper')).toBe(o.upper);
    expect(await o.image.lookup('/upper/')).toBe(o.upper);
    expect(await o.image.lookup('/')).toBe(2);
    expect(await o.image.lookup('/upper/a/b/c/deep.txt')).toBeTypeOf('number');
    expect(await o.image.lookup('/upper/日本語/ファイル.txt')).toBeTypeOf('number');
    expect(await o.image.lookup('/upper/nope')).toBeUndefined();
    expect(await o.image.lookup('/upper/small.txt/below')).toBeUndefined();
    expect(await o.image.lookup('/upper/short-link')).toBeTypeOf('number');
    expect(await o.image.lookup('/upper/short-link/x')).toBeUndefined();
    expect((await o.image.readDir(2)).map((e) => e.name).sort()).toEqual(['lost+found', 'upper']);
    const link = (await o.image.lookup('/upper/long-link')) as number;
    expect(await o.image.readlink(link)).toBe(`${'dir/'.repeat(49)}file`);
    const gone = await o.image.inode((await o.image.lookup('/upper/gone')) as number);
    expect(gone).toMatchObject({ mode: 0o020000, rdev: { major: 0, minor: 0 }, nlink: 1 });
  });

  it('leaves out what exclude names, with everything under it', async () => {
    const { seen } = await collect(o.image, o.upper, { exclude: (p) => p === 'many' || p === 'a/b' || p.endsWith('.bin') });
    const paths = seen.map((e) => e.path);
    expect(paths).toContain('a');
    expect(paths).toContain('a/hard2');
    expect(paths.filter((p) => p === 'many' || p.startsWith('many/') || p.startsWith('a/b') || p.endsWith('.bin'))).toEqual([]);
  });

  it('refuses to read what is not of the kind asked for', async () => {
    const small = (await o.image.lookup('/upper/small.txt')) as number;
    await expect(o.image.readDir(small)).rejects.toMatchObject({ code: 'LAYER_EXT4_NOT_A_DIRECTORY' });
    await expect(o.image.readlink(small)).rejects.toMatchObject({ code: 'LAYER_EXT4_NOT_A_SYMLINK' });
    await expect(readAll(o.image.readFile(o.upper))).rejects.toMatchObject({ code: 'LAYER_EXT4_NOT_A_FILE' });
    await expect(o.image.inode(0)).rejects.toThrow(/inode 0 is out of range/);
    await expect(o.image.inode(16385)).rejects.toThrow(/inode 16385 is out of range/);
    // Inode 16000 lies in the part of the table mke2fs left uninitialized.
    await expect(o.image.inode(16000)).rejects.toThrow(/inode 16000 is not in use/);
  });
});

async function readAll(stream: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of stream) parts.push(part);
  return Buffer.concat(parts);
}

// --- hostile images ---

describe('a damaged or hostile image', () => {
  let clean: string;
  let bs: number;
  let n = 0;

  beforeAll(async () => {
    const src = join(work, 'small-source');
    await mkdir(join(src, 'upper', 'dir'), { recursive: true });
    await writeFile(join(src, 'upper', 'file'), randomBytes(20_000));
    await writeFile(join(src, 'upper', 'dir', 'x'), 'x');
    await writeFile(join(src, 'upper', 'dir', 'y'), 'y');
    await writeFile(join(src, 'upper', 'smallx'), 's');
    await writeFile(join(src, 'upper', 'bigx'), 'b');
    await symlink('t'.repeat(200), join(src, 'upper', 'longlink'));
    // A name that is not UTF-8 (Linux names are bytes).
    await writeFile(Buffer.concat([Buffer.from(join(src, 'upper', 'caf')), Buffer.from([0xe9])]), 'latin1 name');
    await sh('setfattr', ['-n', 'user.a', '-v', 'in-inode', join(src, 'upper', 'smallx')]);
    clean = join(work, 'small.ext4');
    await sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-N', '256', '-E', 'lazy_itable_init=1,lazy_journal_init=1', '-d', src, clean, '8M']);
    await writeFile(join(work, 'bigvalue'), Buffer.alloc(3000, 'v'));
    await debugfs(clean, [`ea_set -f ${join(work, 'bigvalue')} /upper/bigx user.big`]);
    bs = 4096;
  });

  /** A copy of the clean image with `patches` written over it. */
  async function corrupt(patches: { at: number; bytes: Buffer | number[] }[], prepare: string[] = []): Promise<string> {
    const path = join(work, `hostile-${n++}.ext4`);
    await copyFile(clean, path);
    if (prepare.length > 0) await debugfs(path, prepare);
    const fh = await open(path, 'r+');
    for (const p of patches) {
      const bytes = Buffer.from(p.bytes);
      await fh.write(bytes, 0, bytes.length, p.at);
    }
    await fh.close();
    return path;
  }

  async function inodeAt(path: string): Promise<number> {
    const out = await debugfs(clean, [`imap ${path}`], false);
    const m = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(out);
    if (!m) throw new Error(`imap ${path}: ${out}`);
    return Number(m[1]) * bs + parseInt(m[2] as string, 16);
  }
  async function firstBlock(path: string): Promise<number> {
    // stdout echoes the command, then lists the block numbers.
    const out = await debugfs(clean, [`blocks ${path}`], false);
    const block = Number(out.trim().split('\n').at(-1)?.trim().split(/\s+/)[0]);
    if (!Number.isInteger(block) || block <= 0) throw new Error(`blocks ${path}: ${out}`);
    return block * bs;
  }
  const u32 = (value: number): number[] => [...Buffer.from(Uint32Array.of(value).buffer)];
  const u16 = (value: number): number[] => [value & 0xff, value >> 8];

  async function walkAll(path: string): Promise<void> {
    const image = await Ext4Image.open(path);
    try {
      const upper = await image.lookup('/upper');
      if (upper === undefined) return;
      await collect(image, upper);
    } finally {
      await image.close();
    }
  }

  async function expectLayerError(promise: Promise<unknown>, message: RegExp, code = 'LAYER_EXT4_CORRUPT'): Promise<void> {
    const error = await promise.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(LayerError);
    expect((error as LayerError).message).toMatch(message);
    expect((error as LayerError).code).toBe(code);
  }

  it('reads the clean image', async () => {
    await walkAll(clean);
  });

  it('refuses what is not ext4: zeros, a short file, a missing file', async () => {
    const zeros = join(work, 'zeros.img');
    await writeFile(zeros, Buffer.alloc(MiB));
    await expectLayerError(Ext4Image.open(zeros), /^zeros\.img: not an ext4 file system/, 'LAYER_NOT_EXT4');
    const short = join(work, 'short.img');
    await writeFile(short, 'hello');
    await expectLayerError(Ext4Image.open(short), /not an ext4 file system/, 'LAYER_NOT_EXT4');
    await expectLayerError(Ext4Image.open(join(work, 'absent.img')), /cannot open/, 'LAYER_EXT4_OPEN');
  });

  it('refuses a disk whose journal was not replayed (needs_recovery)', async () => {
    const incompat = (await readFile(clean)).readUInt32LE(1024 + 0x60);
    const path = await corrupt([{ at: 1024 + 0x60, bytes: u32(incompat | 0x4) }]);
    await expectLayerError(Ext4Image.open(path), /disk was not cleanly stopped/, 'LAYER_NEEDS_RECOVERY');
  });

  it('refuses features it cannot read, naming them', async () => {
    const incompat = (await readFile(clean)).readUInt32LE(1024 + 0x60);
    const path = await corrupt([{ at: 1024 + 0x60, bytes: u32(incompat | 0x10000 | 0x1000 | 0x800000) }]);
    await expectLayerError(Ext4Image.open(path), /cannot read: dirdata, encrypt, unknown \(0x800000\)/, 'LAYER_EXT4_UNSUPPORTED');
  });

  it('refuses a truncated image', async () => {
    const path = await corrupt([]);
    await truncate(path, 4 * MiB);
    await expectLayerError(Ext4Image.open(path), /needs 8388608 bytes, but the image file has 4194304/, 'LAYER_EXT4_TRUNCATED');
  });

  it('refuses extent trees deeper than 5 or with a bad magic, and extents beyond the device', async () => {
    const inode = await inodeAt('/upper/file');
    // i_block (at 0x28) starts with the extent header: magic, entries, max, depth; the first extent follows.
    const cases: [{ at: number; bytes: number[] }, RegExp][] = [
      [{ at: inode + 0x28 + 6, bytes: u16(9) }, /inode \d+: extent tree deeper than 5/],
      [{ at: inode + 0x28, bytes: u16(0) }, /inode \d+: bad extent header magic/],
    ];
    for (const [patch, message] of cases) {
      const image = await Ext4Image.open(await corrupt([patch]));
      await expectLayerError(readAll(image.readFile((await image.lookup('/upper/file')) as number)), message);
      await image.close();
    }
    const image = await Ext4Image.open(await corrupt([{ at: inode + 0x28 + 12 + 8, bytes: u32(0xfffffff0) }]));
    await expectLayerError(readAll(image.readFile((await image.lookup('/upper/file')) as number)), /blocks 4294967280\.\.\d+ are beyond the device/);
    await image.close();
  });

  it('refuses broken directory records', async () => {
    const block = await firstBlock('/upper/dir');
    const cases: [{ at: number; bytes: number[] | Buffer }, RegExp][] = [
      [{ at: block, bytes: Buffer.alloc(bs, 0xab) }, /directory block 0: entry at 0 has rec_len 43947, not a multiple of 4/],
      [{ at: block + 4, bytes: u16(4) }, /directory block 0: entry at 0 has rec_len 4, less than 8/],
      [{ at: block + 4, bytes: u16(bs + 4) }, /directory block 0: entry at 0 \(rec_len 4100\) overruns its block/],
      [{ at: block + 6, bytes: [200] }, /directory block 0: entry at 0 has name_len 200, more than its rec_len 12 holds/],
      [{ at: block, bytes: u32(0xffffff00) }, /names inode 4294967040, out of range/],
      [{ at: block + 8, bytes: [0x2f] }, /contains "\/" or NUL/],
    ];
    for (const [patch, message] of cases) await expectLayerError(walkAll(await corrupt([patch])), message);
  });

  it('decodes names as UTF-8, replacing bytes that are not, and refuses a folder where two names come out the same', async () => {
    const image = await Ext4Image.open(clean);
    const upper = (await image.lookup('/upper')) as number;
    expect((await image.readDir(upper)).map((e) => e.name)).toContain('caf\ufffd');
    await image.close();
    // Rename dir/y to dir/x in place: its record's name is the byte after name_len 1 and a file type.
    const block = await firstBlock('/upper/dir');
    const data = (await readFile(clean)).subarray(block, block + bs);
    let at = 0;
    while (!(data.readUInt8(at + 6) === 1 && data[at + 8] === 0x79)) at += data.readUInt16LE(at + 4);
    await expectLayerError(walkAll(await corrupt([{ at: block + at + 8, bytes: [0x78] }])), /directory dir \(inode \d+\) has two entries named "x"/);
  });

  it('refuses a directory that contains its own ancestor (a cycle)', async () => {
    const path = await corrupt([], ['ln /upper /upper/dir/loop']);
    await expectLayerError(walkAll(path), /directory dir\/loop \(inode \d+\) is reached twice/);
  });

  it('refuses a symlink target longer than 4096 bytes', async () => {
    const path = await corrupt([], ['sif /upper/longlink size 5000']);
    await expectLayerError(walkAll(path), /symlink target of 5000 bytes is longer than 4096/);
  });

  it('refuses xattr entries that overrun their area, in the inode and in the block', async () => {
    const stat = await debugfs(clean, ['stat /upper/bigx'], false);
    const aclBlock = Number(/File ACL: (\d+)/.exec(stat)?.[1]);
    expect(aclBlock).toBeGreaterThan(0);
    // The first entry of the block starts after its 32-byte header; e_value_size is at +8.
    await expectLayerError(walkAll(await corrupt([{ at: aclBlock * bs + 32 + 8, bytes: u32(60_000) }])), /attribute block: xattr user\.big value overruns its area/);
    await expectLayerError(walkAll(await corrupt([{ at: aclBlock * bs + 32 + 8, bytes: u32(70_000) }])), /value of 70000 bytes, more than 65536/);
    // In the inode, the entries start after i_extra_isize and a 4-byte magic; e_value_offs is at +2.
    const inode = await inodeAt('/upper/smallx');
    const extra = (await readFile(clean)).readUInt16LE(inode + 0x80);
    await expectLayerError(walkAll(await corrupt([{ at: inode + 0x80 + extra + 4 + 2, bytes: u16(200) }])), /in-inode attributes: xattr user\.a value overruns its area/);
    await expectLayerError(walkAll(await corrupt([{ at: inode + 0x80 + extra + 4, bytes: [120] }])), /in-inode attributes: xattr name at \d+ overruns its area/);
  });

  it('meets random damage to its metadata with LayerErrors only, and always ends', async () => {
    // Fuzz the bytes a guest controls that the reader interprets: the superblock, the group
    // descriptors, the used inodes, and the directory, extent and xattr blocks.
    const table = Number(/Inode table at (\d+)/.exec(await sh('dumpe2fs', [clean]))?.[1]);
    expect(table).toBeGreaterThan(0);
    const aclBlock = Number(/File ACL: (\d+)/.exec(await debugfs(clean, ['stat /upper/bigx'], false))?.[1]);
    const regions: [number, number][] = [
      [1024, 1024 + 0x180],
      [bs, bs + 64],
      [table * bs, table * bs + 20 * 256],
      [await firstBlock('/'), (await firstBlock('/')) + 256],
      [await firstBlock('/upper'), (await firstBlock('/upper')) + 512],
      [await firstBlock('/upper/dir'), (await firstBlock('/upper/dir')) + 128],
      [aclBlock * bs, aclBlock * bs + 256],
    ];
    const outcomes = await damageRuns({ clean, path: join(work, 'fuzz.ext4'), regions, maxBytes: 6, runs: 400, read: walkCapped });
    expect(outcomes.ok + outcomes.refused).toBe(400);
    expect(outcomes.refused).toBeGreaterThan(0);
  });
});

/** A walk that reads at most 256 KiB of each file: a forged size may claim terabytes of holes. */
async function walkCapped(path: string): Promise<void> {
  const image = await Ext4Image.open(path);
  try {
    const upper = await image.lookup('/upper');
    if (upper === undefined) return;
    for await (const e of walkTree(image, upper)) {
      if (!e.open) continue;
      let length = 0;
      for await (const chunk of e.open() as AsyncIterable<Buffer>) {
        length += chunk.length;
        if (length > 256 * 1024) break;
      }
    }
    await image.readDir(2);
  } finally {
    await image.close();
  }
}
