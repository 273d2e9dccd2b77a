import { existsSync } from 'node:fs';
import { chmod, link, mkdir, mkdtemp, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InputError } from '../util/errors.js';
import { claimRootImages, GRACE_MS, imagesDir, pruneRootImages } from './root-images.js';
import { FILES } from './state.js';

/** Records as cs writes them, with only the fields a prune reads. */
async function workspace(dir: string, lowers: string[], extra: { points?: string[][]; running?: string[] } = {}): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, FILES.record), JSON.stringify({ lowers, restorePoints: (extra.points ?? []).map((l, i) => ({ name: `p${i}`, root: { lowers: l, chainId: 'x', generation: 0 } })) }));
  if (extra.running) await writeFile(join(dir, FILES.run), JSON.stringify({ boot: { lowers: extra.running } }));
}

describe('pruning root images', () => {
  let home: string;
  let env: Record<string, string>;
  let images: string;
  const later = () => Date.now() + GRACE_MS + 60_000;
  const image = async (name: string) => {
    const path = join(images, name);
    await writeFile(path, Buffer.alloc(8192, 1));
    return path;
  };
  beforeEach(async () => {
    home = await mkdtemp(join(tmpdir(), 'cs-prune-'));
    env = { CS_HOME: join(home, 'cs'), HOME: home, XDG_DATA_HOME: join(home, 'xdg') };
    images = imagesDir(env);
    await mkdir(images, { recursive: true });
  });
  afterEach(async () => {
    await rm(home, { recursive: true, force: true });
  });

  it('keeps what a record, a restore point, a running VM or a workspace being made names, and removes the rest', async () => {
    const sandboxes = join(env.CS_HOME as string, 'sandboxes');
    const [current, pointOnly, vmOnly, staged, viaLink, unused, cached] = await Promise.all(['a.erofs', 'b.erofs', 'c.erofs', 'd.erofs', 'e.erofs', 'f.erofs', 'g.erofs'].map(image));
    await symlink(images, join(home, 'images-link'));
    await workspace(join(sandboxes, 'shop', 'dev'), [current as string], { points: [[pointOnly as string]], running: [vmOnly as string] });
    await workspace(join(sandboxes, 'shop', 'api'), [join(home, 'images-link', 'e.erofs')]);
    await workspace(join(sandboxes, '.new-shop2-1-2', 'dev'), [staged as string]);
    // The cache still links the image: removing it frees nothing until the cache lets go.
    await link(cached as string, join(home, 'cache-link'));

    const freed = (await stat(unused as string)).blocks * 512;
    const result = await pruneRootImages({ env });
    expect(result.removed.sort()).toEqual([unused, cached].sort());
    expect(result.freedBytes).toBe(freed);
    expect(result.kept).toBe(5);
    for (const kept of [current, pointOnly, vmOnly, staged, viaLink]) expect(existsSync(kept as string)).toBe(true);
  });

  it('keeps an image claimed by a workspace being made until the claim is older than the grace period', async () => {
    const path = await image('h.erofs');
    expect(await claimRootImages([path])).toBe(true);
    expect((await pruneRootImages({ env })).removed).toEqual([]);
    expect((await pruneRootImages({ env, now: later() })).removed).toEqual([path]);
    // The stale claim went with it; a claim of an image a prune took says so (the caller builds it again).
    expect(await readdir(join(images, '.claims'))).toEqual([]);
    expect(await claimRootImages([path])).toBe(false);
  });

  it('removes what builds whose process died left, not what a live build is writing', async () => {
    const dead = await image('i.erofs.tmp-999999999-1');
    const live = await image(`j.erofs.tmp-${process.pid}-1`);
    const other = await image('notes.txt');
    const result = await pruneRootImages({ env, now: later() });
    expect(result.removed).toEqual([dead]);
    expect(existsSync(dead)).toBe(false);
    expect(existsSync(live)).toBe(true);
    expect(existsSync(other)).toBe(true);
  });

  it('removes nothing when a record cannot be read, and says which', async () => {
    const path = await image('k.erofs');
    const dir = join(env.CS_HOME as string, 'sandboxes', 'shop', 'dev');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, FILES.record), '{"lowers": [');
    await expect(pruneRootImages({ env, now: later() })).rejects.toThrow(InputError);
    await expect(pruneRootImages({ env, now: later() })).rejects.toThrow(`${join(dir, FILES.record)} is not valid JSON`);
    expect(existsSync(path)).toBe(true);
  });

  it('removes nothing when another user\'s sandbox cannot be looked into (run as that other user)', async () => {
    // Sandboxes are private (0700): someone else's prune cannot see which images they use.
    const path = await image('l.erofs');
    await workspace(join(env.CS_HOME as string, 'sandboxes', 'theirs', 'dev'), [path]);
    for (const dir of [home, env.CS_HOME as string, join(env.CS_HOME as string, 'sandboxes'), images]) await chmod(dir, 0o777);
    await chmod(join(env.CS_HOME as string, 'sandboxes', 'theirs'), 0o700);
    await chmod(path, 0o666);
    const script = `const { pruneRootImages } = await import(${JSON.stringify(new URL('./root-images.ts', import.meta.url).href)}); await pruneRootImages({ env: ${JSON.stringify(env)} }).then(() => console.log('pruned'), (e) => console.log(e.message));`;
    const child = await execa(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { uid: 65534, gid: 65534, reject: false, cwd: fileURLToPath(new URL('../..', import.meta.url)), env: { PATH: process.env['PATH'] ?? '', HOME: home } });
    expect(child.stdout, child.stderr).toMatch(/cannot read \S*\/theirs\S* \(EACCES\), so which root images it uses is unknown; nothing was pruned/);
    expect(existsSync(path)).toBe(true);
  });
});
