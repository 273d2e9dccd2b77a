/**
 * Root filesystem assembly (`cs rootfs assemble` and src/rootfs/): base, home
 * and personal snapshots applied in order into one tree, written as a folder,
 * a tar, an erofs or an ext4 image; the cache of finished trees; crashes;
 * hostile base layers; errors. Every check is something a user could look
 * at: the files of the output (read back with tar, fsck.erofs, debugfs), the
 * cache folder under $CS_HOME/rootfs, exit codes and messages.
 *
 * Runs as root (ownership, devices, xattrs). Each scenario has its own cs
 * home (content store and cache) and runs concurrently with the others;
 * tests inside a scenario that build on each other are sequential.
 */
import { existsSync, lstatSync, readFileSync, readdirSync, readlinkSync, statSync, symlinkSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { beforeAll, describe, it } from 'vitest';
import { assemble, type AssembleOptions, type AssembleResult, type OutputFormat } from '../../src/rootfs/assemble.js';
import { importDirectory } from '../../src/snapshot/import-dir.js';
import { InputError, LayerError } from '../../src/util/errors.js';
import { ErofsImage } from '../helpers/erofs-read.js';
import { cs, ensureBuilt, startCs } from './support/cli.js';
import { homesOfThisFile, type TestHome } from './support/home.js';
import {
  buildImage,
  dir,
  file,
  hardlink,
  opaque,
  sha256,
  storeBigFileLayer,
  symlink,
  tagImage,
  whiteout,
  type BuiltImage,
  type Entry,
} from './support/layers.js';
import { debugfsCat, debugfsXattr, erofsTree, ext4Tree, extractTar, getXattr, readTree, treeLines, type Tree } from './support/tree.js';

const newHome = homesOfThisFile();

type Kind = 'base' | 'home' | 'personal';
function run(h: TestHome, images: readonly [BuiltImage, Kind][], out: string, format: OutputFormat = 'dir', extra: Partial<AssembleOptions> = {}): Promise<AssembleResult> {
  return assemble({ snapshots: images.map(([image, kind]) => ({ reference: image.tag, kind })), out, format, env: h.env, ...extra });
}

const text = (path: string): string => readFileSync(path, 'utf8');
const CS_OWN_FILES = ['complete', 'deferred.jsonl', 'xattrs.dump'];
const FORMATS: readonly OutputFormat[] = ['dir', 'tar', 'erofs', 'ext4'];

/** Everything a victim folder holds (tree and the xattr a hostile layer would set), to compare before/after. */
async function victimState(victim: string): Promise<string[]> {
  const lines = treeLines(readTree(victim));
  for (const path of readdirSync(victim, { recursive: true }) as string[]) {
    lines.push(`${path} user.note=${String(await getXattr(join(victim, path), 'user.note'))}`);
  }
  return lines.sort();
}

// ---------------------------------------------------------------------------
// One workspace's chain (a two-layer base, a home, a personal snapshot) in
// every format.

const BASE_1: Entry[] = [
  dir('etc'),
  file('etc/os-release', 'base layer 1\n'),
  file('etc/passwd', 'root:x:0:0:root:/root:/bin/bash\n'),
  file('etc/shadow', 'root:*:19000::::::\n', { mode: 0o640, gid: 42 }),
  file('etc/gone', 'removed by base layer 2\n'),
  dir('usr/bin'),
  file('usr/bin/bash', '#!bash\n', { mode: 0o755 }),
  symlink('usr/bin/sh', 'bash'),
  hardlink('usr/bin/rbash', 'usr/bin/bash'),
  file('usr/bin/su', 'su\n', { mode: 0o4755 }),
  file('usr/bin/wall', 'wall\n', { mode: 0o2755, gid: 5 }),
  dir('var/tmp', { mode: 0o1777 }),
  file('var/tmp/kept', 'var/tmp is not a runtime folder\n'),
  dir('tmp', { mode: 0o1777 }),
  file('tmp/junk', 'runtime junk\n'),
  dir('tmp/.X11-unix', { mode: 0o1777 }),
  file('tmp/.X11-unix/X0', 'socket stand-in\n'),
  file('proc/cpuinfo', 'processor: 0\n'),
  file('sys/kernel/hostname', 'builder\n'),
  { type: 'fifo', path: 'dev/initctl' },
  file('dev/console', 'not a device\n'),
  file('run/lock/pid', '1\n'),
  dir('home'),
  dir('home/owner', { mode: 0o750, uid: 1000, gid: 1000 }),
  file('home/owner/shared.txt', 'base\n', { uid: 1000, gid: 1000 }),
  file('home/owner/home-beats-base.txt', 'base\n'),
  file('home/owner/personal-beats-base.txt', 'base\n'),
  file('home/owner/base-only.txt', 'base\n'),
  file('home/owner/gone.txt', 'whited out by the home layer\n'),
  file('home/owner/etc/passwd', 'whited out by the home layer\n'),
  file('home/owner/cfg/a', 'hidden by the home layer\n'),
  file('home/owner/cfg/b', 'hidden by the home layer\n'),
  file('gone.txt', 'a home whiteout of gone.txt must not remove this\n'),
  file('cfg/a', 'a home opaque cfg/ must not hide this\n'),
  file('data/note', 'with an xattr\n', { pax: { 'SCHILY.xattr.user.note': 'hello' } }),
  file('srv/secret', 'owner only\n', { mode: 0o600, uid: 1000, gid: 1000 }),
  symlink('opt/os-release', '/etc/os-release'),
  symlink('opt/dangling', '/does/not/exist'),
  dir('opt/empty', { mode: 0o700, uid: 1000, gid: 1000 }),
];
const BASE_2: Entry[] = [
  file('etc/os-release', 'base layer 2\n'),
  whiteout('etc/gone'),
  file('home/owner/shared.txt', 'base layer 2\n', { uid: 1000, gid: 1000 }),
  file('tmp/junk-2', 'runtime junk of layer 2\n'),
  file('run/user/1000/bus', 'x\n'),
];
const HOME_1: Entry[] = [
  file('shared.txt', 'home\n', { uid: 1000, gid: 1000 }),
  file('home-beats-base.txt', 'home\n'),
  file('home-only.txt', 'home\n'),
  whiteout('gone.txt'),
  whiteout('etc/passwd'),
  opaque('cfg'),
  file('cfg/c', 'home\n'),
  // Names that try to leave the home: they are clamped to it, as in a chroot.
  file('../../etc/escaped', 'lands in the home\n'),
  file('/abs.txt', 'lands in the home\n'),
  file('note.txt', 'home file with an xattr\n', { pax: { 'SCHILY.xattr.user.note': 'from-home' } }),
];
const PERSONAL_1: Entry[] = [
  file('shared.txt', 'personal\n', { uid: 1000, gid: 1000 }),
  file('personal-beats-base.txt', 'personal\n'),
  file('personal-only.txt', 'personal\n'),
];

describe.concurrent('one chain, every output format', () => {
  let h: TestHome;
  const results = new Map<OutputFormat, AssembleResult>();
  const trees = new Map<OutputFormat, Tree>();
  let out: string;

  beforeAll(async () => {
    h = await newHome('world');
    const base = await buildImage(h.store, 'localhost/world/base:v1', [BASE_1, BASE_2]);
    const home = await buildImage(h.store, 'localhost/world/home:v1', [HOME_1]);
    const personal = await buildImage(h.store, 'localhost/world/personal:v1', [PERSONAL_1]);
    const chain: [BuiltImage, Kind][] = [
      [base, 'base'],
      [home, 'home'],
      [personal, 'personal'],
    ];
    // All four at once: they race to build the same chain, and must all succeed.
    await Promise.all(
      FORMATS.map(async (format) => {
        results.set(format, await run(h, chain, h.out(format), format));
      }),
    );
    out = h.out('dir');
    trees.set('dir', readTree(out));
    trees.set('tar', readTree(await extractTar(h.out('tar'), h.out('tar-x'))));
    trees.set('erofs', await erofsTree(h.out('erofs'), h.out('erofs-x')));
    trees.set('ext4', await ext4Tree(h.out('ext4'), h.out('ext4-x')));
  });

  it('applies the base, then the home, then the personal snapshot: the later one wins', ({ expect }) => {
    const r = results.get('dir');
    expect(r?.layers).toBe(4);
    const homeDir = join(out, 'home/owner');
    expect(text(join(homeDir, 'shared.txt'))).toBe('personal\n');
    expect(text(join(homeDir, 'personal-beats-base.txt'))).toBe('personal\n');
    expect(text(join(homeDir, 'home-beats-base.txt'))).toBe('home\n');
    expect(text(join(homeDir, 'base-only.txt'))).toBe('base\n');
    expect(text(join(homeDir, 'home-only.txt'))).toBe('home\n');
    expect(text(join(homeDir, 'personal-only.txt'))).toBe('personal\n');
    // The second base layer beats the first, and its whiteout removes the first's file.
    expect(text(join(out, 'etc/os-release'))).toBe('base layer 2\n');
    expect(existsSync(join(out, 'etc/gone'))).toBe(false);
    // The home's own folder keeps the base's owner and mode.
    expect(statSync(homeDir).uid).toBe(1000);
    expect((statSync(homeDir).mode & 0o7777).toString(8)).toBe('750');
  });

  it('puts home and personal files under /home/owner, never at the root', ({ expect }) => {
    for (const name of ['home-only.txt', 'personal-only.txt', 'note.txt', 'abs.txt', 'cfg/c']) {
      expect(existsSync(join(out, 'home/owner', name)), name).toBe(true);
      expect(existsSync(join(out, name)), name).toBe(false);
    }
    expect(text(join(out, 'home/owner/etc/escaped'))).toBe('lands in the home\n');
    expect(existsSync(join(out, 'etc/escaped'))).toBe(false);
    expect(text(join(out, 'etc/passwd'))).toMatch(/^root:/);
  });

  it('limits whiteouts and opaque folders of a home layer to the home', ({ expect }) => {
    expect(existsSync(join(out, 'home/owner/gone.txt'))).toBe(false);
    expect(text(join(out, 'gone.txt'))).toMatch(/must not remove/);
    expect(existsSync(join(out, 'home/owner/etc/passwd'))).toBe(false);
    expect(text(join(out, 'etc/passwd'))).toMatch(/^root:/);
    expect(readdirSync(join(out, 'home/owner/cfg')).sort()).toEqual(['c']);
    expect(text(join(out, 'cfg/a'))).toMatch(/must not hide/);
  });

  it('keeps the runtime folders of the base as empty folders, and /var/tmp and /etc as they are', ({ expect }) => {
    for (const name of ['proc', 'sys', 'dev', 'run', 'tmp']) {
      expect(lstatSync(join(out, name)).isDirectory(), name).toBe(true);
      expect(readdirSync(join(out, name)), name).toEqual([]);
    }
    expect((lstatSync(join(out, 'tmp')).mode & 0o7777).toString(8)).toBe('1777');
    expect(text(join(out, 'var/tmp/kept'))).toMatch(/not a runtime folder/);
    expect(text(join(out, 'etc/os-release'))).toBe('base layer 2\n');
  });

  it('sets PAX xattrs on the files of the output folder, in the base and under the home', async ({ expect }) => {
    expect(await getXattr(join(out, 'data/note'), 'user.note')).toBe('hello');
    expect(await getXattr(join(out, 'home/owner/note.txt'), 'user.note')).toBe('from-home');
    expect(await getXattr(join(out, 'etc/passwd'), 'user.note')).toBeUndefined();
    // The ext4 image carries them too.
    expect(await debugfsXattr(h.out('ext4'), '/data/note', 'user.note')).toBe('hello');
  });

  it('keeps modes, owners, symlinks and hardlinks in the output folder', ({ expect }) => {
    const tree = trees.get('dir') as Tree;
    expect(tree.get('usr/bin/su')?.perm).toBe('4755');
    expect(tree.get('usr/bin/wall')).toMatchObject({ perm: '2755', gid: 5 });
    expect(tree.get('etc/shadow')).toMatchObject({ perm: '0640', uid: 0, gid: 42 });
    expect(tree.get('srv/secret')).toMatchObject({ perm: '0600', uid: 1000, gid: 1000 });
    expect(tree.get('opt/empty')).toMatchObject({ type: 'dir', perm: '0700', uid: 1000 });
    expect(tree.get('usr/bin/sh')).toMatchObject({ type: 'symlink', target: 'bash' });
    expect(tree.get('opt/dangling')).toMatchObject({ type: 'symlink', target: '/does/not/exist' });
    expect(statSync(join(out, 'usr/bin/rbash')).ino).toBe(statSync(join(out, 'usr/bin/bash')).ino);
  });

  it('writes the same tree as a folder, a tar, an erofs and an ext4 image', ({ expect }) => {
    const reference = treeLines(trees.get('dir') as Tree);
    expect(reference.length).toBeGreaterThan(40);
    for (const format of ['tar', 'erofs', 'ext4'] as const) {
      expect(treeLines(trees.get(format) as Tree), format).toEqual(reference);
      expect(results.get(format)?.bytes, format).toBeGreaterThan(0);
    }
    // Every run of the same chain has the same cache key.
    expect(new Set(FORMATS.map((f) => results.get(f)?.chainId)).size).toBe(1);
  });

  it("never lets cs's own files into any output", ({ expect }) => {
    for (const format of FORMATS) {
      const leaked = [...(trees.get(format) as Tree).keys()].filter((path) => CS_OWN_FILES.includes(path.split('/').pop() as string));
      expect(leaked, format).toEqual([]);
    }
  });
});

// ---------------------------------------------------------------------------
// The cache of finished trees.

describe.concurrent('the tree cache', () => {
  let h: TestHome;
  let base: BuiltImage;
  const homeImages: BuiltImage[] = [];
  let baseChain: string;
  const homeImage = (n: number): BuiltImage => homeImages[n - 1] as BuiltImage;
  const withHome = (n: number): [BuiltImage, Kind][] => [
    [base, 'base'],
    [homeImage(n), 'home'],
  ];

  beforeAll(async () => {
    h = await newHome('cache');
    base = await buildImage(h.store, 'localhost/cache/base:v1', [
      [file('etc/os-release', 'base\n'), dir('home/owner'), file('home/owner/keep', 'kept from the base\n'), file('home/owner/note', 'base note\n', { mtime: 1_500_000_000 })],
      [file('home/owner/whited-out', 'base\n'), file('etc/motd', 'base motd\n')],
    ]);
    for (let n = 1; n <= 10; n++) {
      homeImages.push(
        await buildImage(h.store, `localhost/cache/home:v${n}`, [[file('home.txt', `home ${n}\n`), file(`only-${n}.txt`, `${n}\n`), file('note', `home ${n} note\n`), whiteout('whited-out')]]),
      );
    }
  });

  it.sequential('applies every layer the first time and none the second time', async ({ expect }) => {
    const first = await run(h, withHome(1), h.out('first'));
    expect(first).toMatchObject({ layers: 3, layersApplied: 3, cachedLayers: 0 });
    // Two trees: the whole chain, and the base on its own (a checkpoint for other homes).
    const entries = h.treeEntries();
    expect(entries).toHaveLength(2);
    expect(entries).toContain(first.chainId.replace('sha256:', ''));
    baseChain = `sha256:${entries.find((e) => !first.chainId.endsWith(e)) as string}`;
    const second = await run(h, withHome(1), h.out('second'));
    expect(second).toMatchObject({ layers: 3, layersApplied: 0, cachedLayers: 3, chainId: first.chainId });
    expect(treeLines(readTree(h.out('second')))).toEqual(treeLines(readTree(h.out('first'))));
    expect(text(h.out('second/home/owner/home.txt'))).toBe('home 1\n');
    expect(h.tmpEntries()).toEqual([]);
  });

  it.sequential('keeps a cached tree unchanged when a build on top of it replaces or whites out its files', async ({ expect }) => {
    const cachedHome = (path: string): string => join(h.cache.treePath(baseChain), 'home/owner', path);
    // The base tree was cached while the first build went on to replace `note`
    // and white out `whited-out` in the same (hardlinked) tree.
    expect(await h.cache.has(baseChain)).toBe(true);
    expect(text(cachedHome('note'))).toBe('base note\n');
    expect(text(cachedHome('whited-out'))).toBe('base\n');
    const before = statSync(cachedHome('note'));
    const whitedOutIno = statSync(cachedHome('whited-out')).ino;
    const homeOneTree = h.cache.treePath((await run(h, withHome(1), h.out('again'))).chainId);
    const homeOneNote = statSync(join(homeOneTree, 'home/owner/note'));

    const result = await run(h, withHome(2), h.out('home-2'));
    expect(result).toMatchObject({ layersApplied: 1, cachedLayers: 2 });
    const after = statSync(cachedHome('note'));
    expect({ ino: after.ino, mtimeMs: after.mtimeMs, size: after.size, mode: after.mode }).toEqual({ ino: before.ino, mtimeMs: before.mtimeMs, size: before.size, mode: before.mode });
    expect(after.mtimeMs).toBe(1_500_000_000_000);
    expect(text(cachedHome('note'))).toBe('base note\n');
    expect(text(cachedHome('whited-out'))).toBe('base\n');
    expect(statSync(cachedHome('whited-out')).ino).toBe(whitedOutIno);
    // Nor is the tree of the other home, built on the same base.
    expect(text(join(homeOneTree, 'home/owner/note'))).toBe('home 1 note\n');
    expect(statSync(join(homeOneTree, 'home/owner/note')).ino).toBe(homeOneNote.ino);
    // Files neither build touched are shared, not copied: what makes the check above matter.
    const finalKeep = statSync(join(h.cache.treePath(result.chainId), 'home/owner/keep'));
    expect(finalKeep.ino).toBe(statSync(cachedHome('keep')).ino);
  });

  it.sequential('rebuilds only the home when only the home snapshot changed', async ({ expect }) => {
    const out = h.out('home-2');
    expect(text(join(out, 'home/owner/home.txt'))).toBe('home 2\n');
    expect(text(join(out, 'home/owner/note'))).toBe('home 2 note\n');
    expect(existsSync(join(out, 'home/owner/only-2.txt'))).toBe(true);
    expect(existsSync(join(out, 'home/owner/only-1.txt'))).toBe(false);
    expect(existsSync(join(out, 'home/owner/whited-out'))).toBe(false);
    expect(text(join(out, 'etc/os-release'))).toBe('base\n');
    expect(text(join(out, 'etc/motd'))).toBe('base motd\n');
    expect(text(join(out, 'home/owner/keep'))).toBe('kept from the base\n');
  });

  it.sequential('gives the user a copy: editing the output folder does not change the cache', async ({ expect }) => {
    const out = h.out('home-2');
    const cached = join(h.cache.treePath((await run(h, withHome(2), h.out('home-2-again'))).chainId), 'etc/motd');
    expect(statSync(join(out, 'etc/motd')).ino).not.toBe(statSync(cached).ino);
    await writeFile(join(out, 'etc/motd'), 'edited by the user\n');
    expect(text(cached)).toBe('base motd\n');
    const again = await run(h, withHome(2), h.out('home-2-third'));
    expect(again.layersApplied).toBe(0);
    expect(text(h.out('home-2-third/etc/motd'))).toBe('base motd\n');
  });

  it.sequential('never holds more than 8 trees', async ({ expect }) => {
    for (let n = 3; n <= 10; n++) {
      const result = await run(h, withHome(n), h.out(`home-${n}.tar`), 'tar');
      expect(result.layersApplied, `home ${n}`).toBe(1);
      expect(h.treeEntries().length, `after home ${n}`).toBeLessThanOrEqual(8);
    }
    // Eleven trees were made (the base and ten homes): three are gone.
    expect(h.treeEntries().length).toBe(8);
    expect(h.tmpEntries()).toEqual([]);
    // The base, which every build reused, is one of those kept.
    expect(await h.cache.has(baseChain)).toBe(true);
    const evicted = await run(h, withHome(1), h.out('home-1-rebuilt.tar'), 'tar');
    expect(evicted).toMatchObject({ layersApplied: 1, cachedLayers: 2 });
    expect(h.treeEntries().length).toBe(8);
  });

  it.sequential('drops the least recently used tree, counting uses that were wholly cached', async ({ expect }) => {
    // Recency now, newest first: home 1, base, home 10, 9, 8, 7, 6, 5 (4 and older are gone).
    const oldest = await run(h, withHome(5), h.out('home-5-hit.tar'), 'tar');
    expect(oldest.layersApplied).toBe(0);
    // Home 5 was just used; building home 4 again must evict home 6 (the least recently used), not home 5.
    await sleep(5);
    expect((await run(h, withHome(4), h.out('home-4-rebuilt.tar'), 'tar')).layersApplied).toBe(1);
    expect(await h.cache.has(oldest.chainId)).toBe(true);
    expect((await run(h, withHome(5), h.out('home-5-again.tar'), 'tar')).layersApplied).toBe(0);
    expect((await run(h, withHome(6), h.out('home-6-rebuilt.tar'), 'tar')).layersApplied).toBe(1);
  });
});

describe.concurrent('a warm cache', () => {
  it('gives the same tree as a cold one when a longer base starts with a cached shorter one', async ({ expect }) => {
    const h = await newHome('warm');
    // Image B is image A plus a layer, as `FROM a` builds make. The second
    // layer links to a file under /tmp that only A's own tree has emptied.
    const first: Entry[] = [file('tmp/build/tool', 'a build tool\n'), file('etc/os-release', 'a\n')];
    const a = await buildImage(h.store, 'localhost/warm/a:v1', [first]);
    const b = await buildImage(h.store, 'localhost/warm/b:v1', [first, [hardlink('usr/bin/tool', 'tmp/build/tool'), file('etc/os-release', 'b\n')]]);
    const cold = await run(h, [[b, 'base']], h.out('cold'));
    expect(cold.layersApplied).toBe(2);
    await h.cache.prune({ all: true });
    expect(h.treeEntries()).toEqual([]);
    await run(h, [[a, 'base']], h.out('a'));
    expect(readdirSync(h.out('a/tmp'))).toEqual([]);
    const warm = await run(h, [[b, 'base']], h.out('warm'));
    expect(warm.chainId).toBe(cold.chainId);
    expect(treeLines(readTree(h.out('warm')))).toEqual(treeLines(readTree(h.out('cold'))));
    expect(text(h.out('warm/usr/bin/tool'))).toBe('a build tool\n');
    expect(readdirSync(h.out('warm/tmp'))).toEqual([]);
  });
});

describe.concurrent('the EROFS image cache', () => {
  const entries = (h: TestHome): string[] => {
    const dir = join(h.csHome, 'rootfs-images', 'trees');
    return existsSync(dir) ? readdirSync(dir).sort() : [];
  };
  const entryOf = (h: TestHome, chainId: string): string => join(h.csHome, 'rootfs-images', 'trees', chainId.replace('sha256:', ''));
  const layers = {
    base: [
      [file('etc/os-release', 'base\n'), dir('home/owner'), file('home/owner/keep', 'kept\n'), file('usr/big', 'x'.repeat(300_000))],
      [file('etc/motd', 'motd\n'), file('tmp/scratch', 'emptied\n')],
    ] as Entry[][],
    home: (n: number): Entry[][] => [[file('home.txt', `home ${n}\n`), file(`only-${n}`, `${n}\n`), whiteout('keep')]],
  };
  const images = async (h: TestHome): Promise<{ base: BuiltImage; home: (n: number) => Promise<BuiltImage> }> => ({
    base: await buildImage(h.store, 'localhost/img/base:v1', layers.base),
    home: (n) => buildImage(h.store, `localhost/img/home:v${n}`, layers.home(n)),
  });

  it('rebuilds only the home, keeps a full entry for the base and a small delta for the rest, and gives the same bytes as a cold build', async ({ expect }) => {
    const h = await newHome('erofs-cache');
    const { base, home } = await images(h);
    const [home1, home2] = [await home(1), await home(2)];
    const first = await run(h, [[base, 'base'], [home1, 'home']], h.out('one.erofs'), 'erofs');
    expect(first).toMatchObject({ layers: 3, layersApplied: 3, cachedLayers: 0 });
    expect(entries(h)).toHaveLength(2);
    // The final entry is a delta over the base's full entry: its image holds the home's blocks and the metadata only.
    const delta = entryOf(h, first.chainId);
    const [parentDir] = (await readFile(join(delta, 'parent'), 'utf8')).split('\n');
    expect(existsSync(join(parentDir as string, 'complete'))).toBe(true);
    expect(statSync(join(delta, 'image')).size).toBeLessThan(statSync(join(parentDir as string, 'image')).size);

    const warm = await run(h, [[base, 'base'], [home2, 'home']], h.out('two.erofs'), 'erofs');
    expect(warm).toMatchObject({ layers: 3, layersApplied: 1, cachedLayers: 2 });
    const tree = new ErofsImage(h.out('two.erofs')).tree();
    expect(tree.get('home/owner/home.txt')?.sha256).toBe(createHash('sha256').update('home 2\n').digest('hex'));
    expect(tree.has('home/owner/only-1')).toBe(false);
    expect(tree.has('home/owner/keep')).toBe(false);
    expect(tree.get('usr/big')?.sha256).toBe(createHash('sha256').update('x'.repeat(300_000)).digest('hex'));
    expect([...tree.keys()].filter((p) => p.startsWith('tmp/'))).toEqual([]);

    // The same chain built cold elsewhere is byte for byte the same image.
    const cold = await newHome('erofs-cold');
    const coldImages = await images(cold);
    await run(cold, [[coldImages.base, 'base'], [await coldImages.home(2), 'home']], cold.out('two.erofs'), 'erofs');
    expect((await readFile(h.out('two.erofs'))).equals(await readFile(cold.out('two.erofs')))).toBe(true);

    // The base alone was cached on the way (contents only): its metadata is written now.
    const baseOnly = await run(h, [[base, 'base']], h.out('base.erofs'), 'erofs');
    expect(baseOnly).toMatchObject({ layersApplied: 0, cachedLayers: 2 });
    const baseCheck = await execa('fsck.erofs', [h.out('base.erofs')], { reject: false });
    expect(baseCheck.exitCode, baseCheck.stderr).toBe(0);
    const baseTree = new ErofsImage(h.out('base.erofs')).tree();
    expect(baseTree.get('home/owner/keep')?.sha256).toBe(createHash('sha256').update('kept\n').digest('hex'));
    expect(baseTree.has('tmp')).toBe(true);
    expect(baseTree.has('tmp/scratch')).toBe(false);
    expect(baseTree.has('home/owner/home.txt')).toBe(false);

    // A chain wholly cached is written from its delta, the same bytes again.
    const again = await run(h, [[base, 'base'], [home1, 'home']], h.out('one-again.erofs'), 'erofs');
    expect(again).toMatchObject({ layersApplied: 0, cachedLayers: 3 });
    expect((await readFile(h.out('one-again.erofs'))).equals(await readFile(h.out('one.erofs')))).toBe(true);

    // A delta whose full entry is gone is not used: the chain is built again, the same.
    await rm(parentDir as string, { recursive: true, force: true });
    const rebuilt = await run(h, [[base, 'base'], [home1, 'home']], h.out('one-rebuilt.erofs'), 'erofs');
    expect(rebuilt).toMatchObject({ layersApplied: 3, cachedLayers: 0 });
    expect((await readFile(h.out('one-rebuilt.erofs'))).equals(await readFile(h.out('one.erofs')))).toBe(true);
    const check = await execa('fsck.erofs', [h.out('one-rebuilt.erofs')], { reject: false });
    expect(check.exitCode, check.stderr).toBe(0);
    // Editing an output changes nothing cached.
    await writeFile(h.out('two.erofs'), 'scribbled over');
    // (Its delta was made over the base entry removed above: the rebuilt base is another entry, so the home is applied again.)
    const third = await run(h, [[base, 'base'], [home2, 'home']], h.out('two-again.erofs'), 'erofs');
    expect(third).toMatchObject({ layersApplied: 1, cachedLayers: 2 });
    expect((await readFile(h.out('two-again.erofs'))).equals(await readFile(cold.out('two.erofs')))).toBe(true);
  });
});

describe.concurrent('an EROFS chain with a snapshot that adds no file contents', () => {
  it('caches the boundary after it (an empty delta) and builds on it', async ({ expect }) => {
    const h = await newHome('erofs-empty');
    const base = await buildImage(h.store, 'localhost/empty/base:v1', [[file('etc/os-release', 'base\n'), dir('home/owner')]]);
    const dirsOnly = await buildImage(h.store, 'localhost/empty/dirs:v1', [[dir('cfg'), symlink('link', 'cfg'), file('empty', '')]]);
    const top = (n: number) => buildImage(h.store, `localhost/empty/top:v${n}`, [[file('top.txt', `top ${n}\n`)]]);
    const first = await run(h, [[base, 'base'], [dirsOnly, 'home'], [await top(1), 'home']], h.out('one.erofs'), 'erofs');
    expect(first).toMatchObject({ layers: 3, layersApplied: 3 });
    const second = await run(h, [[base, 'base'], [dirsOnly, 'home'], [await top(2), 'home']], h.out('two.erofs'), 'erofs');
    expect(second).toMatchObject({ layersApplied: 1, cachedLayers: 2 });
    const check = await execa('fsck.erofs', [h.out('two.erofs')], { reject: false });
    expect(check.exitCode, check.stderr).toBe(0);
    const tree = new ErofsImage(h.out('two.erofs')).tree();
    expect(tree.get('home/owner/link')?.target).toBe('cfg');
    expect(tree.get('home/owner/cfg')?.type).toBe('dir');
    expect(tree.get('home/owner/top.txt')?.sha256).toBe(createHash('sha256').update('top 2\n').digest('hex'));
    // And the middle of the chain on its own, from its (empty) delta.
    const middle = await run(h, [[base, 'base'], [dirsOnly, 'home']], h.out('middle.erofs'), 'erofs');
    expect(middle).toMatchObject({ layersApplied: 0 });
    expect(new ErofsImage(h.out('middle.erofs')).tree().has('home/owner/top.txt')).toBe(false);
  });
});

describe.concurrent('a cached EROFS image cut short (a power loss before it reached the disk)', () => {
  it('is not used: the chain is built again, whole', async ({ expect }) => {
    const h = await newHome('erofs-torn');
    const base = await buildImage(h.store, 'localhost/torn/base:v1', [[file('etc/os-release', 'base\n'), file('usr/big', 'y'.repeat(200_000))]]);
    const home = await buildImage(h.store, 'localhost/torn/home:v1', [[file('home.txt', 'home\n')]]);
    const first = await run(h, [[base, 'base'], [home, 'home']], h.out('one.erofs'), 'erofs');
    const trees = join(h.csHome, 'rootfs-images', 'trees');
    // Cut every cached image short, as ext4 leaves a file whose data had not been written back.
    for (const name of readdirSync(trees)) {
      const image = join(trees, name, 'image');
      await writeFile(image, (await readFile(image)).subarray(0, 4096));
    }
    const again = await run(h, [[base, 'base'], [home, 'home']], h.out('again.erofs'), 'erofs');
    expect(again).toMatchObject({ chainId: first.chainId, layersApplied: 2, cachedLayers: 0 });
    expect((await readFile(h.out('again.erofs'))).equals(await readFile(h.out('one.erofs')))).toBe(true);
  });
});

describe.concurrent('an ext4 image', () => {
  it('holds a tree of many small files', async ({ expect }) => {
    const h = await newHome('ext4');
    const COUNT = 20_000;
    const entries: Entry[] = [];
    for (let i = 0; i < COUNT; i++) entries.push(file(`srv/d${i % 100}/f${i}`, `${i}\n`));
    const base = await buildImage(h.store, 'localhost/ext4/many:v1', [entries]);
    const image = h.out('many.ext4');
    await run(h, [[base, 'base']], image, 'ext4');
    const check = await execa('e2fsck', ['-fn', image], { reject: false });
    expect(check.exitCode, check.stderr).toBe(0);
    const files = /(\d+)\/\d+ files/.exec(check.stdout);
    expect(Number(files?.[1])).toBeGreaterThan(COUNT);
    expect((await debugfsCat(image, `/srv/d99/f${COUNT - 1}`)).trim()).toBe(String(COUNT - 1));
  });
});

// ---------------------------------------------------------------------------
// A builder killed midway.

describe.concurrent('a crash mid-assembly', () => {
  it('leaves nothing that looks cached, and the next assemble cleans up and succeeds', async ({ expect }) => {
    const [h] = await Promise.all([newHome('crash'), ensureBuilt()]);
    const SIZE = 200 * 1024 * 1024;
    const big = await tagImage(h.store, 'localhost/crash/base:v1', [await storeBigFileLayer(h.store, 'var/big.img', SIZE)]);
    const child = startCs(['rootfs', 'assemble', '--base', big.tag, '--format', 'dir', '--out', h.out('killed')], h.env);
    let exited = false;
    void child.finally(() => {
      exited = true;
    });
    let work: string | undefined;
    const deadline = Date.now() + 45_000;
    while (!exited && Date.now() < deadline) {
      work = (await readdir(join(h.cacheRoot, 'tmp')).catch(() => [] as string[])).find((name) => name.startsWith(`${child.pid}.`));
      if (work) {
        child.kill('SIGKILL');
        break;
      }
      await sleep(5);
    }
    const killed = await child;
    expect(work, `the child never started building (exit ${killed.exitCode}): ${killed.stderr}`).toBeDefined();
    expect(killed.signal).toBe('SIGKILL');

    // What the dead builder left: its work folder, and nothing under trees/ (the cache was empty).
    expect(h.tmpEntries()).toContain(work);
    expect(h.treeEntries()).toEqual([]);
    expect(existsSync(h.out('killed'))).toBe(false);

    const result = await run(h, [[big, 'base']], h.out('next'));
    expect(result).toMatchObject({ layersApplied: 1, cachedLayers: 0 });
    expect((await stat(h.out('next/var/big.img'))).size).toBe(SIZE);
    expect(h.tmpEntries()).toEqual([]);
    expect(await h.cache.has(result.chainId)).toBe(true);
    expect((await run(h, [[big, 'base']], h.out('again.tar'), 'tar')).layersApplied).toBe(0);
  });
});

// ---------------------------------------------------------------------------
// Hostile base layers. Each run is checked against a victim folder outside
// CS_HOME that the layers aim at.

describe.concurrent('hostile base layers', () => {
  let h: TestHome;
  let victimBefore: string[];
  let victimHome: BuiltImage;

  beforeAll(async () => {
    h = await newHome('hostile');
    await writeFile(join(h.victim, 'precious'), 'the host file\n');
    await mkdir(join(h.victim, 'sub'));
    await writeFile(join(h.victim, 'sub', 'deep'), 'the host file\n');
    victimBefore = await victimState(h.victim);
    victimHome = await buildImage(h.store, 'localhost/hostile/home:v1', [
      [file('hello.txt', 'hello from the home\n'), file('sub/f', 'x\n'), file('note.txt', 'x\n', { pax: { 'SCHILY.xattr.user.note': 'home' } })],
    ]);
  });

  it.sequential('does not empty a runtime folder that is a symlink, nor follow symlinks inside one', async ({ expect }) => {
    const base = await buildImage(h.store, 'localhost/hostile/runtime:v1', [
      [
        symlink('tmp', h.victim),
        symlink('run', `../../../../../../../..${h.victim}`),
        dir('proc'),
        symlink('proc/all', h.victim),
        symlink('proc/one', join(h.victim, 'precious')),
        // Relative links aim at the victim as seen from the tree's real place under $CS_HOME/rootfs/{tmp,trees}/X/rootfs.
        symlink('sys', '../../../../../victim'),
        file('etc/hostname', 'hostile\n'),
      ],
    ]);
    await run(h, [[base, 'base']], h.out('runtime'));
    expect(await victimState(h.victim)).toEqual(victimBefore);
    expect(readdirSync(h.out('runtime/proc'))).toEqual([]);
    expect(lstatSync(h.out('runtime/tmp')).isSymbolicLink()).toBe(true);
    expect(text(h.out('runtime/etc/hostname'))).toBe('hostile\n');
  });

  it.sequential('lands the home inside the tree when /home is a relative symlink out of it', async ({ expect }) => {
    const base = await buildImage(h.store, 'localhost/hostile/home-rel:v1', [[symlink('home', '../../../../../victim'), file('etc/hostname', 'x\n')]]);
    const result = await run(h, [
      [base, 'base'],
      [victimHome, 'home'],
    ], h.out('home-rel'));
    expect(result.layersApplied).toBe(2);
    expect(await victimState(h.victim)).toEqual(victimBefore);
    // Resolved as in a chroot: /home -> /victim, so the home is /victim/owner inside the tree.
    expect(text(h.out('home-rel/victim/owner/hello.txt'))).toBe('hello from the home\n');
    expect(text(h.out('home-rel/victim/owner/sub/f'))).toBe('x\n');
    expect(await getXattr(h.out('home-rel/victim/owner/note.txt'), 'user.note')).toBe('home');
    expect(lstatSync(h.out('home-rel/home')).isSymbolicLink()).toBe(true);
  });

  it.sequential('lands the home inside the tree when /home is an absolute symlink to the victim', async ({ expect }) => {
    const base = await buildImage(h.store, 'localhost/hostile/home-abs:v1', [[symlink('home', h.victim), file('etc/hostname', 'x\n')]]);
    await run(h, [
      [base, 'base'],
      [victimHome, 'home'],
    ], h.out('home-abs'));
    expect(await victimState(h.victim)).toEqual(victimBefore);
    expect(text(join(h.out('home-abs'), h.victim, 'owner/hello.txt'))).toBe('hello from the home\n');
  });

  it.sequential("cannot redirect cs's writes with files named like cs's own at the tree root", async ({ expect }) => {
    const planted = [file('complete', 'planted\n'), file('deferred.jsonl', 'planted\n'), file('xattrs.dump', 'planted\n'), dir('rootfs'), file('rootfs/complete', 'planted\n')];
    const base = await buildImage(h.store, 'localhost/hostile/planted-files:v1', [[...planted, file('x', 'x\n', { pax: { 'SCHILY.xattr.user.note': 'base' } })]]);
    const first = await run(h, [
      [base, 'base'],
      [victimHome, 'home'],
    ], h.out('planted-files'));
    expect(first.layersApplied).toBe(2);
    for (const name of ['complete', 'deferred.jsonl', 'xattrs.dump', 'rootfs/complete']) expect(text(h.out(`planted-files/${name}`)), name).toBe('planted\n');
    expect(await getXattr(h.out('planted-files/x'), 'user.note')).toBe('base');
    expect(await getXattr(h.out('planted-files/home/owner/note.txt'), 'user.note')).toBe('home');
    // The entries were committed properly: the same chain is now wholly cached.
    expect((await run(h, [[base, 'base'], [victimHome, 'home']], h.out('planted-files-2'))).layersApplied).toBe(0);
    expect(h.tmpEntries()).toEqual([]);
  });

  it.sequential("cannot redirect cs's writes with symlinks named like cs's own at the tree root", async ({ expect }) => {
    const links = CS_OWN_FILES.map((name) => symlink(name, join(h.victim, name)));
    const base = await buildImage(h.store, 'localhost/hostile/planted-links:v1', [[...links, symlink('rootfs', h.victim), file('x', 'x\n', { pax: { 'SCHILY.xattr.user.note': 'base' } })]]);
    const result = await run(h, [
      [base, 'base'],
      [victimHome, 'home'],
    ], h.out('planted-links'));
    expect(result.layersApplied).toBe(2);
    expect(await victimState(h.victim)).toEqual(victimBefore);
    for (const name of CS_OWN_FILES) expect(lstatSync(h.out(`planted-links/${name}`)).isSymbolicLink(), name).toBe(true);
    expect(await getXattr(h.out('planted-links/x'), 'user.note')).toBe('base');
    expect(await getXattr(h.out('planted-links/home/owner/note.txt'), 'user.note')).toBe('home');
    expect((await run(h, [[base, 'base'], [victimHome, 'home']], h.out('planted-links.tar'), 'tar')).layersApplied).toBe(0);
  });

  it.sequential('does not set an xattr through a symlink that replaced the file later in the layer', async ({ expect }) => {
    const base = await buildImage(h.store, 'localhost/hostile/xattr-link:v1', [
      [file('precious', 'x\n', { pax: { 'SCHILY.xattr.user.note': 'pwned' } }), symlink('precious', join(h.victim, 'precious'))],
    ]);
    await run(h, [[base, 'base']], h.out('xattr-link'));
    expect(await victimState(h.victim)).toEqual(victimBefore);
    expect(lstatSync(h.out('xattr-link/precious')).isSymbolicLink()).toBe(true);
  });
});

// ---------------------------------------------------------------------------
// Errors, from the library and from the command line.

describe.concurrent('errors', () => {
  let h: TestHome;
  let base: BuiltImage;
  let home: BuiltImage;

  beforeAll(async () => {
    [h] = await Promise.all([newHome('errors'), ensureBuilt()]);
    base = await buildImage(h.store, 'localhost/errors/base:v1', [[file('etc/os-release', 'errors base\n')]]);
    home = await buildImage(h.store, 'localhost/errors/home:v1', [[file('hello.txt', 'hello\n')]]);
  });

  it.sequential('refuses an existing --out without --force and leaves it alone; --force replaces it', async ({ expect }) => {
    const out = h.out('existing');
    await mkdir(out);
    await writeFile(join(out, 'mine.txt'), 'the user file\n');
    const error = await run(h, [[base, 'base']], out).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InputError);
    expect((error as InputError).exitCode).toBe(3);
    expect((error as Error).message).toMatch(/--force/);
    expect(readdirSync(out)).toEqual(['mine.txt']);
    expect(text(join(out, 'mine.txt'))).toBe('the user file\n');

    const tarOut = h.out('existing.tar');
    await writeFile(tarOut, 'not a tar\n');
    await expect(run(h, [[base, 'base']], tarOut, 'tar')).rejects.toBeInstanceOf(InputError);
    expect(text(tarOut)).toBe('not a tar\n');

    const cli = await cs(['rootfs', 'assemble', '--base', base.tag, '--out', out], h.env);
    expect(cli.exitCode).toBe(3);
    expect(cli.stderr).toMatch(/already exists/);
    expect(readdirSync(out)).toEqual(['mine.txt']);

    await run(h, [[base, 'base']], out, 'dir', { force: true });
    expect(existsSync(join(out, 'mine.txt'))).toBe(false);
    expect(text(join(out, 'etc/os-release'))).toBe('errors base\n');
    await run(h, [[base, 'base']], tarOut, 'tar', { force: true });
    expect((await readFile(tarOut)).subarray(257, 262).toString()).toBe('ustar');
  });

  it.sequential('treats a dangling symlink at --out as existing, and creates missing folders of --out', async ({ expect }) => {
    const link = h.out('dangling');
    symlinkSync('/nonexistent/cs-test-target', link);
    const refused = await cs(['rootfs', 'assemble', '--base', base.tag, '--out', link], h.env);
    expect(refused.exitCode, refused.stderr).toBe(3);
    expect(refused.stderr).toMatch(/already exists/);
    expect(readlinkSync(link)).toBe('/nonexistent/cs-test-target');
    await run(h, [[base, 'base']], link, 'dir', { force: true });
    expect(lstatSync(link).isDirectory()).toBe(true);
    expect(text(join(link, 'etc/os-release'))).toBe('errors base\n');

    const deep = h.out('not/yet/there.tar');
    const written = await cs(['rootfs', 'assemble', '--base', base.tag, '--format', 'tar', '--out', deep], h.env);
    expect(written.exitCode, written.stderr).toBe(0);
    expect((await readFile(deep)).subarray(257, 262).toString()).toBe('ustar');

    await writeFile(h.out('a-file'), 'x');
    const blocked = await cs(['rootfs', 'assemble', '--base', base.tag, '--format', 'erofs', '--out', h.out('a-file/x.erofs')], h.env);
    expect(blocked.exitCode, blocked.stderr).toBe(3);
    expect(blocked.stderr).toMatch(/a-file/);
    expect(blocked.stderr).not.toMatch(/Internal error|usage:/);
  });

  it.sequential('refuses a layer whose content does not match its diff_id, and caches nothing of it', async ({ expect }) => {
    const liar = await buildImage(h.store, 'localhost/errors/liar:v1', [[file('etc/os-release', 'lying\n')]], { diffIds: () => [sha256('something else')] });
    const before = h.treeEntries();
    const error = await run(h, [[liar, 'base']], h.out('liar')).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LayerError);
    expect((error as LayerError).code).toBe('LAYER_DIFFID_MISMATCH');
    expect((error as LayerError).exitCode).toBe(3);
    expect(h.treeEntries()).toEqual(before);
    expect(existsSync(h.out('liar'))).toBe(false);
    await h.cache.prune();
    expect(h.tmpEntries()).toEqual([]);

    // A lying home over a good base: the base may be cached, the chain is not.
    const liarHome = await buildImage(h.store, 'localhost/errors/liar-home:v1', [[file('x', 'x\n')]], { diffIds: () => [sha256('something else')] });
    await expect(run(h, [[base, 'base'], [liarHome, 'home']], h.out('liar-home'))).rejects.toBeInstanceOf(LayerError);
    for (const entry of h.treeEntries()) expect(existsSync(join(h.cacheRoot, 'trees', entry, 'complete'))).toBe(true);
    expect(h.tmpEntries()).toEqual([]);
    expect(existsSync(h.out('liar-home'))).toBe(false);
    const good = await run(h, [[base, 'base'], [home, 'home']], h.out('good-home'));
    expect(text(h.out('good-home/home/owner/hello.txt'))).toBe('hello\n');
    // The base (cached by the first test) is reused; the lie left nothing to reuse wrongly.
    expect(good).toMatchObject({ layersApplied: 1, cachedLayers: 1 });
  });

  it('assembles a workspace of a definition whose snapshots are oci:// images in the local store', async ({ expect }) => {
    const baseDir = h.out('import-base');
    await mkdir(join(baseDir, 'etc'), { recursive: true });
    await writeFile(join(baseDir, 'etc/motd'), 'imported base\n');
    await mkdir(join(baseDir, 'tmp'));
    await writeFile(join(baseDir, 'tmp/junk'), 'junk\n');
    const homeDir = h.out('import-home');
    await mkdir(homeDir);
    await writeFile(join(homeDir, 'hello.txt'), 'imported home\n');
    await importDirectory({ dir: baseDir, reference: 'localhost/cs-test/base:v1', env: h.env });
    await importDirectory({ dir: homeDir, reference: 'localhost/cs-test/home:v1', env: h.env });
    const definition = h.out('sb.yaml');
    await writeFile(
      definition,
      ['name: sb', 'workspaces:', '  - name: ws', '    base_snapshot: oci://localhost/cs-test/base:v1', '    home_snapshot: oci://localhost/cs-test/home:v1', ''].join('\n'),
    );
    const out = h.out('from-definition');
    const result = await cs(['rootfs', 'assemble', '-f', definition, '-W', 'sb/ws', '--out', out, '--json'], h.env);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ format: 'dir', layers: 2, layersApplied: 2, out });
    expect(text(join(out, 'etc/motd'))).toBe('imported base\n');
    expect(text(join(out, 'home/owner/hello.txt'))).toBe('imported home\n');
    expect(readdirSync(join(out, 'tmp'))).toEqual([]);
  });

  it('refuses a definition naming a snapshot the catalogue does not have, with exit 3', async ({ expect }) => {
    const definition = h.out('named.yaml');
    await writeFile(definition, ['name: named', 'workspaces:', '  - name: ws', '    base_snapshot: team-base', ''].join('\n'));
    const out = h.out('named-out');
    const result = await cs(['rootfs', 'assemble', '-f', definition, '-W', 'named/ws', '--out', out], h.env);
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toMatch(/team-base/);
    expect(result.stderr).toMatch(/snapshot/i);
    expect(result.stderr).toContain('base_snapshot "team-base" is not a snapshot in the catalogue');
    expect(result.stderr).not.toMatch(/^\s+at /m);
    expect(existsSync(out)).toBe(false);
  });

  it('reports usage mistakes with exit 2', async ({ expect }) => {
    const definition = h.out('usage.yaml');
    await writeFile(definition, ['name: usage', 'workspaces:', '  - name: ws', '    base_snapshot: oci://localhost/cs-test/base:v1', ''].join('\n'));
    const out = h.out('usage-out');
    const cases: [string, string[]][] = [
      ['-f without -W', ['-f', definition, '--out', out]],
      ['-W without -f', ['-W', 'usage/ws', '--out', out]],
      ['neither -f nor --base', ['--out', out]],
      ['-f/-W and --base', ['-f', definition, '-W', 'usage/ws', '--base', base.tag, '--out', out]],
      ['no --out', ['--base', base.tag]],
    ];
    const results = await Promise.all(cases.map(([, args]) => cs(['rootfs', 'assemble', ...args], h.env)));
    results.forEach((result, i) => {
      expect(result.exitCode, `${cases[i]?.[0]}: ${result.stderr}`).toBe(2);
      expect(result.stderr, cases[i]?.[0]).not.toMatch(/Internal error|^\s+at /m);
    });
    expect(existsSync(out)).toBe(false);
  });
});
