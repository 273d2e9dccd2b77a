/**
 * The packer's promises: the same tree gives the same bytes, and extended
 * attributes (binary values included) leave in PAX records that the layer
 * applier reads back byte for byte. Real files, real setfattr.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { applyLayer } from './apply.js';
import { packDirectory } from './pack.js';

const root = mkdtempSync(join(tmpdir(), 'cs-pack-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

async function bytes(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function sample(): string {
  const dir = mkdtempSync(join(root, 'tree-'));
  mkdirSync(join(dir, 'b/sub'), { recursive: true });
  writeFileSync(join(dir, 'b/sub/file'), 'content');
  writeFileSync(join(dir, 'a'), '');
  writeFileSync(join(dir, 'Z'), 'upper case sorts first');
  symlinkSync('b/sub/file', join(dir, 'link'));
  utimesSync(join(dir, 'a'), 1_700_000_000, 1_700_000_000);
  return dir;
}

describe('packDirectory', () => {
  it('is deterministic and orders entries bytewise, depth-first', async () => {
    const dir = sample();
    const first = await bytes(packDirectory(dir));
    const second = await bytes(packDirectory(dir));
    expect(createHash('sha256').update(first).digest('hex')).toBe(createHash('sha256').update(second).digest('hex'));
    const { stdout } = await execa('tar', ['-t'], { input: first });
    expect(stdout.split('\n')).toEqual(['Z', 'a', 'b/', 'b/sub/', 'b/sub/file', 'link']);
  });

  it('writes xattrs, binary values intact, and the applier reads the same bytes back', async () => {
    const dir = sample();
    const binary = Buffer.from([0x01, 0x00, 0x00, 0x02, 0xff, 0x80, 0x7f, 0xc3, 0x28]);
    await execa('setfattr', ['-n', 'user.binary', '-v', `0x${binary.toString('hex')}`, join(dir, 'b/sub/file')]);
    await execa('setfattr', ['-n', 'user.text', '-v', 'wörld', join(dir, 'b')]);
    const tar = await bytes(packDirectory(dir, { xattrs: true }));
    const seen = new Map<string, Record<string, string>>();
    await applyLayer({ root: mkdtempSync(join(root, 'out-')), tar: Readable.from([tar]), privileged: true, onXattrs: (path, values) => seen.set(path, values) });
    expect(Buffer.from(seen.get('b/sub/file')?.['user.binary'] ?? '', 'latin1')).toEqual(binary);
    expect(Buffer.from(seen.get('b')?.['user.text'] ?? '', 'latin1').toString('utf8')).toBe('wörld');
    // GNU tar agrees on the bytes.
    const out = mkdtempSync(join(root, 'gnu-'));
    await execa('tar', ['-x', '--xattrs', '--xattrs-include=user.*', '-C', out], { input: tar });
    const { stdout } = await execa('getfattr', ['-n', 'user.binary', '-e', 'hex', '--only-values', join(out, 'b/sub/file')], { encoding: 'buffer' });
    expect(Buffer.from(stdout)).toEqual(binary);
  });

  it('without xattrs: true, none are recorded', async () => {
    const dir = sample();
    await execa('setfattr', ['-n', 'user.x', '-v', 'y', join(dir, 'a')]);
    const seen: string[] = [];
    await applyLayer({ root: mkdtempSync(join(root, 'out-')), tar: Readable.from([await bytes(packDirectory(dir))]), privileged: true, onXattrs: (path) => seen.push(path) });
    expect(seen).toEqual([]);
  });
});
