/**
 * cs's image operations (src/oci/image.ts: pushImage, pullImage,
 * inspectImage) against real registry processes in the three ways
 * registries authenticate: open, HTTP Basic and Bearer tokens. Every image
 * goes out of one simulated user's store and comes back into another's, and
 * what the registry holds is checked with plain HTTP, not with cs's client.
 */
import { randomBytes } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RegistryClient } from '../../src/oci/client.js';
import { copyGraph, type CopyEvent } from '../../src/oci/copy.js';
import { saveCredential } from '../../src/oci/credentials.js';
import { inspectImage, pruneImages, pullImage, pushImage, removeImages } from '../../src/oci/image.js';
import { login } from '../../src/oci/login.js';
import { MediaType } from '../../src/oci/media-types.js';
import { RepositoryTarget, StoreTarget } from '../../src/oci/target.js';
import { RegistryError, type InputError } from '../../src/util/errors.js';
import type { TestRegistry } from '../helpers/registry.js';
import { makeHome, secretForms, type TestHome } from './support/home.js';
import { importFiles, readStoreBlob, storeMultiPlatform, taggedManifest } from './support/images.js';
import { blobStatus, manifestHead, openUploads, registryFetch, startRegistries, stopRegistries } from './support/registries.js';

type Mode = 'open' | 'basic' | 'token';
let registries: Record<Mode | 'fresh', TestRegistry>;
const homes: TestHome[] = [];

async function home(label: string): Promise<TestHome> {
  const created = await makeHome(label);
  homes.push(created);
  return created;
}

/** A home whose DOCKER_CONFIG holds the registry's valid credentials (none needed when it is open). */
async function homeWithCredentials(label: string, registry: TestRegistry): Promise<TestHome> {
  const created = await home(label);
  if (registry.username && registry.password) {
    await saveCredential(registry.host, { username: registry.username, password: registry.password }, { env: created.env });
  }
  return created;
}

async function rejection(promise: Promise<unknown>): Promise<RegistryError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, 'expected the operation to fail').toBeInstanceOf(RegistryError);
  return error as RegistryError;
}

/** Everything of an error a user or a log could see. */
function errorText(error: RegistryError): string {
  return [error.message, ...error.suggestions, String(error.stack), JSON.stringify(error.toJSON())].join('\n');
}

const FILES = {
  'etc/motd': 'welcome to the round trip\n',
  'usr/bin/tool': '#!/bin/sh\necho tool\n',
  'srv/data.bin': randomBytes(4096),
};

beforeAll(async () => {
  registries = await startRegistries({ open: 'open', basic: 'basic', token: 'token', fresh: 'open' });
});

afterAll(async () => {
  await stopRegistries(registries);
  await Promise.allSettled(homes.map((h) => h.cleanup()));
});

// First and alone: it counts the token issuer's requests, which other tests would add to.
describe('a token registry', () => {
  it('fetches one token per scope and reuses it', async () => {
    const registry = registries.token;
    const user = await homeWithCredentials('tokens', registry);
    const credential = { username: registry.username ?? '', password: registry.password ?? '' };
    const reference = `${registry.host}/team/tokens:v1`;
    const other = `${registry.host}/team/tokens-other:v1`;
    await importFiles(user, reference, { 'a.txt': 'a\n' });
    await importFiles(user, other, { 'b.txt': 'b\n' });
    await pushImage({ source: reference, env: user.env });
    await pushImage({ source: other, env: user.env });

    // One client, many requests on two scopes: one token each.
    const client = new RegistryClient({ registry: registry.host, credentials: async () => credential });
    const before = registry.tokenRequests();
    const first = await client.getManifest('team/tokens', 'v1');
    await client.getManifest('team/tokens', 'v1');
    await client.getManifest('team/tokens', first.digest);
    const config = (await taggedManifest(await user.store(), reference)).config;
    expect(await client.hasBlob('team/tokens', config.digest)).toBe(true);
    expect(registry.tokenRequests() - before).toBe(1);
    await client.getManifest('team/tokens-other', 'v1');
    await client.getManifest('team/tokens-other', 'v1');
    expect(registry.tokenRequests() - before).toBe(2);
    await client.getManifest('team/tokens', 'v1');
    expect(registry.tokenRequests() - before).toBe(2);

    // A pull (manifest, config, layer: three authenticated requests) asks for a token once.
    const puller = await homeWithCredentials('tokens-pull', registry);
    const beforePull = registry.tokenRequests();
    const pulled = await pullImage({ reference, env: puller.env });
    expect(pulled.blobsCopied).toBe(3);
    const perPull = registry.tokenRequests() - beforePull;
    expect(perPull).toBeGreaterThanOrEqual(1);
    expect(perPull).toBeLessThanOrEqual(2);
    // Pulling again (a new client: a new token for the manifest, nothing else) does not add more.
    const beforeAgain = registry.tokenRequests();
    expect((await pullImage({ reference, env: puller.env })).blobsCopied).toBe(0);
    expect(registry.tokenRequests() - beforeAgain).toBeLessThanOrEqual(perPull);
  });
});

describe.concurrent.each(['open', 'basic', 'token'] as const)('a %s registry', (mode) => {
  it('gets back from it, into another store, exactly the image that was pushed', async () => {
    const registry = registries[mode];
    const pusher = await home(`push-${mode}`);
    if (registry.username && registry.password) {
      const result = await login({ registry: registry.host, username: registry.username, password: registry.password, env: pusher.env });
      expect(result.storedIn).toEqual({ kind: 'file', path: pusher.authFile });
    }
    const reference = `${registry.host}/team/roundtrip:v1`;
    const imported = await importFiles(pusher, reference, FILES);
    const source = await taggedManifest(await pusher.store(), reference);

    const pushed = await pushImage({ source: reference, env: pusher.env });
    expect(pushed).toMatchObject({ reference, digest: imported.digest, blobsCopied: 3, blobsSkipped: 0, registry: registry.host });
    expect(pushed.bytesCopied).toBe(source.bytes.length + source.config.size + imported.layer.size);

    const puller = await homeWithCredentials(`pull-${mode}`, registry);
    const pulled = await pullImage({ reference, env: puller.env });
    expect(pulled).toMatchObject({ reference, digest: imported.digest, blobsCopied: 3, blobsSkipped: 0 });
    expect(pulled.bytesCopied).toBe(pushed.bytesCopied);

    const store = await puller.store();
    const pusherStore = await pusher.store();
    for (const digest of [imported.digest, source.config.digest, imported.layer.digest]) {
      expect(await readStoreBlob(store, digest), digest).toEqual(await readStoreBlob(pusherStore, digest));
    }
    const details = await inspectImage({ reference, env: puller.env });
    expect(details.digest).toBe(imported.digest);
    expect(details.layers).toBe(1);
    expect(details.layerDescriptors).toEqual([imported.layer]);
    expect(details.layerDescriptors[0]?.size).toBe((await readFile(store.blobPath(imported.layer.digest))).length);
    expect(details.size).toBe(source.bytes.length + source.config.size + imported.layer.size);

    // The second pull finds everything in the store and transfers nothing.
    const again = await pullImage({ reference, env: puller.env });
    expect(again).toMatchObject({ digest: imported.digest, blobsCopied: 0, bytesCopied: 0 });
    expect(await openUploads(registry, 'team/roundtrip')).toEqual([]);
  });
});

describe.concurrent.each(['basic', 'token'] as const)('a %s registry, to a user without the right credentials', (mode) => {
  it('refuses a pull without credentials, says to log in, and never shows the password', async () => {
    const registry = registries[mode];
    const pusher = await homeWithCredentials(`denied-push-${mode}`, registry);
    const reference = `${registry.host}/team/private:v1`;
    await importFiles(pusher, reference, { 'secret.txt': 'not for anonymous eyes\n' });
    await pushImage({ source: reference, env: pusher.env });

    const stranger = await home(`denied-${mode}`);
    const error = await rejection(pullImage({ reference, env: stranger.env }));
    expect(error.exitCode).toBe(4);
    expect(error.code).toBe('UNAUTHORIZED');
    expect(error.message).toContain(registry.host);
    expect(error.suggestions).toContain(`run \`cs login ${registry.host}\``);
    for (const secret of secretForms(registry.username ?? '', registry.password ?? '')) expect(errorText(error)).not.toContain(secret);
    expect(await (await stranger.store()).resolveTag(reference)).toBeUndefined();
  });

  it('refuses a login with a wrong password and stores nothing', async () => {
    const registry = registries[mode];
    const user = await home(`bad-login-${mode}`);
    const wrong = `wrong-${randomBytes(6).toString('hex')}`;
    const error = await rejection(login({ registry: registry.host, username: registry.username ?? '', password: wrong, env: user.env }));
    expect(error.exitCode).toBe(4);
    expect(error.message).toContain(registry.host);
    expect(error.message).toMatch(/authentication/);
    for (const secret of secretForms(registry.username ?? '', wrong)) expect(errorText(error)).not.toContain(secret);
    const auth = await readFile(user.authFile, 'utf8').catch(() => '{}');
    expect((JSON.parse(auth) as { auths?: Record<string, unknown> }).auths?.[registry.host]).toBeUndefined();
  });
});

describe.concurrent('a token registry, with a wrong password', () => {
  it('names the registry when the token service refuses a wrong password, without showing it', async () => {
    const registry = registries.token;
    const user = await home('token-wrong');
    const wrong = `wrong-${randomBytes(6).toString('hex')}`;
    await saveCredential(registry.host, { username: registry.username ?? '', password: wrong }, { env: user.env });
    const error = await rejection(pullImage({ reference: `${registry.host}/team/roundtrip:v1`, env: user.env }));
    expect(error.exitCode).toBe(4);
    expect(error.code).toBe('UNAUTHORIZED');
    expect(error.message).toContain(`authentication to ${registry.host} failed`);
    expect(error.suggestions).toContain(`run \`cs login ${registry.host}\``);
    for (const secret of secretForms(registry.username ?? '', wrong)) expect(errorText(error)).not.toContain(secret);
  });
});

describe.concurrent.each(['open', 'token'] as const)('cross-repository mounts on a %s registry', (mode) => {
  it('mounts the blobs of an image pushed to one repository into another instead of uploading them', async () => {
    const registry = registries[mode];
    const user = await homeWithCredentials(`mount-${mode}`, registry);
    const from = `${registry.host}/mount/a:v1`;
    const imported = await importFiles(user, from, { 'big.bin': randomBytes(32 * 1024) });
    const config = (await taggedManifest(await user.store(), from)).config;
    await pushImage({ source: from, env: user.env });
    expect(await blobStatus(registry, 'mount/b', imported.layer.digest)).toBe(404);

    const events: CopyEvent[] = [];
    const pushed = await pushImage({ source: from, destination: `${registry.host}/mount/b:v1`, env: user.env, onEvent: (e) => events.push(e) });
    expect(pushed.blobsSkipped).toBe(2);
    expect(pushed.blobsCopied).toBe(1); // the manifest
    expect(pushed.bytesCopied).toBeLessThan(imported.layer.size);
    const mounted = events.filter((e) => e.kind === 'skip' && e.reason === 'mounted').map((e) => e.descriptor.digest);
    expect(mounted.sort()).toEqual([config.digest, imported.layer.digest].sort());
    expect(events.some((e) => e.kind === 'start' && e.descriptor.digest === imported.layer.digest)).toBe(false);
    expect(await blobStatus(registry, 'mount/b', imported.layer.digest)).toBe(200);
    expect(await blobStatus(registry, 'mount/b', config.digest)).toBe(200);
    expect((await manifestHead(registry, 'mount/b', 'v1')).digest).toBe(imported.digest);
  });

  it('uploads the blobs when the repository to mount from does not have them', async () => {
    const registry = registries[mode];
    const user = await homeWithCredentials(`nomount-${mode}`, registry);
    // Named after a repository of the registry, but never pushed there.
    const from = `${registry.host}/mount/never-pushed:v1`;
    const imported = await importFiles(user, from, { 'file.txt': 'uploaded, not mounted\n' });
    const events: CopyEvent[] = [];
    const pushed = await pushImage({ source: from, destination: `${registry.host}/mount/fallback:v1`, env: user.env, onEvent: (e) => events.push(e) });
    expect(pushed).toMatchObject({ blobsCopied: 3, blobsSkipped: 0 });
    expect(events.filter((e) => e.kind === 'skip')).toEqual([]);
    expect(await blobStatus(registry, 'mount/fallback', imported.layer.digest)).toBe(200);
    expect(await blobStatus(registry, 'mount/never-pushed', imported.layer.digest)).toBe(404);
    expect((await manifestHead(registry, 'mount/fallback', 'v1')).digest).toBe(imported.digest);
    // The upload goes through the session the refused mount opened: none is left behind.
    expect(await openUploads(registry, 'mount/fallback')).toEqual([]);
  });
});

describe.concurrent('uploads in chunks', () => {
  it('pushes a 50 KB layer in 1 KiB chunks to a fresh registry and pulls it back byte for byte', async () => {
    const registry = registries.fresh;
    const user = await home('chunked');
    const reference = `${registry.host}/chunked/random:v1`;
    const payload = randomBytes(50 * 1024);
    const imported = await importFiles(user, reference, { 'random.bin': payload });
    expect(imported.layer.size).toBeGreaterThan(50 * 1024); // random bytes do not compress

    const progress: number[] = [];
    const pushed = await pushImage({
      source: reference,
      env: user.env,
      chunkSize: 1024,
      onEvent: (e) => {
        if (e.kind === 'progress' && e.descriptor.digest === imported.layer.digest) progress.push(e.bytes);
      },
    });
    expect(pushed).toMatchObject({ blobsCopied: 3, blobsSkipped: 0 });
    // One report per chunk: the upload really went 1 KiB at a time.
    expect(progress).toHaveLength(Math.ceil(imported.layer.size / 1024));
    expect(progress.at(-1)).toBe(imported.layer.size);

    const puller = await home('chunked-pull');
    const pulled = await pullImage({ reference, env: puller.env });
    expect(pulled.digest).toBe(imported.digest);
    expect(await readStoreBlob(await puller.store(), imported.layer.digest)).toEqual(await readStoreBlob(await user.store(), imported.layer.digest));
  });
});

describe.concurrent('tags', () => {
  it('lists every tag pushed and moves a tag when it is pushed again', async () => {
    const registry = registries.open;
    const user = await home('tags');
    const one = await importFiles(user, `${registry.host}/tagged/app:one`, { 'version': '1\n' });
    const two = await importFiles(user, `${registry.host}/tagged/app:two`, { 'version': '2\n' });
    expect(one.digest).not.toBe(two.digest);
    await pushImage({ source: `${registry.host}/tagged/app:one`, env: user.env });
    await pushImage({ source: `${registry.host}/tagged/app:two`, env: user.env });

    const list = (await (await registryFetch(registry, '/v2/tagged/app/tags/list')).json()) as { name: string; tags: string[] };
    expect(list.name).toBe('tagged/app');
    expect([...list.tags].sort()).toEqual(['one', 'two']);
    expect((await manifestHead(registry, 'tagged/app', 'one')).digest).toBe(one.digest);
    expect((await manifestHead(registry, 'tagged/app', 'two')).digest).toBe(two.digest);

    const moved = await pushImage({ source: `${registry.host}/tagged/app:two`, destination: `${registry.host}/tagged/app:one`, env: user.env });
    expect(moved).toMatchObject({ reference: `${registry.host}/tagged/app:one`, digest: two.digest, blobsCopied: 0, bytesCopied: 0 });
    expect((await manifestHead(registry, 'tagged/app', 'one')).digest).toBe(two.digest);
    const puller = await home('tags-pull');
    expect((await pullImage({ reference: `${registry.host}/tagged/app:one`, env: puller.env })).digest).toBe(two.digest);
  });
});

describe.concurrent('multi-platform images', () => {
  it('pushes every platform of an index and pulls only the one asked for', async () => {
    const registry = registries.open;
    const user = await home('multi');
    const reference = `${registry.host}/multi/app:v1`;
    const image = await storeMultiPlatform(await user.store(), reference);
    const [amd64, arm64] = image.images;
    if (!amd64 || !arm64) throw new Error('two platforms expected');

    const pushed = await pushImage({ source: reference, env: user.env });
    expect(pushed.digest).toBe(image.index.digest);
    expect(pushed.blobsCopied).toBe(7); // index, 2 manifests, 2 configs, 2 layers
    expect((await manifestHead(registry, 'multi/app', 'v1')).digest).toBe(image.index.digest);
    for (const platform of image.images) {
      expect((await manifestHead(registry, 'multi/app', platform.manifest.digest)).status).toBe(200);
      expect(await blobStatus(registry, 'multi/app', platform.layer.digest)).toBe(200);
    }

    const puller = await home('multi-pull');
    const pulled = await pullImage({ reference, env: puller.env, platform: { os: 'linux', architecture: 'arm64' } });
    expect(pulled.digest).toBe(arm64.manifest.digest);
    expect(pulled.blobsCopied).toBe(3);
    const store = await puller.store();
    expect(await store.blobSize(arm64.layer.digest)).toBe(arm64.layer.size);
    expect(await store.blobSize(amd64.layer.digest)).toBeUndefined();
    expect(await store.blobSize(amd64.manifest.digest)).toBeUndefined();
    const details = await inspectImage({ reference, env: puller.env });
    expect(details).toMatchObject({ digest: arm64.manifest.digest, platform: 'linux/arm64/v8', layers: 1 });

    const error = await rejection(pullImage({ reference, env: puller.env, platform: { os: 'linux', architecture: 's390x' } }));
    expect(error.exitCode).toBe(4);
    expect(error.code).toBe('NO_PLATFORM');
    expect(error.message).toContain('linux/s390x');
    expect(error.message).toContain('linux/amd64');
    expect(error.message).toContain('linux/arm64/v8');
  });

  it('copies the whole index with copyGraph when no platform is chosen', async () => {
    const registry = registries.open;
    const user = await home('multi-all');
    const reference = `${registry.host}/multi/all:v1`;
    const image = await storeMultiPlatform(await user.store(), reference);
    await pushImage({ source: reference, env: user.env });

    const puller = await home('multi-all-pull');
    const store = await puller.store();
    const result = await copyGraph({
      from: new RepositoryTarget(new RegistryClient({ registry: registry.host }), 'multi/all'),
      to: new StoreTarget(store),
      reference: 'v1',
      tagAs: reference,
    });
    expect(result.descriptor.digest).toBe(image.index.digest);
    expect(result.blobsCopied).toBe(7);
    for (const platform of image.images) expect(await store.blobSize(platform.layer.digest)).toBe(platform.layer.size);
    expect((await store.resolveTag(reference))?.digest).toBe(image.index.digest);
    expect((await inspectImage({ reference, env: puller.env })).manifest).toMatchObject({ manifests: image.images.map((i) => ({ digest: i.manifest.digest, platform: i.platform })) });
  });
});

describe.concurrent('what is already there', () => {
  it('does not upload again a blob the repository has, whatever its media type mentions', async () => {
    // OPA bundles (and other OCI artifacts) have layers whose media type contains "manifest".
    const registry = registries.open;
    const user = await home('artifact');
    const store = await user.store();
    const shared = await store.putBytes(Buffer.from('{"roots":["policy"]}\n'), 'application/vnd.cncf.openpolicyagent.manifest.layer.v1+json');
    const artifact = async (tag: string): Promise<string> => {
      const policy = await store.putBytes(Buffer.from(`package policy\nversion := "${tag}"\n`), 'application/vnd.cncf.openpolicyagent.policy.layer.v1+rego');
      const config = await store.putBytes(Buffer.from(`{"version":"${tag}"}`), MediaType.ociConfig);
      const manifest = await store.putBytes(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociManifest, config, layers: [shared, policy] })), MediaType.ociManifest);
      const name = `${registry.host}/opa/bundle:${tag}`;
      await store.tag(name, manifest);
      return name;
    };
    const first = await artifact('v1');
    const second = await artifact('v2');
    expect((await pushImage({ source: first, env: user.env })).blobsCopied).toBe(4);

    const events: CopyEvent[] = [];
    const pushed = await pushImage({ source: second, env: user.env, onEvent: (e) => events.push(e) });
    expect(events.filter((e) => e.kind === 'skip').map((e) => e.descriptor.digest)).toEqual([shared.digest]);
    expect(pushed).toMatchObject({ blobsCopied: 3, blobsSkipped: 1 });
    expect(await blobStatus(registry, 'opa/bundle', shared.digest)).toBe(200);
  });

  it('fetches again a layer that is gone from the local store when the image is pulled again', async () => {
    const registry = registries.open;
    const pusher = await home('repair-push');
    const reference = `${registry.host}/repair/app:v1`;
    const imported = await importFiles(pusher, reference, { 'data.bin': randomBytes(8192) });
    await pushImage({ source: reference, env: pusher.env });

    const user = await home('repair');
    await pullImage({ reference, env: user.env });
    const store = await user.store();
    // The layer is lost (deleted by hand to free space, a disk problem...) but the manifest is still there.
    await rm(store.blobPath(imported.layer.digest));
    const again = await pullImage({ reference, env: user.env });
    expect(again).toMatchObject({ digest: imported.digest, blobsCopied: 1, bytesCopied: imported.layer.size });
    expect(await readStoreBlob(store, imported.layer.digest)).toEqual(await readStoreBlob(await pusher.store(), imported.layer.digest));
  });

  // A stored manifest whose bytes rotted is reported once as CORRUPT_BLOB and removed from the
  // store, so following the hint (pull again, or rm then pull) fetches it anew.
  it('repairs a corrupt manifest by following the hint of the error', async () => {
    const registry = registries.open;
    const pusher = await home('corrupt-push');
    const reference = `${registry.host}/corrupt/app:v1`;
    const imported = await importFiles(pusher, reference, { 'file.txt': 'intact\n' });
    await pushImage({ source: reference, env: pusher.env });

    const user = await home('corrupt');
    await pullImage({ reference, env: user.env });
    const store = await user.store();
    const path = store.blobPath(imported.digest);
    const bytes = await readFile(path);
    bytes[bytes.length - 2] = bytes[bytes.length - 2] === 0x20 ? 0x0a : 0x20; // same size, different bytes
    await writeFile(path, bytes);

    const error = await inspectImage({ reference, env: user.env }).then(() => undefined, (e: unknown) => e as InputError);
    expect(error?.code).toBe('CORRUPT_BLOB');
    const hint = `${error?.message ?? ''} ${(error?.suggestions ?? []).join(' ')}`;
    expect(hint).toContain('cs image rm');
    await removeImages({ references: [reference], env: user.env });
    if (hint.includes('cs image prune')) await pruneImages({ env: user.env });
    await pullImage({ reference, env: user.env });
    expect((await inspectImage({ reference, env: user.env })).digest).toBe(imported.digest);
  });
});
