import { createHash, randomBytes } from 'node:crypto';
import { closeSync, createReadStream, fdatasync, fsync, openSync, write } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { InputError, RegistryError } from '../util/errors.js';
import { exists, syncDir, writeFileAtomic } from '../util/fs.js';
import { isAlive, withLock } from '../util/lock.js';
import { digestOf, parseDigest, type Algorithm } from './digest.js';
import { childrenOf, parseManifest, type Descriptor, type ImageIndex } from './manifest.js';
import { isManifestType, MediaType } from './media-types.js';

/**
 * The local content store: an OCI image layout (image-spec image-layout.md)
 * that is cs's embedded registry. Blobs are content-addressed files under
 * `blobs/ALG/HEX`; tags are entries of `index.json` whose
 * `org.opencontainers.image.ref.name` annotation is the full reference.
 *
 * Nothing unverified becomes visible: a blob is written to `ingest/`,
 * hashed and counted while it streams, and renamed into `blobs/` only when
 * its digest and size match. index.json changes under a lock, by atomic
 * replacement. `prune` keeps whatever a running writer may still tag.
 */

export const REF_NAME = 'org.opencontainers.image.ref.name';

export interface TagEntry {
  name: string;
  descriptor: Descriptor;
}

export interface IngestOptions {
  /** Called with the bytes received so far. */
  onProgress?: (bytes: number) => void;
}

/** A writer's claim that the blobs it adds must survive a concurrent prune. */
interface Lease {
  release(): Promise<void>;
}

export class ContentStore {
  private constructor(readonly root: string) {}

  static async open(root: string): Promise<ContentStore> {
    const store = new ContentStore(root);
    await mkdir(join(root, 'blobs', 'sha256'), { recursive: true });
    await mkdir(join(root, 'ingest'), { recursive: true });
    await mkdir(join(root, 'leases'), { recursive: true });
    const layoutFile = join(root, 'oci-layout');
    if (!(await exists(layoutFile))) await writeFileAtomic(layoutFile, '{"imageLayoutVersion":"1.0.0"}');
    if (!(await exists(join(root, 'index.json')))) {
      await withLock(store.indexLock, { purpose: 'initialise the content store' }, async () => {
        if (!(await exists(join(root, 'index.json')))) await store.writeIndex({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [] });
      });
    }
    return store;
  }

  private get indexLock(): string {
    return join(this.root, 'index.json.lock');
  }

  blobPath(digest: string): string {
    const parsed = parseDigest(digest);
    if (!parsed) throw new InputError(`invalid digest ${JSON.stringify(digest.slice(0, 100))}`);
    return join(this.root, 'blobs', parsed.algorithm, parsed.hex);
  }

  /** Size of a stored blob, or undefined when the store does not have it. */
  async blobSize(digest: string): Promise<number | undefined> {
    try {
      return (await stat(this.blobPath(digest))).size;
    } catch {
      return undefined;
    }
  }

  /**
   * Whether the blob is stored. A blob found is touched: a writer that
   * finds a blob (and skips fetching it) is about to tag something that
   * uses it, and prune keeps blobs newer than the oldest live lease. Before,
   * an old unreferenced blob that a pull found present could be pruned
   * between that check and the pull's tag.
   */
  async has(descriptor: Pick<Descriptor, 'digest' | 'size'>): Promise<boolean> {
    const found = (await this.blobSize(descriptor.digest)) === descriptor.size;
    if (found) await this.touch(descriptor.digest);
    return found;
  }

  openBlob(digest: string, start = 0): Readable {
    return createReadStream(this.blobPath(digest), { start });
  }

  /** Read a (small) blob whole, rehashing it: bytes on disk can rot. */
  async readBlob(descriptor: Pick<Descriptor, 'digest' | 'size'>, maxBytes: number): Promise<Buffer> {
    if (descriptor.size > maxBytes) throw new InputError(`blob ${descriptor.digest} is ${descriptor.size} bytes, more than ${maxBytes}`);
    const bytes = await readFile(this.blobPath(descriptor.digest));
    const algorithm = parseDigest(descriptor.digest)?.algorithm ?? 'sha256';
    if (bytes.length !== descriptor.size || digestOf(bytes, algorithm) !== descriptor.digest) {
      // Remove the rotten copy, so that the next pull fetches the blob again instead of trusting it.
      await rm(this.blobPath(descriptor.digest), { force: true });
      throw new InputError(`stored blob ${descriptor.digest} was corrupt (its bytes did not match its digest) and has been removed from the store`, {
        code: 'CORRUPT_BLOB',
        suggestions: ['pull the image again to fetch the blob anew, or remove it with `cs image rm`'],
      });
    }
    return bytes;
  }

  /**
   * Stream `source` into the store as `expected`. The bytes are verified
   * (size and digest) before the blob becomes visible; on any mismatch
   * nothing is kept. Two writers of the same blob both succeed.
   */
  async ingest(expected: Pick<Descriptor, 'digest' | 'size'>, source: Readable | AsyncIterable<Uint8Array>, options: IngestOptions = {}): Promise<void> {
    this.blobPath(expected.digest); // refuses a digest that is not one before anything touches the disk
    if (await this.has(expected)) {
      if (source instanceof Readable) source.destroy();
      return;
    }
    const algorithm = parseDigest(expected.digest)?.algorithm ?? 'sha256';
    const temp = this.tempPath(parseDigest(expected.digest)?.hex ?? 'blob');
    try {
      const spooled = await spool(temp, source, algorithm, { expected, ...(options.onProgress ? { onProgress: options.onProgress } : {}) });
      verify(expected, spooled.bytes, spooled.digest);
      await this.commit(temp, expected.digest);
    } catch (error) {
      if (source instanceof Readable) source.destroy();
      await rm(temp, { force: true });
      throw error;
    }
  }

  /**
   * Store a stream whose digest is not known in advance (something cs is
   * producing, such as a new layer); returns its descriptor.
   */
  async write(source: Readable, mediaType: string): Promise<Descriptor> {
    const temp = this.tempPath('new');
    try {
      const spooled = await spool(temp, source, 'sha256', {});
      const descriptor = { mediaType, digest: spooled.digest, size: spooled.bytes };
      if (await this.has(descriptor)) await rm(temp, { force: true });
      else await this.commit(temp, descriptor.digest);
      return descriptor;
    } catch (error) {
      source.destroy();
      await rm(temp, { force: true });
      throw error;
    }
  }

  /** A fresh temporary file name under ingest/, naming its writer's pid (see cleanIngest). */
  private tempPath(prefix: string): string {
    return join(this.root, 'ingest', `${prefix}.${process.pid}.${randomBytes(6).toString('hex')}`);
  }

  /** Make a spooled, verified temporary file the blob `digest`, durably. */
  private async commit(temp: string, digest: string): Promise<void> {
    const target = this.blobPath(digest);
    await rename(temp, target);
    await syncDir(join(target, '..'));
  }

  /** Store a small blob held in memory; returns its descriptor. */
  async putBytes(bytes: Uint8Array, mediaType: string): Promise<Descriptor> {
    const descriptor = { mediaType, digest: digestOf(bytes), size: bytes.length };
    await this.ingest(descriptor, Readable.from([Buffer.from(bytes)]));
    return descriptor;
  }

  async readIndex(): Promise<ImageIndex> {
    const bytes = await readFile(join(this.root, 'index.json'));
    const parsed = parseManifest(bytes, MediaType.ociIndex, `${join(this.root, 'index.json')}`);
    if (parsed.kind !== 'index') throw new InputError(`${join(this.root, 'index.json')} is not an image index`);
    return parsed.index;
  }

  private async writeIndex(index: ImageIndex): Promise<void> {
    await writeFileAtomic(join(this.root, 'index.json'), `${JSON.stringify(index, null, 2)}\n`);
  }

  async listTags(): Promise<TagEntry[]> {
    const index = await this.readIndex();
    return index.manifests
      .filter((d) => d.annotations?.[REF_NAME] !== undefined)
      .map((d) => ({ name: d.annotations?.[REF_NAME] ?? '', descriptor: d }));
  }

  async resolveTag(name: string): Promise<Descriptor | undefined> {
    return (await this.listTags()).find((t) => t.name === name)?.descriptor;
  }

  /** Point `name` at `descriptor` (which must be stored already). */
  async tag(name: string, descriptor: Descriptor): Promise<void> {
    await withLock(this.indexLock, { purpose: `tag ${name}` }, async () => {
      // Checked under the lock prune holds, so a concurrent prune cannot remove it in between.
      if (!(await this.has(descriptor))) throw new InputError(`cannot tag ${name}: ${descriptor.digest} is not in the store`);
      const index = await this.readIndex();
      const { annotations, ...rest } = descriptor;
      const entry: Descriptor = { ...rest, annotations: { ...annotations, [REF_NAME]: name } };
      const manifests = index.manifests.filter((d) => d.annotations?.[REF_NAME] !== name);
      manifests.push(entry);
      manifests.sort((a, b) => (a.annotations?.[REF_NAME] ?? '').localeCompare(b.annotations?.[REF_NAME] ?? ''));
      await this.writeIndex({ ...index, manifests });
    });
  }

  /** Remove tags; returns the names that existed. */
  async untag(names: readonly string[]): Promise<string[]> {
    return withLock(this.indexLock, { purpose: `remove ${names.join(', ')}` }, async () => {
      const index = await this.readIndex();
      const removed = index.manifests.filter((d) => names.includes(d.annotations?.[REF_NAME] ?? '\0')).map((d) => d.annotations?.[REF_NAME] ?? '');
      if (removed.length > 0) {
        await this.writeIndex({ ...index, manifests: index.manifests.filter((d) => !names.includes(d.annotations?.[REF_NAME] ?? '\0')) });
      }
      return removed;
    });
  }

  /**
   * Take a lease: blobs written while it is held survive `prune` even before
   * they are tagged. Leases of dead processes are ignored.
   */
  async lease(): Promise<Lease> {
    const path = join(this.root, 'leases', `${process.pid}-${randomBytes(6).toString('hex')}`);
    await writeFileAtomic(path, JSON.stringify({ pid: process.pid, since: Date.now() }));
    return { release: () => rm(path, { force: true }) };
  }

  /**
   * Delete every blob that no tag reaches. Blobs newer than the oldest live
   * lease are kept: a pull in progress has not tagged them yet.
   */
  async prune(): Promise<{ removedBlobs: number; removedBytes: number; keptBlobs: number }> {
    return withLock(this.indexLock, { purpose: 'prune the content store' }, async () => {
      const reachable = new Set<string>();
      const index = await this.readIndex();
      const queue: Descriptor[] = [...index.manifests];
      while (queue.length > 0) {
        const d = queue.pop() as Descriptor;
        if (reachable.has(d.digest)) continue;
        reachable.add(d.digest);
        if (isManifestType(d.mediaType) && (await this.has(d))) {
          try {
            queue.push(...childrenOf(parseManifest(await this.readBlob(d, 4 * 1024 * 1024), d.mediaType, d.digest)));
          } catch {
            // A corrupt manifest reaches nothing; it stays (it is tagged) for `cs image rm` to deal with.
          }
        }
      }
      const protectSince = await this.oldestLiveLease();
      let removedBlobs = 0;
      let removedBytes = 0;
      let keptBlobs = 0;
      // First decide, then delete: a blob a writer may still tag (newer than
      // the oldest live lease) is kept with everything it points at, since a
      // writer that finds a manifest present does not look at its children.
      const unreachable: { path: string; size: number; digest: string; protect: boolean }[] = [];
      for (const algorithm of await readdir(join(this.root, 'blobs'))) {
        for (const hex of await readdir(join(this.root, 'blobs', algorithm))) {
          const path = join(this.root, 'blobs', algorithm, hex);
          if (reachable.has(`${algorithm}:${hex}`)) {
            keptBlobs++;
            continue;
          }
          const info = await stat(path).catch(() => undefined);
          if (!info) continue;
          unreachable.push({ path, size: info.size, digest: `${algorithm}:${hex}`, protect: protectSince !== undefined && info.mtimeMs >= protectSince - 1000 });
        }
      }
      const keep = new Set<string>();
      const protectQueue = unreachable.filter((b) => b.protect).map((b) => b.digest);
      while (protectQueue.length > 0) {
        const digest = protectQueue.pop() as string;
        if (keep.has(digest)) continue;
        keep.add(digest);
        for (const child of await this.childrenIfManifest(digest)) protectQueue.push(child.digest);
      }
      for (const blob of unreachable) {
        if (keep.has(blob.digest)) {
          keptBlobs++;
          continue;
        }
        await rm(blob.path, { force: true });
        removedBlobs++;
        removedBytes += blob.size;
      }
      await this.cleanIngest();
      return { removedBlobs, removedBytes, keptBlobs };
    });
  }

  /** The children of a stored blob when it is a manifest or an index; nothing otherwise. */
  private async childrenIfManifest(digest: string): Promise<Descriptor[]> {
    try {
      const path = this.blobPath(digest);
      const info = await stat(path);
      if (info.size > 4 * 1024 * 1024 || info.size < 2) return [];
      const bytes = await readFile(path);
      if (bytes[0] !== 0x7b /* { */ || digestOf(bytes, parseDigest(digest)?.algorithm ?? 'sha256') !== digest) return [];
      return childrenOf(parseManifest(bytes, undefined, digest));
    } catch {
      return []; // not a manifest (a config, a layer) or unreadable
    }
  }

  private async oldestLiveLease(): Promise<number | undefined> {
    let oldest: number | undefined;
    for (const name of await readdir(join(this.root, 'leases'))) {
      const path = join(this.root, 'leases', name);
      try {
        const lease = JSON.parse(await readFile(path, 'utf8')) as { pid?: number; since?: number };
        if (typeof lease.pid !== 'number' || !isAlive(lease.pid)) {
          await rm(path, { force: true });
          continue;
        }
        if (typeof lease.since === 'number' && (oldest === undefined || lease.since < oldest)) oldest = lease.since;
      } catch {
        // A lease being written right now: treat it as live and recent.
        oldest = Math.min(oldest ?? Date.now(), Date.now() - 60_000);
      }
    }
    return oldest;
  }

  /** Remove temporary files of writers that are gone. */
  private async cleanIngest(): Promise<void> {
    for (const name of await readdir(join(this.root, 'ingest'))) {
      const pid = Number(name.split('.')[1]);
      if (!Number.isInteger(pid) || !isAlive(pid)) await rm(join(this.root, 'ingest', name), { force: true });
    }
  }

  /** Mark a blob as used now (so the cache of a layer looks fresh to pruning). */
  async touch(digest: string): Promise<void> {
    const now = new Date();
    await utimes(this.blobPath(digest), now, now).catch(() => undefined);
  }
}

function tooMany(expected: Pick<Descriptor, 'digest' | 'size'>): RegistryError {
  return new RegistryError(`blob ${expected.digest}: received more than the expected ${expected.size} bytes`, { code: 'SIZE_MISMATCH' });
}

function verify(expected: Pick<Descriptor, 'digest' | 'size'>, bytes: number, digest: string): void {
  if (bytes !== expected.size) {
    throw new RegistryError(`blob ${expected.digest}: received ${bytes} bytes, expected ${expected.size}`, { code: 'SIZE_MISMATCH' });
  }
  if (digest !== expected.digest) {
    throw new RegistryError(`blob ${expected.digest}: content does not match its digest (got ${digest})`, { code: 'DIGEST_MISMATCH' });
  }
}

/**
 * Stream `source` into a new file `temp`, counting and hashing as it goes,
 * and flush it to disk. A plain loop, not a pipeline of streams: chunks are
 * copied into reused buffers of WRITE_BATCH bytes (network chunks are tens
 * of KiB) written at their offsets by the thread pool, a few in flight at once,
 * so copying into the page cache overlaps the download. With `expected`, a
 * source that sends more than its size fails as soon as it does. The caller
 * removes `temp` on failure.
 */
async function spool(
  temp: string,
  source: AsyncIterable<Uint8Array>,
  algorithm: Algorithm,
  options: { expected?: Pick<Descriptor, 'digest' | 'size'>; onProgress?: (bytes: number) => void },
): Promise<{ bytes: number; digest: string }> {
  const hash = createHash(algorithm);
  const fd = openSync(temp, 'wx', 0o644);
  const pending = new Set<Promise<void>>();
  let writeError: unknown;
  let bytes = 0;
  let batch: Buffer | undefined;
  let batchBytes = 0;
  let written = 0;
  let unflushed = 0;
  let flushing: Promise<void> | undefined;
  const flush = async (): Promise<void> => {
    if (!batch || batchBytes === 0) return;
    const buffer = batch;
    const data = buffer.subarray(0, batchBytes);
    const position = written;
    written += batchBytes;
    batch = undefined;
    batchBytes = 0;
    const done: Promise<void> = writeAt(fd, data, position).then(
      () => {
        pending.delete(done);
        if (spareBatches.length < SPARE_BATCHES) spareBatches.push(buffer);
        unflushed += data.length;
        if (unflushed >= EARLY_FLUSH_BYTES && !earlyFlushing) {
          // Start writing to disk what has arrived so far, while the rest downloads, so that
          // the final fsync does not have the whole blob to write at once. Not awaited here,
          // and one at a time in the process: a flush holds a thread of the pool the writes need.
          unflushed = 0;
          earlyFlushing = true;
          flushing = fdatasyncFd(fd)
            .catch((error: unknown) => void (writeError ??= error))
            .finally(() => {
              earlyFlushing = false;
              flushing = undefined;
            });
        }
      },
      (error: unknown) => {
        writeError ??= error;
        pending.delete(done);
      },
    );
    pending.add(done);
    if (pending.size >= MAX_PENDING_WRITES) await Promise.race(pending);
    if (writeError) throw writeError;
  };
  try {
    for await (const chunk of source) {
      bytes += chunk.length;
      const { expected } = options;
      if (expected && bytes > expected.size) throw tooMany(expected);
      hash.update(chunk);
      // Copied at once: a source's chunks may be borrowed (valid only until the next is asked for).
      for (let at = 0; at < chunk.length; ) {
        batch ??= spareBatches.pop() ?? Buffer.allocUnsafeSlow(WRITE_BATCH);
        const room = Math.min(WRITE_BATCH - batchBytes, chunk.length - at);
        batch.set(chunk.subarray(at, at + room), batchBytes);
        batchBytes += room;
        at += room;
        if (batchBytes === WRITE_BATCH) await flush();
      }
      options.onProgress?.(bytes);
    }
    await flush();
    await Promise.all(pending);
    await flushing;
    if (writeError) throw writeError;
    await fsyncFd(fd);
  } finally {
    await Promise.allSettled(pending);
    await flushing;
    closeSync(fd);
  }
  return { bytes, digest: `${algorithm}:${hash.digest('hex')}` };
}

/** Writes of one blob in flight at once (each holds its write buffer until written). */
const MAX_PENDING_WRITES = 8;
/** Written bytes after which a blob's file is flushed in the background (see spool). */
const EARLY_FLUSH_BYTES = 16 * 1024 * 1024;
/** Whether a background flush (of any blob) is in progress. */
let earlyFlushing = false;
/** Bytes gathered into one write. */
const WRITE_BATCH = 1024 * 1024;
/** Write buffers kept for the next blob: fresh memory is slow to first touch (see ./http-lean.ts). */
const spareBatches: Buffer[] = [];
/** Enough for a few blobs at once, each with its writes in flight (40 MiB at most). */
const SPARE_BATCHES = 40;

const writeFd = promisify(write);
const fdatasyncFd = promisify(fdatasync);
const fsyncFd = promisify(fsync);

/** Write all of `data` at `position` (the thread pool does the copy into the page cache). */
async function writeAt(fd: number, data: Uint8Array, position: number): Promise<void> {
  let offset = 0;
  while (offset < data.length) offset += (await writeFd(fd, data, offset, data.length - offset, position + offset)).bytesWritten;
}


