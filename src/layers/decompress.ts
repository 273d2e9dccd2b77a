import { createGunzip } from 'node:zlib';
import type { Readable } from 'node:stream';
import { LayerError } from '../util/errors.js';
import { filterThrough } from '../util/process.js';

/**
 * Decompressing a layer blob: gzip with Node's zlib (it runs on the thread
 * pool, beside extraction); zstd with the `zstd` program, since Node 20's
 * zlib has no zstd. Uncompressed layers pass through.
 */
export type Compression = 'none' | 'gzip' | 'zstd';

export async function decompress(source: Readable, compression: Compression): Promise<Readable> {
  if (compression === 'none') return source;
  if (compression === 'gzip') {
    const gunzip = createGunzip({ chunkSize: 256 * 1024 });
    source.on('error', (error) => gunzip.destroy(error));
    // Fix: close the blob when the decompressed stream is torn down early
    // (destroyed without an error), not only when gunzip fails.
    gunzip.on('close', () => source.destroy());
    return source.pipe(gunzip);
  }
  if (compression === 'zstd') {
    const output = await filterThrough('zstd', ['-dc', '--no-progress'], source);
    // Fix: filterThrough kills zstd when its output is destroyed, but the blob
    // stream feeding it stayed open; close it too.
    output.on('close', () => source.destroy());
    return output;
  }
  throw new LayerError(`unsupported layer compression ${String(compression)}`);
}
