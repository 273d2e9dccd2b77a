import { lstat, mkdtemp, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeCpio, type CpioEntry } from './cpio.js';

/**
 * The initramfs archive, read back two ways: by GNU cpio (the same format
 * the kernel unpacks) and by a small newc header reader here, which checks
 * what cpio is lenient about (alignment, the trailer, nothing after it).
 */

interface Parsed {
  name: string;
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  data: Buffer;
  rdevmajor: number;
  rdevminor: number;
  /** Byte offsets of the header and of the data, to check alignment. */
  at: number;
  dataAt: number;
}

const FIELDS = ['ino', 'mode', 'uid', 'gid', 'nlink', 'mtime', 'filesize', 'devmajor', 'devminor', 'rdevmajor', 'rdevminor', 'namesize', 'check'] as const;

function align4(n: number): number {
  return (n + 3) & ~3;
}

/** Reads a newc archive strictly: throws on anything the kernel's unpacker would not accept. */
function parseNewc(archive: Buffer): { entries: Parsed[]; end: number } {
  const entries: Parsed[] = [];
  let at = 0;
  for (;;) {
    if (at % 4 !== 0) throw new Error(`header at ${at} is not 4-byte aligned`);
    const magic = archive.toString('ascii', at, at + 6);
    if (magic !== '070701') throw new Error(`bad magic ${JSON.stringify(magic)} at ${at}`);
    const f: Record<string, number> = {};
    FIELDS.forEach((name, i) => {
      const text = archive.toString('ascii', at + 6 + i * 8, at + 14 + i * 8);
      if (!/^[0-9a-f]{8}$/.test(text)) throw new Error(`field ${name} at ${at} is not 8 lower-case hex digits: ${text}`);
      f[name] = parseInt(text, 16);
    });
    const nameStart = at + 110;
    const namesize = f['namesize'] as number;
    if (archive[nameStart + namesize - 1] !== 0) throw new Error(`name at ${nameStart} is not NUL-terminated`);
    const name = archive.toString('utf8', nameStart, nameStart + namesize - 1);
    const dataAt = align4(nameStart + namesize);
    const size = f['filesize'] as number;
    if (dataAt + size > archive.length) throw new Error(`entry ${name} runs past the end of the archive`);
    entries.push({
      name,
      ino: f['ino'] as number,
      mode: f['mode'] as number,
      uid: f['uid'] as number,
      gid: f['gid'] as number,
      nlink: f['nlink'] as number,
      mtime: f['mtime'] as number,
      data: archive.subarray(dataAt, dataAt + size),
      rdevmajor: f['rdevmajor'] as number,
      rdevminor: f['rdevminor'] as number,
      at,
      dataAt,
    });
    at = align4(dataAt + size);
    if (name === 'TRAILER!!!') return { entries, end: at };
  }
}

const INIT = Buffer.from('#!/bin/sh\necho hello from init\n'); // 31 bytes: needs padding
const BLOB = Buffer.from(Array.from({ length: 1027 }, (_, i) => (i * 7) % 256));

const ENTRIES: CpioEntry[] = [
  { type: 'dir', path: 'bin' },
  { type: 'file', path: 'bin/tool', data: BLOB, mode: 0o755 },
  { type: 'dir', path: 'dev' },
  { type: 'char', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
  { type: 'char', path: 'dev/null', major: 1, minor: 3, mode: 0o666 },
  { type: 'file', path: '/init', data: INIT, mode: 0o755 },
  { type: 'symlink', path: 'sbin', target: 'bin' },
  { type: 'file', path: 'empty', data: new Uint8Array(0) },
  { type: 'dir', path: 'tmp', mode: 0o1777 },
];

describe('writeCpio', () => {
  let work: string;
  let archive: Buffer;

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'cs-cpio-'));
    archive = writeCpio(ENTRIES);
    await writeFile(join(work, 'initramfs.cpio'), archive);
  });

  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  it('writes newc records in the order given, aligned to 4 bytes, ending with the trailer and nothing after it', () => {
    const { entries, end } = parseNewc(archive);
    expect(entries.map((e) => e.name)).toEqual(['bin', 'bin/tool', 'dev', 'dev/console', 'dev/null', 'init', 'sbin', 'empty', 'tmp', 'TRAILER!!!']);
    for (const e of entries) {
      expect(e.at % 4).toBe(0);
      expect(e.dataAt % 4).toBe(0);
    }
    expect(end).toBe(archive.length);
    expect(archive.length % 4).toBe(0);
    const trailer = entries[entries.length - 1] as Parsed;
    expect(trailer.mode).toBe(0);
    expect(trailer.data.length).toBe(0);
  });

  it('records file contents, types and modes, owned by root with mtime 0 and distinct inodes', () => {
    const { entries } = parseNewc(archive);
    const byName = new Map(entries.map((e) => [e.name, e]));
    expect(byName.get('bin/tool')?.data.equals(BLOB)).toBe(true);
    expect(byName.get('init')?.data.toString()).toBe(INIT.toString());
    expect(byName.get('init')?.mode).toBe(0o100755);
    expect(byName.get('empty')?.mode).toBe(0o100644);
    expect(byName.get('bin')?.mode).toBe(0o040755);
    expect(byName.get('tmp')?.mode).toBe(0o041777);
    expect(byName.get('sbin')?.mode).toBe(0o120777);
    expect(byName.get('sbin')?.data.toString()).toBe('bin');
    const console = byName.get('dev/console');
    expect(console?.mode).toBe(0o020600);
    expect([console?.rdevmajor, console?.rdevminor]).toEqual([5, 1]);
    expect([byName.get('dev/null')?.rdevmajor, byName.get('dev/null')?.rdevminor]).toEqual([1, 3]);
    const real = entries.filter((e) => e.name !== 'TRAILER!!!');
    for (const e of real) {
      expect([e.uid, e.gid, e.mtime]).toEqual([0, 0, 0]);
    }
    expect(new Set(real.map((e) => e.ino)).size).toBe(real.length);
  });

  it('is byte-for-byte reproducible (the initramfs cache is keyed by content)', () => {
    expect(writeCpio(ENTRIES).equals(archive)).toBe(true);
  });

  it('is read by GNU cpio: device nodes listed with their numbers, files extracted with their bytes', async () => {
    const file = join(work, 'initramfs.cpio');
    const listing = await execa('cpio', ['-itv', '--quiet', '--numeric-uid-gid', '-F', file], { env: { TZ: 'UTC' } });
    const lines = listing.stdout.split('\n');
    expect(lines).toHaveLength(9);
    expect(lines.find((l) => l.endsWith(' dev/console'))).toMatch(/^crw------- +1 0 +0 +5, +1 /);
    expect(lines.find((l) => l.endsWith(' dev/null'))).toMatch(/^crw-rw-rw- +1 0 +0 +1, +3 /);
    expect(lines.find((l) => l.includes(' sbin -> '))).toMatch(/^lrwxrwxrwx .* sbin -> bin$/);
    expect(lines.find((l) => l.endsWith(' tmp'))).toMatch(/^drwxrwxrwt /);

    // Extract all but the device nodes (making those would need CAP_MKNOD).
    const out = join(work, 'out');
    await execa('mkdir', [out]);
    await execa('cpio', ['-idm', '--quiet', '--no-absolute-filenames', '-F', file, '-f', 'dev/*'], { cwd: out });
    expect((await readFile(join(out, 'bin', 'tool'))).equals(BLOB)).toBe(true);
    expect(await readFile(join(out, 'init'), 'utf8')).toBe(INIT.toString());
    expect((await lstat(join(out, 'init'))).mode & 0o7777).toBe(0o755);
    expect(await readlink(join(out, 'sbin'))).toBe('bin');
    expect((await lstat(join(out, 'empty'))).size).toBe(0);
    expect((await lstat(join(out, 'init'))).mtimeMs).toBe(0);
  });

  it('handles an archive of nothing but the trailer', () => {
    const { entries, end } = parseNewc(writeCpio([]));
    expect(entries.map((e) => e.name)).toEqual(['TRAILER!!!']);
    expect(end).toBe(writeCpio([]).length);
  });

  it('rejects paths that are empty or climb out with . or ..', () => {
    const data = new Uint8Array(0);
    for (const path of ['', '/', '..', '../etc/passwd', 'a/../../b', 'a/./b', '.', 'dev/..']) {
      expect(() => writeCpio([{ type: 'file', path, data }]), path).toThrow(/bad cpio path/);
    }
    expect(() => writeCpio([{ type: 'symlink', path: '../x', target: 'y' }])).toThrow(/bad cpio path/);
  });

  it('strips leading slashes so every name is relative to the archive root', () => {
    const { entries } = parseNewc(writeCpio([{ type: 'dir', path: '///etc' }]));
    expect(entries[0]?.name).toBe('etc');
  });

  it('refuses device numbers a header cannot hold', () => {
    expect(() => writeCpio([{ type: 'char', path: 'dev/x', major: -1, minor: 0 }])).toThrow(RangeError);
    expect(() => writeCpio([{ type: 'char', path: 'dev/x', major: 1.5, minor: 0 }])).toThrow(RangeError);
    expect(() => writeCpio([{ type: 'char', path: 'dev/x', major: 1, minor: 2 ** 32 }])).toThrow(RangeError);
  });
});
