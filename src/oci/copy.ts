import { RegistryError } from '../util/errors.js';
import { childrenOf, formatPlatform, parseManifest, selectPlatform, type Descriptor, type Platform } from './manifest.js';
import { isManifestType } from './media-types.js';
import { RepositoryTarget, type ReadableTarget, type WritableTarget } from './target.js';

/**
 * Graph copy (the ORAS model): an image is a graph of manifests and blobs;
 * copying it means making every node exist at the destination, children
 * before parents, skipping what is already there, and tagging the root last
 * so a reader never sees a tag that points at something incomplete.
 */

export type CopyEvent =
  | { kind: 'skip'; descriptor: Descriptor; reason: 'exists' | 'mounted' }
  | { kind: 'start'; descriptor: Descriptor }
  | { kind: 'progress'; descriptor: Descriptor; bytes: number }
  | { kind: 'done'; descriptor: Descriptor };

export interface CopyOptions {
  from: ReadableTarget;
  to: WritableTarget;
  /** Tag or digest at the source. */
  reference: string;
  /** Tag to set at the destination when done (omit to copy untagged). */
  tagAs?: string;
  /** Pick one platform out of an index; undefined copies every platform. */
  platform?: Platform;
  /** Blob transfers at once (default 4). */
  concurrency?: number;
  onEvent?: (event: CopyEvent) => void;
}

export interface CopyResult {
  /** The root that was copied (the platform's manifest when one was selected). */
  descriptor: Descriptor;
  /** The root at the source before platform selection. */
  sourceDescriptor: Descriptor;
  blobsCopied: number;
  blobsSkipped: number;
  bytesCopied: number;
}

export async function copyGraph(options: CopyOptions): Promise<CopyResult> {
  const { from, to } = options;
  const concurrency = Math.max(1, options.concurrency ?? 4);
  const stats = { blobsCopied: 0, blobsSkipped: 0, bytesCopied: 0 };
  const emit = options.onEvent ?? (() => undefined);
  const seen = new Map<string, Promise<void>>();

  const sourceRoot = await from.resolve(options.reference);
  let root = sourceRoot;
  let rootBytes = await from.fetchManifest(root);
  let parsed = parseManifest(rootBytes, root.mediaType, `${from.name} ${options.reference}`);
  if (parsed.kind === 'index' && options.platform) {
    const chosen = selectPlatform(parsed.index, options.platform);
    if (!chosen) {
      const available = parsed.index.manifests.flatMap((d) => (d.platform ? [formatPlatform(d.platform)] : [])).join(', ');
      throw new RegistryError(`${options.reference} has no image for ${formatPlatform(options.platform)} (it has: ${available || 'none'})`, {
        code: 'NO_PLATFORM',
        suggestions: ['choose one with --platform OS/ARCH[/VARIANT]'],
      });
    }
    root = stripDescriptor(chosen);
    rootBytes = await from.fetchManifest(root);
    parsed = parseManifest(rootBytes, root.mediaType, `${from.name} ${root.digest}`);
  }

  // Blobs are transferred through a small pool; manifests wait for their children.
  let active = 0;
  const waiters: (() => void)[] = [];
  const runLimited = async <T>(task: () => Promise<T>): Promise<T> => {
    while (active >= concurrency) await new Promise<void>((resolve) => waiters.push(resolve));
    active++;
    try {
      return await task();
    } finally {
      active--;
      waiters.shift()?.();
    }
  };

  const copyBlob = (descriptor: Descriptor): Promise<void> => {
    const existing = seen.get(descriptor.digest);
    if (existing) return existing;
    const work = runLimited(async () => {
      if (await to.exists(descriptor)) {
        stats.blobsSkipped++;
        emit({ kind: 'skip', descriptor, reason: 'exists' });
        return;
      }
      if (to.mount && (await to.mount(descriptor))) {
        stats.blobsSkipped++;
        emit({ kind: 'skip', descriptor, reason: 'mounted' });
        return;
      }
      emit({ kind: 'start', descriptor });
      await to.pushBlob(descriptor, from.fetchBlob(descriptor), (bytes) => emit({ kind: 'progress', descriptor, bytes }));
      stats.blobsCopied++;
      stats.bytesCopied += descriptor.size;
      emit({ kind: 'done', descriptor });
    });
    seen.set(descriptor.digest, work);
    return work;
  };

  const copyManifest = async (descriptor: Descriptor, bytes: Buffer, manifest = parseManifest(bytes, descriptor.mediaType, `${from.name} ${descriptor.digest}`)): Promise<void> => {
    // allSettled, not all: a copy must not return (and release its lease) while a
    // sibling transfer is still writing; the first failure is rethrown once all are done.
    const copyChildren = async () => {
      const results = await Promise.allSettled(
        childrenOf(manifest).map(async (child) => {
          if (isManifestType(child.mediaType)) {
            const plain = stripDescriptor(child);
            await copyManifest(plain, await from.fetchManifest(plain));
          } else {
            await copyBlob(stripDescriptor(child));
          }
        }),
      );
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
    };
    if (await to.exists(descriptor)) {
      // A registry keeps a manifest only together with what it points at, so the graph below
      // is complete. The local store promises no such thing (a blob can be lost or deleted by
      // hand while its manifest stays): there the children are checked too, and a pull brings
      // back whatever is missing instead of reporting the image as already present.
      if (!(to instanceof RepositoryTarget)) await copyChildren();
      stats.blobsSkipped++;
      emit({ kind: 'skip', descriptor, reason: 'exists' });
      return;
    }
    await copyChildren();
    if (to instanceof RepositoryTarget) to.rememberManifest(descriptor.digest, bytes);
    await to.pushManifest(descriptor, bytes);
    stats.blobsCopied++;
    stats.bytesCopied += bytes.length;
  };

  await copyManifest(root, rootBytes, parsed);
  if (to instanceof RepositoryTarget) to.rememberManifest(root.digest, rootBytes);
  if (options.tagAs !== undefined) await to.tag(root, options.tagAs);
  return { descriptor: root, sourceDescriptor: sourceRoot, ...stats };
}

/** The fields that identify content; platform and annotations stay with the parent. */
function stripDescriptor(d: Descriptor): Descriptor {
  return { mediaType: d.mediaType, digest: d.digest, size: d.size };
}
