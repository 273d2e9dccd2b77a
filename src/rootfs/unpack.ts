import { createHash } from 'node:crypto';
import { Transform, type Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { applyLayer, type ApplyOptions, type ApplyResult } from '../layers/apply.js';
import { decompressZstd } from '../layers/decompress.js';
import { inflateFile } from '../layers/inflate-thread.js';
import { MAX_MANIFEST_BYTES, parseManifest, type Descriptor, type ImageManifest } from '../oci/manifest.js';
import { layerCompression } from '../oci/media-types.js';
import type { ContentStore } from '../oci/store.js';
import { LayerError } from '../util/errors.js';

/**
 * Unpacking an image from the local store into a folder: each layer in
 * order, decompressed as it streams, applied, and its diff_id (the digest of
 * the uncompressed tar) checked against the image config.
 */

export interface ImageLayers {
  manifest: ImageManifest;
  diffIds: string[];
}

export async function readImageLayers(store: ContentStore, descriptor: Descriptor, name: string): Promise<ImageLayers> {
  const parsed = parseManifest(await store.readBlob(descriptor, MAX_MANIFEST_BYTES), descriptor.mediaType, name);
  if (parsed.kind !== 'manifest') throw new LayerError(`${name} is an index, not an image; pull it for one platform first`);
  // Fix: a config that is not JSON escaped as a bare SyntaxError (a "bug" exit); it is bad input.
  let config: { rootfs?: { diff_ids?: unknown } } | null;
  try {
    config = JSON.parse((await store.readBlob(parsed.manifest.config, MAX_MANIFEST_BYTES)).toString('utf8')) as typeof config;
  } catch (error) {
    if (!(error instanceof SyntaxError)) throw error;
    throw new LayerError(`${name}: its config ${parsed.manifest.config.digest} is not valid JSON`, { code: 'LAYER_BAD_CONFIG', cause: error });
  }
  const diffIds = Array.isArray(config?.rootfs?.diff_ids) ? config.rootfs.diff_ids.filter((d): d is string => typeof d === 'string') : [];
  if (diffIds.length !== parsed.manifest.layers.length) {
    throw new LayerError(`${name}: the config lists ${diffIds.length} diff_ids for ${parsed.manifest.layers.length} layers`, { code: 'LAYER_DIFFID_COUNT' });
  }
  return { manifest: parsed.manifest, diffIds };
}

export interface UnpackLayerOptions extends Omit<ApplyOptions, 'tar' | 'root'>, StoredLayer {
  root: string;
}

/** Apply one stored layer onto `root`, verifying its diff_id. */
export async function unpackLayer(options: UnpackLayerOptions): Promise<ApplyResult> {
  const { store, layer, diffId, ...applyOptions } = options;
  return readLayer({ store, layer, diffId }, (tar) => applyLayer({ ...applyOptions, tar }));
}

/** Compressed bytes up to which a layer is inflated on the calling thread's zlib (see readLayer). */
const SMALL_LAYER = 4 * 1024 * 1024;

function gunzip(blob: Readable): Readable {
  const inflater = createGunzip();
  blob.on('error', (error) => inflater.destroy(error));
  inflater.once('close', () => blob.destroy());
  return blob.pipe(inflater);
}

export interface StoredLayer {
  store: ContentStore;
  layer: Descriptor;
  diffId: string;
}

/**
 * Decompress a stored layer as it streams into `use`, then check its diff_id:
 * the one way cs reads a layer, whatever it applies it to. An error from
 * inside the layer names the layer.
 */
export async function readLayer<T>(source: StoredLayer, use: (tar: Readable) => Promise<T>, options: { hashHere?: boolean } = {}): Promise<T> {
  const compression = layerCompression(source.layer.mediaType);
  if (!compression) throw new LayerError(`layer ${source.layer.digest} has media type ${source.layer.mediaType}, which cs cannot apply`, { code: 'LAYER_MEDIA_TYPE' });
  // gzip and plain tars are read, inflated and hashed on a worker thread (see
  // inflate-thread.ts); zstd goes through the zstd program and is hashed here.
  let tar: Readable;
  let diffIdOf: () => string | undefined;
  // A small layer for a caller with time to spare is not worth a thread's start-up (tens of ms): zlib runs on the pool.
  const inline = options.hashHere === true && source.layer.size <= SMALL_LAYER && compression !== 'zstd';
  if ((compression === 'gzip' || compression === 'none') && !inline) {
    const inflated = inflateFile(source.store.blobPath(source.layer.digest), { gzip: compression === 'gzip', hashHere: options.hashHere ?? false });
    tar = inflated.stream;
    diffIdOf = inflated.diffId;
  } else {
    const hash = createHash('sha256');
    const hasher = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        hash.update(chunk);
        callback(null, chunk);
      },
    });
    const blob = source.store.openBlob(source.layer.digest);
    const plain = compression === 'zstd' ? await decompressZstd(blob) : compression === 'gzip' ? gunzip(blob) : blob;
    plain.on('error', (error) => hasher.destroy(error));
    // Fix: when applying stops early (a bad entry), applyLayer destroys only
    // `hasher`; `plain` was left paused mid-stream, so a `zstd -dc` child stayed
    // blocked writing to its pipe for good and kept the process from exiting.
    // Tearing `plain` down ends the decompressor (and, via decompressZstd(), the blob).
    hasher.once('close', () => plain.destroy());
    tar = plain.pipe(hasher);
    let digest: string | undefined;
    hasher.once('end', () => {
      digest = `sha256:${hash.digest('hex')}`;
    });
    diffIdOf = () => digest;
  }
  let result: T;
  try {
    result = await use(tar);
  } catch (error) {
    // Fix: errors from inside the layer (corrupt gzip/zstd, bad entries) did
    // not say which layer of the image was at fault; name it, keep the code.
    if (error instanceof LayerError && !error.message.includes(source.layer.digest)) {
      throw new LayerError(`layer ${source.layer.digest}: ${error.message}`, { code: error.code, suggestions: error.suggestions, cause: error });
    }
    throw error;
  }
  const actual = diffIdOf() ?? 'nothing (the stream did not end)';
  if (actual !== source.diffId) {
    throw new LayerError(`layer ${source.layer.digest}: its uncompressed content hashes to ${actual}, but the image config says ${source.diffId}`, { code: 'LAYER_DIFFID_MISMATCH' });
  }
  return result;
}
