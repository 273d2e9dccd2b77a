/**
 * EROFS images built straight from layers (src/layers/erofs.ts,
 * src/layers/memtree.ts, src/rootfs/erofs-build.ts).
 *
 * Three witnesses read every image: `fsck.erofs` (erofs-utils, the format's
 * own checker), its `--extract` for file contents, and a strict reader
 * written for these tests from the kernel's header (helpers/erofs-read.ts)
 * for what extraction cannot show (setuid bits, device numbers, xattrs,
 * which names share an inode). The guest kernel reads these images in every
 * workspace test besides.
 *
 * The oracle: every tricky layer stack of the folder oracle
 * (oracle-support/stacks.ts) is unpacked by `umoci unpack` and built as an
 * image by cs; the image's tree must match umoci's by the same rules as the
 * folder's (oracle-support/oracle.ts). Runs as root (umoci makes devices and
 * sets owners); skipped otherwise.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildErofs, type ErofsNode } from '../../src/layers/erofs.js';
import { ContentStore } from '../../src/oci/store.js';
import { erofsFromLayers } from '../../src/rootfs/erofs-build.js';
import { readImageLayers } from '../../src/rootfs/unpack.js';
import { LayerError } from '../../src/util/errors.js';
import { ErofsImage } from '../helpers/erofs-read.js';
import { buildImage } from './oracle-support/image.js';
import { normalise, oracleDiff } from './oracle-support/oracle.js';
import { FIXED_DIFFERENCES, REFUSED, REGRESSIONS, STACKS, withCompression, type Stack } from './oracle-support/stacks.js';
import { snapshot } from './oracle-support/tree.js';
import { umociUnpack } from './oracle-support/unpackers.js';
import { buildInMemory } from './support/image.js';
import { blockDevice, charDevice, dir, file, symlink, type EntrySpec } from './support/tar.js';

const isRoot = process.getuid?.() === 0;
let tmp: string;
let store: ContentStore;
let startNs: bigint;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'cs-erofs-'));
  store = await ContentStore.open(join(tmp, 'store'));
  startNs = BigInt(Date.now() - 1000) * 1_000_000n;
});

afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function fsck(image: string, extractTo?: string): Promise<void> {
  const result = await execa('fsck.erofs', [...(extractTo ? [`--extract=${extractTo}`] : []), image], { reject: false });
  expect(result.exitCode, `fsck.erofs ${image}:\n${result.stdout}\n${result.stderr}`).toBe(0);
}

/** The writer alone, on a tree built by hand, already written "data" blocks included. */
describe('the EROFS writer', () => {
  const meta = { uid: 0, gid: 0, mtime: 1_700_000_000, mtimeNs: 123_456_789 };
  const dir = (children: Record<string, ErofsNode>, more: Partial<ErofsNode> = {}): ErofsNode => ({ kind: 'dir', mode: 0o755, ...meta, children: new Map(Object.entries(children)), ...more });

  it('writes every kind of file an image holds, read back exactly by fsck.erofs and the kernel-format reader', async () => {
    // Content blocks as a layer build would leave them: block 0 for the superblock, then the files'.
    const small = Buffer.from('hello, erofs\n');
    const big = Buffer.alloc(3 * 4096 + 100, 7);
    big.write('start');
    const data = Buffer.alloc(4096 * 6);
    small.copy(data, 4096);
    big.copy(data, 8192);
    const shared: ErofsNode = { kind: 'file', mode: 0o644, ...meta, uid: 1000, gid: 1000, block: 1, size: small.length };
    const many: Record<string, ErofsNode> = {};
    // A directory of ~40 KB: several blocks, names in bytewise (not locale) order.
    for (let i = 0; i < 700; i++) many[`entry-${String(i).padStart(4, '0')}-${'x'.repeat(40)}`] = { kind: 'file', mode: 0o600, ...meta, size: 0 };
    many['Zed'] = { kind: 'fifo', mode: 0o600, ...meta };
    many['é-unicode'] = { kind: 'file', mode: 0o600, ...meta, size: 0 };
    const root = dir({
      'small.txt': shared,
      'hardlink.txt': shared,
      big: { kind: 'file', mode: 0o4755, ...meta, uid: 100_000, gid: 4_000_000_000, block: 2, size: big.length },
      empty: { kind: 'file', mode: 0o2640, ...meta, size: 0 },
      link: { kind: 'symlink', mode: 0o777, ...meta, target: '../usr/bin/env' },
      'long-link': { kind: 'symlink', mode: 0o777, ...meta, target: `/${'d/'.repeat(1990)}end` },
      null: { kind: 'char', mode: 0o666, ...meta, major: 1, minor: 3 },
      disk: { kind: 'block', mode: 0o660, ...meta, major: 259, minor: 70_000 },
      fifo: { kind: 'fifo', mode: 0o1622, ...meta },
      tagged: {
        kind: 'file',
        mode: 0o755,
        ...meta,
        size: 0,
        xattrs: new Map([
          ['user.note', Buffer.from('a note')],
          ['security.capability', Buffer.from([1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])],
          ['trusted.overlay.opaque', Buffer.from('y')],
        ]),
      },
      many: dir(many, { mode: 0o1777 }),
      nested: dir({ deeper: dir({ leaf: { kind: 'file', mode: 0o400, ...meta, size: 0 } }) }, { uid: 7, gid: 8 }),
    });
    const built = buildErofs(root, 6);
    const image = join(tmp, 'writer.erofs');
    const bytes = Buffer.alloc(built.bytes);
    data.copy(bytes);
    built.head.copy(bytes, 0, 0, 4096);
    built.meta.copy(bytes, built.metaOffset);
    await writeFile(image, bytes);

    const extracted = join(tmp, 'writer-extracted');
    await fsck(image, extracted);
    expect(await readFile(join(extracted, 'big'))).toEqual(big);
    expect(await readFile(join(extracted, 'small.txt'), 'utf8')).toBe('hello, erofs\n');

    const read = new ErofsImage(image);
    const tree = read.tree();
    expect(read.inodeCount).toBe(tree.size - 1); // two names, one inode
    expect(tree.get('small.txt')).toMatchObject({ type: 'file', perm: '0644', uid: 1000, links: 'hardlink.txt' });
    expect(tree.get('big')).toMatchObject({ perm: '4755', uid: 100_000, gid: 4_000_000_000, mtime: '1700000000123456789' });
    expect(tree.get('empty')).toMatchObject({ perm: '2640', sha256: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' });
    expect(tree.get('link')?.target).toBe('../usr/bin/env');
    expect(tree.get('long-link')?.target).toBe(`/${'d/'.repeat(1990)}end`);
    expect(tree.get('null')).toMatchObject({ type: 'char', device: '1:3' });
    expect(tree.get('disk')).toMatchObject({ type: 'block', device: '259:70000' });
    expect(tree.get('fifo')).toMatchObject({ type: 'fifo', perm: '1622' });
    expect(tree.get('tagged')?.xattrs).toEqual({ 'user.note': 'a note' });
    expect(tree.get('nested/deeper/leaf')).toMatchObject({ perm: '0400' });
    expect(tree.get('nested')).toMatchObject({ uid: 7, gid: 8 });
    expect([...tree.keys()].filter((p) => p.startsWith('many/'))).toHaveLength(702);
    const tagged = read.inode(read.entries(read.inode(read.rootNid)).find((e) => e.name === 'tagged')?.nid ?? -1);
    expect([...tagged.xattrs.keys()].sort()).toEqual(['security.capability', 'trusted.overlay.opaque', 'user.note']);
    expect(tagged.xattrs.get('security.capability')?.[4]).toBe(0x20);
    // The many-entry directory spans blocks, in bytewise order: 'Z' (0x5a) before 'e', 'é' (0xc3 0xa9) last.
    const manyNid = read.entries(read.inode(read.rootNid)).find((e) => e.name === 'many')?.nid ?? -1;
    const names = read.entries(read.inode(manyNid)).map((e) => e.name);
    expect(read.inode(manyNid).size).toBeGreaterThan(3 * 4096);
    expect(names.indexOf('Zed')).toBeLessThan(names.indexOf('entry-0000-' + 'x'.repeat(40)));
    expect(names[names.length - 1]).toBe('é-unicode');
  });

  it('gives the same bytes for the same tree', () => {
    const tree = (): ErofsNode => dir({ b: { kind: 'file', mode: 0o644, ...meta, size: 0 }, a: dir({}) });
    const one = buildErofs(tree(), 1);
    const two = buildErofs(tree(), 1);
    expect(Buffer.concat([one.head, one.meta]).equals(Buffer.concat([two.head, two.meta]))).toBe(true);
  });

  it('refuses what an image cannot hold, with a LayerError', () => {
    const withXattr = (name: string, size = 4) => dir({ f: { kind: 'file', mode: 0o644, ...meta, size: 0, xattrs: new Map([[name, Buffer.alloc(size)]]) } });
    expect(() => buildErofs(withXattr('system.weird'), 1)).toThrow(LayerError);
    expect(() => buildErofs(withXattr('user.big', 5000), 1)).toThrow(/more than an image holds/);
    expect(() => buildErofs(dir({ s: { kind: 'symlink', mode: 0o777, ...meta, target: 'x'.repeat(4096) } }), 1)).toThrow(LayerError);
  });
});

describe('the in-memory applier behind images', () => {
  const build = (layer: EntrySpec[]): Promise<unknown> => buildInMemory([layer], join(tmp, `refuse-${Math.random().toString(36).slice(2)}.erofs`));

  it('refuses device numbers and owners Linux has no room for, where an image would keep a wrapped value', async () => {
    // A 12-bit major: 4097 would wrap to 1 (1:1 is /dev/mem).
    expect(await build([charDevice('dev/x', 4097, 1)])).toBeInstanceOf(LayerError);
    expect(await build([blockDevice('dev/y', 4096, 0)])).toBeInstanceOf(LayerError);
    expect(await build([file('f', 'x', { pax: { uid: '4294967296' } })])).toBeUndefined(); // the PAX value is ignored as absurd, the ustar one stands
    // (tar-stream writes at most six octal digits of a minor: 262143 is the largest this helper can say.)
    expect(await build([charDevice('dev/ok', 4095, 262_143)])).toBeUndefined();
  });

  it('refuses folders nested deeper than a file system path can reach, built through symlinks', async () => {
    // Each entry is short, but l -> a/a/.../a chained makes the real path grow past 4096 bytes.
    const entries: EntrySpec[] = [dir('a')];
    let path = 'a';
    for (let i = 0; i < 2100; i++) {
      entries.push(dir(`${path}/a`));
      path = `${path}/a`;
      if (path.length > 3000) {
        entries.push(symlink(`s${i}`, path));
        path = `s${i}`;
      }
    }
    const error = await build(entries);
    expect(error).toBeInstanceOf(LayerError);
    expect((error as LayerError).code).toBe('LAYER_ENAMETOOLONG');
  });
});

function stacks(): Stack[] {
  return [...STACKS, ...REGRESSIONS, ...FIXED_DIFFERENCES.map((d) => d.stack), withCompression(STACKS[0] as Stack, 'zstd'), withCompression(STACKS[1] as Stack, 'none')];
}

async function imageOf(tag: string, out: string): Promise<void> {
  const descriptor = await store.resolveTag(tag);
  if (!descriptor) throw new Error(`no tag ${tag}`);
  const { manifest, diffIds } = await readImageLayers(store, descriptor, tag);
  await erofsFromLayers(
    manifest.layers.map((layer, i) => ({ store, layer, diffId: diffIds[i] as string })),
    out,
  );
}

describe.runIf(isRoot).concurrent('EROFS images of tricky layer stacks hold what umoci unpacks', () => {
  for (const stack of stacks()) {
    const label = `${stack.name} (${stack.layers.map((l) => l.compression ?? 'gzip').join(', ')})`;
    it(label, async () => {
      const tag = `erofs-${label.replace(/[^a-z0-9-]+/g, '-')}`;
      await buildImage(store, `${tag}-cs`, stack.layers);
      // umoci 0.4.7 cannot read zstd: it unpacks the same stack gzipped.
      await buildImage(store, `${tag}-umoci`, stack.layers.map((l) => (l.compression === 'zstd' ? { ...l, compression: 'gzip' as const } : l)));
      const image = join(tmp, `${tag}.erofs`);
      await imageOf(`${tag}-cs`, image);
      await fsck(image);
      const umoci = normalise(await snapshot(await umociUnpack(store.root, `${tag}-umoci`, join(tmp, `umoci-${tag}`))), startNs);
      const erofs = normalise(new ErofsImage(image).tree(), startNs);
      expect(oracleDiff(umoci, erofs)).toEqual([]);
    });
  }
  for (const stack of REFUSED) {
    it(`refuses ${stack.name}, as the folder build does`, async () => {
      const tag = `erofs-refused-${stack.name}`;
      await buildImage(store, tag, stack.layers);
      const error = await imageOf(tag, join(tmp, `${tag}.erofs`)).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(LayerError);
    });
  }
});
