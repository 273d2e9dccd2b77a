/**
 * A real overlayfs upper directory (made by mounting overlayfs, as a
 * workspace's init does; needs root, which the test suite runs as) turned
 * into an OCI layer, then applied onto the lower tree with cs's own layer
 * applier: the result must be the merged view the user saw, minus what a
 * base snapshot leaves out.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { extract } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyLayer } from '../../src/layers/apply.js';
import { packOverlayUpper } from '../../src/layers/overlay-upper.js';

async function tree(root: string, prefix = ''): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await readdir(join(root, prefix), { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
    const rel = prefix ? `${prefix}/${name.name}` : name.name;
    if (name.isDirectory()) {
      out[`${rel}/`] = 'dir';
      Object.assign(out, await tree(root, rel));
    } else out[rel] = await readFile(join(root, rel), 'utf8');
  }
  return out;
}

async function entries(stream: AsyncIterable<Uint8Array>): Promise<string[]> {
  const names: string[] = [];
  const ex = extract();
  ex.on('entry', (header, body, next) => {
    names.push(header.name);
    body.on('end', next);
    body.resume();
  });
  const done = new Promise<void>((resolve, reject) => {
    ex.on('finish', () => resolve());
    ex.on('error', reject);
  });
  for await (const chunk of stream) ex.write(chunk);
  ex.end(() => undefined);
  await done;
  return names;
}

async function digest(stream: AsyncIterable<Uint8Array>): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of stream) hash.update(chunk);
  return hash.digest('hex');
}

describe('an overlayfs upper directory as an OCI layer', () => {
  let dir: string;
  let merged: Record<string, string>;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cs-upper-'));
    const lower = join(dir, 'lower');
    for (const d of ['d', 'keep', 'home/owner', 'etc', 'gone/deep']) await mkdir(join(lower, d), { recursive: true });
    await writeFile(join(lower, 'a'), 'a from the base\n');
    await writeFile(join(lower, 'b'), 'b from the base\n');
    await writeFile(join(lower, 'd', 'x'), 'x in the old d\n');
    await writeFile(join(lower, 'keep', 'k'), 'kept\n');
    await writeFile(join(lower, 'home', 'owner', 'h'), 'home file\n');
    await writeFile(join(lower, 'etc', 'hostname'), 'base\n');
    await writeFile(join(lower, 'gone', 'deep', 'f'), 'f\n');
    for (const d of ['upper', 'work', 'merged']) await mkdir(join(dir, d));
    const m = join(dir, 'merged');
    await execa('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower},upperdir=${join(dir, 'upper')},workdir=${join(dir, 'work')},redirect_dir=off,index=off,metacopy=off`, m]);
    try {
      // What a user does in a workspace.
      await rm(join(m, 'a'));
      await writeFile(join(m, 'b'), 'b changed in the workspace\n');
      await rm(join(m, 'd'), { recursive: true });
      await mkdir(join(m, 'd'));
      await writeFile(join(m, 'd', 'y'), 'y in the new d\n');
      await rm(join(m, 'gone'), { recursive: true });
      await mkdir(join(m, 'new', 'sub'), { recursive: true });
      await writeFile(join(m, 'new', 'sub', 'n'), 'added\n');
      await writeFile(join(m, 'home', 'owner', 'notes'), 'not for a base snapshot\n');
      await writeFile(join(m, 'etc', 'hostname'), 'workspace\n');
      merged = await tree(m);
    } finally {
      await execa('umount', [m]);
    }
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('records changes, deletions as whiteouts and a replaced folder as opaque, and leaves out home and cs files', async () => {
    const names = await entries(packOverlayUpper(join(dir, 'upper')));
    expect(names).toEqual(expect.arrayContaining(['.wh.a', 'b', 'd/', 'd/.wh..wh..opq', 'd/y', '.wh.gone', 'new/', 'new/sub/', 'new/sub/n']));
    expect(names.filter((n) => n.startsWith('home') || n.startsWith('etc/hostname'))).toEqual([]);
    expect(names).not.toContain('keep/');
    // Parents come before children; the opaque marker right after its folder.
    expect(names.indexOf('d/.wh..wh..opq')).toBe(names.indexOf('d/') + 1);
  });

  it('applied onto the base, gives the tree the user saw (less what a base snapshot leaves out)', async () => {
    const target = join(dir, 'applied');
    await execa('cp', ['-a', join(dir, 'lower'), target]);
    await applyLayer({ root: target, tar: packOverlayUpper(join(dir, 'upper')), privileged: true });
    const expected = { ...merged };
    delete expected['home/owner/notes'];
    expected['etc/hostname'] = 'base\n';
    expect(await tree(target)).toEqual(expected);
    expect(existsSync(join(target, 'd', 'x'))).toBe(false);
  });

  it('is deterministic: the same upper gives the same bytes', async () => {
    const first = await digest(packOverlayUpper(join(dir, 'upper'), { mtime: 0 }));
    const second = await digest(packOverlayUpper(join(dir, 'upper'), { mtime: 0 }));
    expect(first).toBe(second);
  });

  it('refuses a file named like a whiteout, which a layer cannot hold', async () => {
    const upper = join(dir, 'odd-upper');
    await mkdir(upper);
    await writeFile(join(upper, '.wh.trick'), 'a real file\n');
    await expect(entries(packOverlayUpper(upper))).rejects.toThrow(/cannot be stored in an OCI layer/);
  });
});
