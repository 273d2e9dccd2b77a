import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { LayerError } from '../util/errors.js';

/**
 * Reading a layer blob on a thread of its own: the worker reads the file,
 * inflates it (gzip) and hashes the uncompressed bytes (the diff_id), ahead of
 * extraction by up to WINDOW chunks. Extraction keeps the main thread busy
 * with file system calls; with zlib and sha256 on the main thread, both would
 * only advance between those calls. This way the three overlap.
 *
 * The worker's code is inline (eval) so it runs the same from the compiled
 * package and from the TypeScript sources in tests.
 */

const WINDOW = 32;
const CHUNK = 512 * 1024;

/**
 * The worker's source is CommonJS. A worker inherits the options of its
 * parent, from its command line and from NODE_OPTIONS, and with
 * `--input-type=module` (which people set to run ES module snippets with
 * \`node -e\`) an evaluated source is an ES module, where require() does not
 * exist: every layer failed to inflate. That one option is left out.
 */
function commonJsEval(): { execArgv: string[]; env: NodeJS.ProcessEnv } {
  const execArgv: string[] = [];
  for (let i = 0; i < process.execArgv.length; i++) {
    const option = process.execArgv[i] as string;
    if (option === '--input-type') i++;
    else if (!option.startsWith('--input-type=')) execArgv.push(option);
  }
  return { execArgv, env: { ...process.env, NODE_OPTIONS: (process.env['NODE_OPTIONS'] ?? '').replace(/--input-type(?:=|\s+)\S+/g, '').trim() } };
}

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createReadStream } = require('node:fs');
const { createGunzip } = require('node:zlib');
const { PassThrough } = require('node:stream');
const { createHash } = require('node:crypto');
let credit = workerData.window;
const hash = createHash('sha256');
const gunzip = workerData.gzip ? createGunzip({ chunkSize: workerData.chunk }) : new PassThrough({ highWaterMark: workerData.chunk });
const source = createReadStream(workerData.path, { highWaterMark: 1024 * 1024 });
const fail = (error) => { parentPort.postMessage({ type: 'error', message: String(error && error.message || error), code: error && error.code }); };
source.on('error', fail);
gunzip.on('error', fail);
parentPort.on('message', (m) => {
  if (m === 'ack') { credit++; if (credit > 0 && gunzip.isPaused()) gunzip.resume(); }
  else if (m === 'stop') { source.destroy(); gunzip.destroy(); parentPort.close(); }
});
gunzip.on('data', (chunk) => {
  if (workerData.hash) hash.update(chunk);
  const owned = chunk.byteOffset === 0 && chunk.byteLength === chunk.buffer.byteLength ? chunk : Buffer.from(chunk);
  parentPort.postMessage({ type: 'data', chunk: owned }, [owned.buffer]);
  if (--credit <= 0) gunzip.pause();
});
gunzip.on('end', () => parentPort.postMessage({ type: 'end', digest: workerData.hash ? 'sha256:' + hash.digest('hex') : undefined }));
source.pipe(gunzip);
`;

export interface InflatedLayer {
  /** The uncompressed tar. */
  stream: Readable;
  /** sha256 of everything `stream` carried: the layer's diff_id (once the stream has ended). */
  diffId(): string | undefined;
}

export interface InflateOptions {
  gzip: boolean;
  /**
   * Hash on the calling thread instead of the worker: for a caller that
   * mostly waits for data (the image builder), so inflating, which bounds
   * the whole build, is all the worker does.
   */
  hashHere?: boolean;
}

export function inflateFile(path: string, options: InflateOptions): InflatedLayer {
  let worker: Worker | undefined;
  let digest: string | undefined;
  const hash = options.hashHere ? createHash('sha256') : undefined;
  const output = new Readable({
    highWaterMark: 4 * CHUNK,
    read() {
      // Flow control is by acknowledgement: each consumed chunk gives the worker one more.
    },
    destroy(error, callback) {
      worker?.postMessage('stop');
      void worker?.terminate();
      callback(error);
    },
  });
  worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { path, window: WINDOW, chunk: CHUNK, gzip: options.gzip, hash: !hash }, ...commonJsEval() });
  worker.on('message', (message: { type: string; chunk?: Uint8Array; message?: string; code?: string; digest?: string }) => {
    if (message.type === 'data' && message.chunk) {
      const chunk = Buffer.from(message.chunk.buffer, message.chunk.byteOffset, message.chunk.byteLength);
      hash?.update(chunk);
      output.push(chunk);
      worker?.postMessage('ack');
    } else if (message.type === 'end') {
      digest = hash ? `sha256:${hash.digest('hex')}` : message.digest;
      output.push(null);
      void worker?.terminate();
    } else if (message.type === 'error') {
      output.destroy(new LayerError(`cannot decompress layer: ${message.message ?? 'unknown error'}`, { code: message.code ? `LAYER_${message.code}` : 'LAYER_GZIP' }));
    }
  });
  worker.on('error', (error) => output.destroy(error));
  return { stream: output, diffId: () => digest };
}
