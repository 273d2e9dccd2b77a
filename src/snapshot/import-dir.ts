import { stat } from 'node:fs/promises';
import { createGzip } from 'node:zlib';
import { packDirectory } from '../layers/pack.js';
import { DigestingStream } from '../oci/digest.js';
import { openImageContext, userReference, type ImageContext } from '../oci/image.js';
import { hostPlatform, type Descriptor } from '../oci/manifest.js';
import { MediaType } from '../oci/media-types.js';
import { formatReference } from '../oci/reference.js';
import { InputError } from '../util/errors.js';
import type { Env } from '../util/paths.js';

/**
 * `cs image import DIR REF`: a folder becomes a one-layer image in the local
 * store. The layer is a deterministic tar of the folder (sorted entries),
 * gzip-compressed; the config records its diff_id as the image spec requires.
 */

export interface ImportOptions {
  dir: string;
  reference: string;
  env?: Env;
  context?: ImageContext;
}

export interface ImportResult {
  reference: string;
  digest: string;
  layer: Descriptor;
  diffId: string;
  uncompressedSize: number;
}

export async function importDirectory(options: ImportOptions): Promise<ImportResult> {
  const info = await stat(options.dir).catch(() => undefined);
  if (!info?.isDirectory()) throw new InputError(`${options.dir}: not a directory`);
  const name = formatReference(userReference(options.reference));
  const context = options.context ?? (await openImageContext(options.env ? { env: options.env } : {}));
  const lease = await context.store.lease();
  try {
    const uncompressed = new DigestingStream('sha256');
    const packed = packDirectory(options.dir);
    const gzip = createGzip({ level: 6 });
    // `.pipe()` does not pass errors on: without this, a folder that cannot be read (EACCES,
    // ENAMETOOLONG...) crashed the process with an unhandled 'error' event instead of
    // failing the import with the InputError packDirectory raises.
    packed.on('error', (error: Error) => gzip.destroy(error));
    uncompressed.on('error', (error: Error) => gzip.destroy(error));
    const layer = await context.store.write(packed.pipe(uncompressed).pipe(gzip), MediaType.ociLayerGzip);
    const diffId = uncompressed.digest();
    const platform = hostPlatform();
    const config = {
      created: new Date().toISOString(),
      architecture: platform.architecture,
      os: platform.os,
      ...(platform.variant ? { variant: platform.variant } : {}),
      config: {},
      rootfs: { type: 'layers', diff_ids: [diffId] },
      history: [{ created: new Date().toISOString(), created_by: `cs image import ${options.dir}` }],
    };
    const configDescriptor = await context.store.putBytes(Buffer.from(JSON.stringify(config)), MediaType.ociConfig);
    const manifest = { schemaVersion: 2, mediaType: MediaType.ociManifest, config: configDescriptor, layers: [layer] };
    const manifestDescriptor = await context.store.putBytes(Buffer.from(JSON.stringify(manifest)), MediaType.ociManifest);
    await context.store.tag(name, manifestDescriptor);
    return { reference: name, digest: manifestDescriptor.digest, layer, diffId, uncompressedSize: uncompressed.bytes };
  } finally {
    await lease.release();
  }
}
