/**
 * cs and the rest of the OCI world agree on images, byte for byte: an image
 * built by umoci and pushed by skopeo is pulled by cs with every digest
 * intact, and an image imported and pushed by cs is read back by skopeo
 * (same manifest bytes, same blobs) and unpacked by umoci into the files
 * that were imported.
 */
import { chmod, link, lstat, mkdir, readFile, readlink, rm, stat, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inspectImage, pullImage, pushImage } from '../../src/oci/image.js';
import { MediaType } from '../../src/oci/media-types.js';
import { importDirectory } from '../../src/snapshot/import-dir.js';
import type { TestRegistry } from '../helpers/registry.js';
import { makeHome, sha256, writeTree, type TestHome } from './support/home.js';
import { readStoreBlob, taggedManifest } from './support/images.js';
import { startRegistries, stopRegistries } from './support/registries.js';
import { layoutBlob, layoutDigests, readLayout, tool, type LayoutImage } from './support/tools.js';

let registry: TestRegistry;
let scratch: TestHome;
/** The image umoci built, as its layout records it. */
let umociImage: LayoutImage;
let umociLayout: string;

/** Two layers: the second changes a file, adds one and deletes one. */
async function buildWithUmoci(root: string): Promise<string> {
  const layout = join(root, 'umoci-layout');
  const image = `${layout}:app`;
  await tool('umoci', ['init', '--layout', layout], root);
  await tool('umoci', ['new', '--image', image], root);
  const first = join(root, 'bundle-1');
  await tool('umoci', ['unpack', '--rootless', '--image', image, first], root);
  await writeTree(join(first, 'rootfs'), {
    'etc/greeting': 'hello from layer one\n',
    'etc/obsolete': 'deleted in layer two\n',
    'opt/app/data.txt': 'data v1\n',
  });
  await tool('umoci', ['repack', '--image', image, first], root);
  const second = join(root, 'bundle-2');
  await tool('umoci', ['unpack', '--rootless', '--image', image, second], root);
  await writeTree(join(second, 'rootfs'), { 'etc/greeting': 'hello from layer two\n', 'opt/app/extra.txt': 'added in layer two\n' });
  await rm(join(second, 'rootfs', 'etc', 'obsolete'));
  await tool('umoci', ['repack', '--image', image, second], root);
  return layout;
}

beforeAll(async () => {
  scratch = await makeHome('interop');
  const [started, layout] = await Promise.all([startRegistries({ open: 'open' }), buildWithUmoci(scratch.root)]);
  registry = started.open;
  umociLayout = layout;
  umociImage = await readLayout(layout, 'app');
});

afterAll(async () => {
  await stopRegistries(registry ? { registry } : undefined);
  await scratch?.cleanup();
});

describe('an image built by umoci and pushed by skopeo', () => {
  it('has two layers in its layout', () => {
    expect(umociImage.layers).toHaveLength(2);
    expect(umociImage.layers.every((l) => l.mediaType === MediaType.ociLayerGzip)).toBe(true);
  });

  it('is pulled by cs with the same manifest, config and layers, digest for digest', async () => {
    const reference = `${registry.host}/umoci/app:v1`;
    await tool('skopeo', ['copy', '--dest-tls-verify=false', `oci:${umociLayout}:app`, `docker://${reference}`], scratch.root);

    const user = await makeHome('interop-pull');
    try {
      const pulled = await pullImage({ reference, env: user.env });
      expect(pulled.digest).toBe(umociImage.manifestDigest);
      expect(pulled.blobsCopied).toBe(4);
      const store = await user.store();
      expect(await readStoreBlob(store, pulled.digest)).toEqual(umociImage.manifest);
      const stored = await taggedManifest(store, reference);
      expect(stored.config.digest).toBe(umociImage.config.digest);
      expect(stored.layers.map((l) => l.digest)).toEqual(umociImage.layers.map((l) => l.digest));
      for (const digest of [umociImage.config.digest, ...umociImage.layers.map((l) => l.digest)]) {
        expect(await readStoreBlob(store, digest), digest).toEqual(await layoutBlob(umociLayout, digest));
      }
      const details = await inspectImage({ reference, env: user.env });
      expect(details.layers).toBe(2);
      expect(details.layerDescriptors.map((l) => l.size)).toEqual(umociImage.layers.map((l) => l.size));
    } finally {
      await user.cleanup();
    }
  });

  it('is pulled by cs when skopeo converted it to a Docker schema 2 manifest', async () => {
    const reference = `${registry.host}/umoci/app:docker`;
    await tool('skopeo', ['copy', '--format', 'v2s2', '--dest-tls-verify=false', `oci:${umociLayout}:app`, `docker://${reference}`], scratch.root);
    const raw = (await tool('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reference}`], scratch.root)).stdout;
    expect(JSON.parse(raw.toString('utf8'))).toMatchObject({ mediaType: MediaType.dockerManifest });

    const user = await makeHome('interop-docker');
    try {
      const pulled = await pullImage({ reference, env: user.env });
      expect(pulled.digest).toBe(sha256(raw));
      expect(pulled.mediaType).toBe(MediaType.dockerManifest);
      const store = await user.store();
      expect(await readStoreBlob(store, pulled.digest)).toEqual(raw);
      // The layers are the same gzip streams under their Docker media type.
      const stored = await taggedManifest(store, reference);
      expect(stored.layers.map((l) => l.digest)).toEqual(umociImage.layers.map((l) => l.digest));
      expect(stored.layers.every((l) => l.mediaType === MediaType.dockerLayerGzip)).toBe(true);
      for (const layer of umociImage.layers) expect(await readStoreBlob(store, layer.digest)).toEqual(await layoutBlob(umociLayout, layer.digest));
      expect((await inspectImage({ reference, env: user.env })).layers).toBe(2);
    } finally {
      await user.cleanup();
    }
  });
});

describe('an image imported and pushed by cs', () => {
  it('is read back by skopeo unchanged and unpacked by umoci into the imported files', async () => {
    const user = await makeHome('interop-cs');
    try {
      const reference = `${registry.host}/cs/app:v1`;
      const files = {
        'etc/hostname': 'built-by-cs\n',
        'usr/local/bin/hello': '#!/bin/sh\necho hello\n',
        'srv/nested/deep/file.txt': 'deep contents\n'.repeat(100),
        // Longer than a ustar header holds, and not ASCII.
        [`srv/${'d'.repeat(120)}/${'f'.repeat(120)}.txt`]: 'a long path\n',
        'srv/ünïcödé €.txt': 'unicode name\n',
      };
      const dir = join(user.root, 'rootfs');
      await writeTree(dir, files);
      await chmod(join(dir, 'usr/local/bin/hello'), 0o755);
      await symlink('../etc/hostname', join(dir, 'srv', 'hostname-link'));
      await link(join(dir, 'etc/hostname'), join(dir, 'etc/hostname.hard'));
      await mkdir(join(dir, 'var/empty'), { recursive: true });
      const result = await importDirectory({ dir, reference, env: user.env });
      const store = await user.store();
      const local = await taggedManifest(store, reference);
      await pushImage({ source: reference, env: user.env });

      const raw = (await tool('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reference}`], user.root)).stdout;
      expect(raw).toEqual(local.bytes);
      expect(sha256(raw)).toBe(result.digest);

      const copy = join(user.root, 'skopeo-layout');
      await tool('skopeo', ['copy', '--src-tls-verify=false', `docker://${reference}`, `oci:${copy}:v1`], user.root);
      const copied = await readLayout(copy, 'v1');
      expect(copied.manifestDigest).toBe(result.digest);
      expect(await layoutDigests(copy)).toEqual([result.digest, local.config.digest, result.layer.digest].sort());
      for (const digest of await layoutDigests(copy)) expect(await layoutBlob(copy, digest), digest).toEqual(await readStoreBlob(store, digest));

      const bundle = join(user.root, 'unpacked');
      await tool('umoci', ['unpack', '--rootless', '--image', `${copy}:v1`, bundle], user.root);
      const rootfs = join(bundle, 'rootfs');
      for (const [path, contents] of Object.entries(files)) expect(await readFile(join(rootfs, path), 'utf8'), path).toBe(contents);
      expect((await stat(join(rootfs, 'usr/local/bin/hello'))).mode & 0o777).toBe(0o755);
      expect((await lstat(join(rootfs, 'srv/hostname-link'))).isSymbolicLink()).toBe(true);
      expect(await readlink(join(rootfs, 'srv/hostname-link'))).toBe('../etc/hostname');
      expect((await stat(join(rootfs, 'etc/hostname.hard'))).ino).toBe((await stat(join(rootfs, 'etc/hostname'))).ino);
      expect((await stat(join(rootfs, 'var/empty'))).isDirectory()).toBe(true);
    } finally {
      await user.cleanup();
    }
  });
});

describe('the local content store', () => {
  it('is an OCI image layout that umoci and skopeo read as it is', async () => {
    const user = await makeHome('interop-store');
    try {
      const reference = `${registry.host}/store/app:v1`;
      const dir = join(user.root, 'rootfs');
      await writeTree(dir, { 'etc/os-release': 'ID=cs\n' });
      const result = await importDirectory({ dir, reference, env: user.env });
      const store = await user.store();
      expect((await tool('umoci', ['ls', '--layout', store.root], user.root)).stdout.toString('utf8').split('\n')).toContain(reference);
      const raw = (await tool('skopeo', ['inspect', '--raw', `oci:${store.root}:${reference}`], user.root)).stdout;
      expect(sha256(raw)).toBe(result.digest);
      const bundle = join(user.root, 'bundle');
      await tool('umoci', ['unpack', '--rootless', '--image', `${store.root}:${reference}`, bundle], user.root);
      expect(await readFile(join(bundle, 'rootfs', 'etc/os-release'), 'utf8')).toBe('ID=cs\n');
    } finally {
      await user.cleanup();
    }
  });
});
