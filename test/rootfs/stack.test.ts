/**
 * Stacks of EROFS images (`cs rootfs assemble --format erofs --stack`, and
 * what workspaces boot from): one image per snapshot, merged by overlayfs.
 * The oracle is the kernel: each stack is loop-mounted and stacked with
 * overlayfs exactly as the guest does (lowerdir=TOP:...:BASE), and what a
 * user sees there (paths, types, modes, owners, times, link targets, device
 * numbers, link counts, contents, user xattrs) must be what the
 * self-contained image of the same chain shows. The chains are made to hit
 * what overlayfs and the OCI rules could disagree on: whiteouts of files and
 * folders of the images below, opaque folders, folders over files and back,
 * symlinks replaced by folders, hardlinks to files of the images below,
 * files the base links both inside and outside the home, a home reached
 * through a symlink.
 *
 * Runs as root (loop devices, overlayfs), as the whole suite does.
 */
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { appendFile, chmod, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { assemble, type AssembleResult } from '../../src/rootfs/assemble.js';
import { emptyCaches } from '../../src/rootfs/cache.js';
import { rootImage } from '../../src/workspace/create.js';
import type { Workspace } from '../../src/definition/model.js';
import { InputError } from '../../src/util/errors.js';
import { BIN, cs, ensureBuilt, userEnv } from './support/cli.js';
import { homesOfThisFile, type TestHome } from './support/home.js';
import { buildImage, dir, file, hardlink, opaque, symlink, whiteout, type BuiltImage, type Entry } from './support/layers.js';

const newHome = homesOfThisFile();

type Kind = 'base' | 'home' | 'personal';
type Chain = readonly [BuiltImage, Kind][];

function build(h: TestHome, chain: Chain, out: string, stack: boolean): Promise<AssembleResult> {
  return assemble({ snapshots: chain.map(([image, kind]) => ({ reference: image.tag, kind })), out, format: 'erofs', env: h.env, ...(stack ? { stack: true } : {}) });
}

/** What a user sees under `root`: one line per path, sorted. */
async function view(root: string): Promise<string[]> {
  const lines: string[] = [];
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(root, rel)).sort()) {
      const path = rel === '' ? name : `${rel}/${name}`;
      const full = join(root, path);
      const info = lstatSync(full, { bigint: true });
      const type = info.isDirectory() ? 'dir' : info.isFile() ? 'file' : info.isSymbolicLink() ? 'symlink' : info.isFIFO() ? 'fifo' : info.isCharacterDevice() ? 'char' : info.isBlockDevice() ? 'block' : 'other';
      let line = `${path} ${type} ${(info.mode & 0o7777n).toString(8)} ${info.uid}:${info.gid} ${info.mtimeNs}`;
      // overlayfs counts a merged folder's links its own way; a folder's links follow from its subfolders anyway.
      if (type !== 'dir') line += ` links=${info.nlink}`;
      if (type === 'file') line += ` ${createHash('sha256').update(readFileSync(full)).digest('hex').slice(0, 16)}`;
      if (type === 'symlink') line += ` -> ${readlinkSync(full)}`;
      if (type === 'char' || type === 'block') line += ` rdev=${info.rdev}`;
      lines.push(line);
      if (type === 'dir') walk(path);
    }
  };
  // (The root itself is the writable layer's, as in the guest.)
  walk('');
  // user.* xattrs as getfattr shows them (overlayfs hides its own trusted.overlay.* ones).
  const { stdout } = await execa('getfattr', ['-R', '-h', '-d', '-m', '^user\\.', '.'], { cwd: root, reject: false });
  return [...lines, ...String(stdout).split('\n').filter((line) => line !== '')].sort();
}

/**
 * Mount `images` (top first) as the guest does, under overlayfs even when
 * there is one (`raw`: one image mounted as it is, to look inside it), and
 * return what `read` makes of the merged root.
 */
async function mounted<T>(work: string, images: readonly string[], read: (root: string) => Promise<T>, options: { raw?: boolean } = {}): Promise<T> {
  const points: string[] = [];
  try {
    for (const [i, image] of images.entries()) {
      const point = join(work, `lower${i}`);
      await mkdir(point, { recursive: true });
      await execa('mount', ['-t', 'erofs', '-o', 'loop,ro', image, point]);
      points.push(point);
    }
    if (options.raw) return await read(points[0] as string);
    // With an empty writable layer on top, as the guest's disk is (overlayfs wants one over a single lower).
    const merged = join(work, 'merged');
    await Promise.all(['merged', 'upper', 'work'].map((d) => mkdir(join(work, d), { recursive: true })));
    await execa('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${points.join(':')},upperdir=${join(work, 'upper')},workdir=${join(work, 'work')},redirect_dir=off,index=off,metacopy=off`, merged]);
    points.push(merged);
    return await read(merged);
  } finally {
    for (const point of points.reverse()) await execa('umount', [point], { reject: false });
  }
}

let mounts = 0;
/** The stack and the self-contained image of `chain`, as mounted views; and the stack's result. */
async function compare(h: TestHome, chain: Chain): Promise<{ stack: string[]; whole: string[]; result: AssembleResult }> {
  const n = mounts++;
  const result = await build(h, chain, h.out(`stack-${n}`), true);
  const single = await build(h, chain, h.out(`whole-${n}.erofs`), false);
  const stack = await mounted(join(h.root, `m-stack-${n}`), result.lowers ?? [], view);
  const whole = await mounted(join(h.root, `m-whole-${n}`), [single.out], view);
  return { stack, whole, result };
}

const home = (entries: Entry[]): Entry[] => entries.map((e) => ({ ...e, path: `home/owner/${e.path}` }));

// The base: a home with a bit of everything the layers above then change.
const BASE: Entry[] = [
  dir('etc'),
  file('etc/os-release', 'base\n'),
  dir('usr/bin'),
  file('usr/bin/tool', 'tool\n', { mode: 0o755 }),
  hardlink('usr/bin/tool2', 'usr/bin/tool'),
  dir('home'),
  dir('home/owner', { mode: 0o750, uid: 1000, gid: 1000 }),
  ...home([
    file('keep.txt', 'base, never changed\n', { uid: 1000, gid: 1000 }),
    file('replaced.txt', 'base\n'),
    file('gone.txt', 'whited out by the home\n'),
    dir('gone-dir'),
    file('gone-dir/a', 'a folder whited out by the home\n'),
    dir('merged'),
    file('merged/from-base', 'stays in a merged folder\n'),
    file('merged/whited', 'whited out inside a merged folder\n'),
    dir('opaque-dir'),
    file('opaque-dir/hidden', 'hidden by an opaque marker\n'),
    file('file-then-dir', 'a file the home makes a folder\n'),
    dir('dir-then-file'),
    file('dir-then-file/x', 'a folder the home makes a file\n'),
    symlink('link-then-dir', 'merged'),
    dir('meta', { mode: 0o700 }),
    file('meta/f', 'its folder changes mode and time\n'),
    file('pair-a', 'two names in the base\n'),
    hardlink('pair-b', 'home/owner/pair-a'),
    file('target', 'the home links to this\n'),
    file('dev-fifo-later', 'a file the home makes a fifo\n'),
    dir('deep/er/still'),
    file('deep/er/still/leaf', 'deep\n'),
  ]),
  file('gone.txt', 'a home whiteout of gone.txt must not remove this\n'),
];

const HOME: Entry[] = [
  file('replaced.txt', 'home\n', { mode: 0o600 }),
  file('new.txt', 'home\n', { pax: { 'SCHILY.xattr.user.note': 'from the home' } }),
  whiteout('gone.txt'),
  whiteout('gone-dir'),
  whiteout('merged/whited'),
  file('merged/from-home', 'home\n'),
  opaque('opaque-dir'),
  file('opaque-dir/shown', 'home\n'),
  dir('file-then-dir'),
  file('file-then-dir/inside', 'home\n'),
  file('dir-then-file', 'home\n'),
  dir('link-then-dir', { mode: 0o711 }),
  file('link-then-dir/in-a-real-folder', 'home\n'),
  dir('meta', { mode: 0o755, mtime: 1_700_000_000 }),
  whiteout('pair-b'),
  hardlink('linked-to-base', 'target'),
  { type: 'fifo', path: 'dev-fifo-later' },
  { type: 'char', path: 'null-ish', major: 1, minor: 3 },
  file('deep/er/still/leaf', 'changed deep down\n'),
  dir('.config'),
  file('.config/app.json', '{"home": 1}\n'),
];

const PERSONAL: Entry[] = [
  // Back from a folder to a symlink, and from a file to a folder.
  symlink('link-then-dir', 'deep'),
  whiteout('replaced.txt'),
  dir('replaced.txt'),
  file('replaced.txt/now-a-folder', 'personal\n'),
  // A link to a file of the home's image, and a link to one of the base's.
  hardlink('new-link', 'new.txt'),
  hardlink('keep-link', 'keep.txt'),
  whiteout('.config/app.json'),
  file('.config/other.json', '{"personal": 1}\n', { mtime: 1_650_000_000 }),
];

describe('stacks of images against the self-contained image (the kernel merges them)', () => {
  let h: TestHome;
  const images = {} as { base: BuiltImage; home: BuiltImage; personal: BuiltImage };
  it('base + home + personal: the same tree, and an image per snapshot', async () => {
    h = await newHome('stack');
    images.base = await buildImage(h.store, 'localhost/stack/base:v1', [BASE.slice(0, 6), BASE.slice(6)]);
    images.home = await buildImage(h.store, 'localhost/stack/home:v1', [HOME.slice(0, 10), HOME.slice(10)]);
    images.personal = await buildImage(h.store, 'localhost/stack/personal:v1', [PERSONAL]);
    const { stack, whole, result } = await compare(h, [
      [images.base, 'base'],
      [images.home, 'home'],
      [images.personal, 'personal'],
    ]);
    expect(result.lowers?.map((f) => f.split('/').pop())).toEqual(['2-personal.erofs', '1-home.erofs', '0-base.erofs']);
    expect(stack).toEqual(whole);
    // The merged tree shows the changes (so the comparison compared something).
    expect(whole).toContainEqual(expect.stringMatching(/^home\/owner\/replaced.txt\/now-a-folder file /));
    expect(whole).toContainEqual(expect.stringMatching(/^home\/owner\/keep-link file .* links=2 /));
    expect(whole.some((line) => line.startsWith('home/owner/gone-dir'))).toBe(false);
    expect(whole).toContainEqual(expect.stringMatching(/^gone.txt file /));
  });

  it('base + home alone, and the base alone', async () => {
    for (const chain of [[[images.base, 'base'], [images.home, 'home']], [[images.base, 'base']]] as Chain[]) {
      const { stack, whole, result } = await compare(h, chain);
      expect(result.lowers).toHaveLength(chain.length);
      expect(stack).toEqual(whole);
    }
  });

  it('an image over the ones below holds only what changed, with whiteouts and opaque markers', async () => {
    const result = await build(h, [[images.base, 'base'], [images.home, 'home']], h.out('inspect'), true);
    const top = result.lowers?.[0] as string;
    const listed = await mounted(join(h.root, 'm-inspect'), [top], async (root) => {
      const opaqueDir = await execa('getfattr', ['-h', '--only-values', '-n', 'trusted.overlay.opaque', join(root, 'home/owner/file-then-dir')]);
      const gone = ['gone.txt', 'gone-dir', 'opaque-dir/hidden', 'pair-b'].map((name) => lstatSync(join(root, 'home/owner', name))).map((info) => [info.isCharacterDevice(), info.rdev]);
      return { names: readdirSync(join(root, 'home/owner')).sort(), opaque: String(opaqueDir.stdout), gone, etc: readdirSync(root).sort(), deep: readdirSync(join(root, 'home/owner/deep/er/still')) };
    }, { raw: true });
    // Only the home's folder, and in it only what the home changed: not keep.txt; the two names of a file whose
    // other name went (pair-a), and of one the home linked to (target); folders on the way to a change.
    expect(listed.etc).toEqual(['home']);
    expect(listed.names).toEqual(
      ['.config', 'deep', 'dev-fifo-later', 'dir-then-file', 'file-then-dir', 'gone-dir', 'gone.txt', 'link-then-dir', 'linked-to-base', 'merged', 'meta', 'new.txt', 'null-ish', 'opaque-dir', 'pair-a', 'pair-b', 'replaced.txt', 'target'].sort(),
    );
    expect(listed.deep).toEqual(['leaf']);
    // A folder over what was a file below is opaque; what went is a whiteout (a character device 0:0).
    expect(listed.opaque).toBe('y');
    expect(listed.gone).toEqual([[true, 0], [true, 0], [true, 0], [true, 0]]);
    expect(statSync(top).size).toBeLessThan(statSync(result.lowers?.[1] as string).size);
  });
});

describe('a home the base reaches through a symlink, and files the base links inside and outside the home', () => {
  it('reads the whole tree below and still gives the same tree', async () => {
    const h = await newHome('stack-whole');
    const base = await buildImage(h.store, 'localhost/stack/odd-base:v1', [
      [
        dir('var/home/owner'),
        file('var/home/owner/old.txt', 'base\n'),
        symlink('home', 'var/home'),
        file('etc/shared', 'one file, names inside and outside the home\n'),
        hardlink('var/home/owner/shared', 'etc/shared'),
      ],
    ]);
    const homeImage = await buildImage(h.store, 'localhost/stack/odd-home:v1', [[file('new.txt', 'home\n'), whiteout('old.txt')]]);
    const first = await compare(h, [[base, 'base'], [homeImage, 'home']]);
    expect(first.stack).toEqual(first.whole);
    expect(first.whole).toContainEqual(expect.stringMatching(/^var\/home\/owner\/new.txt file /));
    // A cold build: both levels applied, though the first try (on the part) gave up after the base.
    expect(first.result).toMatchObject({ layersApplied: 2, cachedLayers: 0 });
    // The home's level read the whole tree below, and keeps the whole tree it made (a level built on a part keeps a part only).
    const entry = (result: AssembleResult) => join(h.csHome, 'rootfs-stack', 'trees', result.chainId.replace('sha256:', ''));
    expect(existsSync(join(entry(first.result), 'tree.json'))).toBe(true);

    const plainBase = await buildImage(h.store, 'localhost/stack/linked-base:v1', [
      [dir('home/owner'), file('etc/shared', 'names inside and outside the home\n'), hardlink('home/owner/shared', 'etc/shared'), file('home/owner/other', 'x\n')],
    ]);
    // The home removes one name of the file: the name outside must count one link less, as in the whole image.
    const unlink = await buildImage(h.store, 'localhost/stack/unlink-home:v1', [[whiteout('shared')]]);
    const second = await compare(h, [[plainBase, 'base'], [unlink, 'home']]);
    expect(second.stack).toEqual(second.whole);
    expect(second.whole).toContainEqual(expect.stringMatching(/^etc\/shared file .* links=1 /));
    expect(existsSync(join(entry(second.result), 'tree.json'))).toBe(true);
    // A home that leaves that file alone reads only its part of the tree, and is right too.
    const untouched = await buildImage(h.store, 'localhost/stack/untouched-home:v1', [[file('other', 'y\n')]]);
    const third = await compare(h, [[plainBase, 'base'], [untouched, 'home']]);
    expect(third.stack).toEqual(third.whole);
    expect(third.whole).toContainEqual(expect.stringMatching(/^etc\/shared file .* links=2 /));
    expect(existsSync(join(entry(third.result), 'tree.json'))).toBe(false);
    expect((await readdir(entry(third.result))).some((name) => /^part-[0-9a-f]{16}\.json$/.test(name))).toBe(true);
  });
});

describe('the cache of stacks', () => {
  it('a warm build writes only the changed snapshot: the base image is the same file, never copied', async () => {
    const h = await newHome('stack-warm');
    const base = await buildImage(h.store, 'localhost/stack/warm-base:v1', [BASE]);
    const homeV = (n: number) => buildImage(h.store, `localhost/stack/warm-home:v${n}`, [[file('version', `${n}\n`)]]);
    const first = await build(h, [[base, 'base'], [await homeV(1), 'home']], h.out('warm-1'), true);
    expect(first).toMatchObject({ layersApplied: 2, cachedLayers: 0 });
    const second = await build(h, [[base, 'base'], [await homeV(2), 'home']], h.out('warm-2'), true);
    expect(second).toMatchObject({ layersApplied: 1, cachedLayers: 1 });
    const [top1, base1] = first.lowers as string[];
    const [top2, base2] = second.lowers as string[];
    expect(statSync(base2 as string).ino).toBe(statSync(base1 as string).ino);
    expect(statSync(top2 as string).ino).not.toBe(statSync(top1 as string).ino);
    // Read-only: they are the cache's own files.
    expect(statSync(base2 as string).mode & 0o222).toBe(0);
    const again = await build(h, [[base, 'base'], [await homeV(2), 'home']], h.out('warm-3'), true);
    expect(again).toMatchObject({ layersApplied: 0, cachedLayers: 2 });
    const seen = await mounted(join(h.root, 'm-warm'), second.lowers as string[], async (root) => readFileSync(join(root, 'home/owner/version'), 'utf8'));
    expect(seen).toBe('2\n');
  });

  it('an image changed through a hardlinked output is noticed and built again', async () => {
    const h = await newHome('stack-tamper');
    const base = await buildImage(h.store, 'localhost/stack/tamper-base:v1', [BASE]);
    const homeImage = await buildImage(h.store, 'localhost/stack/tamper-home:v1', [HOME]);
    const chain: Chain = [[base, 'base'], [homeImage, 'home']];
    const first = await build(h, chain, h.out('tamper-1'), true);
    const baseImage = first.lowers?.[1] as string;
    await chmod(baseImage, 0o644);
    await appendFile(baseImage, Buffer.alloc(4096, 7));
    const second = await build(h, chain, h.out('tamper-2'), true);
    expect(second.layersApplied).toBe(1);
    expect(statSync(second.lowers?.[1] as string).ino).not.toBe(statSync(baseImage).ino);
    const { stack, whole } = await compare(h, chain);
    expect(stack).toEqual(whole);
  });

  it('a level whose image below was made again since (evicted) is built again before a level is built on its tree', async () => {
    const h = await newHome('stack-evict');
    const base = await buildImage(h.store, 'localhost/stack/evict-base:v1', [BASE]);
    const homeImage = await buildImage(h.store, 'localhost/stack/evict-home:v1', [HOME]);
    const personal = (n: number) => buildImage(h.store, `localhost/stack/evict-personal:v${n}`, [[...PERSONAL, file('n', `${n}\n`)]]);
    await build(h, [[base, 'base'], [homeImage, 'home'], [await personal(1), 'personal']], h.out('evict-1'), true);
    // The base's entry goes (as eviction would take it) and is made again by a base-only build: a new image.
    const trees = join(h.csHome, 'rootfs-stack', 'trees');
    const baseOnly = await build(h, [[base, 'base']], h.out('evict-base'), true);
    const baseKey = baseOnly.chainId.replace('sha256:', '');
    await rm(join(trees, baseKey), { recursive: true, force: true });
    await build(h, [[base, 'base']], h.out('evict-base-2'), true);
    // The home's tree names blocks of the old base image: a new personal snapshot rebuilds the home level too.
    const chain: Chain = [[base, 'base'], [homeImage, 'home'], [await personal(2), 'personal']];
    const next = await build(h, chain, h.out('evict-2'), true);
    expect(next).toMatchObject({ layersApplied: 2, cachedLayers: 1 });
    const { stack, whole } = await compare(h, chain);
    expect(stack).toEqual(whole);
  });

  it('a cached tree cut short (a power loss) is noticed: the build starts again without the cache and replaces it', async () => {
    const h = await newHome('stack-torn');
    const base = await buildImage(h.store, 'localhost/stack/torn-base:v1', [BASE]);
    const homeV = (n: number) => buildImage(h.store, `localhost/stack/torn-home:v${n}`, [[...HOME, file('version', `${n}\n`)]]);
    const first = await build(h, [[base, 'base'], [await homeV(1), 'home']], h.out('torn-1'), true);
    const baseEntry = join(h.csHome, 'rootfs-stack', 'trees', (await build(h, [[base, 'base']], h.out('torn-base'), true)).chainId.replace('sha256:', ''));
    const part = (await readdir(baseEntry)).find((name) => name.startsWith('part-')) as string;
    await writeFile(join(baseEntry, part), '{"format":1,"dataBl');
    const chain: Chain = [[base, 'base'], [await homeV(2), 'home']];
    const second = await build(h, chain, h.out('torn-2'), true);
    expect(second).toMatchObject({ layersApplied: 2, cachedLayers: 0 });
    expect(JSON.parse(await readFile(join(baseEntry, part), 'utf8'))).toMatchObject({ format: 1 });
    expect(first.lowers?.[1]).toBeDefined();
    const { stack, whole } = await compare(h, chain);
    expect(stack).toEqual(whole);
  });
});

describe('what cannot be stacked', () => {
  it('layers with overlayfs markers: --stack refuses them, a workspace gets one image (and sees what the layers say)', async () => {
    const h = await newHome('stack-refuse');
    const base = await buildImage(h.store, 'localhost/stack/refuse-base:v1', [[dir('home/owner'), file('home/owner/x', 'base\n')]]);
    const bad = await buildImage(h.store, 'localhost/stack/refuse-home:v1', [[{ type: 'char', path: 'x', major: 0, minor: 0 }]]);
    const chain: Chain = [[base, 'base'], [bad, 'home']];
    const refused = await build(h, chain, h.out('refused'), true).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(InputError);
    expect(String((refused as Error).message)).toMatch(/home\/owner\/x is a character device 0:0.*without --stack/);
    const xattr = await buildImage(h.store, 'localhost/stack/refuse-xattr:v1', [[file('y', 'z\n', { pax: { 'SCHILY.xattr.trusted.overlay.opaque': 'y' } })]]);
    await expect(build(h, [[base, 'base'], [xattr, 'home']], h.out('refused-2'), true)).rejects.toThrow(/trusted\.overlay\.opaque/);

    // A folder the home marks opaque by an xattr of its own: in a stack the base's files in it would be hidden.
    const marked = await buildImage(h.store, 'localhost/stack/refuse-opaque:v1', [[dir('d', { pax: { 'SCHILY.xattr.trusted.overlay.opaque': 'y' } }), file('d/new', 'home\n')]]);
    const markedBase = await buildImage(h.store, 'localhost/stack/refuse-opaque-base:v1', [[dir('home/owner/d'), file('home/owner/d/from-base', 'base\n')]]);
    const root = await rootImage({ name: 'dev' } as Workspace, [{ reference: markedBase.tag, kind: 'base' }, { reference: marked.tag, kind: 'home' }], { env: h.env });
    expect(root.lowers).toHaveLength(1);
    const seen = await mounted(join(h.root, 'm-refuse'), root.lowers, async (r) => readdirSync(join(r, 'home/owner/d')).sort());
    expect(seen).toEqual(['from-base', 'new']);
    await expect(build(h, [[markedBase, 'base'], [marked, 'home']], h.out('refused-3'), true)).rejects.toThrow(/home\/owner\/d has the extended attribute trusted\.overlay\.opaque/);
  });

  it('a workspace root is a stack: the base image is shared by name, the home over it', async () => {
    const h = await newHome('stack-ws');
    const base = await buildImage(h.store, 'localhost/stack/ws-base:v1', [BASE]);
    const homeImage = await buildImage(h.store, 'localhost/stack/ws-home:v1', [HOME]);
    const root = await rootImage({ name: 'dev' } as Workspace, [{ reference: base.tag, kind: 'base' }, { reference: homeImage.tag, kind: 'home' }], { env: h.env });
    expect(root.lowers).toHaveLength(2);
    expect(root.lowers[0]).toMatch(/\/images\/[0-9a-f]{64}\.overlay\.erofs$/);
    expect(root.lowers[1]).toMatch(/\/images\/[0-9a-f]{64}\.erofs$/);
    const other = await buildImage(h.store, 'localhost/stack/ws-home:v2', [[file('other', 'v2\n')]]);
    const second = await rootImage({ name: 'dev2' } as Workspace, [{ reference: base.tag, kind: 'base' }, { reference: other.tag, kind: 'home' }], { env: h.env });
    expect(second.lowers[1]).toBe(root.lowers[1]);
    expect(second.lowers[0]).not.toBe(root.lowers[0]);
    // Images already there by name are used as they are, whatever the cache still holds (nothing, here).
    await rm(join(h.csHome, 'rootfs-stack'), { recursive: true, force: true });
    const again = await rootImage({ name: 'dev3' } as Workspace, [{ reference: base.tag, kind: 'base' }, { reference: homeImage.tag, kind: 'home' }], { env: h.env });
    expect(again.lowers).toEqual(root.lowers);
    expect(existsSync(join(h.csHome, 'rootfs-stack', 'trees'))).toBe(false);
  });
});

describe('cs rootfs assemble --stack', () => {
  it('writes the folder of images, says their order, refuses a format that cannot be stacked, replaces only with --force', async () => {
    await ensureBuilt();
    const h = await newHome('stack-cli');
    const base = await buildImage(h.store, 'localhost/stack/cli-base:v1', [BASE]);
    const homeImage = await buildImage(h.store, 'localhost/stack/cli-home:v1', [HOME]);
    const out = h.out('cli-stack');
    const args = ['rootfs', 'assemble', '--base', base.tag, '--home', homeImage.tag, '--format', 'erofs', '--stack', '--out', out];
    const human = await cs(args, h.env);
    expect(human.exitCode, human.stderr).toBe(0);
    expect(human.stderr).toContain(`Wrote 2 erofs images to ${out} (1-home.erofs, 0-base.erofs: overlayfs's lowerdir order, top first): 2 layers, 2 applied, 0 from cache`);
    expect((await readdir(out)).sort()).toEqual(['0-base.erofs', '1-home.erofs']);
    const again = await cs([...args, '--json'], h.env);
    expect(again.exitCode).toBe(3);
    expect(again.stdout + again.stderr).toContain('already exists; use --force');
    const forced = await cs([...args, '--json', '--force'], h.env);
    expect(forced.exitCode, forced.stderr).toBe(0);
    expect(JSON.parse(forced.stdout)).toMatchObject({ out, lowers: [join(out, '1-home.erofs'), join(out, '0-base.erofs')], layersApplied: 0, cachedLayers: 2 });
    const { stack, whole } = await compare(h, [[base, 'base'], [homeImage, 'home']]);
    expect(await mounted(join(h.root, 'm-cli'), [join(out, '1-home.erofs'), join(out, '0-base.erofs')], view)).toEqual(stack);
    expect(stack).toEqual(whole);

    const wrong = await cs(['rootfs', 'assemble', '--base', base.tag, '--format', 'dir', '--stack', '--out', h.out('cli-dir')], h.env);
    expect(wrong.exitCode).toBe(3);
    expect(wrong.stderr).toContain('only erofs images can be stacked');
  });
});

describe('layers inflated on a worker thread', () => {
  it('are read whatever NODE_OPTIONS says of the input type (a worker inherits it; its source is CommonJS)', async () => {
    await ensureBuilt();
    const h = await newHome('stack-input-type');
    // Over 4 MiB compressed: such layers are inflated on a worker thread.
    const base = await buildImage(h.store, 'localhost/stack/big-base:v1', [[dir('home/owner'), file('big', randomBytes(5 * 1024 * 1024))]]);
    expect(base.layers[0]?.descriptor.size).toBeGreaterThan(4 * 1024 * 1024);
    const env = { ...userEnv(h.env), NODE_OPTIONS: '--input-type=module' };
    const out = h.out('input-type');
    const built = await execa(process.execPath, [BIN, 'rootfs', 'assemble', '--base', base.tag, '--format', 'erofs', '--stack', '--out', out, '--json'], { env, extendEnv: false, reject: false });
    expect(built.exitCode, built.stderr).toBe(0);
    expect(JSON.parse(built.stdout)).toMatchObject({ layersApplied: 1 });
  });
});

describe('cs rootfs prune --cache', () => {
  it('empties the assembly caches, counts as freed only what nothing else links, and the next build is cold', async () => {
    await ensureBuilt();
    const h = await newHome('stack-prune');
    const base = await buildImage(h.store, 'localhost/stack/prune-base:v1', [BASE]);
    const homeImage = await buildImage(h.store, 'localhost/stack/prune-home:v1', [HOME]);
    const out = h.out('prune-stack');
    const args = ['rootfs', 'assemble', '--base', base.tag, '--home', homeImage.tag, '--format', 'erofs', '--stack', '--json'];
    expect((await cs([...args, '--out', out], h.env)).exitCode).toBe(0);
    const trees = join(h.csHome, 'rootfs-stack', 'trees');
    expect(await readdir(trees)).toHaveLength(2);
    // Without --cache the caches stay.
    const plain = await cs(['rootfs', 'prune', '--json'], h.env);
    expect(plain.exitCode, plain.stderr).toBe(0);
    expect(JSON.parse(plain.stdout)).not.toHaveProperty('cache');
    expect(await readdir(trees)).toHaveLength(2);
    // What a prune frees: the cache's own files; the images are linked from the output too.
    let onlyInCache = 0;
    for (const entry of await readdir(trees)) {
      for (const name of await readdir(join(trees, entry))) {
        const info = statSync(join(trees, entry, name));
        if (info.isFile() && info.nlink === 1) onlyInCache += info.blocks * 512;
      }
    }
    const pruned = await cs(['rootfs', 'prune', '--cache', '--json'], h.env);
    expect(pruned.exitCode, pruned.stderr).toBe(0);
    expect(JSON.parse(pruned.stdout)).toMatchObject({ cache: { entries: 2, freedBytes: onlyInCache } });
    expect(await readdir(trees)).toEqual([]);
    const human = await cs(['rootfs', 'prune', '--cache'], h.env);
    expect(human.stderr).toContain('Emptied the assembly caches: 0 entries (0 B freed)');
    // The output's images are whole, and the next build starts cold.
    expect(await mounted(join(h.root, 'm-prune'), [join(out, '1-home.erofs'), join(out, '0-base.erofs')], async (r) => readFileSync(join(r, 'home/owner/new.txt'), 'utf8'))).toBe('home\n');
    const again = await cs([...args, '--out', h.out('prune-again')], h.env);
    expect(JSON.parse(again.stdout)).toMatchObject({ layersApplied: 2, cachedLayers: 0 });
  });
});

describe('emptying the caches', () => {
  it('counts neither an entry it could not remove nor its bytes (someone else\'s, in a shared cache)', async () => {
    const h = await newHome('stack-prune-kept');
    const base = await buildImage(h.store, 'localhost/stack/kept-base:v1', [BASE]);
    await build(h, [[base, 'base']], h.out('kept'), true);
    const trees = join(h.csHome, 'rootfs-stack', 'trees');
    const [entry] = await readdir(trees);
    // An immutable folder cannot be renamed, even by root: as another user's entry could not be.
    await execa('chattr', ['+i', join(trees, entry as string)]);
    try {
      expect(await emptyCaches([h.csHome])).toEqual({ entries: 0, freedBytes: 0 });
      expect(await readdir(trees)).toEqual([entry]);
    } finally {
      await execa('chattr', ['-i', join(trees, entry as string)]);
    }
    const emptied = await emptyCaches([h.csHome]);
    expect(emptied.entries).toBe(1);
    expect(emptied.freedBytes).toBeGreaterThan(0);
  });
});
