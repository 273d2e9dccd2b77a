import type { Readable } from 'node:stream';
import { createGzip } from 'node:zlib';
import { DigestingStream } from '../oci/digest.js';
import { hostPlatform, MAX_MANIFEST_BYTES, parseManifest, type Descriptor, type ImageManifest } from '../oci/manifest.js';
import { MediaType } from '../oci/media-types.js';
import type { ContentStore } from '../oci/store.js';
import { InputError } from '../util/errors.js';

/**
 * Snapshot images: one new layer, stored compressed with its diff_id, on top
 * of a parent image's layers (base snapshots) or alone (home and personal).
 *
 * The image is deterministic: no creation time in the config (the catalogue
 * keeps that), gzip at a fixed level with no name or time in its header, and
 * the annotations say only what the content is. The same parent and the
 * same files give the same manifest digest, so re-creating an unchanged
 * snapshot stores nothing new.
 */

export const KIND_ANNOTATION = 'dev.cs.snapshot.kind';
const BASE_DIGEST = 'org.opencontainers.image.base.digest';
const BASE_NAME = 'org.opencontainers.image.base.name';

export interface NewLayer {
  descriptor: Descriptor;
  diffId: string;
  uncompressedSize: number;
}

/** Compress and store a layer tar; returns its descriptor and diff_id. */
export async function storeLayer(store: ContentStore, tar: Readable): Promise<NewLayer> {
  const uncompressed = new DigestingStream('sha256');
  const gzip = createGzip({ level: 6 });
  // pipe() does not pass errors on: a source error must fail the write, not hang it.
  tar.on('error', (error: Error) => gzip.destroy(error));
  uncompressed.on('error', (error: Error) => gzip.destroy(error));
  const descriptor = await store.write(tar.pipe(uncompressed).pipe(gzip), MediaType.ociLayerGzip);
  return { descriptor, diffId: uncompressed.digest(), uncompressedSize: uncompressed.bytes };
}

export interface ParentImage {
  /** The name it was found under. */
  reference: string;
  digest: string;
  manifest: ImageManifest;
  config: Record<string, unknown>;
  diffIds: string[];
}

/**
 * The image a new layer goes on. With `digest`, exactly that manifest (a
 * workspace extends the base it booted from, even if the name has moved on
 * since), as long as the store still has it.
 */
export async function readParent(store: ContentStore, reference: string, digest?: string): Promise<ParentImage> {
  let descriptor = await store.resolveTag(reference);
  if (digest && descriptor?.digest !== digest) {
    const size = await store.blobSize(digest);
    if (size === undefined) throw new InputError(`the image ${reference} was ${digest} when the workspace was created, and the store no longer has it`);
    const raw = JSON.parse((await store.readBlob({ digest, size }, MAX_MANIFEST_BYTES)).toString('utf8')) as { mediaType?: unknown };
    descriptor = { digest, size, mediaType: typeof raw.mediaType === 'string' ? raw.mediaType : MediaType.ociManifest };
  }
  if (!descriptor) throw new InputError(`image ${reference} is not in the local store`);
  const parsed = parseManifest(await store.readBlob(descriptor, MAX_MANIFEST_BYTES), descriptor.mediaType, reference);
  if (parsed.kind !== 'manifest') throw new InputError(`${reference} is an index, not an image; pull it for one platform first`);
  let config: Record<string, unknown>;
  try {
    config = JSON.parse((await store.readBlob(parsed.manifest.config, MAX_MANIFEST_BYTES)).toString('utf8')) as Record<string, unknown>;
  } catch (error) {
    throw new InputError(`${reference}: its config is not valid JSON`, { cause: error });
  }
  const rootfs = config['rootfs'] as { diff_ids?: unknown } | undefined;
  const diffIds = Array.isArray(rootfs?.diff_ids) ? rootfs.diff_ids.filter((d): d is string => typeof d === 'string') : [];
  if (diffIds.length !== parsed.manifest.layers.length) {
    throw new InputError(`${reference}: its config lists ${diffIds.length} diff_ids for ${parsed.manifest.layers.length} layers`);
  }
  return { reference, digest: descriptor.digest, manifest: parsed.manifest, config, diffIds };
}

export interface SnapshotImageOptions {
  kind: 'base' | 'home' | 'personal';
  layer: NewLayer;
  parent?: ParentImage;
  /** What made the layer, for the config's history. */
  createdBy: string;
}

/** Write the config and manifest of a snapshot image; returns the manifest's descriptor. */
export async function writeSnapshotImage(store: ContentStore, options: SnapshotImageOptions): Promise<Descriptor> {
  const platform = hostPlatform();
  const parentConfig = options.parent?.config ?? {};
  const history = Array.isArray(parentConfig['history']) ? (parentConfig['history'] as unknown[]) : [];
  const config = {
    ...parentConfig,
    architecture: (parentConfig['architecture'] as string | undefined) ?? platform.architecture,
    os: (parentConfig['os'] as string | undefined) ?? platform.os,
    ...(parentConfig['config'] === undefined ? { config: {} } : {}),
    rootfs: { type: 'layers', diff_ids: [...(options.parent?.diffIds ?? []), options.layer.diffId] },
    history: [...history, { created_by: options.createdBy, comment: `cs ${options.kind} snapshot` }],
  };
  const configDescriptor = await store.putBytes(Buffer.from(JSON.stringify(config)), MediaType.ociConfig);
  const annotations: Record<string, string> = { [KIND_ANNOTATION]: options.kind };
  if (options.parent) {
    annotations[BASE_DIGEST] = options.parent.digest;
    annotations[BASE_NAME] = options.parent.reference;
  }
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    config: configDescriptor,
    layers: [...(options.parent?.manifest.layers ?? []), options.layer.descriptor],
    annotations,
  };
  return store.putBytes(Buffer.from(JSON.stringify(manifest)), MediaType.ociManifest);
}
