/**
 * Images for the OCI tests, made the ways a user makes them: a folder
 * imported with importDirectory, or (for what cs cannot build itself, a
 * multi-platform index) blobs written into the content store by hand.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Descriptor, Platform } from '../../../src/oci/manifest.js';
import { MediaType } from '../../../src/oci/media-types.js';
import type { ContentStore } from '../../../src/oci/store.js';
import { importDirectory, type ImportResult } from '../../../src/snapshot/import-dir.js';
import { sha256, writeTree, type TestHome } from './home.js';

/** Import a folder holding `files` into `home`'s store as `reference`. */
export async function importFiles(home: TestHome, reference: string, files: Record<string, string | Uint8Array>): Promise<ImportResult & { dir: string }> {
  const dir = await mkdtemp(join(home.root, 'src-'));
  await writeTree(dir, files);
  const result = await importDirectory({ dir, reference, env: home.env });
  return { ...result, dir };
}

export interface StoredManifest {
  descriptor: Descriptor;
  bytes: Buffer;
  config: Descriptor;
  layers: Descriptor[];
}

export async function readManifest(store: ContentStore, descriptor: Pick<Descriptor, 'digest' | 'size'>): Promise<StoredManifest> {
  const bytes = await store.readBlob(descriptor, 4 * 1024 * 1024);
  const doc = JSON.parse(bytes.toString('utf8')) as { mediaType?: string; config: Descriptor; layers: Descriptor[] };
  return { descriptor: { mediaType: doc.mediaType ?? MediaType.ociManifest, digest: descriptor.digest, size: descriptor.size }, bytes, config: doc.config, layers: doc.layers };
}

/** The manifest a tag of the store points at. */
export async function taggedManifest(store: ContentStore, name: string): Promise<StoredManifest> {
  const descriptor = await store.resolveTag(name);
  if (!descriptor) throw new Error(`${name} is not tagged in ${store.root}`);
  return readManifest(store, descriptor);
}

export function readStoreBlob(store: ContentStore, digest: string): Promise<Buffer> {
  return readFile(store.blobPath(digest));
}

export interface PlatformImage {
  platform: Platform;
  manifest: Descriptor;
  config: Descriptor;
  layer: Descriptor;
}

export interface MultiPlatformImage {
  index: Descriptor;
  images: PlatformImage[];
}

/**
 * A two-platform image (linux/amd64 and linux/arm64/v8) written into
 * `store` by hand, tagged `name`: per platform an uncompressed layer of
 * random bytes, a config naming the platform, and a manifest; then an OCI
 * index that points at both with their platforms.
 */
export async function storeMultiPlatform(store: ContentStore, name: string): Promise<MultiPlatformImage> {
  const platforms: Platform[] = [
    { os: 'linux', architecture: 'amd64' },
    { os: 'linux', architecture: 'arm64', variant: 'v8' },
  ];
  const images: PlatformImage[] = [];
  for (const platform of platforms) {
    const layerBytes = Buffer.concat([Buffer.from(`layer for ${platform.architecture}\n`), randomBytes(2048)]);
    const layer = await store.putBytes(layerBytes, MediaType.ociLayer);
    const config = await store.putBytes(
      Buffer.from(JSON.stringify({ ...platform, config: {}, rootfs: { type: 'layers', diff_ids: [sha256(layerBytes)] } })),
      MediaType.ociConfig,
    );
    const manifest = await store.putBytes(
      Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociManifest, config, layers: [layer] })),
      MediaType.ociManifest,
    );
    images.push({ platform, manifest, config, layer });
  }
  const index = await store.putBytes(
    Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: images.map((i) => ({ ...i.manifest, platform: i.platform })) })),
    MediaType.ociIndex,
  );
  await store.tag(name, index);
  return { index, images };
}
