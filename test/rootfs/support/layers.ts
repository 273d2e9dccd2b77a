/**
 * Hand-made images for the rootfs tests, written straight into a cs
 * ContentStore: each layer is a tar written entry by entry with tar-stream's
 * `pack()` and gzipped; the config lists the layers' diff_ids (the sha256 of
 * the uncompressed tars, unless a test makes them lie); a manifest ties them
 * together and is tagged. Whiteouts and opaque markers are ordinary entries,
 * so a test decides where they sit in the tar.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip, gzipSync } from 'node:zlib';
import { pack } from 'tar-stream';
import { layerTar as tarOf, type Entry, type EntryBase } from '../../helpers/layer-tar.js';
import type { Descriptor } from '../../../src/oci/manifest.js';
import { MediaType } from '../../../src/oci/media-types.js';
import type { ContentStore } from '../../../src/oci/store.js';

export type { Entry, EntryBase } from '../../helpers/layer-tar.js';

/** Default mtime of every entry: 2020-09-13. */
export const MTIME = 1_600_000_000;

export const sha256 = (bytes: Uint8Array | string): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

/** Shorthands. */
export const dir = (path: string, extra: Partial<EntryBase> = {}): Entry => ({ type: 'dir', path, ...extra });
export const file = (path: string, content: string | Buffer, extra: Partial<EntryBase> = {}): Entry => ({ type: 'file', path, content, ...extra });
export const symlink = (path: string, target: string, extra: Partial<EntryBase> = {}): Entry => ({ type: 'symlink', path, target, ...extra });
export const hardlink = (path: string, target: string): Entry => ({ type: 'hardlink', path, target });
export const whiteout = (path: string): Entry => ({ type: 'whiteout', path });
export const opaque = (path: string): Entry => ({ type: 'opaque', path });

/** The uncompressed tar of `entries`, in that order (default mtime: MTIME). */
export function layerTar(entries: readonly Entry[]): Promise<Buffer> {
  return tarOf(entries, MTIME);
}

export interface StoredLayer {
  descriptor: Descriptor;
  diffId: string;
}

export async function storeLayer(store: ContentStore, entries: readonly Entry[]): Promise<StoredLayer> {
  const tar = await layerTar(entries);
  const descriptor = await store.putBytes(gzipSync(tar, { level: 1 }), MediaType.ociLayerGzip);
  return { descriptor, diffId: sha256(tar) };
}

/**
 * A layer holding one file of `bytes` zero bytes (streamed: never held in
 * memory whole), for a build that takes a while to apply.
 */
export async function storeBigFileLayer(store: ContentStore, path: string, bytes: number): Promise<StoredLayer> {
  const p = pack();
  const hash = createHash('sha256');
  const tap = new (await import('node:stream')).Transform({
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      callback(null, chunk);
    },
  });
  const zeros = Buffer.alloc(1024 * 1024);
  void (async () => {
    const body = p.entry({ name: path, type: 'file', size: bytes, mode: 0o644, mtime: new Date(MTIME * 1000) });
    const chunks = Readable.from((function* () {
      for (let left = bytes; left > 0; left -= zeros.length) yield left >= zeros.length ? zeros : zeros.subarray(0, left);
    })());
    await pipeline(chunks, body);
    p.finalize();
  })().catch((error: unknown) => p.destroy(error as Error));
  const gz = createGzip({ level: 1 });
  const descriptor = await store.write((p as unknown as Readable).pipe(tap).pipe(gz), MediaType.ociLayerGzip);
  return { descriptor, diffId: `sha256:${hash.digest('hex')}` };
}

export interface BuiltImage {
  tag: string;
  descriptor: Descriptor;
  layers: StoredLayer[];
  /** The diff_ids the config lists. */
  diffIds: string[];
}

export interface ImageOptions {
  /** Replace the config's diff_ids (to make them lie). */
  diffIds?: (real: string[]) => string[];
}

/** Tag an image made of ready layers. */
export async function tagImage(store: ContentStore, tag: string, layers: readonly StoredLayer[], options: ImageOptions = {}): Promise<BuiltImage> {
  const real = layers.map((l) => l.diffId);
  const diffIds = options.diffIds ? options.diffIds(real) : real;
  const created = new Date(MTIME * 1000).toISOString();
  const config = {
    created,
    architecture: 'amd64',
    os: 'linux',
    config: {},
    rootfs: { type: 'layers', diff_ids: diffIds },
    history: layers.map(() => ({ created, created_by: 'cs rootfs tests' })),
  };
  const configDescriptor = await store.putBytes(Buffer.from(JSON.stringify(config)), MediaType.ociConfig);
  const manifest = { schemaVersion: 2, mediaType: MediaType.ociManifest, config: configDescriptor, layers: layers.map((l) => l.descriptor) };
  const descriptor = await store.putBytes(Buffer.from(JSON.stringify(manifest)), MediaType.ociManifest);
  await store.tag(tag, descriptor);
  return { tag, descriptor, layers: [...layers], diffIds };
}

/** An image of one gzipped layer per entry list, tagged `tag` (a full reference, e.g. localhost/t/base:v1). */
export async function buildImage(store: ContentStore, tag: string, layers: readonly (readonly Entry[])[], options: ImageOptions = {}): Promise<BuiltImage> {
  const stored: StoredLayer[] = [];
  for (const entries of layers) stored.push(await storeLayer(store, entries));
  return tagImage(store, tag, stored, options);
}
