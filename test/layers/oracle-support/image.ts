/**
 * Images for the oracle, built straight into a cs ContentStore: the store is
 * an OCI image layout (blobs/, index.json with ref.name tags, oci-layout),
 * so umoci unpacks `STORE_ROOT:TAG` from the very same bytes cs applies.
 * Layers are compressed here (gzip by node:zlib, zstd by the `zstd`
 * program, or left as plain tar), diff_ids are the sha256 of the tars.
 */
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { execa } from 'execa';
import type { Descriptor } from '../../../src/oci/manifest.js';
import { MediaType } from '../../../src/oci/media-types.js';
import type { ContentStore } from '../../../src/oci/store.js';
import { layerTar, type Entry } from '../../helpers/layer-tar.js';

export type LayerCompression = 'gzip' | 'zstd' | 'none';

export interface LayerSpec {
  entries: Entry[];
  /** Default: the stack's compression. */
  compression?: LayerCompression;
  /** Override the media type written in the manifest. */
  mediaType?: string;
  /** Pad the tar with zeros to a multiple of this many bytes (GNU tar writes 10240-byte records). */
  padTo?: number;
  /** gzip the tar as this many concatenated members (as pigz or appending tools do). */
  gzipMembers?: number;
}

export interface BuiltImage {
  tag: string;
  descriptor: Descriptor;
  layers: Descriptor[];
  diffIds: string[];
}

export const MEDIA_TYPE: Record<LayerCompression, string> = {
  gzip: MediaType.ociLayerGzip,
  zstd: MediaType.ociLayerZstd,
  none: MediaType.ociLayer,
};

/** Layer N's entries default to mtime BASE_MTIME + N days (whole seconds). */
export const BASE_MTIME = 1_600_000_000;
const DAY = 86_400;

export const sha256 = (bytes: Uint8Array | string): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

export async function compress(tar: Buffer, compression: LayerCompression, gzipMembers = 1): Promise<Buffer> {
  if (compression === 'none') return tar;
  if (compression === 'gzip') {
    const size = Math.ceil(tar.length / gzipMembers);
    return Buffer.concat(Array.from({ length: gzipMembers }, (_, i) => gzipSync(tar.subarray(i * size, (i + 1) * size))));
  }
  const { stdout } = await execa('zstd', ['-q', '-c', '-3'], { input: tar, encoding: 'buffer', stripFinalNewline: false });
  return Buffer.from(stdout);
}

export interface BuildOptions {
  compression?: LayerCompression;
  /** Replace the config's diff_ids (to make them lie or miscount). */
  diffIds?: (real: string[]) => string[];
}

export async function buildImage(store: ContentStore, tag: string, specs: readonly LayerSpec[], options: BuildOptions = {}): Promise<BuiltImage> {
  const layers: RawLayer[] = [];
  for (const [index, spec] of specs.entries()) {
    let tar = await layerTar(spec.entries, BASE_MTIME + index * DAY);
    if (spec.padTo && tar.length % spec.padTo !== 0) tar = Buffer.concat([tar, Buffer.alloc(spec.padTo - (tar.length % spec.padTo))]);
    const compression = spec.compression ?? options.compression ?? 'gzip';
    layers.push({ bytes: await compress(tar, compression, spec.gzipMembers), mediaType: spec.mediaType ?? MEDIA_TYPE[compression], diffId: sha256(tar) });
  }
  if (options.diffIds) {
    const lies = options.diffIds(layers.map((l) => l.diffId));
    return buildRawImage(store, tag, layers, lies);
  }
  return buildRawImage(store, tag, layers);
}

export interface RawLayer {
  /** The blob as stored (compressed or not, or not a layer at all). */
  bytes: Buffer;
  mediaType: string;
  diffId: string;
}

/** An image from ready-made blobs; `diffIds` replaces the config's list (to make it lie or miscount). */
export async function buildRawImage(store: ContentStore, tag: string, raw: readonly RawLayer[], diffIds = raw.map((l) => l.diffId), config?: Buffer): Promise<BuiltImage> {
  const layers: Descriptor[] = [];
  for (const layer of raw) layers.push(await store.putBytes(layer.bytes, layer.mediaType));
  const configJson = {
    created: new Date(BASE_MTIME * 1000).toISOString(),
    architecture: 'amd64',
    os: 'linux',
    config: {},
    rootfs: { type: 'layers', diff_ids: diffIds },
    history: raw.map(() => ({ created: new Date(BASE_MTIME * 1000).toISOString(), created_by: 'oracle' })),
  };
  const configDescriptor = await store.putBytes(config ?? Buffer.from(JSON.stringify(configJson)), MediaType.ociConfig);
  const manifest = { schemaVersion: 2, mediaType: MediaType.ociManifest, config: configDescriptor, layers };
  const descriptor = await store.putBytes(Buffer.from(JSON.stringify(manifest)), MediaType.ociManifest);
  await store.tag(tag, descriptor);
  return { tag, descriptor, layers, diffIds };
}

/** One layer's tar and its diff_id, uncompressed. */
export async function tarOf(entries: Entry[]): Promise<{ tar: Buffer; diffId: string }> {
  const tar = await layerTar(entries, BASE_MTIME);
  return { tar, diffId: sha256(tar) };
}

/** An index pointing at `image` (readImageLayers must refuse it). */
export async function buildIndex(store: ContentStore, tag: string, image: BuiltImage): Promise<Descriptor> {
  const index = {
    schemaVersion: 2,
    mediaType: MediaType.ociIndex,
    manifests: [{ ...image.descriptor, platform: { os: 'linux', architecture: 'amd64' } }],
  };
  const descriptor = await store.putBytes(Buffer.from(JSON.stringify(index)), MediaType.ociIndex);
  await store.tag(tag, descriptor);
  return descriptor;
}
