/**
 * Random layer stacks, applied twice: by the folder applier (apply.ts) onto
 * a real folder, and by the in-memory applier behind EROFS images
 * (memtree.ts), read back from the built image. The two must agree on every
 * stack: the same tree, or both refuse it. The catalogs elsewhere hold
 * chosen cases; this looks for the combinations nobody wrote down (a
 * whiteout of a folder a symlink points into, a hardlink to a path reached
 * through a symlink, an opaque marker under a replaced folder…).
 *
 * The stacks come from a seeded generator, so a failure names a seed that
 * reproduces it. Runs as root (the folder applier sets owners).
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LayerError } from '../../src/util/errors.js';
import { ErofsImage } from '../helpers/erofs-read.js';
import { normalise } from './oracle-support/oracle.js';
import { diffTrees, snapshot } from './oracle-support/tree.js';
import { buildInMemory } from './support/image.js';
import { apply } from './support/inspect.js';
import { dir, file, hardlink, symlink, whiteout, type EntrySpec } from './support/tar.js';

const isRoot = process.getuid?.() === 0;
const STACKS = 200;

/** mulberry32: small, seeded, good enough to pick paths. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function stack(seed: number): EntrySpec[][] {
  const next = random(seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)] as T;
  /** Folders are a, b, c (0 to 2 deep); leaves mostly x, y, z, now and then a folder's name (a type change). */
  const folder = (): string => Array.from({ length: Math.floor(next() * 3) }, () => pick(['a', 'b', 'c'])).join('/');
  const under = (parent: string, name: string): string => (parent ? `${parent}/${name}` : name);
  const files: string[] = [];
  const layers: EntrySpec[][] = [];
  const count = 2 + Math.floor(next() * 3);
  for (let l = 0; l < count; l++) {
    const entries: EntrySpec[] = [];
    const size = 2 + Math.floor(next() * 8);
    for (let e = 0; e < size; e++) {
      const parent = folder();
      const leaf = under(parent, next() < 0.95 ? pick(['x', 'y', 'z']) : pick(['a', 'b', 'c']));
      const mode = pick([0o755, 0o700, 0o644, 0o4755]);
      const mtime = new Date((1_600_000_000 + Math.floor(next() * 1000)) * 1000);
      switch (pick(['dir', 'dir', 'file', 'file', 'file', 'symlink', 'hardlink', 'whiteout', 'opaque'] as const)) {
        case 'dir':
          entries.push(dir(under(parent, pick(['a', 'b', 'c'])) || 'a', { mode, mtime }));
          break;
        case 'file':
          entries.push(file(leaf, `${leaf} ${l}.${e}\n`, { mode, mtime, uid: Math.floor(next() * 3) * 1000 }));
          files.push(leaf);
          break;
        case 'symlink':
          entries.push(symlink(next() < 0.5 ? leaf : under(parent, pick(['a', 'b', 'c'])), pick(['a', 'b/c', '../a', '/b', '/a/b', '..', 'c/../a', 'missing', 'a', 'b', next() < 0.3 ? '/a/x' : 'c']), { mtime }));
          break;
        case 'hardlink':
          entries.push(hardlink(leaf, files.length > 0 && next() < 0.97 ? pick(files) : under(folder(), 'x')));
          break;
        case 'whiteout':
          entries.push(whiteout(under(parent, `.wh.${pick(['a', 'b', 'c', 'x', 'y'])}`)));
          break;
        case 'opaque':
          entries.push(whiteout(under(parent, '.wh..wh..opq')));
          break;
      }
    }
    layers.push(entries);
  }
  return layers;
}

async function viaFolder(layers: EntrySpec[][], root: string): Promise<unknown> {
  try {
    for (const layer of layers) await apply(root, layer);
    return undefined;
  } catch (error) {
    return error;
  }
}

describe.runIf(isRoot)('random layer stacks: the image holds what the folder holds', () => {
  it(`agrees on ${STACKS} seeded stacks`, async () => {
    let refused = 0;
    for (let seed = 1; seed <= STACKS; seed++) {
      const layers = stack(seed);
      const work = mkdtempSync(join(tmpdir(), 'cs-memtree-fuzz-'));
      try {
        const startNs = BigInt(Date.now() - 1000) * 1_000_000n;
        const root = join(work, 'root');
        const image = join(work, 'image');
        mkdirSync(root);
        const folder = await viaFolder(layers, root);
        const built = await buildInMemory(layers, image);
        const context = `seed ${seed}: ${JSON.stringify(layers.map((l) => l.map((e) => `${e.type} ${e.name}${e.linkname ? ` -> ${e.linkname}` : ''}`)))}`;
        if (folder !== undefined || built !== undefined) {
          expect(folder, `${context}\nthe folder build: ${String(folder)}\nthe image build: ${String(built)}`).toBeInstanceOf(LayerError);
          expect(built, `${context}\nthe folder build: ${String(folder)}\nthe image build: ${String(built)}`).toBeInstanceOf(LayerError);
          refused++;
          continue;
        }
        const expected = normalise(await snapshot(root), startNs);
        const actual = normalise(new ErofsImage(image).tree(), startNs);
        // Folders made as implicit parents have the time they were made on disk, and 0 in the image.
        const diffs = diffTrees(expected, actual, { ignore: (p, field, node) => field === 'mtime' && (p === '.' || (node.type === 'dir' && node.mtime === 'unpack-time')) });
        expect(diffs, context).toEqual([]);
      } finally {
        rmSync(work, { recursive: true, force: true });
      }
    }
    // The generator must make both kinds: stacks that apply (most) and stacks that are refused.
    expect(refused).toBeGreaterThan(0);
    expect(refused).toBeLessThan(STACKS * 0.6);
  }, 300_000);
});
