/**
 * Sparse files in layers, as GNU tar writes them: the PAX formats 1.0 (its
 * default) and 0.1 are applied to the same bytes with the holes kept; 0.0
 * and hostile maps are refused. The archives are made by GNU tar itself.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { execa } from 'execa';
import { pack } from 'tar-stream';
import { afterAll, describe, expect, it } from 'vitest';
import { LayerError } from '../util/errors.js';
import { applyLayer } from './apply.js';

const root = mkdtempSync(join(tmpdir(), 'cs-sparse-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const sha = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

/** A 64 MiB file with three small pieces of data and holes around them. */
async function sparseFile(dir: string): Promise<string> {
  const path = join(dir, 'disk.img');
  await execa('truncate', ['-s', '64M', path]);
  for (const [offset, text] of [[0, 'head'], [5_000_000, 'middle piece'], [67_108_000, 'tail']] as const) {
    await execa('sh', ['-c', `printf '%s' '${text}' | dd of='${path}' bs=1 seek=${offset} conv=notrunc 2>/dev/null`]);
  }
  return path;
}

async function applied(tarPath: string): Promise<string> {
  const out = mkdtempSync(join(root, 'out-'));
  await applyLayer({ root: out, tar: Readable.from([readFileSync(tarPath)]) });
  return out;
}

describe('sparse files', () => {
  for (const version of ['1.0', '0.1']) {
    it(`GNU tar's PAX sparse ${version}: same bytes, same size, holes kept, the real name`, async () => {
      const src = mkdtempSync(join(root, 'src-'));
      const file = await sparseFile(src);
      const tarPath = join(root, `sparse-${version}.tar`);
      await execa('tar', ['--sparse', `--sparse-version=${version}`, '--format=posix', '-cf', tarPath, '-C', src, 'disk.img']);
      // The archive really is sparse: far smaller than the file.
      expect(statSync(tarPath).size).toBeLessThan(64 * 1024);
      const out = await applied(tarPath);
      const copy = join(out, 'disk.img');
      expect(statSync(copy).size).toBe(64 * 1024 * 1024);
      expect(sha(copy)).toBe(sha(file));
      // Holes stay holes: a few blocks allocated, not 64 MiB.
      expect(statSync(copy).blocks * 512).toBeLessThan(1024 * 1024);
    });
  }

  it('GNU sparse 0.0 is refused with a way out', async () => {
    const src = mkdtempSync(join(root, 'src-'));
    await sparseFile(src);
    const tarPath = join(root, 'sparse-0.0.tar');
    await execa('tar', ['--sparse', '--sparse-version=0.0', '--format=posix', '-cf', tarPath, '-C', src, 'disk.img']);
    const error = await applied(tarPath).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LayerError);
    expect((error as LayerError).message).toContain('--sparse --format=posix writes 1.0');
  });

  /** A hand-made 1.0 entry: the map text, padded to 512, then `data`. */
  function handMade(map: string, data: string, realSize: number): Promise<Buffer> {
    const padded = Buffer.concat([Buffer.from(map), Buffer.alloc((512 - (Buffer.byteLength(map) % 512)) % 512)]);
    const body = Buffer.concat([padded, Buffer.from(data)]);
    const tar = pack();
    tar.entry(
      { name: 'GNUSparseFile.1/f', size: body.length, pax: { 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': 'f', 'GNU.sparse.realsize': String(realSize) } },
      body,
    );
    tar.finalize();
    return new Promise((resolve) => {
      const chunks: Buffer[] = [];
      tar.on('data', (c: unknown) => chunks.push(c as Buffer));
      tar.on('end', () => resolve(Buffer.concat(chunks)));
    });
  }

  for (const [what, map, data, size] of [
    ['overlapping pieces', '2\n0\n4\n2\n4\n', 'aaaabbbb', 100],
    ['a piece past the real size', '1\n98\n4\n', 'aaaa', 100],
    ['a map that promises more data than the entry has', '1\n0\n8\n', 'aaaa', 100],
    ['a count that is not a number', 'x\n', '', 100],
  ] as const) {
    it(`a hostile map is refused: ${what}`, async () => {
      const out = mkdtempSync(join(root, 'out-'));
      const error = await applyLayer({ root: out, tar: Readable.from([await handMade(map, data, size)]) }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(LayerError);
      expect((error as LayerError).code).toBe('LAYER_BAD_SPARSE');
    });
  }

  it('a good hand-made map lands its pieces at their offsets', async () => {
    const out = mkdtempSync(join(root, 'out-'));
    await applyLayer({ root: out, tar: Readable.from([await handMade('2\n1\n2\n10\n3\n', 'abxyz', 16)]) });
    const bytes = readFileSync(join(out, 'f'));
    expect(bytes.length).toBe(16);
    expect(bytes.toString('latin1')).toBe('\0ab\0\0\0\0\0\0\0xyz\0\0\0');
  });
});
