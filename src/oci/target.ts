import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import { RegistryError } from '../util/errors.js';
import type { RegistryClient } from './client.js';
import { MAX_MANIFEST_BYTES, type Descriptor } from './manifest.js';
import { isManifestType } from './media-types.js';
import type { ContentStore } from './store.js';

/**
 * Targets in the ORAS sense: places images live, with the same few verbs
 * whether they are the local store or a repository in a registry. Copying an
 * image is copying its graph from one target to another (see copy.ts).
 */

export interface BlobSource {
  /** The blob's bytes from `start` to `end` inclusive (default: all). */
  open(start?: number, end?: number): Readable;
  /**
   * All the blob's bytes as plain chunks, where that is cheaper than a
   * stream. The chunks are borrowed: each is valid only until the next one
   * is asked for (the store copies what it keeps).
   */
  chunks?(): AsyncIterable<Uint8Array>;
}

export interface ReadableTarget {
  readonly name: string;
  /** Tag or digest to the root descriptor. */
  resolve(reference: string): Promise<Descriptor>;
  /** Manifest bytes, verified against the descriptor. */
  fetchManifest(descriptor: Descriptor): Promise<Buffer>;
  /** Blob bytes; the receiver verifies them. */
  fetchBlob(descriptor: Descriptor): BlobSource;
}

export interface WritableTarget {
  readonly name: string;
  exists(descriptor: Descriptor): Promise<boolean>;
  pushBlob(descriptor: Descriptor, source: BlobSource, onProgress?: (bytes: number) => void): Promise<void>;
  pushManifest(descriptor: Descriptor, bytes: Buffer): Promise<void>;
  tag(descriptor: Descriptor, reference: string): Promise<void>;
  /** Try to get the blob without sending it (cross-repository mount); true if it worked. */
  mount?(descriptor: Descriptor): Promise<boolean>;
}

/** The local content store; references are full image names. */
export class StoreTarget implements ReadableTarget, WritableTarget {
  readonly name = 'local store';
  constructor(readonly store: ContentStore) {}

  async resolve(reference: string): Promise<Descriptor> {
    const descriptor = await this.store.resolveTag(reference);
    if (!descriptor) throw new RegistryError(`image ${reference} is not in the local store`, { code: 'NOT_FOUND', suggestions: [`run \`cs image pull ${reference}\``, 'run `cs image ls` to see what is there'] });
    const { annotations: _annotations, ...plain } = descriptor;
    return plain;
  }

  fetchManifest(descriptor: Descriptor): Promise<Buffer> {
    return this.store.readBlob(descriptor, MAX_MANIFEST_BYTES);
  }

  fetchBlob(descriptor: Descriptor): BlobSource {
    const path = this.store.blobPath(descriptor.digest);
    return {
      open: (start = 0, end?: number) => createReadStream(path, { start, ...(end === undefined ? {} : { end }) }),
    };
  }

  exists(descriptor: Descriptor): Promise<boolean> {
    return this.store.has(descriptor);
  }

  pushBlob(descriptor: Descriptor, source: BlobSource, onProgress?: (bytes: number) => void): Promise<void> {
    return this.store.ingest(descriptor, source.chunks?.() ?? source.open(), onProgress ? { onProgress } : {});
  }

  async pushManifest(descriptor: Descriptor, bytes: Buffer): Promise<void> {
    await this.store.ingest(descriptor, Readable.from([bytes]));
  }

  tag(descriptor: Descriptor, reference: string): Promise<void> {
    return this.store.tag(reference, descriptor);
  }
}

/** One repository in a registry. */
export class RepositoryTarget implements ReadableTarget, WritableTarget {
  readonly name: string;
  private readonly manifests = new Map<string, Buffer>();
  /** Upload sessions opened by refused mounts, by digest, for pushBlob to use. */
  private readonly mountSessions = new Map<string, string>();

  constructor(
    readonly client: RegistryClient,
    readonly repository: string,
    private readonly options: { mountFrom?: string; chunkSize?: number } = {},
  ) {
    this.name = `${client.registry}/${repository}`;
  }

  async resolve(reference: string): Promise<Descriptor> {
    const fetched = await this.client.getManifest(this.repository, reference);
    this.manifests.set(fetched.digest, fetched.bytes);
    return { mediaType: fetched.mediaType, digest: fetched.digest, size: fetched.bytes.length };
  }

  async fetchManifest(descriptor: Descriptor): Promise<Buffer> {
    const cached = this.manifests.get(descriptor.digest);
    const bytes = cached ?? (await this.client.getManifest(this.repository, descriptor.digest)).bytes;
    if (bytes.length !== descriptor.size) {
      throw new RegistryError(`manifest ${descriptor.digest} in ${this.name} is ${bytes.length} bytes, but its descriptor says ${descriptor.size}`, { code: 'SIZE_MISMATCH' });
    }
    return bytes;
  }

  fetchBlob(descriptor: Descriptor): BlobSource {
    return {
      open: (start = 0) => {
        if (start !== 0) throw new Error('ranged reads of remote blobs are not supported');
        return this.client.blobStream(this.repository, descriptor);
      },
      chunks: () => this.client.blobChunks(this.repository, descriptor, { borrowed: true }),
    };
  }

  async exists(descriptor: Descriptor): Promise<boolean> {
    // By the known manifest types, not by substring: artifact layers such as OPA's
    // `application/vnd.cncf.openpolicyagent.manifest.layer.v1+json` are blobs, and a HEAD of
    // /manifests/<blob digest> gets a 404 or even a 500 from distribution, failing the push.
    if (isManifestType(descriptor.mediaType)) {
      return (await this.client.headManifest(this.repository, descriptor.digest)) !== undefined;
    }
    return this.client.hasBlob(this.repository, descriptor.digest);
  }

  async mount(descriptor: Descriptor): Promise<boolean> {
    if (!this.options.mountFrom || this.options.mountFrom === this.repository) return false;
    try {
      const result = await this.client.mountBlob(this.repository, this.options.mountFrom, descriptor.digest);
      // A refused mount opens an upload session (distribution spec); upload through it
      // rather than open a second one and leave this one abandoned on the registry.
      if (!result.mounted && result.location) this.mountSessions.set(descriptor.digest, result.location);
      return result.mounted;
    } catch {
      return false; // a refused mount falls back to an upload
    }
  }

  pushBlob(descriptor: Descriptor, source: BlobSource, onProgress?: (bytes: number) => void): Promise<void> {
    const location = this.mountSessions.get(descriptor.digest);
    this.mountSessions.delete(descriptor.digest);
    return this.client.uploadBlob(this.repository, descriptor, (start, end) => source.open(start, end), {
      ...(location ? { location } : {}),
      ...(this.options.chunkSize === undefined ? {} : { chunkSize: this.options.chunkSize }),
      ...(onProgress ? { onProgress } : {}),
    });
  }

  async pushManifest(descriptor: Descriptor, bytes: Buffer): Promise<void> {
    await this.client.putManifest(this.repository, descriptor.digest, bytes, descriptor.mediaType);
  }

  async tag(descriptor: Descriptor, reference: string): Promise<void> {
    const bytes = await this.manifestBytesFor(descriptor);
    await this.client.putManifest(this.repository, reference, bytes, descriptor.mediaType);
  }

  /** Remember manifest bytes we pushed, so tagging does not re-read them. */
  rememberManifest(digest: string, bytes: Buffer): void {
    this.manifests.set(digest, bytes);
  }

  private async manifestBytesFor(descriptor: Descriptor): Promise<Buffer> {
    return this.manifests.get(descriptor.digest) ?? (await this.client.getManifest(this.repository, descriptor.digest)).bytes;
  }
}
