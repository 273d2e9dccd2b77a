/**
 * Pulls from a hostile registry. A real registry cannot be made to misbehave,
 * so a small node:http server written for these tests
 * (hostile-support/server.ts) stands in for a broken or malicious one: wrong
 * bytes, lying headers, oversized or malformed manifests, redirects to other
 * hosts, dropped connections. For each, the pull must fail with a clear
 * RegistryError (exit code 4) and leave the local store as it was: no tag, no
 * blob holding the bad bytes, nothing left in ingest/.
 *
 * Rules that only apply to registries off loopback (private token realms,
 * scheme downgrades) cannot be exercised end to end here; they are tested
 * against the client with its transport stubbed, so no request leaves the process.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { RegistryClient } from '../../src/oci/client.js';
import type { HttpResponse, Transport } from '../../src/oci/http.js';
import { saveCredential } from '../../src/oci/credentials.js';
import { pullImage } from '../../src/oci/image.js';
import { RegistryError } from '../../src/util/errors.js';
import {
  makeImage,
  manifestJson,
  OCI_MANIFEST,
  rawResponse,
  serveSlowly,
  sha256,
  startHostileRegistry,
  type HostileRegistry,
} from './hostile-support/server.js';

const REF_NAME = 'org.opencontainers.image.ref.name';

let tmp: string;
let env: Record<string, string | undefined>;
let server: HostileRegistry;
let ref: string;
const extraServers: HostileRegistry[] = [];
/** The test image's layer size; the hostile pulls run once per transport (see the describe.each below). */
let layerSize = 64 * 1024;

beforeEach(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'cs-hostile-'));
  await mkdir(join(tmp, 'docker'));
  env = {
    ...process.env,
    CS_HOME: tmp,
    DOCKER_CONFIG: join(tmp, 'docker'),
    REGISTRY_AUTH_FILE: '',
    CS_CONFIG: join(tmp, 'none.yaml'),
    XDG_CONFIG_HOME: join(tmp, 'xdg'),
    XDG_RUNTIME_DIR: '',
  };
  server = await startHostileRegistry({ image: makeImage(layerSize) });
  ref = `${server.host}/evil/img:v1`;
});

afterEach(async () => {
  await server.close();
  await Promise.all(extraServers.splice(0).map((s) => s.close()));
  await rm(tmp, { recursive: true, force: true });
});

const storeDir = () => join(tmp, 'store');

async function storeState(): Promise<{ tags: string[]; blobs: string[]; ingest: string[] }> {
  const index = JSON.parse(await readFile(join(storeDir(), 'index.json'), 'utf8')) as { manifests: { annotations?: Record<string, string> }[] };
  const tags = index.manifests.map((m) => m.annotations?.[REF_NAME] ?? '');
  const blobs = await readdir(join(storeDir(), 'blobs', 'sha256'));
  // Every blob is what its name says.
  for (const hex of blobs) expect(sha256(await readFile(join(storeDir(), 'blobs', 'sha256', hex)))).toBe(`sha256:${hex}`);
  return { tags, blobs, ingest: await readdir(join(storeDir(), 'ingest')) };
}

/** Pull `reference`, expect a RegistryError matching `pattern`, then check the store holds nothing bad. */
async function expectRefused(pattern: RegExp, options: { reference?: string; bad?: readonly Buffer[] } = {}): Promise<RegistryError> {
  const error = await pullImage({ reference: options.reference ?? ref, env }).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(RegistryError);
  const registryError = error as RegistryError;
  expect(registryError.exitCode).toBe(4);
  expect(registryError.message).toMatch(pattern);
  const state = await storeState();
  expect(state.tags.filter((t) => t.includes('evil/img'))).toEqual([]);
  // Only the good config may have made it (it is fetched beside the layer).
  expect(state.blobs.filter((hex) => `sha256:${hex}` !== server.image.config.digest)).toEqual([]);
  for (const bad of options.bad ?? []) expect(state.blobs).not.toContain(sha256(bad).slice('sha256:'.length));
  expect(state.ingest).toEqual([]);
  return registryError;
}

/** Serve `bytes` as the manifest, with `contentType`. */
function serveManifest(bytes: Buffer, contentType = OCI_MANIFEST, headers: Record<string, string | number> = {}): void {
  server.handler = (_req, res, route) => {
    if (route.kind !== 'manifest') return false;
    res.writeHead(200, { 'Content-Type': contentType, 'Content-Length': bytes.length, ...headers });
    res.end(bytes);
    return true;
  };
}

/**
 * Answer layer requests with `respond`, a little after the config was served
 * so the good config has settled (see the copy.ts test at the end: a failed
 * pull does not wait for its sibling transfers).
 */
function onLayer(respond: (res: ServerResponse, range: string | undefined) => void | Promise<void>): void {
  server.handler = async (req, res, route) => {
    if (route.kind !== 'blob' || route.digest !== server.image.layer.digest) return false;
    await sleep(100);
    await respond(res, req.headers.range);
    return true;
  };
}

// A layer of 64 KiB comes through node:http; one of 3 MiB through the lean
// transport (client.ts sends blob bodies of 1 MiB or more there), whose
// HTTP framing is cs's own: every hostile case runs against both.
describe.each([
  ['node:http', 64 * 1024],
  ['the lean transport', 3 * 1024 * 1024],
])('pull from a hostile registry, through %s', (_transport, size) => {
  beforeAll(() => {
    layerSize = size;
  });
  afterAll(() => {
    layerSize = 64 * 1024;
  });

  it('refuses a layer whose bytes do not match its digest', async () => {
    const evil = randomBytes(server.image.layer.bytes.length);
    onLayer((res) => {
      res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': evil.length });
      res.end(evil);
    });
    await expectRefused(/blob sha256:[0-9a-f]{64}: content does not match its digest/, { bad: [evil] });
  });

  it.each([
    ['larger', 100],
    ['smaller', -100],
  ])('refuses a layer whose Content-Length is %s than its descriptor says', async (_name, delta) => {
    const layer = server.image.layer.bytes;
    const body = delta > 0 ? Buffer.concat([layer, randomBytes(delta)]) : layer.subarray(0, layer.length + delta);
    onLayer((res) => rawResponse(res, 200, { 'Content-Type': 'application/octet-stream', 'Content-Length': body.length }, body));
    await expectRefused(new RegExp(`Content-Length is ${body.length}, expected ${layer.length}`), { bad: [body] });
  });

  it('refuses a chunked layer body longer than its descriptor says', async () => {
    const extra = randomBytes(1000);
    onLayer((res) => {
      res.writeHead(200, { 'Content-Type': 'application/octet-stream' }); // no Content-Length: chunked
      res.write(server.image.layer.bytes);
      res.end(extra);
    });
    await expectRefused(/registry sent more than \d+ bytes/, { bad: [Buffer.concat([server.image.layer.bytes, extra])] });
  });

  /** A chunked encoding of `bytes`, cut into pieces of odd sizes, one with a chunk extension. */
  function chunked(bytes: Buffer): Buffer {
    const parts: Buffer[] = [];
    const sizes = [1, 1000, 77_777];
    for (let at = 0, i = 0; at < bytes.length; i++) {
      const piece = bytes.subarray(at, at + (sizes[i % sizes.length] as number));
      at += piece.length;
      parts.push(Buffer.from(`${piece.length.toString(16)}${i === 1 ? ';name=value' : ''}\r\n`, 'latin1'), piece, Buffer.from('\r\n'));
    }
    parts.push(Buffer.from('0\r\n\r\n'));
    return Buffer.concat(parts);
  }

  it('pulls a layer sent chunked in pieces of odd sizes, after an interim 103 response', async () => {
    const layer = server.image.layer.bytes;
    onLayer((res) => {
      const head = 'HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n';
      res.socket?.end(Buffer.concat([Buffer.from(head, 'latin1'), chunked(layer)]));
    });
    const result = await pullImage({ reference: ref, env });
    expect(result.digest).toBe(server.image.manifest.digest);
    expect((await storeState()).blobs).toContain(server.image.layer.digest.slice('sha256:'.length));
  });

  it.each([
    ['a status line that is not HTTP', () => Buffer.from('HTTP/9 200 OK\r\nContent-Length: 5\r\n\r\nhello', 'latin1')],
    ['a response head of 100 KiB', () => Buffer.from(`HTTP/1.1 200 OK\r\nX-Pad: ${'a'.repeat(100 * 1024)}\r\nContent-Length: 5\r\n\r\nhello`, 'latin1')],
    ['a chunk size that is not hexadecimal', () => Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n', 'latin1')],
    ['two different Content-Lengths', () => Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!', 'latin1')],
    ['a chunk longer than its size says', () => Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n', 'latin1')],
  ])('refuses a layer response with %s', async (_name, bytes) => {
    onLayer((res) => void res.socket?.end(bytes()));
    const error = await expectRefused(/blob sha256:[0-9a-f]{64}: /);
    // Framing errors are network errors, retried; a retry that cannot resume (the same bytes again) is refused as such.
    expect(error.code).toMatch(/^(NETWORK|SIZE_MISMATCH|NO_RESUME)$/);
  });

  it('refuses a chunked layer whose trailers never end', async () => {
    let most = 0;
    onLayer(async (res) => {
      const socket = res.socket;
      if (!socket) return;
      socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n');
      // Trailer lines, as long as anyone reads them (at most 50 MB, so a broken client cannot hang the test).
      const line = Buffer.from(`X-Trailer: ${'t'.repeat(1000)}\r\n`);
      for (let sent = 0; sent < 50_000_000 && !socket.destroyed; sent += line.length) {
        if (!socket.write(line)) await new Promise((resolve) => setTimeout(resolve, 5));
        most = Math.max(most, sent);
      }
      socket.destroy();
    });
    const error = await expectRefused(/blob sha256:[0-9a-f]{64}: /);
    expect(error.code).toMatch(/^(NETWORK|SIZE_MISMATCH|NO_RESUME)$/);
    // Refused long before the 50 MB: the client hung up after a few KiB of trailers (socket buffers aside).
    expect(most).toBeLessThan(8_000_000);
  });

  it.each([['with'], ['without']])('refuses a manifest over 4 MiB (%s Content-Length)', async (mode) => {
    const big = Buffer.alloc(4 * 1024 * 1024 + 10, 0x20);
    big.write('{"schemaVersion":2,"layers":[],"x":"');
    server.handler = (_req, res, route) => {
      if (route.kind !== 'manifest') return false;
      res.writeHead(200, { 'Content-Type': OCI_MANIFEST, ...(mode === 'with' ? { 'Content-Length': big.length } : {}) });
      res.end(big);
      return true;
    };
    await expectRefused(/manifest .*(more than the 4194304-byte limit|larger than 4194304 bytes)/, { bad: [big] });
  });

  it('refuses a manifest whose digest is not the one asked for', async () => {
    const asked = sha256('some other manifest');
    serveManifest(server.image.manifest.bytes);
    await expectRefused(new RegExp(`${asked}: the registry sent bytes whose digest is ${server.image.manifest.digest}`), {
      reference: `${server.host}/evil/img@${asked}`,
      bad: [server.image.manifest.bytes],
    });
    expect(server.requests.filter((r) => r.url.includes('/blobs/'))).toEqual([]);
  });

  it('refuses a Docker-Content-Digest header that disagrees with the bytes', async () => {
    const lie = sha256('lie');
    serveManifest(server.image.manifest.bytes, OCI_MANIFEST, { 'Docker-Content-Digest': lie });
    await expectRefused(new RegExp(`Docker-Content-Digest says ${lie} but the bytes hash to ${server.image.manifest.digest}`), { bad: [server.image.manifest.bytes] });
  });

  it('refuses an unknown manifest media type', async () => {
    const { config, layer } = server.image;
    const bytes = manifestJson(config, [layer], { mediaType: 'application/vnd.evil+json' });
    serveManifest(bytes, 'application/vnd.evil+json');
    await expectRefused(/unsupported manifest media type "application\/vnd\.evil\+json"/, { bad: [bytes] });
  });

  // The body alone looks like an OCI manifest; before the fix in
  // manifest.ts the image was tagged with media type application/vnd.evil+json,
  // which prune does not recognise as a manifest, so its layers were deleted.
  it('refuses a manifest served with an unknown Content-Type even when the body has no mediaType', async () => {
    const { config, layer } = server.image;
    const doc = JSON.parse(manifestJson(config, [layer]).toString('utf8')) as Record<string, unknown>;
    delete doc['mediaType'];
    const bytes = Buffer.from(JSON.stringify(doc));
    serveManifest(bytes, 'application/vnd.evil+json');
    await expectRefused(/unsupported manifest media type "application\/vnd\.evil\+json"/, { bad: [bytes] });
  });

  it('refuses a Docker schema 1 manifest', async () => {
    const bytes = Buffer.from(
      JSON.stringify({
        schemaVersion: 1,
        name: 'evil/img',
        tag: 'v1',
        architecture: 'amd64',
        fsLayers: [{ blobSum: server.image.layer.digest }],
        history: [{ v1Compatibility: '{}' }],
        signatures: [],
      }),
    );
    serveManifest(bytes, 'application/vnd.docker.distribution.manifest.v1+prettyjws');
    await expectRefused(/Docker schema 1 manifests are not supported/, { bad: [bytes] });
  });

  it('refuses a manifest that is not JSON', async () => {
    const bytes = Buffer.from('<html><body>502 Bad Gateway</body></html>');
    serveManifest(bytes);
    await expectRefused(/manifest is not valid JSON/, { bad: [bytes] });
  });

  it('refuses a descriptor with a negative size', async () => {
    const { config, layer } = server.image;
    const doc = JSON.parse(manifestJson(config, [layer]).toString('utf8')) as { layers: { size: number }[] };
    (doc.layers[0] as { size: number }).size = -1;
    const bytes = Buffer.from(JSON.stringify(doc));
    serveManifest(bytes);
    await expectRefused(/layers\[0\]: descriptor sha256:[0-9a-f]{64} has an invalid size/, { bad: [bytes] });
    expect(server.requests.filter((r) => r.url.includes('/blobs/'))).toEqual([]);
  });

  it('refuses a descriptor with a digest that could escape the store (sha256:../../etc)', async () => {
    const { config, layer } = server.image;
    const doc = JSON.parse(manifestJson(config, [layer]).toString('utf8')) as { layers: { digest: string }[] };
    (doc.layers[0] as { digest: string }).digest = 'sha256:../../etc';
    const bytes = Buffer.from(JSON.stringify(doc));
    serveManifest(bytes);
    await expectRefused(/layers\[0\]: descriptor has an invalid digest "sha256:\.\.\/\.\.\/etc"/, { bad: [bytes] });
    expect(server.requests.filter((r) => r.url.includes('/blobs/'))).toEqual([]);
  });

  it.each([['another port of 127.0.0.1', '127.0.0.1'], ['127.0.0.2', '127.0.0.2']])(
    'follows a blob redirect to %s without sending the credentials there',
    async (_name, address) => {
      const storage = await startHostileRegistry({ address, image: server.image });
      extraServers.push(storage);
      expect(storage.host).not.toBe(server.host);
      const credential = { username: 'evil-user', password: randomBytes(8).toString('hex') };
      server.basicAuth = credential;
      await saveCredential(server.host, credential, { env });
      const blobs = new Map([server.image.config, server.image.layer].map((b) => [b.digest.slice('sha256:'.length), b]));
      server.handler = (_req, res, route) => {
        if (route.kind !== 'blob') return false;
        res.writeHead(307, { Location: `${storage.url}/storage/${route.digest.slice('sha256:'.length)}?X-Signature=abc` });
        res.end();
        return true;
      };
      storage.handler = (_req, res) => {
        const hex = /\/storage\/([0-9a-f]{64})/.exec(_req.url ?? '')?.[1] ?? '';
        const b = blobs.get(hex);
        res.writeHead(b ? 200 : 404, { 'Content-Length': b?.bytes.length ?? 0 });
        res.end(b?.bytes);
        return true;
      };

      const result = await pullImage({ reference: ref, env });
      expect(result.digest).toBe(server.image.manifest.digest);
      const basic = `Basic ${Buffer.from(`${credential.username}:${credential.password}`).toString('base64')}`;
      expect(server.requests.filter((r) => r.headers.authorization === basic).length).toBeGreaterThan(0);
      expect(server.requests.filter((r) => r.url.includes('/blobs/')).every((r) => r.headers.authorization === basic)).toBe(true);
      expect(storage.requests.map((r) => r.url).sort()).toEqual(
        [...blobs.keys()].map((hex) => `/storage/${hex}?X-Signature=abc`).sort(),
      );
      expect(storage.requests.map((r) => r.headers.authorization)).toEqual([undefined, undefined]);
      const state = await storeState();
      expect(state.tags).toContain(`${server.host}/evil/img:v1`);
      expect(state.ingest).toEqual([]);
    },
  );

  /** The layer's first half, then the connection drops; later requests go to `again`. */
  function dropHalfway(again: 'honour-range' | 'ignore-range'): number {
    const layer = server.image.layer.bytes;
    const half = Math.floor(layer.length / 2);
    server.handler = async (req, res, route) => {
      if (route.kind !== 'blob' || route.digest !== server.image.layer.digest) return false;
      if (req.headers.range && again === 'honour-range') return false; // the default answers Range with 206
      await sleep(100); // after the config has settled (see the copy.ts test at the end)
      res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': layer.length });
      res.write(layer.subarray(0, half), () => res.socket?.destroy());
      return true;
    };
    return half;
  }

  it('resumes a blob with Range after the connection drops halfway', async () => {
    const half = dropHalfway('honour-range');
    const result = await pullImage({ reference: ref, env });
    expect(result.digest).toBe(server.image.manifest.digest);
    const layerRequests = server.requests.filter((r) => r.url.endsWith(server.image.layer.digest));
    expect(layerRequests.map((r) => r.headers.range)).toEqual([undefined, `bytes=${half}-`]);
    const state = await storeState();
    expect(state.blobs).toContain(server.image.layer.digest.slice('sha256:'.length));
    expect(state.tags).toContain(`${server.host}/evil/img:v1`);
    expect(state.ingest).toEqual([]);
  });

  it('fails clearly, without corruption, when the registry ignores Range after a drop', async () => {
    dropHalfway('ignore-range');
    await expectRefused(/connection dropped and the registry cannot resume \(no Range support\)/, { bad: [server.image.layer.bytes.subarray(0, server.image.layer.bytes.length / 2)] });
  });

  it('refuses a 206 for another range than the one asked for', async () => {
    const half = dropHalfway('ignore-range');
    const layer = server.image.layer.bytes;
    const dropping = server.handler;
    server.handler = async (req, res, route) => {
      if (route.kind === 'blob' && route.digest === server.image.layer.digest && req.headers.range) {
        // The right length, but the bytes from the start again.
        res.writeHead(206, { 'Content-Range': `bytes 0-${layer.length - half - 1}/${layer.length}`, 'Content-Length': layer.length - half });
        res.end(layer.subarray(0, layer.length - half));
        return true;
      }
      return (await dropping?.(req, res, route)) ?? false;
    };
    await expectRefused(new RegExp(`asked to resume at byte ${half}, the registry answered from byte 0`));
  });

  it('lets a loopback registry use a token realm on loopback', async () => {
    server.bearerToken = `tok-${randomBytes(6).toString('hex')}`;
    const result = await pullImage({ reference: ref, env });
    expect(result.digest).toBe(server.image.manifest.digest);
    expect(server.requests.filter((r) => r.url.startsWith('/token')).length).toBeGreaterThan(0);
    expect(server.requests.filter((r) => r.url.includes('/blobs/')).every((r) => r.headers.authorization === `Bearer ${server.bearerToken}`)).toBe(true);
  });

  it('transfers no blob bytes on a second pull of the same image', async () => {
    const first = await pullImage({ reference: ref, env });
    expect(first.blobsCopied).toBe(3);
    const sentBefore = server.blobBytesSent();
    expect(sentBefore).toBe(server.image.config.bytes.length + server.image.layer.bytes.length);
    const requestsBefore = server.requests.length;
    const second = await pullImage({ reference: ref, env });
    expect(second).toMatchObject({ digest: first.digest, blobsCopied: 0, bytesCopied: 0 });
    expect(server.blobBytesSent()).toBe(sentBefore);
    expect(server.requests.slice(requestsBefore).filter((r) => r.url.includes('/blobs/'))).toEqual([]);
  });

  // A body that takes longer than the request timeout to arrive, but never
  // stalls: before the fix in client.ts the timeout (meant for the response
  // headers) also cut the body off, so every big layer on a slow link was
  // interrupted after 30 s and had to be resumed (and failed after 3 resumes).
  it('does not cut off a slow but steady blob body at the request timeout', async () => {
    const layer = server.image.layer;
    server.handler = async (_req, res, route) => {
      if (route.kind !== 'blob' || route.digest !== layer.digest) return false;
      await serveSlowly(res, layer.bytes, { chunk: Math.max(8 * 1024, layer.bytes.length / 8), pauseMs: 60 });
      return true;
    };
    const client = new RegistryClient({ registry: server.host, timeoutMs: 250 });
    const chunks: Buffer[] = [];
    // Borrowed chunks (valid until the next is asked for) are copied.
    for await (const chunk of client.blobChunks('evil/img', { digest: layer.digest, size: layer.bytes.length }, { borrowed: true })) chunks.push(Buffer.from(chunk));
    expect(Buffer.concat(chunks).equals(layer.bytes)).toBe(true);
    expect(server.requests.filter((r) => r.headers.range !== undefined)).toEqual([]);
  });

  // Same for uploads: the response headers only come once the whole body is
  // sent, so before the fix in client.ts a push of a blob that took longer
  // than the timeout to send was aborted ("timed out").
  it('does not cut off a slow but steady upload at the request timeout', async () => {
    const bytes = randomBytes(64 * 1024);
    const digest = sha256(bytes);
    let received: Buffer | undefined;
    server.handler = async (req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      if (req.method === 'POST' && url.pathname === '/v2/evil/img/blobs/uploads/') {
        res.writeHead(202, { Location: '/v2/evil/img/blobs/uploads/session-1', 'Content-Length': 0 });
        res.end();
        return true;
      }
      if (req.method === 'PUT' && url.pathname === '/v2/evil/img/blobs/uploads/session-1') {
        const chunks: Buffer[] = [];
        for await (const chunk of req) chunks.push(chunk as Buffer);
        received = Buffer.concat(chunks);
        res.writeHead(url.searchParams.get('digest') === sha256(received) ? 201 : 400, { 'Content-Length': 0 });
        res.end();
        return true;
      }
      return false;
    };
    async function* slowly(): AsyncGenerator<Buffer> {
      for (let offset = 0; offset < bytes.length; offset += 8 * 1024) {
        await sleep(60);
        yield bytes.subarray(offset, offset + 8 * 1024);
      }
    }
    const client = new RegistryClient({ registry: server.host, timeoutMs: 250 });
    await client.uploadBlob('evil/img', { digest, size: bytes.length }, () => Readable.from(slowly()));
    expect(received?.equals(bytes)).toBe(true);
  });

  // copyGraph waits for every transfer to settle before it rethrows the first failure,
  // so a failed pull never releases its lease while a sibling is still writing.
  it('does not settle a failed pull while another transfer of it is still writing', async () => {
    const evil = randomBytes(server.image.layer.bytes.length);
    server.handler = async (_req, res, route) => {
      if (route.kind !== 'blob') return false;
      if (route.digest === server.image.config.digest) {
        await sleep(500); // the config is slow…
        return false;
      }
      await sleep(100); // …the layer is wrong
      res.writeHead(200, { 'Content-Length': evil.length });
      res.end(evil);
      return true;
    };
    await expect(pullImage({ reference: ref, env })).rejects.toThrow(/does not match its digest/);
    const ingest = await readdir(join(storeDir(), 'ingest'));
    await sleep(600); // let the straggler finish before the temp dir goes
    expect(ingest).toEqual([]);
  });
});

describe('client rules for a registry off loopback (transport stubbed: no request leaves the process)', () => {
  // The hosts here (a public registry, token services on public and private
  // addresses) cannot be reached from a test machine, and must not be: the
  // client gets a transport that records every request and answers it.
  interface Call {
    url: string;
    headers: Record<string, string>;
  }
  let calls: Call[];
  let transport: Transport;

  /** A canned answer to one request. */
  function reply(status: number, headers: Record<string, string> = {}, body: Buffer = Buffer.alloc(0)): HttpResponse {
    const lower = new Map(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
    return {
      status,
      header: (name) => lower.get(name.toLowerCase()) ?? null,
      body: (async function* () {
        if (body.length > 0) yield body;
      })(),
      discard: () => undefined,
    };
  }
  const json = (value: unknown): HttpResponse => reply(200, { 'Content-Type': 'application/json' }, Buffer.from(JSON.stringify(value)));

  /** Answer every request with `answer`; every call is recorded. */
  function stubTransport(answer: (url: URL, headers: Record<string, string>) => HttpResponse): void {
    calls = [];
    transport = async (url, init) => {
      const headers = Object.fromEntries(Object.entries(init.headers).map(([k, v]) => [k.toLowerCase(), v]));
      calls.push({ url: url.toString(), headers });
      return answer(url, headers);
    };
  }

  const unauthorised = (challenge: string) => reply(401, { 'WWW-Authenticate': challenge }, Buffer.from('{}'));

  it.each([
    ['link-local', 'http://169.254.169.254/latest/api/token'],
    ['private', 'https://10.1.2.3/token'],
    ['loopback', 'http://127.0.0.1:8080/token'],
    ['localhost', 'http://localhost/token'],
    ['IPv6 unique local', 'https://[fd00::1]/token'],
    ['IPv4-mapped IPv6 (normalised by URL to ::ffff:a9fe:a9fe)', 'https://[::ffff:169.254.169.254]/token'],
  ])('refuses a token realm on a %s address from a public registry', async (_name, realm) => {
    stubTransport((url) => {
      if (url.hostname === 'registry.example.com') return unauthorised(`Bearer realm="${realm}",service="registry"`);
      return json({ token: 'stolen' });
    });
    const client = new RegistryClient({ registry: 'registry.example.com', credentials: async () => ({ username: 'u', password: 'secret' }), transport });
    const error = await client.ping().then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(RegistryError);
    expect((error as RegistryError).code).toBe('UNSAFE_REALM');
    expect((error as RegistryError).message).toMatch(/token service on a private address/);
    expect(calls.map((c) => new URL(c.url).hostname)).toEqual(['registry.example.com']);
  });

  it('uses a token realm on a public address', async () => {
    stubTransport((url, headers) => {
      if (url.hostname === 'registry.example.com') {
        return headers['authorization'] === 'Bearer good' ? json({}) : unauthorised('Bearer realm="https://203.0.113.7/token",service="registry"');
      }
      return json({ token: 'good' });
    });
    const client = new RegistryClient({ registry: 'registry.example.com', transport });
    await client.ping();
    expect(calls.map((c) => new URL(c.url).host)).toEqual(['registry.example.com', '203.0.113.7', 'registry.example.com']);
  });

  // Before the fix in client.ts, "same host" compared host:port only, so a
  // redirect from https://registry.example.com to http://registry.example.com
  // carried the credentials in clear text.
  it('does not send credentials along a redirect that downgrades https to http on the same host', async () => {
    const bytes = Buffer.from('layer bytes');
    const digest = sha256(bytes);
    stubTransport((url, headers) => {
      if (url.protocol === 'http:') return reply(200, { 'Content-Length': String(bytes.length) }, bytes);
      if (!headers['authorization']) return unauthorised('Basic realm="r"');
      return reply(307, { Location: `http://registry.example.com/plain/${digest}` });
    });
    const client = new RegistryClient({ registry: 'registry.example.com', credentials: async () => ({ username: 'u', password: 'secret' }), transport });
    const chunks: Buffer[] = [];
    for await (const chunk of client.blobStream('a/b', { digest, size: bytes.length })) chunks.push(Buffer.from(chunk as Uint8Array));
    expect(Buffer.concat(chunks).equals(bytes)).toBe(true);
    const plain = calls.filter((c) => c.url.startsWith('http:'));
    expect(plain).toHaveLength(1);
    expect(plain[0]?.headers['authorization']).toBeUndefined();
    expect(calls.filter((c) => c.url.startsWith('https:')).some((c) => c.headers['authorization']?.startsWith('Basic '))).toBe(true);
  });

  it('refuses an upload location on a private address from a public registry', async () => {
    stubTransport(() => reply(202, { Location: 'http://169.254.169.254/upload/1' }));
    const client = new RegistryClient({ registry: 'registry.example.com', transport });
    await expect(client.startUpload('a/b')).rejects.toMatchObject({ code: 'UNSAFE_LOCATION', exitCode: 4 });
  });
});
