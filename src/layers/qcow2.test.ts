import { createHash, randomBytes } from 'node:crypto';
import { copyFile, link, lstat, mkdir, mkdtemp, open, readFile, readlink, readdir, rm, stat, symlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { damageRuns } from '../../test/helpers/damage.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LayerError } from '../util/errors.js';
import { Ext4Image, walkTree } from './ext4.js';
import { openDiskImage, qcow2Header, type DiskImage } from './qcow2.js';

/**
 * The qcow2 reader against images made by the real qemu-img and written by
 * the real qemu-io: every byte it reads must be what `qemu-img convert -O
 * raw` gives for the same image (whole disks by hash, and random unaligned
 * ranges), through overlays on raw bases, chains of three, tops larger than
 * their backing, zero writes, discards, version 2 and 3, small and large
 * clusters. ext4 file systems inside qcow2 chains must read as they do raw.
 * Then copies are damaged the ways a hostile file could be, and each fault
 * must be a LayerError with its code, never a read outside the folder.
 */

const KiB = 1024;
const MiB = 1024 * KiB;

async function sh(command: string, args: string[], okExitCodes = [0]): Promise<string> {
  const result = await execa(command, args, { reject: false, stdin: 'ignore' });
  if (!okExitCodes.includes(result.exitCode ?? -1)) throw new Error(`${command} ${args.join(' ')} failed (${result.exitCode}): ${result.stderr}`);
  return result.stdout;
}

let work: string;
let n = 0;
/** A new empty folder under the test's work folder. */
async function folder(): Promise<string> {
  const dir = join(work, `case-${n++}`);
  await mkdir(dir);
  return dir;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'cs-qcow2-'));
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

// --- making images with QEMU's tools ---

async function rawFile(path: string, bytes: number): Promise<Buffer> {
  const data = randomBytes(bytes);
  await writeFile(path, data);
  return data;
}

/** An empty overlay, as cs makes them: `-u` and the backing's format given. */
async function overlay(dir: string, name: string, backing: string, format: string, size: string, options: string[] = []): Promise<string> {
  const path = join(dir, name);
  await sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', backing, '-F', format, ...options, path, size]);
  return path;
}

async function qemuIo(path: string, commands: string[]): Promise<void> {
  await sh('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), path]);
}

/** What QEMU itself reads from the image, as one buffer. */
async function qemuRaw(path: string): Promise<Buffer> {
  const out = join(work, `converted-${n++}.raw`);
  await sh('qemu-img', ['convert', '-O', 'raw', path, out]);
  const data = await readFile(out);
  await rm(out);
  return data;
}

interface QemuInfo {
  'virtual-size': number;
  'cluster-size'?: number;
  'backing-filename'?: string;
  'backing-filename-format'?: string;
  'format-specific'?: { data: { compat: string } };
}

async function qemuInfo(path: string): Promise<QemuInfo> {
  return JSON.parse(await sh('qemu-img', ['info', '-U', '--output=json', path])) as QemuInfo;
}

interface MapEntry {
  start: number;
  length: number;
  depth: number;
  zero: boolean;
  data: boolean;
  offset?: number;
}

async function qemuMap(path: string): Promise<MapEntry[]> {
  return JSON.parse(await sh('qemu-img', ['map', '--output=json', path])) as MapEntry[];
}

// --- reading and comparing ---

const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

async function readAll(image: DiskImage, chunk = MiB): Promise<Buffer> {
  const out = Buffer.alloc(image.size);
  for (let at = 0; at < image.size; at += chunk) {
    const { bytesRead } = await image.read(out, at, Math.min(chunk, image.size - at), at);
    expect(bytesRead).toBe(Math.min(chunk, image.size - at));
  }
  return out;
}

/** A small seeded generator, so a failing range can be read again. */
function random(seed: number): (below: number) => number {
  let state = seed >>> 0;
  return (below) => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * below);
  };
}

/** The image read by this reader equals QEMU's reading of it: size, whole-disk hash, and random unaligned ranges (some past the end). */
async function expectReadsLikeQemu(path: string, seed = 1): Promise<void> {
  const expected = await qemuRaw(path);
  const image = await openDiskImage(path);
  try {
    expect(image.size).toBe((await qemuInfo(path))['virtual-size']);
    expect(image.size).toBe(expected.length);
    expect(sha256(await readAll(image))).toBe(sha256(expected));
    // One read of the whole disk at once, across every run and table boundary.
    expect(sha256(await readAll(image, image.size))).toBe(sha256(expected));
    const next = random(seed);
    for (let i = 0; i < 300; i++) {
      const position = next(image.size + 100 * KiB);
      const length = i % 3 === 0 ? next(600 * KiB) : next(5000);
      const buffer = Buffer.alloc(length + 7, 0xee);
      const { bytesRead } = await image.read(buffer, 7, length, position);
      const want = expected.subarray(Math.min(position, expected.length), Math.min(position + length, expected.length));
      expect(bytesRead, `read of ${length} at ${position}`).toBe(want.length);
      expect(buffer.subarray(7, 7 + bytesRead).equals(want), `read of ${length} at ${position}`).toBe(true);
      expect(buffer.subarray(0, 7).equals(Buffer.alloc(7, 0xee))).toBe(true);
    }
  } finally {
    await image.close();
  }
}

async function expectLayerError(promise: Promise<unknown>, code: string, message: RegExp): Promise<LayerError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(LayerError);
  expect((error as LayerError).message).toMatch(message);
  expect((error as LayerError).code).toBe(code);
  return error as LayerError;
}

/** Opens and reads the whole disk, closing it after. */
async function openAndReadAll(path: string): Promise<void> {
  const image = await openDiskImage(path);
  try {
    await readAll(image);
  } finally {
    await image.close();
  }
}

// --- images QEMU made ---

describe('images made by qemu-img and written by qemu-io', () => {
  it('an overlay on a raw base, larger than it: partial-cluster writes, zero writes, discards, writes past the base', async () => {
    const dir = await folder();
    await rawFile(join(dir, 'base.raw'), 32 * MiB);
    // Random bytes to write: a misplaced read of them cannot pass for a right one, as one of a pattern can.
    const noise = join(dir, 'noise.bin');
    await rawFile(noise, MiB);
    const top = await overlay(dir, 'top.qcow2', 'base.raw', 'raw', '48M');
    await qemuIo(top, [
      `write -s ${noise} 1M 192k`,
      `write -s ${noise} 100k 3k`, // part of a cluster: QEMU copies the rest from the base
      'write -z 4M 256k', // the zero flag, over the base's data
      'write -P 0x11 6M 128k',
      'write -z 6M 64k', // the zero flag on an allocated cluster (the host offset stays)
      'write -z -u 6208k 64k', // the zero flag, the cluster given back
      `write -s ${noise} 10M 512k`,
      'discard 10M 128k',
      'discard 20M 1M',
      `write -s ${noise} 32704k 128k`, // across the end of the base
      `write -s ${noise} 40M 64k`, // past it
      `write -s ${noise} ${48 * MiB - 4 * KiB} 4k`, // the last bytes of the disk
    ]);
    // The zero flag (present, reads zero, no data) is what this test is about.
    const map = await qemuMap(top);
    expect(map.some((e) => e.depth === 0 && e.zero && !e.data && e.start <= 4 * MiB && e.start + e.length > 4 * MiB)).toBe(true);
    await expectReadsLikeQemu(top);
  });

  it('a version 2 overlay (compat=0.10), which has no zero flag', async () => {
    const dir = await folder();
    await rawFile(join(dir, 'base.raw'), 8 * MiB);
    const top = await overlay(dir, 'top.qcow2', 'base.raw', 'raw', '12M', ['-o', 'compat=0.10']);
    await qemuIo(top, ['write -P 0xab 1M 64k', 'write -z 2M 128k', 'discard 3M 64k', 'write -P 0x55 7M 2M']);
    expect((await qemuInfo(top))['format-specific']?.data.compat).toBe('0.10');
    await expectReadsLikeQemu(top, 2);
  });

  it('a chain of three (raw <- qcow2 <- qcow2) with different cluster sizes, the middle one smaller than the base', async () => {
    const dir = await folder();
    await rawFile(join(dir, 'base.raw'), 16 * MiB);
    const mid = await overlay(dir, 'mid.qcow2', 'base.raw', 'raw', '12M', ['-o', 'cluster_size=4096']);
    await qemuIo(mid, ['write -P 0x21 0 10k', 'write -P 0x22 1M 1M', 'write -z 3M 64k', `write -P 0x23 ${12 * MiB - KiB} 1k`]);
    const top = await overlay(dir, 'top.qcow2', 'mid.qcow2', 'qcow2', '24M', ['-o', 'cluster_size=2M']);
    await qemuIo(top, ['write -P 0x31 1536k 1k', 'write -P 0x32 20M 3M', 'write -z 6M 2M']);
    await expectReadsLikeQemu(mid, 3);
    await expectReadsLikeQemu(top, 4);
  });

  it('a standalone image with every cluster allocated (qemu-img convert -O qcow2)', async () => {
    const dir = await folder();
    await rawFile(join(dir, 'disk.raw'), 5 * MiB + 512);
    const path = join(dir, 'disk.qcow2');
    await sh('qemu-img', ['convert', '-O', 'qcow2', join(dir, 'disk.raw'), path]);
    await expectReadsLikeQemu(path, 5);
    expect(sha256(await readFile(join(dir, 'disk.raw')))).toBe(sha256(await qemuRaw(path)));
  });

  it('512-byte clusters: hundreds of L2 tables, more than the table cache holds, read in random order', async () => {
    const dir = await folder();
    await rawFile(join(dir, 'base.raw'), 12 * MiB);
    const top = await overlay(dir, 'top.qcow2', 'base.raw', 'raw', '12M', ['-o', 'cluster_size=512']);
    const writes: string[] = [];
    const next = random(7);
    for (let i = 0; i < 300; i++) writes.push(`write -P ${next(256)} ${next(12 * 1024 - 2) * 1024} ${1 + next(2048)}`);
    await qemuIo(top, writes);
    await expectReadsLikeQemu(top, 8);
  });

  it('reads the backing file by its magic when the header does not name its format', async () => {
    const dir = await folder();
    await rawFile(join(dir, 'base.raw'), 4 * MiB);
    const mid = await overlay(dir, 'mid.qcow2', 'base.raw', 'raw', '4M');
    await qemuIo(mid, ['write -P 0x41 1M 64k']);
    const top = await overlay(dir, 'top.qcow2', 'mid.qcow2', 'qcow2', '4M');
    await qemuIo(top, ['write -P 0x42 2M 64k']);
    const expected = await qemuRaw(top);
    // Both headers lose their backing format extension (its type becomes an unknown one, which readers skip).
    for (const path of [mid, top]) {
      const head = await readFile(path);
      const at = head.indexOf(Buffer.from([0xe2, 0x79, 0x2a, 0xca]), 72);
      expect(at).toBeGreaterThan(0);
      await patch(path, at, Buffer.from([0x7e, 0x57, 0x00, 0x01]));
      expect((await qcow2Header(path)).backing).toEqual({ name: path === top ? 'mid.qcow2' : 'base.raw' });
    }
    const image = await openDiskImage(top);
    expect(sha256(await readAll(image))).toBe(sha256(expected));
    await image.close();
  });

  it('reads an image whose dirty bit is set (lazy refcounts): the bit only concerns refcounts', async () => {
    const dir = await folder();
    await rawFile(join(dir, 'base.raw'), 2 * MiB);
    const top = await overlay(dir, 'top.qcow2', 'base.raw', 'raw', '2M', ['-o', 'lazy_refcounts=on']);
    await qemuIo(top, ['write -P 0x44 64k 64k']);
    const expected = await qemuRaw(top);
    const incompat = (await readFile(top)).readBigUInt64BE(72);
    await patch(top, 72, u64(incompat | 1n));
    const image = await openDiskImage(top);
    expect(sha256(await readAll(image))).toBe(sha256(expected));
    await image.close();
  });

  it('reads a raw file as raw: its size and bytes, short only at its end', async () => {
    const dir = await folder();
    const data = await rawFile(join(dir, 'disk.raw'), 3 * MiB + 100);
    const image = await openDiskImage(join(dir, 'disk.raw'));
    expect(image.name).toBe('disk.raw');
    expect(image.size).toBe(data.length);
    expect((await readAll(image)).equals(data)).toBe(true);
    const buffer = Buffer.alloc(300);
    expect(await image.read(buffer, 0, 300, data.length - 100)).toEqual({ bytesRead: 100 });
    expect(buffer.subarray(0, 100).equals(data.subarray(-100))).toBe(true);
    expect(await image.read(buffer, 0, 300, data.length + 5)).toEqual({ bytesRead: 0 });
    await image.close();
  });

  it('reads the tail of a last data cluster that the file ends inside as zeros, as QEMU does', async () => {
    const dir = await folder();
    const path = join(dir, 'disk.qcow2');
    await sh('qemu-img', ['create', '-q', '-f', 'qcow2', path, '4M']);
    await qemuIo(path, ['write -P 0x11 0 64k', 'write -P 0x22 1M 64k']);
    // The last cluster of the file is the data written last.
    const last = (await qemuMap(path)).find((e) => e.start === MiB);
    expect((last?.offset as number) + 64 * KiB).toBe((await stat(path)).size);
    await truncate(path, (await stat(path)).size - 1000);
    await expectReadsLikeQemu(path, 9);
  });

});

describe('a long backing chain', () => {
  let dir: string;
  let base: Buffer;

  beforeAll(async () => {
    // f1.qcow2 on f0.raw, f2.qcow2 on f1.qcow2, ... up to f128.qcow2; -u makes them side by side.
    dir = await folder();
    base = await rawFile(join(dir, 'f0.raw'), MiB);
    const levels = Array.from({ length: 128 }, (_, i) => i + 1);
    for (let i = 0; i < levels.length; i += 16) {
      await Promise.all(levels.slice(i, i + 16).map((k) => overlay(dir, `f${k}.qcow2`, k === 1 ? 'f0.raw' : `f${k - 1}.qcow2`, k === 1 ? 'raw' : 'qcow2', '1M')));
    }
  });

  it('reads a chain of 128 files, the most it opens', async () => {
    const image = await openDiskImage(join(dir, 'f127.qcow2'));
    expect((await readAll(image)).equals(base)).toBe(true);
    await image.close();
  });

  it('refuses a chain of 129', async () => {
    await expectLayerError(openDiskImage(join(dir, 'f128.qcow2')), 'LAYER_QCOW2_CHAIN_TOO_DEEP', /^f1\.qcow2 \(backing file of f2\.qcow2\): its backing chain is longer than 128 files/);
  });
});

describe('qcow2Header', () => {
  it('gives what qemu-img info gives: version, virtual size, cluster size, backing name and format', async () => {
    const dir = await folder();
    await rawFile(join(dir, 'base.raw'), MiB);
    const cases = [
      await overlay(dir, 'v3.qcow2', 'base.raw', 'raw', '3M'),
      await overlay(dir, 'v2.qcow2', 'base.raw', 'raw', '5M', ['-o', 'compat=0.10,cluster_size=4096']),
      await overlay(dir, 'odd.qcow2', '../elsewhere/x.vmdk', 'vmdk', '1G', ['-o', 'cluster_size=2M']),
    ];
    const plain = join(dir, 'plain.qcow2');
    await sh('qemu-img', ['create', '-q', '-f', 'qcow2', plain, '7M']);
    cases.push(plain);
    for (const path of cases) {
      const info = await qemuInfo(path);
      const header = await qcow2Header(path);
      expect(header.version).toBe(info['format-specific']?.data.compat === '0.10' ? 2 : 3);
      expect(header.virtualSize).toBe(info['virtual-size']);
      expect(2 ** header.clusterBits).toBe(info['cluster-size']);
      const backing = info['backing-filename'] === undefined ? undefined : { name: info['backing-filename'], format: info['backing-filename-format'] };
      expect(header.backing).toEqual(backing);
    }
  });

  it('refuses what is not qcow2', async () => {
    const dir = await folder();
    await rawFile(join(dir, 'disk.raw'), 4096);
    await expectLayerError(qcow2Header(join(dir, 'disk.raw')), 'LAYER_NOT_QCOW2', /^disk\.raw: not a qcow2 image/);
    await expectLayerError(qcow2Header(join(dir, 'absent.qcow2')), 'LAYER_DISK_OPEN', /^absent\.qcow2: cannot open/);
  });
});

// --- ext4 inside qcow2 ---

type FsEntry = { path: string; type: string; mode: number; size: number; sha256?: string; linkname?: string };

async function writeTree(root: string, files: Record<string, Buffer | string>): Promise<void> {
  for (const [path, content] of Object.entries(files)) {
    await mkdir(join(root, path, '..'), { recursive: true });
    if (path.endsWith('.link')) await symlink(String(content), join(root, path));
    else await writeFile(join(root, path), content);
  }
}

/** The folder as the file system holds it, in the terms walkTree uses. */
async function fromFolder(root: string, prefix = ''): Promise<FsEntry[]> {
  const out: FsEntry[] = [];
  for (const name of (await readdir(join(root, prefix))).sort()) {
    const path = prefix ? `${prefix}/${name}` : name;
    const st = await lstat(join(root, path));
    const mode = st.mode & 0o7777;
    if (st.isDirectory()) out.push({ path, type: 'directory', mode, size: 0 }, ...(await fromFolder(root, path)));
    else if (st.isSymbolicLink()) out.push({ path, type: 'symlink', mode, size: 0, linkname: await readlink(join(root, path)) });
    else out.push({ path, type: 'file', mode, size: st.size, sha256: sha256(await readFile(join(root, path))) });
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : 1));
}

async function fromImage(path: string): Promise<FsEntry[]> {
  const image = await Ext4Image.open(path);
  const out: FsEntry[] = [];
  try {
    const upper = (await image.lookup('/upper')) as number;
    for await (const e of walkTree(image, upper)) {
      const entry: FsEntry = { path: e.path, type: e.type, mode: e.mode, size: e.size };
      if (e.linkname !== undefined) entry.linkname = e.linkname;
      if (e.open) {
        const parts: Buffer[] = [];
        for await (const part of e.open() as AsyncIterable<Buffer>) parts.push(part);
        entry.sha256 = sha256(Buffer.concat(parts));
      }
      out.push(entry);
    }
  } finally {
    await image.close();
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : 1));
}

describe('ext4 file systems inside qcow2 images', () => {
  let dir: string;
  const before = { source: '', raw: '' };
  const after = { source: '', raw: '' };

  beforeAll(async () => {
    dir = await folder();
    const files = { 'a/small.txt': 'hello\n', 'a/b/big.bin': randomBytes(3 * MiB + 17), 'c.bin': randomBytes(70_000), 'a/up.link': '../c.bin' };
    before.source = join(dir, 'before');
    after.source = join(dir, 'after');
    await writeTree(join(before.source, 'upper'), files);
    // What a guest does next: a changed file, new files, one gone.
    await writeTree(join(after.source, 'upper'), { ...files, 'c.bin': randomBytes(90_000), 'new/many.bin': randomBytes(5 * MiB), 'new/n.txt': 'new\n' });
    await rm(join(after.source, 'upper', 'a', 'small.txt'));
    before.raw = join(dir, 'before.ext4');
    after.raw = join(dir, 'after.ext4');
    for (const s of [before, after]) await sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-d', s.source, s.raw, '64M']);
  });

  it('reads the same tree through an empty overlay as from the raw base', async () => {
    const top = await overlay(dir, 'empty.qcow2', 'before.ext4', 'raw', '64M');
    expect(await fromImage(top)).toEqual(await fromFolder(join(before.source, 'upper')));
  });

  it('reads the same tree from a standalone qcow2 copy (qemu-img convert -O qcow2)', async () => {
    const path = join(dir, 'standalone.qcow2');
    await sh('qemu-img', ['convert', '-O', 'qcow2', before.raw, path]);
    expect(await fromImage(path)).toEqual(await fromFolder(join(before.source, 'upper')));
  });

  it('reads a file system whose blocks are split between an overlay and its base', async () => {
    // An overlay holding "after" over "before": qemu-img rebase (safe mode) copies into it every cluster that differs.
    const top = await overlay(dir, 'split.qcow2', 'after.ext4', 'raw', '64M');
    await sh('qemu-img', ['rebase', '-q', '-b', 'before.ext4', '-F', 'raw', top]);
    expect((await qemuInfo(top))['backing-filename']).toBe('before.ext4');
    await sh('qemu-img', ['compare', '-q', top, after.raw]);
    expect((await qemuMap(top)).some((e) => e.depth === 0 && e.data)).toBe(true);
    expect(await fromImage(top)).toEqual(await fromFolder(join(after.source, 'upper')));
  });

  it('passes qcow2 faults on as they are', async () => {
    const top = await overlay(dir, 'bad.qcow2', '../before.ext4', 'raw', '64M');
    await expectLayerError(Ext4Image.open(top), 'LAYER_QCOW2_BACKING_NAME', /^bad\.qcow2: its backing file "\.\.\/before\.ext4" is not a plain file name/);
  });
});

// --- hostile images ---

const u64 = (value: bigint): Buffer => {
  const out = Buffer.alloc(8);
  out.writeBigUInt64BE(value);
  return out;
};
const u32 = (value: number): Buffer => {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value);
  return out;
};

async function patch(path: string, at: number, bytes: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  await fh.write(bytes, 0, bytes.length, at);
  await fh.close();
}

/** Where the spec puts things, read from the file's bytes. */
async function layoutOf(path: string): Promise<{ clusterSize: number; l1Offset: number; l2Offset: number; fileSize: number }> {
  const data = await readFile(path);
  const clusterSize = 2 ** data.readUInt32BE(20);
  const l1Offset = Number(data.readBigUInt64BE(40));
  const l2Offset = Number(data.readBigUInt64BE(l1Offset) & 0x00fffffffffffe00n);
  return { clusterSize, l1Offset, l2Offset, fileSize: data.length };
}

describe('a damaged or hostile image', () => {
  let dir: string;
  /** An overlay with data at 1 MiB (64 KiB clusters, one L2 table) on a raw base in `dir`. */
  let clean: string;

  beforeAll(async () => {
    dir = await folder();
    await rawFile(join(dir, 'base.raw'), 4 * MiB);
    clean = await overlay(dir, 'clean.qcow2', 'base.raw', 'raw', '4M');
    await qemuIo(clean, ['write -P 0xab 1M 64k']);
  });

  /** A copy of the clean overlay (in the same folder) with `patches` written over it. */
  async function damaged(patches: { at: number; bytes: Buffer }[]): Promise<string> {
    const path = join(dir, `damaged-${n++}.qcow2`);
    await copyFile(clean, path);
    for (const p of patches) await patch(path, p.at, p.bytes);
    return path;
  }

  it('reads the clean overlay', async () => {
    await expectReadsLikeQemu(clean, 10);
  });

  it('refuses backing names that are paths, leaving the files they name unread', async () => {
    const vm = join(dir, 'vm');
    await mkdir(join(vm, 'sub'), { recursive: true });
    // Each named file exists and is a valid disk, so following the name would have worked.
    await copyFile(join(dir, 'base.raw'), join(vm, 'sub', 'base.raw'));
    const names = ['sub/base.raw', '../base.raw', join(dir, 'base.raw'), '..', '.'];
    for (const [i, name] of names.entries()) {
      const top = await overlay(vm, `top-${i}.qcow2`, name, 'raw', '4M');
      await expectLayerError(openDiskImage(top), 'LAYER_QCOW2_BACKING_NAME', new RegExp(`^top-${i}\\.qcow2: its backing file ${JSON.stringify(name).replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} is not a plain file name`));
    }
    // A NUL inside the name (patched in: qemu-img cannot make one).
    const top = await overlay(vm, 'nul.qcow2', 'xbase.raw', 'raw', '4M');
    const head = await readFile(top);
    await patch(top, head.indexOf('xbase.raw'), Buffer.from([0]));
    await expectLayerError(openDiskImage(top), 'LAYER_QCOW2_BACKING_NAME', /^nul\.qcow2: its backing file "\\u0000base\.raw" is not a plain file name/);
  });

  it('refuses a backing file that is a symlink or not a regular file', async () => {
    const vm = join(dir, 'links');
    await mkdir(vm);
    await symlink(join(dir, 'base.raw'), join(vm, 'base.raw'));
    await expectLayerError(openDiskImage(await overlay(vm, 'top.qcow2', 'base.raw', 'raw', '4M')), 'LAYER_QCOW2_BACKING_NAME', /^top\.qcow2: its backing file "base\.raw" is a symbolic link/);
    await mkdir(join(vm, 'folder.raw'));
    await expectLayerError(openDiskImage(await overlay(vm, 'top2.qcow2', 'folder.raw', 'raw', '4M')), 'LAYER_QCOW2_BACKING_NAME', /^folder\.raw \(backing file of top2\.qcow2\): is not a regular file/);
    await sh('mkfifo', [join(vm, 'fifo.raw')]);
    await expectLayerError(openDiskImage(await overlay(vm, 'top3.qcow2', 'fifo.raw', 'raw', '4M')), 'LAYER_QCOW2_BACKING_NAME', /^fifo\.raw \(backing file of top3\.qcow2\): is not a regular file/);
  });

  it('refuses a missing backing file and an unknown backing format', async () => {
    await expectLayerError(openDiskImage(await overlay(dir, 'orphan.qcow2', 'gone.raw', 'raw', '4M')), 'LAYER_QCOW2_BACKING_OPEN', /^orphan\.qcow2: cannot open its backing file "gone\.raw": ENOENT/);
    await expectLayerError(openDiskImage(await overlay(dir, 'vmdk.qcow2', 'base.raw', 'vmdk', '4M')), 'LAYER_QCOW2_UNSUPPORTED', /^vmdk\.qcow2: its backing file "base\.raw" has format "vmdk"/);
  });

  it('refuses backing chains that loop, by name or through a hard link', async () => {
    const vm = join(dir, 'loops');
    await mkdir(vm);
    const self = await overlay(vm, 'self.qcow2', 'base.raw', 'raw', '4M');
    await sh('qemu-img', ['rebase', '-u', '-b', 'self.qcow2', '-F', 'qcow2', self]);
    await expectLayerError(openDiskImage(self), 'LAYER_QCOW2_BACKING_LOOP', /^self\.qcow2 \(backing file of self\.qcow2\): is already part of this backing chain/);
    const a = await overlay(vm, 'a.qcow2', 'base.raw', 'raw', '4M');
    await overlay(vm, 'b.qcow2', 'a.qcow2', 'qcow2', '4M');
    await sh('qemu-img', ['rebase', '-u', '-b', 'b.qcow2', '-F', 'qcow2', a]);
    await expectLayerError(openDiskImage(a), 'LAYER_QCOW2_BACKING_LOOP', /^a\.qcow2 \(backing file of b\.qcow2\): is already part of this backing chain/);
    await link(a, join(vm, 'c.qcow2'));
    await sh('qemu-img', ['rebase', '-u', '-b', 'c.qcow2', '-F', 'qcow2', join(vm, 'b.qcow2')]);
    await expectLayerError(openDiskImage(a), 'LAYER_QCOW2_BACKING_LOOP', /^c\.qcow2 \(backing file of b\.qcow2\): is already part of this backing chain/);
  });

  it('refuses a compressed cluster when it is read, naming the image and the virtual offset', async () => {
    // Random data does not compress (QEMU then stores the cluster plain): text does.
    await writeFile(join(dir, 'text.raw'), Buffer.alloc(4 * MiB, 'compressible text '));
    const path = join(dir, 'compressed.qcow2');
    await sh('qemu-img', ['convert', '-c', '-O', 'qcow2', join(dir, 'text.raw'), path]);
    const image = await openDiskImage(path);
    const error = await expectLayerError(readAll(image), 'LAYER_QCOW2_UNSUPPORTED', /^compressed\.qcow2: the cluster at virtual byte 0 is compressed/);
    expect(error.message).toMatch(/qemu-img convert -O qcow2/);
    await expectLayerError(image.read(Buffer.alloc(10), 0, 10, 3 * MiB + 5), 'LAYER_QCOW2_UNSUPPORTED', /the cluster at virtual byte 3145728 is compressed/);
    await image.close();
  });

  it('refuses header fields it cannot honour: encryption, features, versions, cluster sizes', async () => {
    const incompat = (await readFile(clean)).readBigUInt64BE(72);
    const cases: [{ at: number; bytes: Buffer }, string, RegExp][] = [
      [{ at: 32, bytes: u32(1) }, 'LAYER_QCOW2_UNSUPPORTED', /is encrypted \(crypt_method 1\)/],
      [{ at: 32, bytes: u32(2) }, 'LAYER_QCOW2_UNSUPPORTED', /is encrypted \(crypt_method 2\)/],
      [{ at: 72, bytes: u64(incompat | (1n << 5n)) }, 'LAYER_QCOW2_UNSUPPORTED', /unknown incompatible features \(0x20\)/],
      [{ at: 72, bytes: u64(incompat | (1n << 63n)) }, 'LAYER_QCOW2_UNSUPPORTED', /unknown incompatible features \(0x8000000000000000\)/],
      [{ at: 72, bytes: u64(incompat | 2n) }, 'LAYER_QCOW2_CORRUPT', /QEMU marked it corrupt/],
      [{ at: 4, bytes: u32(4) }, 'LAYER_QCOW2_UNSUPPORTED', /qcow2 version 4 is not supported/],
      [{ at: 4, bytes: u32(1) }, 'LAYER_QCOW2_UNSUPPORTED', /qcow2 version 1 is not supported/],
      [{ at: 20, bytes: u32(8) }, 'LAYER_QCOW2_UNSUPPORTED', /cluster size 2\^8 is not supported/],
      [{ at: 20, bytes: u32(22) }, 'LAYER_QCOW2_UNSUPPORTED', /cluster size 2\^22 is not supported/],
      [{ at: 100, bytes: u32(100) }, 'LAYER_QCOW2_CORRUPT', /invalid header length 100/],
    ];
    for (const [p, code, message] of cases) await expectLayerError(openDiskImage(await damaged([p])), code, new RegExp(`^damaged-\\d+\\.qcow2: .*${message.source}`));
  });

  it('refuses images with external data files or extended L2 entries, made by qemu-img', async () => {
    const external = join(dir, 'external.qcow2');
    await sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${join(dir, 'external.data')}`, external, '1M']);
    await expectLayerError(openDiskImage(external), 'LAYER_QCOW2_UNSUPPORTED', /^external\.qcow2: keeps its data in an external data file/);
    const extended = join(dir, 'extended.qcow2');
    await sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', extended, '1M']);
    await expectLayerError(openDiskImage(extended), 'LAYER_QCOW2_UNSUPPORTED', /^extended\.qcow2: uses extended L2 entries/);
  });

  it('refuses a truncated header', async () => {
    for (const length of [50, 80]) {
      const path = join(dir, `short-${length}.qcow2`);
      await writeFile(path, (await readFile(clean)).subarray(0, length));
      await expectLayerError(openDiskImage(path), 'LAYER_QCOW2_CORRUPT', new RegExp(`^short-${length}\\.qcow2: the file ends at byte ${length}, inside its qcow2 header`));
    }
  });

  it('refuses L1 tables beyond the end of the file, unaligned, too small or absurdly large', async () => {
    const { clusterSize, fileSize } = await layoutOf(clean);
    const beyond = Math.ceil(fileSize / clusterSize) * clusterSize + 16 * clusterSize;
    await expectLayerError(openDiskImage(await damaged([{ at: 40, bytes: u64(BigInt(beyond)) }])), 'LAYER_QCOW2_CORRUPT', /its L1 table lies at bytes \d+\.\.\d+, beyond the end of the file/);
    await expectLayerError(openDiskImage(await damaged([{ at: 40, bytes: u64(BigInt(clusterSize + 512)) }])), 'LAYER_QCOW2_CORRUPT', /its L1 table offset 66048 is not a cluster boundary/);
    await expectLayerError(openDiskImage(await damaged([{ at: 36, bytes: u32(0) }])), 'LAYER_QCOW2_CORRUPT', /its L1 table has 0 entries, but a virtual size of 4194304 bytes needs 1/);
    await expectLayerError(openDiskImage(await damaged([{ at: 36, bytes: u32(0xffffffff) }])), 'LAYER_QCOW2_CORRUPT', /its L1 table of 4294967295 entries is larger than qcow2 allows/);
    // A virtual size of 2^52 bytes would need 2^23 L1 entries with 64 KiB clusters; the table has 1.
    await expectLayerError(openDiskImage(await damaged([{ at: 24, bytes: u64(2n ** 52n) }])), 'LAYER_QCOW2_CORRUPT', /its L1 table has 1 entries, but a virtual size of 4503599627370496 bytes needs 8388608/);
    await expectLayerError(openDiskImage(await damaged([{ at: 24, bytes: u64(2n ** 60n) }])), 'LAYER_QCOW2_UNSUPPORTED', /virtual size 1152921504606846976 is too large/);
  });

  it('refuses L1 and L2 entries that point beyond the end of the file, off a cluster boundary, or at the header', async () => {
    const { clusterSize, l1Offset, l2Offset, fileSize } = await layoutOf(clean);
    expect(l2Offset).toBeGreaterThan(0);
    // The L2 entry of the cluster at 1 MiB, which qemu-io wrote.
    const entry = l2Offset + (MiB / clusterSize) * 8;
    const host = (await readFile(clean)).readBigUInt64BE(entry);
    expect(Number(host & 0x00fffffffffffe00n)).toBe((await qemuMap(clean)).find((e) => e.start === MiB)?.offset);
    const copied = 1n << 63n;
    const beyond = BigInt(Math.ceil(fileSize / clusterSize) * clusterSize + 16 * clusterSize);
    const readAt = async (path: string, position: number): Promise<void> => {
      const image = await openDiskImage(path);
      try {
        await image.read(Buffer.alloc(4096), 0, 4096, position);
      } finally {
        await image.close();
      }
    };
    const cases: [{ at: number; bytes: Buffer }, string, RegExp][] = [
      [{ at: entry, bytes: u64(beyond | copied) }, 'LAYER_QCOW2_CORRUPT', /the cluster at virtual byte 1048576 lies at bytes \d+\.\.\d+, beyond the end of the file/],
      [{ at: entry, bytes: u64(host + 512n) }, 'LAYER_QCOW2_CORRUPT', /the cluster at virtual byte 1048576 is mapped to byte \d+, not a cluster boundary/],
      [{ at: entry, bytes: u64(copied) }, 'LAYER_QCOW2_CORRUPT', /the cluster at virtual byte 1048576 is mapped onto the header cluster/],
      [{ at: entry, bytes: u64(host | 0x100n) }, 'LAYER_QCOW2_CORRUPT', /the cluster at virtual byte 1048576 has an L2 entry with reserved bits set/],
      [{ at: l1Offset, bytes: u64(beyond | copied) }, 'LAYER_QCOW2_CORRUPT', /the L2 table for virtual byte 1048576 \(L1 entry 0\) lies at bytes \d+\.\.\d+, beyond the end of the file/],
      [{ at: l1Offset, bytes: u64(BigInt(l2Offset + 512) | copied) }, 'LAYER_QCOW2_CORRUPT', /L1 entry 0 \(virtual byte 1048576\) points at byte \d+, not a cluster boundary/],
    ];
    for (const [p, code, message] of cases) await expectLayerError(readAt(await damaged([p]), MiB), code, new RegExp(`^damaged-\\d+\\.qcow2: ${message.source}`));
  });

  it('refuses a data cluster that starts past the end of the file (QEMU would read zeros; only a damaged or forged entry leads there)', async () => {
    const path = await damaged([]);
    const last = (await qemuMap(path)).find((e) => e.start === MiB);
    expect((last?.offset as number) + 64 * KiB).toBe((await stat(path)).size);
    await truncate(path, last?.offset as number);
    const image = await openDiskImage(path);
    await expectLayerError(readAll(image), 'LAYER_QCOW2_CORRUPT', /^damaged-\d+\.qcow2: the cluster at virtual byte 1048576 lies at bytes \d+\.\.\d+, beyond the end of the file/);
    await image.close();
  });

  it('meets random damage to its header and tables with LayerErrors only, and always ends', async () => {
    const { clusterSize, l1Offset, l2Offset } = await layoutOf(clean);
    const regions: [number, number][] = [
      [0, 512],
      [l1Offset, l1Offset + 8],
      [l2Offset + (MiB / clusterSize) * 8 - 16, l2Offset + (MiB / clusterSize) * 8 + 16],
    ];
    const outcomes = await damageRuns({
      clean,
      path: join(dir, 'fuzz.qcow2'),
      regions,
      maxBytes: 4,
      runs: 300,
      read: async (path) => {
        // At most the first 2 MiB: a forged virtual size may claim petabytes.
        const image = await openDiskImage(path);
        try {
          await image.read(Buffer.alloc(2 * MiB), 0, 2 * MiB, 0);
        } finally {
          await image.close();
        }
      },
    });
    expect(outcomes.ok + outcomes.refused).toBe(300);
    expect(outcomes.refused).toBeGreaterThan(0);
  });
});
