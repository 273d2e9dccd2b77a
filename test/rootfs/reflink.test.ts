/**
 * On a file system with reflinks (XFS here, as btrfs would be), building an
 * EROFS image on a cached one shares the cached image's blocks instead of
 * copying them: a warm build writes only what changed. A user sees it in
 * `filefrag -v` (extents flagged "shared") and in the free space left.
 *
 * The test makes a small XFS file system in a file and loop-mounts it: it
 * runs as root, as the whole suite does.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContentStore } from '../../src/oci/store.js';
import { assemble } from '../../src/rootfs/assemble.js';
import { storeDir } from '../../src/util/paths.js';
import { ErofsImage } from '../helpers/erofs-read.js';
import { buildImage, file } from './support/layers.js';

/** Bytes of `path` in extents it shares with another file. */
async function sharedBytes(path: string): Promise<number> {
  const { stdout } = await execa('filefrag', ['-v', '-b4096', path]);
  let shared = 0;
  for (const line of stdout.split('\n')) {
    const m = /^\s*\d+:\s+\d+\.\.\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+):.*\bshared\b/.exec(line);
    if (m) shared += Number(m[1]) * 4096;
  }
  return shared;
}

describe('a warm EROFS build on a file system with reflinks', () => {
  let work: string;
  let mount: string;
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'cs-reflink-'));
    mount = join(work, 'xfs');
    await mkdir(mount);
    await execa('truncate', ['-s', '320M', join(work, 'fs.img')]);
    await execa('mkfs.xfs', ['-q', '-m', 'reflink=1', join(work, 'fs.img')]);
    await execa('mount', ['-o', 'loop', join(work, 'fs.img'), mount]);
  }, 60_000);
  afterAll(async () => {
    await execa('umount', [mount], { reject: false });
    await rm(work, { recursive: true, force: true });
  });

  it('shares the cached image blocks instead of copying them, and the image is whole', async () => {
    const env = { ...process.env, CS_HOME: join(mount, 'cs-home'), CS_CONFIG: join(work, 'none.yaml') };
    const store = await ContentStore.open(storeDir(env));
    const big = randomBytes(24 * 1024 * 1024);
    const base = await buildImage(store, 'localhost/reflink/base:1', [[file('usr/big', big), file('etc/os-release', 'base\n')]]);
    const home = (n: number) => buildImage(store, `localhost/reflink/home:${n}`, [[file('home.txt', `home ${n}\n`)]]);
    const build = async (n: number) =>
      assemble({ snapshots: [{ reference: base.tag, kind: 'base' }, { reference: (await home(n)).tag, kind: 'home' }], out: join(mount, `root-${n}.erofs`), format: 'erofs', env });

    expect(await build(1)).toMatchObject({ layersApplied: 2 });
    const warm = await build(2);
    expect(warm).toMatchObject({ layersApplied: 1, cachedLayers: 1 });
    const out = join(mount, 'root-2.erofs');
    // The base's 24 MiB of contents are the cache's blocks, not a copy of them.
    expect(await sharedBytes(out)).toBeGreaterThanOrEqual(big.length);
    const check = await execa('fsck.erofs', [out], { reject: false });
    expect(check.exitCode, check.stderr).toBe(0);
    const tree = new ErofsImage(out).tree();
    expect(tree.get('usr/big')?.sha256).toBe(createHash('sha256').update(big).digest('hex'));
    expect(tree.get('home/owner/home.txt')?.sha256).toBe(createHash('sha256').update('home 2\n').digest('hex'));
  }, 120_000);
});
