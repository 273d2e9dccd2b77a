import type { Readable } from 'node:stream';
import { filterThrough } from '../util/process.js';

/**
 * zstd layers go through the `zstd` program, since Node 20's zlib has no
 * zstd. (gzip and uncompressed layers are read on a worker thread instead:
 * see inflate-thread.ts.)
 */
export async function decompressZstd(source: Readable): Promise<Readable> {
  const output = await filterThrough('zstd', ['-dc', '--no-progress'], source);
  // Fix: filterThrough kills zstd when its output is destroyed, but the blob
  // stream feeding it stayed open; close it too.
  output.on('close', () => source.destroy());
  return output;
}
