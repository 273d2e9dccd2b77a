/**
 * The local content store under real conditions: real files, real
 * processes. Several `cs` processes share one store (CS_HOME) and one may be
 * killed at any moment; the store must stay consistent: index.json parses,
 * each tag appears once and points at a complete image, every blob's bytes
 * hash to its name, and nothing half-written is ever visible.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { pullImage, pushImage } from '../../src/oci/image.js';
import { MediaType } from '../../src/oci/media-types.js';
import { ContentStore, REF_NAME } from '../../src/oci/store.js';
import { importDirectory } from '../../src/snapshot/import-dir.js';
import { InputError, RegistryError } from '../../src/util/errors.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { makeImage, serveSlowly, sha256, startHostileRegistry, type HostileRegistry } from './hostile-support/server.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin', 'run.cjs');
const DIST_STORE = join(ROOT, 'dist', 'oci', 'store.js');

beforeAll(async () => {
  // The children run the built CLI (dist/), as a user would.
  if (!existsSync(join(ROOT, 'dist', 'commands', 'image', 'pull.js')) || !existsSync(DIST_STORE)) {
    await execa('npm', ['run', 'build'], { cwd: ROOT, stdin: 'ignore' });
  }
}, 120_000);

let tmp: string;
beforeEach(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'cs-store-'));
});
afterEach(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** Library options that keep everything inside `home`. */
function libEnv(home: string): Record<string, string | undefined> {
  return {
    ...process.env,
    CS_HOME: home,
    DOCKER_CONFIG: join(home, 'docker'),
    REGISTRY_AUTH_FILE: '',
    CS_CONFIG: join(home, 'none.yaml'),
    XDG_CONFIG_HOME: join(home, 'xdg'),
    XDG_RUNTIME_DIR: '',
  };
}

/**
 * A child's environment: the same, without what vitest adds (with
 * NODE_ENV=test oclif would load src/ through a TypeScript loader instead of
 * dist/).
 */
function childEnv(home: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(libEnv(home))) {
    if (value === undefined || /^(NODE_ENV|NODE_OPTIONS|VITEST.*|TSX.*|CS_DEBUG|FORCE_COLOR|XDG_RUNTIME_DIR)$/.test(key)) continue;
    out[key] = value;
  }
  out['NO_COLOR'] = '1';
  return out;
}

function cs(home: string, args: readonly string[]) {
  return execa(process.execPath, [BIN, ...args], { cwd: ROOT, env: childEnv(home), extendEnv: false, stdin: 'ignore', reject: false, timeout: 60_000 });
}

const storeOf = (home: string) => join(home, 'store');

/** The store's invariants; returns its tags and blob names. */
async function checkStore(root: string): Promise<{ tags: string[]; blobs: string[]; ingest: string[] }> {
  const index = JSON.parse(await readFile(join(root, 'index.json'), 'utf8')) as { schemaVersion: number; manifests: { digest: string; annotations?: Record<string, string> }[] };
  expect(index.schemaVersion).toBe(2);
  const tags = index.manifests.map((m) => m.annotations?.[REF_NAME] ?? '');
  expect(new Set(tags).size).toBe(tags.length);
  const blobs = await readdir(join(root, 'blobs', 'sha256'));
  for (const hex of blobs) expect(sha256(await readFile(join(root, 'blobs', 'sha256', hex))), `blob ${hex}`).toBe(`sha256:${hex}`);
  // Every tag points at a stored manifest.
  for (const m of index.manifests) expect(blobs).toContain(m.digest.slice('sha256:'.length));
  return { tags, blobs, ingest: await readdir(join(root, 'ingest')) };
}

describe('ingest verifies before anything becomes visible', () => {
  const good = Buffer.from('the right bytes');
  const expected = { digest: sha256(good), size: good.length };

  async function expectNothingKept(store: ContentStore): Promise<void> {
    expect(await readdir(join(store.root, 'blobs', 'sha256'))).toEqual([]);
    expect(await readdir(join(store.root, 'ingest'))).toEqual([]);
    expect(await store.has(expected)).toBe(false);
  }

  it.each([
    ['other bytes of the same size', Buffer.from('the wrong bytes'), 'DIGEST_MISMATCH', /content does not match its digest/],
    ['fewer bytes', Buffer.from('the right'), 'SIZE_MISMATCH', /received 9 bytes, expected 15/],
    // Before the fix in store.ts this was a plain Error (an "internal error" in the CLI).
    ['more bytes', Buffer.from('the right bytes, and more'), 'SIZE_MISMATCH', /received more than the expected 15 bytes/],
  ])('refuses %s and keeps nothing', async (_name, bytes, code, pattern) => {
    const store = await ContentStore.open(tmp);
    const error = await store.ingest(expected, Readable.from([bytes])).then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(RegistryError);
    expect((error as RegistryError).code).toBe(code);
    expect((error as Error).message).toMatch(pattern);
    await expectNothingKept(store);
  });

  it('keeps nothing when the source fails midway', async () => {
    const store = await ContentStore.open(tmp);
    async function* broken() {
      yield good.subarray(0, 5);
      await sleep(5);
      throw new Error('connection reset');
    }
    await expect(store.ingest(expected, broken())).rejects.toThrow('connection reset');
    await expectNothingKept(store);
  });

  it('refuses a digest that could escape the store before touching the disk', async () => {
    const store = await ContentStore.open(tmp);
    await expect(store.ingest({ digest: 'sha256:../../etc/passwd', size: 1 }, Readable.from([Buffer.from('x')]))).rejects.toBeInstanceOf(InputError);
    await expectNothingKept(store);
  });

  it('lets several writers of the same blob all succeed, with one blob kept', async () => {
    const store = await ContentStore.open(tmp);
    const big = randomBytes(2 * 1024 * 1024);
    const descriptor = { digest: sha256(big), size: big.length };
    await Promise.all(Array.from({ length: 5 }, () => store.ingest(descriptor, Readable.from([big.subarray(0, 1_000_000), big.subarray(1_000_000)]))));
    expect(await readdir(join(store.root, 'blobs', 'sha256'))).toEqual([descriptor.digest.slice(7)]);
    expect(await readdir(join(store.root, 'ingest'))).toEqual([]);
    expect((await store.readBlob(descriptor, big.length)).equals(big)).toBe(true);
  });
});

describe('pulls by several processes into one store', () => {
  let registry: TestRegistry;
  let reference: string;

  beforeAll(async () => {
    registry = await startRegistry();
    const publisher = join(tmpdir(), `cs-store-publisher-${process.pid}`);
    const content = join(publisher, 'content');
    await mkdir(join(content, 'sub'), { recursive: true });
    await writeFile(join(content, 'random.bin'), randomBytes(3 * 1024 * 1024));
    await writeFile(join(content, 'sub', 'hello.txt'), 'hello\n');
    reference = `${registry.host}/team/base:v1`;
    await importDirectory({ dir: content, reference, env: libEnv(publisher) });
    await pushImage({ source: reference, env: libEnv(publisher) });
    await rm(publisher, { recursive: true, force: true });
  }, 120_000);

  afterAll(async () => {
    await registry?.stop();
  });

  it('two `cs image pull` processes pulling the same image at once both succeed, and the store is consistent', async () => {
    const [a, b] = await Promise.all([cs(tmp, ['image', 'pull', reference, '--json']), cs(tmp, ['image', 'pull', reference, '--json'])]);
    for (const run of [a, b]) expect(run.exitCode, run.stderr + run.stdout).toBe(0);
    const ra = JSON.parse(a.stdout) as { reference: string; digest: string };
    const rb = JSON.parse(b.stdout) as { reference: string; digest: string };
    expect(ra.digest).toBe(rb.digest);
    expect(ra.reference).toBe(reference);
    const state = await checkStore(storeOf(tmp));
    expect(state.tags.filter((t) => t === reference)).toHaveLength(1);
    expect(state.blobs).toHaveLength(3); // manifest, config, layer
    expect(state.ingest).toEqual([]);
    expect(await readdir(join(storeOf(tmp), 'leases'))).toEqual([]);
  });
});

describe('a pull killed in the middle', () => {
  let server: HostileRegistry;
  beforeAll(async () => {
    server = await startHostileRegistry({ image: makeImage(30 * 1024 * 1024) });
  });
  afterAll(async () => {
    await server.close();
  });

  it('leaves no partial blob and no tag; the next pull succeeds and prune removes the dead writer’s temp file', async () => {
    const layer = server.image.layer;
    const layerHex = layer.digest.slice('sha256:'.length);
    // A slow link for the 30 MB layer (about 2 s), so the kill lands mid-download.
    server.handler = async (_req, res, route) => {
      if (route.kind !== 'blob' || route.digest !== layer.digest) return false;
      await serveSlowly(res, layer.bytes, { chunk: 256 * 1024, pauseMs: 15 });
      return true;
    };
    const reference = `${server.host}/evil/img:v1`;
    const child = cs(tmp, ['image', 'pull', reference, '--json']);
    const ingestDir = join(storeOf(tmp), 'ingest');
    let partial: string | undefined;
    const deadline = Date.now() + 30_000;
    while (!partial && Date.now() < deadline) {
      const names = await readdir(ingestDir).catch(() => [] as string[]);
      for (const name of names.filter((n) => n.startsWith(layerHex))) {
        const size = (await stat(join(ingestDir, name)).catch(() => undefined))?.size ?? 0;
        if (size > 1024 * 1024) partial = name;
      }
      if (!partial) await sleep(10);
    }
    expect(partial, 'the layer download never showed up in ingest/').toBeDefined();
    child.kill('SIGKILL');
    const killed = await child;
    expect(killed.signal).toBe('SIGKILL');

    let state = await checkStore(storeOf(tmp));
    expect(state.tags).toEqual([]);
    expect(state.blobs).not.toContain(layerHex);
    expect(state.ingest).toContain(partial);

    server.handler = undefined; // a good link again
    const result = await pullImage({ reference, env: libEnv(tmp) });
    expect(result.digest).toBe(server.image.manifest.digest);
    state = await checkStore(storeOf(tmp));
    expect(state.tags).toEqual([reference]);
    expect(state.blobs).toContain(layerHex);
    expect(state.ingest).toEqual([partial]); // a pull does not clean up after others

    const prune = await cs(tmp, ['image', 'prune', '--json']);
    expect(prune.exitCode, prune.stderr + prune.stdout).toBe(0);
    expect(JSON.parse(prune.stdout)).toMatchObject({ removedBlobs: 0, keptBlobs: 3 });
    state = await checkStore(storeOf(tmp));
    expect(state.ingest).toEqual([]);
    expect(state.tags).toEqual([reference]);
    expect(await readdir(join(storeOf(tmp), 'leases'))).toEqual([]); // the dead writer's lease went too
  });
});

describe('prune', () => {
  const json = (v: unknown) => Buffer.from(JSON.stringify(v));

  /** A one-layer image stored and (optionally) tagged; returns its blobs' digests. */
  async function putImage(store: ContentStore, name: string | undefined, layerBytes = randomBytes(1000)): Promise<{ manifest: string; config: string; layer: string; descriptor: Awaited<ReturnType<ContentStore['putBytes']>> }> {
    const config = await store.putBytes(json({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, name }), MediaType.ociConfig);
    const layer = await store.putBytes(layerBytes, MediaType.ociLayerGzip);
    const manifest = await store.putBytes(json({ schemaVersion: 2, mediaType: MediaType.ociManifest, config, layers: [layer] }), MediaType.ociManifest);
    if (name) await store.tag(name, manifest);
    return { manifest: manifest.digest, config: config.digest, layer: layer.digest, descriptor: manifest };
  }

  async function age(store: ContentStore, digests: readonly string[], seconds = 600): Promise<void> {
    const then = new Date(Date.now() - seconds * 1000);
    for (const d of digests) await utimes(store.blobPath(d), then, then);
  }

  const present = async (store: ContentStore, digest: string) => (await store.blobSize(digest)) !== undefined;

  it('removes blobs no tag reaches and keeps the ones tags reach, through indexes too', async () => {
    const store = await ContentStore.open(tmp);
    const kept = await putImage(store, 'reg.example/a:1');
    const removed = await putImage(store, 'reg.example/b:1');
    await store.untag(['reg.example/b:1']);
    const loose = await store.putBytes(randomBytes(100), MediaType.ociLayerGzip);
    // A multi-platform image: index → manifest → config and layer.
    const child = await putImage(store, undefined);
    const index = await store.putBytes(json({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [{ ...child.descriptor, platform: { os: 'linux', architecture: 'amd64' } }] }), MediaType.ociIndex);
    await store.tag('reg.example/multi:1', index);

    const result = await store.prune();
    expect(result).toMatchObject({ removedBlobs: 4, keptBlobs: 7 });
    for (const d of [kept.manifest, kept.config, kept.layer, index.digest, child.manifest, child.config, child.layer]) expect(await present(store, d), d).toBe(true);
    for (const d of [removed.manifest, removed.config, removed.layer, loose.digest]) expect(await present(store, d), d).toBe(false);
    const state = await checkStore(store.root);
    expect(state.tags).toEqual(['reg.example/a:1', 'reg.example/multi:1']);
  });

  it('keeps unreferenced blobs written under a live lease until the lease is released', async () => {
    const store = await ContentStore.open(tmp);
    const before = await store.putBytes(randomBytes(100), MediaType.ociLayerGzip);
    await age(store, [before.digest]);
    const lease = await store.lease();
    const during = await store.putBytes(randomBytes(100), MediaType.ociLayerGzip);
    expect(await store.prune()).toMatchObject({ removedBlobs: 1, keptBlobs: 1 });
    expect(await present(store, before.digest)).toBe(false);
    expect(await present(store, during.digest)).toBe(true);
    await lease.release();
    expect(await store.prune()).toMatchObject({ removedBlobs: 1, keptBlobs: 0 });
    expect(await present(store, during.digest)).toBe(false);
  });

  it('ignores (and removes) the lease of a dead process', async () => {
    const store = await ContentStore.open(tmp);
    const dead = execa(process.execPath, ['-e', '']);
    await dead;
    await writeFile(join(tmp, 'leases', `${dead.pid}-abc`), JSON.stringify({ pid: dead.pid, since: Date.now() - 60_000 }));
    const blob = await store.putBytes(randomBytes(100), MediaType.ociLayerGzip);
    expect(await store.prune()).toMatchObject({ removedBlobs: 1 });
    expect(await present(store, blob.digest)).toBe(false);
    expect(await readdir(join(tmp, 'leases'))).toEqual([]);
  });

  // Before the fixes in store.ts, an untagged image whose blobs were old
  // (say after `cs image rm`) was deleted by a prune running while a pull
  // of that same image was between finding its manifest present (and so
  // skipping it and its children) and tagging it.
  it('keeps an old manifest, and what it points at, that a writer under a lease found present', async () => {
    const store = await ContentStore.open(tmp);
    const image = await putImage(store, undefined);
    await age(store, [image.manifest, image.config, image.layer]);
    const lease = await store.lease();
    expect(await store.has(image.descriptor)).toBe(true); // what a pull does before skipping the manifest
    await store.prune();
    for (const d of [image.manifest, image.config, image.layer]) expect(await present(store, d), d).toBe(true);
    await store.tag('reg.example/again:1', image.descriptor);
    await lease.release();
    await store.prune();
    expect((await checkStore(store.root)).blobs.sort()).toEqual([image.manifest, image.config, image.layer].map((d) => d.slice(7)).sort());
  });

  it('refuses to tag a manifest that a prune removed', async () => {
    const store = await ContentStore.open(tmp);
    const image = await putImage(store, undefined);
    await store.prune();
    await expect(store.tag('reg.example/gone:1', image.descriptor)).rejects.toThrow(/cannot tag reg\.example\/gone:1: sha256:[0-9a-f]{64} is not in the store/);
    expect((await checkStore(store.root)).tags).toEqual([]);
  });
});

describe('index.json under concurrent writers', () => {
  it('keeps every tag from 20 parallel tag() calls in each of 2 processes', async () => {
    const store = await ContentStore.open(tmp);
    const manifest = await store.putBytes(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociManifest, config: { mediaType: MediaType.ociConfig, digest: sha256('c'), size: 1 }, layers: [] })), MediaType.ociManifest);
    const script = `
      import { ContentStore } from ${JSON.stringify(DIST_STORE)};
      const [root, prefix, digest, size] = process.argv.slice(1);
      const store = await ContentStore.open(root);
      const descriptor = { mediaType: ${JSON.stringify(MediaType.ociManifest)}, digest, size: Number(size) };
      await Promise.all(Array.from({ length: 20 }, (_, i) => store.tag(\`reg.example/\${prefix}:\${i}\`, descriptor)));
    `;
    const run = (prefix: string) =>
      execa(process.execPath, ['--input-type=module', '-e', script, tmp, prefix, manifest.digest, String(manifest.size)], { env: childEnv(tmp), extendEnv: false, stdin: 'ignore', reject: false, timeout: 60_000 });
    const results = await Promise.all([run('p1'), run('p2'), store.tag('reg.example/parent:0', manifest)]);
    for (const r of results.slice(0, 2) as Awaited<ReturnType<typeof run>>[]) expect(r.exitCode, r.stderr).toBe(0);
    const state = await checkStore(tmp);
    const expected = ['reg.example/parent:0', ...['p1', 'p2'].flatMap((p) => Array.from({ length: 20 }, (_, i) => `reg.example/${p}:${i}`))];
    expect(state.tags.sort()).toEqual(expected.sort());
    expect((await readdir(tmp)).filter((n) => n.startsWith('.tmp-') || n.endsWith('.lock'))).toEqual([]);
  });
});
