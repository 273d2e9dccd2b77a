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
    gunzip.on('error', () => source.destroy());
    return source.pipe(gunzip);
  }
  if (compression === 'zstd') return filterThrough('zstd', ['-dc', '--no-progress'], source);
  throw new LayerError(`unsupported layer compression ${String(compression)}`);
}
