import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { RegistryError } from '../util/errors.js';
import { childrenOf, formatPlatform, MAX_MANIFEST_BYTES, parseManifest, parsePlatform, selectPlatform, type Descriptor, type ImageIndex, type Platform } from './manifest.js';
import { MediaType } from './media-types.js';

const digest = (s: string) => `sha256:${createHash('sha256').update(s).digest('hex')}`;
const json = (v: unknown) => Buffer.from(JSON.stringify(v));
const WHERE = 'reg.example/a/b:v1';

const config: Descriptor = { mediaType: MediaType.ociConfig, digest: digest('config'), size: 123 };
const layer: Descriptor = { mediaType: MediaType.ociLayerGzip, digest: digest('layer'), size: 4567 };

function ociManifest(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { schemaVersion: 2, mediaType: MediaType.ociManifest, config, layers: [layer], ...extra };
}

function ociIndex(manifests: unknown[], extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { schemaVersion: 2, mediaType: MediaType.ociIndex, manifests, ...extra };
}

/** The RegistryError parseManifest throws for `doc`. */
function refusal(doc: unknown, declared: string | null = MediaType.ociManifest): RegistryError {
  const bytes = Buffer.isBuffer(doc) ? doc : json(doc);
  try {
    parseManifest(bytes, declared ?? undefined, WHERE);
  } catch (error) {
    expect(error).toBeInstanceOf(RegistryError);
    const e = error as RegistryError;
    expect(e.exitCode).toBe(4);
    expect(e.code).toBe('BAD_MANIFEST');
    expect(e.message.startsWith(`${WHERE}`)).toBe(true);
    return e;
  }
  throw new Error('parseManifest accepted it');
}

describe('parseManifest: valid documents', () => {
  it('reads an OCI image manifest with every optional field', () => {
    const subject = { mediaType: MediaType.ociManifest, digest: digest('subject'), size: 10 };
    const parsed = parseManifest(json(ociManifest({ annotations: { a: 'b' }, subject, artifactType: 'application/x.test' })), MediaType.ociManifest, WHERE);
    expect(parsed).toEqual({
      kind: 'manifest',
      manifest: { schemaVersion: 2, mediaType: MediaType.ociManifest, config, layers: [layer], annotations: { a: 'b' }, subject, artifactType: 'application/x.test' },
    });
    expect(childrenOf(parsed)).toEqual([config, layer]);
  });

  it('reads a Docker schema 2 manifest', () => {
    const doc = {
      schemaVersion: 2,
      mediaType: MediaType.dockerManifest,
      config: { ...config, mediaType: MediaType.dockerConfig },
      layers: [{ ...layer, mediaType: MediaType.dockerLayerGzip }],
    };
    const parsed = parseManifest(json(doc), MediaType.dockerManifest, WHERE);
    expect(parsed.kind).toBe('manifest');
    expect(parsed.kind === 'manifest' && parsed.manifest.mediaType).toBe(MediaType.dockerManifest);
  });

  it('takes the type from the Content-Type when the document has none, parameters ignored', () => {
    const { mediaType: _m, ...doc } = ociManifest();
    const parsed = parseManifest(json(doc), `${MediaType.ociManifest}; charset=utf-8`, WHERE);
    expect(parsed.kind === 'manifest' && parsed.manifest.mediaType).toBe(MediaType.ociManifest);
  });

  it('lets the shape decide when no type is given anywhere', () => {
    const { mediaType: _m, ...manifest } = ociManifest();
    expect(parseManifest(json(manifest), undefined, WHERE).kind).toBe('manifest');
    const { mediaType: _i, ...index } = ociIndex([]);
    expect(parseManifest(json(index), undefined, WHERE).kind).toBe('index');
  });

  it('reads an OCI index and a Docker manifest list, with platforms', () => {
    const entry = { mediaType: MediaType.ociManifest, digest: digest('m1'), size: 500, platform: { os: 'linux', architecture: 'arm64', variant: 'v8', 'os.version': '1', extra: 'ignored' } };
    const parsed = parseManifest(json(ociIndex([entry], { annotations: { x: 'y' } })), MediaType.ociIndex, WHERE);
    expect(parsed).toEqual({
      kind: 'index',
      index: {
        schemaVersion: 2,
        mediaType: MediaType.ociIndex,
        manifests: [{ mediaType: MediaType.ociManifest, digest: entry.digest, size: 500, platform: { os: 'linux', architecture: 'arm64', variant: 'v8', 'os.version': '1' } }],
        annotations: { x: 'y' },
      },
    });
    const list = { schemaVersion: 2, mediaType: MediaType.dockerManifestList, manifests: [{ ...entry, mediaType: MediaType.dockerManifest }] };
    expect(parseManifest(json(list), MediaType.dockerManifestList, WHERE).kind).toBe('index');
  });

  it('accepts a manifest of exactly 4 MiB', () => {
    const base = json(ociManifest());
    const padded = Buffer.concat([base, Buffer.alloc(MAX_MANIFEST_BYTES - base.length, 0x20)]);
    expect(padded.length).toBe(MAX_MANIFEST_BYTES);
    expect(parseManifest(padded, MediaType.ociManifest, WHERE).kind).toBe('manifest');
  });
});

describe('parseManifest: every invalid shape is a RegistryError that says what is wrong', () => {
  it('refuses more than 4 MiB before parsing', () => {
    const base = json(ociManifest());
    const big = Buffer.concat([base, Buffer.alloc(MAX_MANIFEST_BYTES - base.length + 1, 0x20)]);
    expect(refusal(big).message).toMatch(/manifest is 4194305 bytes, more than the 4194304-byte limit/);
  });

  it.each([
    ['not JSON', Buffer.from('<html>nope</html>'), /manifest is not valid JSON/],
    ['invalid UTF-8', Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]), /manifest is not valid JSON/],
    ['a JSON array', Buffer.from('[]'), /manifest is not a JSON object/],
    ['JSON null', Buffer.from('null'), /manifest is not a JSON object/],
    ['a JSON string', Buffer.from('"manifest"'), /manifest is not a JSON object/],
  ])('%s', (_name, bytes, pattern) => {
    expect(refusal(bytes).message).toMatch(pattern);
  });

  it.each([
    ['schemaVersion 1', { schemaVersion: 1, name: 'a/b', fsLayers: [] }, /Docker schema 1 manifests are not supported/],
    ['schemaVersion missing', { ...ociManifest(), schemaVersion: undefined }, /schemaVersion must be 2/],
    ['schemaVersion "2"', { ...ociManifest(), schemaVersion: '2' }, /schemaVersion must be 2/],
    ['no layers', { ...ociManifest(), layers: undefined }, /manifest has no "layers" list/],
    ['layers not a list', { ...ociManifest(), layers: { 0: layer } }, /manifest has no "layers" list/],
    ['no config', { ...ociManifest(), config: undefined }, /config: a descriptor must be an object/],
    ['a layer that is a string', ociManifest({ layers: ['sha256:abc'] }), /layers\[0\]: a descriptor must be an object/],
    ['a layer without mediaType', ociManifest({ layers: [{ digest: layer.digest, size: 1 }] }), /layers\[0\]: descriptor has no valid "mediaType"/],
    ['a layer with a 256-character mediaType', ociManifest({ layers: [{ ...layer, mediaType: 'a'.repeat(256) }] }), /descriptor has no valid "mediaType"/],
    ['a digest escaping the store', ociManifest({ layers: [{ ...layer, digest: 'sha256:../../etc' }] }), /layers\[0\]: descriptor has an invalid digest "sha256:\.\.\/\.\.\/etc"/],
    ['an upper-case digest', ociManifest({ layers: [{ ...layer, digest: layer.digest.toUpperCase() }] }), /invalid digest/],
    ['a short digest', ociManifest({ layers: [{ ...layer, digest: 'sha256:abcd' }] }), /invalid digest/],
    ['an unknown algorithm', ociManifest({ layers: [{ ...layer, digest: `md5:${'a'.repeat(32)}` }] }), /invalid digest/],
    ['a digest that is a number', ociManifest({ layers: [{ ...layer, digest: 42 }] }), /invalid digest "42"/],
    ['a negative size', ociManifest({ layers: [{ ...layer, size: -1 }] }), /layers\[0\]: descriptor sha256:[0-9a-f]{64} has an invalid size/],
    ['a fractional size', ociManifest({ layers: [{ ...layer, size: 1.5 }] }), /has an invalid size/],
    ['a size given as a string', ociManifest({ layers: [{ ...layer, size: '10' }] }), /has an invalid size/],
    ['a size beyond 2^53', ociManifest({ layers: [{ ...layer, size: 2 ** 60 }] }), /has an invalid size/],
    ['non-string annotations', ociManifest({ annotations: { a: 1 } }), /"annotations" must map strings to strings/],
    ['descriptor annotations that are a list', ociManifest({ layers: [{ ...layer, annotations: ['a'] }] }), /"annotations" must map strings to strings/],
    ['an invalid subject', ociManifest({ subject: { mediaType: MediaType.ociManifest } }), /subject: descriptor has an invalid digest/],
  ])('manifest with %s', (_name, doc, pattern) => {
    expect(refusal(doc).message).toMatch(pattern);
  });

  it.each([
    ['no manifests list', { schemaVersion: 2, mediaType: MediaType.ociIndex }, /index has no "manifests" list/],
    ['a bad entry', ociIndex([{ mediaType: MediaType.ociManifest, digest: 'nope', size: 1 }]), /manifests\[0\]: descriptor has an invalid digest "nope"/],
    ['an invalid platform', ociIndex([{ mediaType: MediaType.ociManifest, digest: digest('x'), size: 1, platform: { os: 'linux' } }]), /has an invalid platform/],
  ])('index with %s', (_name, doc, pattern) => {
    expect(refusal(doc, MediaType.ociIndex).message).toMatch(pattern);
  });

  it('refuses a document whose own mediaType disagrees with the declared one', () => {
    expect(refusal(ociIndex([]), MediaType.ociManifest).message).toMatch(
      `manifest says it is ${MediaType.ociIndex} but was served as ${MediaType.ociManifest}`,
    );
    expect(refusal(ociManifest(), MediaType.dockerManifest).message).toMatch(/says it is application\/vnd\.oci\.image\.manifest\.v1\+json but was served as application\/vnd\.docker/);
  });

  it('refuses an unknown media type, in the document or declared', () => {
    expect(refusal(ociManifest({ mediaType: 'application/vnd.evil+json' }), null).message).toMatch(/unsupported manifest media type "application\/vnd\.evil\+json"/);
    const { mediaType: _m, ...bare } = ociManifest();
    expect(refusal(bare, 'application/vnd.evil+json').message).toMatch(/unsupported manifest media type "application\/vnd\.evil\+json"/);
    expect(refusal(ociManifest(), 'application/vnd.evil+json').message).toMatch(/unsupported manifest media type/);
    expect(refusal(ociManifest({ mediaType: MediaType.ociConfig }), null).message).toMatch(/unsupported manifest media type/);
  });
});

describe('selectPlatform', () => {
  const entry = (platform: Platform | undefined, name: string, mediaType: string = MediaType.ociManifest): Descriptor => ({
    mediaType,
    digest: digest(name),
    size: 100,
    ...(platform ? { platform } : {}),
  });
  const index = (...manifests: Descriptor[]): ImageIndex => ({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests });

  const amd64 = entry({ os: 'linux', architecture: 'amd64' }, 'amd64');
  const arm64 = entry({ os: 'linux', architecture: 'arm64' }, 'arm64');
  const armv7 = entry({ os: 'linux', architecture: 'arm', variant: 'v7' }, 'armv7');
  const armv6 = entry({ os: 'linux', architecture: 'arm', variant: 'v6' }, 'armv6');
  const winAmd64 = entry({ os: 'windows', architecture: 'amd64', 'os.version': '10.0.17763' }, 'win');
  const attestation = entry({ os: 'unknown', architecture: 'unknown' }, 'att');
  const multi = index(attestation, winAmd64, amd64, arm64, armv6, armv7);

  it('picks linux/amd64 and not windows/amd64', () => {
    expect(selectPlatform(multi, { os: 'linux', architecture: 'amd64' })).toBe(amd64);
    expect(selectPlatform(multi, { os: 'windows', architecture: 'amd64' })).toBe(winAmd64);
  });

  it('treats arm64 without a variant as arm64/v8, on either side', () => {
    expect(selectPlatform(multi, { os: 'linux', architecture: 'arm64', variant: 'v8' })).toBe(arm64);
    expect(selectPlatform(multi, { os: 'linux', architecture: 'arm64' })).toBe(arm64);
    const v8 = entry({ os: 'linux', architecture: 'arm64', variant: 'v8' }, 'arm64v8');
    expect(selectPlatform(index(v8), { os: 'linux', architecture: 'arm64' })).toBe(v8);
    expect(selectPlatform(index(arm64), { os: 'linux', architecture: 'arm64', variant: 'v9' })).toBeUndefined();
  });

  it('matches variants exactly when one is asked for', () => {
    expect(selectPlatform(multi, { os: 'linux', architecture: 'arm', variant: 'v7' })).toBe(armv7);
    expect(selectPlatform(multi, { os: 'linux', architecture: 'arm', variant: 'v6' })).toBe(armv6);
    expect(selectPlatform(multi, { os: 'linux', architecture: 'arm', variant: 'v5' })).toBeUndefined();
  });

  it('prefers an exact variant over an entry that names none', () => {
    const armAny = entry({ os: 'linux', architecture: 'arm' }, 'arm');
    expect(selectPlatform(index(armAny, armv7), { os: 'linux', architecture: 'arm', variant: 'v7' })).toBe(armv7);
    expect(selectPlatform(index(armAny, armv6), { os: 'linux', architecture: 'arm', variant: 'v7' })).toBe(armAny);
  });

  it('finds nothing for a platform the index lacks, and ignores entries that are not image manifests', () => {
    expect(selectPlatform(multi, { os: 'linux', architecture: 's390x' })).toBeUndefined();
    const nested = entry({ os: 'linux', architecture: 'riscv64' }, 'nested', MediaType.ociIndex);
    expect(selectPlatform(index(nested), { os: 'linux', architecture: 'riscv64' })).toBeUndefined();
    expect(selectPlatform(index(entry(undefined, 'noplatform')), { os: 'linux', architecture: 'amd64' })).toBeUndefined();
  });

  it('parses and formats OS/ARCH[/VARIANT]', () => {
    expect(parsePlatform('linux/arm64/v8')).toEqual({ os: 'linux', architecture: 'arm64', variant: 'v8' });
    expect(parsePlatform('linux/amd64')).toEqual({ os: 'linux', architecture: 'amd64' });
    for (const bad of ['linux', 'linux/', 'a/b/c/d', 'Linux/AMD64', 'linux/amd 64']) expect(parsePlatform(bad), bad).toBeUndefined();
    expect(formatPlatform({ os: 'linux', architecture: 'arm', variant: 'v7' })).toBe('linux/arm/v7');
  });
});
