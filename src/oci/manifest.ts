import { RegistryError } from '../util/errors.js';
import { isDigest } from './digest.js';
import { INDEX_TYPES, MANIFEST_TYPES, MediaType } from './media-types.js';

/**
 * Descriptors, manifests and indexes (image-spec descriptor.md, manifest.md,
 * image-index.md), parsed from untrusted bytes: every field cs relies on is
 * checked before it is used, and anything else is an error naming where the
 * bytes came from.
 */

/** Manifests are small; a bigger one is a mistake or an attack. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
  'os.version'?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
  urls?: string[];
  artifactType?: string;
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
  subject?: Descriptor;
  artifactType?: string;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

export type ParsedManifest = { kind: 'index'; index: ImageIndex } | { kind: 'manifest'; manifest: ImageManifest };

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

function fail(where: string, message: string): never {
  throw new RegistryError(`${where}: ${message}`, { code: 'BAD_MANIFEST' });
}

function stringMap(value: unknown, where: string, field: string): Record<string, string> | undefined {
  if (value === undefined) return undefined;
  if (!isObj(value) || Object.values(value).some((v) => typeof v !== 'string')) fail(where, `"${field}" must map strings to strings`);
  return value as Record<string, string>;
}

export function parseDescriptor(value: unknown, where: string): Descriptor {
  if (!isObj(value)) fail(where, 'a descriptor must be an object');
  const { mediaType, digest, size } = value;
  if (typeof mediaType !== 'string' || mediaType.length === 0 || mediaType.length > 255) fail(where, 'descriptor has no valid "mediaType"');
  if (typeof digest !== 'string' || !isDigest(digest)) fail(where, `descriptor has an invalid digest ${JSON.stringify(String(digest).slice(0, 100))}`);
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) fail(where, `descriptor ${digest} has an invalid size`);
  const descriptor: Descriptor = { mediaType, digest, size };
  const annotations = stringMap(value['annotations'], where, 'annotations');
  if (annotations) descriptor.annotations = annotations;
  if (value['platform'] !== undefined) {
    const p = value['platform'];
    if (!isObj(p) || typeof p['os'] !== 'string' || typeof p['architecture'] !== 'string') fail(where, `descriptor ${digest} has an invalid platform`);
    descriptor.platform = {
      os: p['os'],
      architecture: p['architecture'],
      ...(typeof p['variant'] === 'string' ? { variant: p['variant'] } : {}),
      ...(typeof p['os.version'] === 'string' ? { 'os.version': p['os.version'] } : {}),
    };
  }
  if (Array.isArray(value['urls']) && value['urls'].every((u) => typeof u === 'string')) descriptor.urls = value['urls'] as string[];
  if (typeof value['artifactType'] === 'string') descriptor.artifactType = value['artifactType'];
  return descriptor;
}

/**
 * Parse manifest bytes. `declared` is the media type the registry or the
 * parent descriptor gave; the document's own `mediaType`, when present, must
 * agree with it.
 */
export function parseManifest(bytes: Uint8Array, declared: string | undefined, where: string): ParsedManifest {
  if (bytes.length > MAX_MANIFEST_BYTES) fail(where, `manifest is ${bytes.length} bytes, more than the ${MAX_MANIFEST_BYTES}-byte limit`);
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    fail(where, 'manifest is not valid JSON');
  }
  if (!isObj(doc)) fail(where, 'manifest is not a JSON object');
  if (doc['schemaVersion'] === 1) fail(where, 'Docker schema 1 manifests are not supported');
  const own = typeof doc['mediaType'] === 'string' ? doc['mediaType'] : undefined;
  const declaredType = declared?.split(';')[0]?.trim();
  // A declared type that is not a manifest type is refused even when the
  // shape would pass: the caller records the declared type as the image's,
  // and prune only walks the children of known manifest types, so an image
  // tagged as application/vnd.evil+json would lose its layers.
  if (declaredType && !isKnown(declaredType)) fail(where, `unsupported manifest media type ${JSON.stringify(declaredType.slice(0, 100))}`);
  if (own && declaredType && own !== declaredType) {
    fail(where, `manifest says it is ${own} but was served as ${declaredType}`);
  }
  // Without a mediaType anywhere, the shape decides (OCI allows omitting it).
  const mediaType = own ?? (declaredType && isKnown(declaredType) ? declaredType : Array.isArray(doc['manifests']) ? MediaType.ociIndex : MediaType.ociManifest);
  if (doc['schemaVersion'] !== 2) {
    fail(where, doc['schemaVersion'] === 1 ? 'Docker schema 1 manifests are not supported' : 'manifest schemaVersion must be 2');
  }
  if (INDEX_TYPES.has(mediaType)) {
    if (!Array.isArray(doc['manifests'])) fail(where, 'index has no "manifests" list');
    const manifests = doc['manifests'].map((d, i) => parseDescriptor(d, `${where} manifests[${i}]`));
    const annotations = stringMap(doc['annotations'], where, 'annotations');
    return { kind: 'index', index: { schemaVersion: 2, mediaType, manifests, ...(annotations ? { annotations } : {}) } };
  }
  if (MANIFEST_TYPES.has(mediaType)) {
    if (!Array.isArray(doc['layers'])) fail(where, 'manifest has no "layers" list');
    const config = parseDescriptor(doc['config'], `${where} config`);
    const layers = doc['layers'].map((d, i) => parseDescriptor(d, `${where} layers[${i}]`));
    const annotations = stringMap(doc['annotations'], where, 'annotations');
    const manifest: ImageManifest = { schemaVersion: 2, mediaType, config, layers, ...(annotations ? { annotations } : {}) };
    if (doc['subject'] !== undefined) manifest.subject = parseDescriptor(doc['subject'], `${where} subject`);
    if (typeof doc['artifactType'] === 'string') manifest.artifactType = doc['artifactType'];
    return { kind: 'manifest', manifest };
  }
  fail(where, `unsupported manifest media type ${JSON.stringify(mediaType.slice(0, 100))}`);
}

function isKnown(mediaType: string): boolean {
  return INDEX_TYPES.has(mediaType) || MANIFEST_TYPES.has(mediaType);
}

/** The descriptors a manifest or index points at, in the order a copy needs them (children first). */
export function childrenOf(parsed: ParsedManifest): Descriptor[] {
  return parsed.kind === 'index' ? parsed.index.manifests : [parsed.manifest.config, ...parsed.manifest.layers];
}

/** Host platform in OCI terms. */
export function hostPlatform(): Platform {
  const arch: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
  const platform: Platform = { os: process.platform === 'win32' ? 'windows' : process.platform, architecture: arch[process.arch] ?? process.arch };
  if (process.arch === 'arm64') platform.variant = 'v8';
  return platform;
}

/** Parse `os/arch[/variant]`. */
export function parsePlatform(text: string): Platform | undefined {
  const parts = text.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[a-z0-9._-]+$/.test(p))) return undefined;
  const [os = '', architecture = '', variant] = parts;
  return { os, architecture, ...(variant ? { variant } : {}) };
}

export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter(Boolean).join('/');
}

/**
 * Pick the manifest for `want` from an index: os and architecture must
 * match; a variant, when asked for, must match, with arm64's implicit v8.
 */
export function selectPlatform(index: ImageIndex, want: Platform): Descriptor | undefined {
  const norm = (p: Platform) => (p.architecture === 'arm64' && !p.variant ? { ...p, variant: 'v8' } : p);
  const target = norm(want);
  const candidates = index.manifests.filter((d) => d.platform && MANIFEST_TYPES.has(d.mediaType));
  const exact = candidates.find((d) => {
    const p = norm(d.platform as Platform);
    return p.os === target.os && p.architecture === target.architecture && (p.variant ?? '') === (target.variant ?? '');
  });
  if (exact) return exact;
  return candidates.find((d) => {
    const p = norm(d.platform as Platform);
    return p.os === target.os && p.architecture === target.architecture && (!target.variant || !p.variant);
  });
}
