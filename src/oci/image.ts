import { InputError, RegistryError } from '../util/errors.js';
import { storeDir, type Env } from '../util/paths.js';
import { RegistryClient } from './client.js';
import { loadConfig, isInsecure, mirrorsOf, type CsConfig } from './config.js';
import { copyGraph, type CopyEvent, type CopyResult } from './copy.js';
import { findCredential } from './credentials.js';
import { hostPlatform, MAX_MANIFEST_BYTES, parseManifest, type Descriptor, type ImageManifest, type Platform } from './manifest.js';
import { formatReference, parseReference, type Reference } from './reference.js';
import { ContentStore } from './store.js';
import { RepositoryTarget, StoreTarget } from './target.js';

/**
 * Image operations behind `cs image …`: pull and push (graph copies between
 * the local store and a registry), list, inspect, remove and prune.
 */

export interface ImageContextOptions {
  env?: Env;
  /** Use plain HTTP for the registry named in this operation. */
  insecure?: boolean;
}

export interface ImageContext {
  store: ContentStore;
  config: CsConfig;
  env: Env;
  insecure: boolean;
}

export async function openImageContext(options: ImageContextOptions = {}): Promise<ImageContext> {
  const env = options.env ?? process.env;
  const [store, config] = await Promise.all([ContentStore.open(storeDir(env)), loadConfig({ env })]);
  return { store, config, env, insecure: options.insecure ?? false };
}

/** Parse a reference typed by a user, with an error that shows the bad part. */
export function userReference(text: string, options: { defaultTag?: boolean } = { defaultTag: true }): Reference {
  const result = parseReference(text, options);
  if (result.ok) return result.reference;
  const { offset, length, message } = result.problem;
  const marker = `${' '.repeat(offset)}${'^'.repeat(Math.max(1, Math.min(length, text.length - offset)))}`;
  throw new InputError(`invalid image reference: ${message}\n    ${text}\n    ${marker}`, { code: 'INVALID_REFERENCE' });
}

function clientFor(context: ImageContext, registry: string): RegistryClient {
  return new RegistryClient({
    registry,
    insecure: isInsecure(context.config, registry, context.insecure),
    credentials: async (r) => (await findCredential(r, { env: context.env as NodeJS.ProcessEnv }))?.credential,
    userAgent: 'cs/0.1',
  });
}

/** What a copy reports: the tag and digest it ended on, and what moved. */
export interface TransferResult {
  reference: string;
  digest: string;
  mediaType: string;
  size: number;
  blobsCopied: number;
  blobsSkipped: number;
  bytesCopied: number;
  /** The registry the bytes came from or went to (a mirror, for pulls through one). */
  registry: string;
}

function transferResult(reference: string, registry: string, result: CopyResult): TransferResult {
  const { descriptor, blobsCopied, blobsSkipped, bytesCopied } = result;
  return { reference, digest: descriptor.digest, mediaType: descriptor.mediaType, size: descriptor.size, blobsCopied, blobsSkipped, bytesCopied, registry };
}

export interface PullOptions extends ImageContextOptions {
  reference: string;
  platform?: Platform;
  onEvent?: (event: CopyEvent) => void;
  context?: ImageContext;
}

export async function pullImage(options: PullOptions): Promise<TransferResult> {
  const context = options.context ?? (await openImageContext(options));
  const ref = userReference(options.reference);
  const name = formatReference(ref);
  const sourceReference = ref.digest ?? ref.tag ?? 'latest';
  const lease = await context.store.lease();
  try {
    // Mirrors first (containers' registries.conf order), then the registry itself.
    const candidates = [...mirrorsOf(context.config, ref.registry).map((m) => m.location), ref.registry];
    let lastError: unknown;
    for (const registry of candidates) {
      try {
        const result = await copyGraph({
          from: new RepositoryTarget(clientFor(context, registry), ref.repository),
          to: new StoreTarget(context.store),
          reference: sourceReference,
          tagAs: name,
          platform: options.platform ?? hostPlatform(),
          ...(options.onEvent ? { onEvent: options.onEvent } : {}),
        });
        return transferResult(name, registry, result);
      } catch (error) {
        lastError = error;
        if (registry === ref.registry || !(error instanceof RegistryError)) throw error;
      }
    }
    throw lastError;
  } finally {
    await lease.release();
  }
}

export interface PushOptions extends ImageContextOptions {
  /** A name in the local store. */
  source: string;
  /** Where to push; defaults to the source's own name. */
  destination?: string;
  /** Upload blobs in chunks of this many bytes (0: one request per blob). */
  chunkSize?: number;
  onEvent?: (event: CopyEvent) => void;
  context?: ImageContext;
}

export async function pushImage(options: PushOptions): Promise<TransferResult> {
  const context = options.context ?? (await openImageContext(options));
  const source = userReference(options.source);
  const destination = userReference(options.destination ?? options.source);
  if (destination.digest && !destination.tag) {
    throw new InputError('push needs a tag to push to, not only a digest', { suggestions: ['name the destination as HOST/REPO:TAG'] });
  }
  const client = clientFor(context, destination.registry);
  // Blobs that came from another repository of the same registry can be mounted instead of uploaded.
  const mountFrom = source.registry === destination.registry && source.repository !== destination.repository ? source.repository : undefined;
  const result = await copyGraph({
    from: new StoreTarget(context.store),
    to: new RepositoryTarget(client, destination.repository, {
      ...(mountFrom ? { mountFrom } : {}),
      ...(options.chunkSize ? { chunkSize: options.chunkSize } : {}),
    }),
    reference: formatReference(source),
    tagAs: destination.tag ?? 'latest',
    ...(options.onEvent ? { onEvent: options.onEvent } : {}),
  });
  return transferResult(formatReference({ ...destination, ...(destination.tag ? {} : { tag: 'latest' }) }), destination.registry, result);
}

export interface ImageSummary {
  name: string;
  digest: string;
  mediaType: string;
  /** Manifest, config and layers, as stored (compressed). */
  size: number;
  layers: number;
  created?: string;
  platform?: string;
}

export interface ImageDetails extends ImageSummary {
  manifest: ImageManifest | { manifests: Descriptor[] };
  config?: Record<string, unknown>;
  layerDescriptors: Descriptor[];
}

export async function inspectImage(options: { reference: string; context?: ImageContext; env?: Env }): Promise<ImageDetails> {
  const context = options.context ?? (await openImageContext(options));
  const name = formatReference(userReference(options.reference));
  const descriptor = await context.store.resolveTag(name);
  if (!descriptor) {
    throw new InputError(`image ${name} is not in the local store`, { code: 'NOT_FOUND', suggestions: [`run \`cs image pull ${options.reference}\``, 'run `cs image ls` to see what is there'] });
  }
  return describe(context.store, name, descriptor);
}

async function describe(store: ContentStore, name: string, descriptor: Descriptor): Promise<ImageDetails> {
  const bytes = await store.readBlob(descriptor, MAX_MANIFEST_BYTES);
  const parsed = parseManifest(bytes, descriptor.mediaType, name);
  if (parsed.kind === 'index') {
    return { name, digest: descriptor.digest, mediaType: descriptor.mediaType, size: descriptor.size, layers: 0, manifest: { manifests: parsed.index.manifests }, layerDescriptors: [] };
  }
  const manifest = parsed.manifest;
  let config: Record<string, unknown> | undefined;
  try {
    config = JSON.parse((await store.readBlob(manifest.config, MAX_MANIFEST_BYTES)).toString('utf8')) as Record<string, unknown>;
  } catch {
    config = undefined;
  }
  const size = descriptor.size + manifest.config.size + manifest.layers.reduce((sum, l) => sum + l.size, 0);
  const platform = config && typeof config['os'] === 'string' ? [config['os'], config['architecture'], config['variant']].filter((p) => typeof p === 'string').join('/') : undefined;
  return {
    name,
    digest: descriptor.digest,
    mediaType: descriptor.mediaType,
    size,
    layers: manifest.layers.length,
    ...(config && typeof config['created'] === 'string' ? { created: config['created'] } : {}),
    ...(platform ? { platform } : {}),
    manifest,
    ...(config ? { config } : {}),
    layerDescriptors: manifest.layers,
  };
}

export async function listImages(options: { context?: ImageContext; env?: Env } = {}): Promise<ImageSummary[]> {
  const context = options.context ?? (await openImageContext(options));
  const out: ImageSummary[] = [];
  for (const tag of await context.store.listTags()) {
    try {
      const { manifest: _m, config: _c, layerDescriptors: _l, ...summary } = await describe(context.store, tag.name, tag.descriptor);
      out.push(summary);
    } catch {
      out.push({ name: tag.name, digest: tag.descriptor.digest, mediaType: tag.descriptor.mediaType, size: tag.descriptor.size, layers: 0 });
    }
  }
  return out;
}

export async function removeImages(options: { references: readonly string[]; context?: ImageContext; env?: Env }): Promise<{ removed: string[] }> {
  const context = options.context ?? (await openImageContext(options));
  const names = options.references.map((r) => formatReference(userReference(r)));
  const known = new Set((await context.store.listTags()).map((t) => t.name));
  const missing = names.filter((n) => !known.has(n));
  if (missing.length > 0) {
    throw new InputError(`not in the local store: ${missing.join(', ')}`, { code: 'NOT_FOUND', suggestions: ['run `cs image ls` to see what is there'] });
  }
  return { removed: await context.store.untag(names) };
}

export async function pruneImages(options: { context?: ImageContext; env?: Env } = {}): Promise<{ removedBlobs: number; removedBytes: number; keptBlobs: number }> {
  const context = options.context ?? (await openImageContext(options));
  return context.store.prune();
}
