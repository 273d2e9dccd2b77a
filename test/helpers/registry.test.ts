/**
 * Proves the test registry harness against the real docker-registry process,
 * using only Node's fetch (no cs code).
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { dirname } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRegistry, type TestRegistry } from './registry.js';

const sha256 = (data: Uint8Array | string): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;

function basic(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
}

/**
 * Monolithic upload in two steps: POST opens a session, PUT to its Location
 * with ?digest= and the whole body closes it. (distribution 2.8 ignores a
 * single `POST ...?digest=` with a body: it just opens a session, 202.)
 * Returns the POST's response if it did not open a session.
 */
async function pushBlob(
  registry: TestRegistry,
  repo: string,
  data: Uint8Array,
  headers: Record<string, string> = {},
): Promise<Response> {
  const started = await fetch(`${registry.url}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers });
  if (started.status !== 202) return started;
  const location = new URL(started.headers.get('location') ?? '', registry.url);
  location.searchParams.set('digest', sha256(data));
  return fetch(location, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/octet-stream', ...headers },
    body: data,
  });
}

/** The key="value" pairs of a WWW-Authenticate challenge. */
function challengeParams(header: string): Record<string, string> {
  const params: Record<string, string> = {};
  for (const match of header.matchAll(/(\w+)="([^"]*)"/g)) {
    if (match[1] !== undefined && match[2] !== undefined) params[match[1]] = match[2];
  }
  return params;
}

describe('test registry: open mode', () => {
  let registry: TestRegistry;
  beforeAll(async () => {
    registry = await startRegistry();
  });
  afterAll(async () => {
    await registry?.stop();
  });

  it('answers /v2/ with 200 on loopback', async () => {
    expect(registry.host).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(registry.url).toBe(`http://${registry.host}`);
    expect(registry.mode).toBe('open');
    expect(registry.username).toBeUndefined();
    expect(registry.tokenRequests()).toBe(0);
    const response = await fetch(`${registry.url}/v2/`);
    expect(response.status).toBe(200);
    expect(response.headers.get('docker-distribution-api-version')).toBe('registry/2.0');
  });

  it('stores blobs and an OCI manifest', async () => {
    const layer = new TextEncoder().encode('hello from cs\n');
    const pushed = await pushBlob(registry, 'test/repo', layer);
    expect(pushed.status).toBe(201);
    expect(pushed.headers.get('docker-content-digest')).toBe(sha256(layer));

    const head = await fetch(`${registry.url}/v2/test/repo/blobs/${sha256(layer)}`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(String(layer.length));

    const config = new TextEncoder().encode(
      JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha256(layer)] } }),
    );
    expect((await pushBlob(registry, 'test/repo', config)).status).toBe(201);

    // Worth knowing for cs's client: the one-request form is not honoured by 2.8,
    // it only opens an upload session.
    const single = await fetch(`${registry.url}/v2/test/repo/blobs/uploads/?digest=${sha256(config)}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream' },
      body: config,
    });
    expect(single.status).toBe(202);
    expect(single.headers.get('location')).toContain('/v2/test/repo/blobs/uploads/');

    const manifest = JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(layer), size: layer.length }],
    });
    const put = await fetch(`${registry.url}/v2/test/repo/manifests/v1`, {
      method: 'PUT',
      headers: { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' },
      body: manifest,
    });
    expect(put.status).toBe(201);
    expect(put.headers.get('docker-content-digest')).toBe(sha256(manifest));

    const got = await fetch(`${registry.url}/v2/test/repo/manifests/v1`, {
      headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' },
    });
    expect(got.status).toBe(200);
    expect(got.headers.get('content-type')).toBe('application/vnd.oci.image.manifest.v1+json');
    expect(got.headers.get('docker-content-digest')).toBe(sha256(manifest));
    expect(await got.text()).toBe(manifest);
  });
});

describe('test registry: basic mode', () => {
  let registry: TestRegistry;
  beforeAll(async () => {
    registry = await startRegistry({ mode: 'basic' });
  });
  afterAll(async () => {
    await registry?.stop();
  });

  it('challenges with Basic and checks the password', async () => {
    expect(registry.username).toBeTruthy();
    expect(registry.password).toBeTruthy();
    const anonymous = await fetch(`${registry.url}/v2/`);
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get('www-authenticate')).toMatch(/^Basic realm=/);

    const good = await fetch(`${registry.url}/v2/`, {
      headers: { Authorization: basic(registry.username ?? '', registry.password ?? '') },
    });
    expect(good.status).toBe(200);

    const bad = await fetch(`${registry.url}/v2/`, {
      headers: { Authorization: basic(registry.username ?? '', 'wrong') },
    });
    expect(bad.status).toBe(401);
  });
});

describe('test registry: token mode', () => {
  let registry: TestRegistry;
  beforeAll(async () => {
    registry = await startRegistry({ mode: 'token' });
  });
  afterAll(async () => {
    await registry?.stop();
  });

  async function token(scope: string, authorization?: string): Promise<string> {
    const url = new URL(registry.tokenRealm ?? '');
    url.searchParams.set('service', challenge.service ?? '');
    url.searchParams.set('scope', scope);
    const response = await fetch(url, authorization ? { headers: { Authorization: authorization } } : {});
    expect(response.status).toBe(200);
    const body = (await response.json()) as { token: string; access_token: string; expires_in: number; issued_at: string };
    expect(body.access_token).toBe(body.token);
    expect(body.expires_in).toBeGreaterThan(0);
    return body.token;
  }

  let challenge: Record<string, string> = {};

  it('challenges with Bearer realm and service', async () => {
    const response = await fetch(`${registry.url}/v2/`);
    expect(response.status).toBe(401);
    const header = response.headers.get('www-authenticate') ?? '';
    expect(header).toMatch(/^Bearer realm="[^"]+",service="[^"]+"/);
    challenge = challengeParams(header);
    expect(challenge.realm).toBe(registry.tokenRealm);
  });

  it('lets an authenticated token push and refuses an anonymous one', async () => {
    const before = registry.tokenRequests();
    const credentials = basic(registry.username ?? '', registry.password ?? '');
    const pushToken = await token('repository:test/repo:pull,push', credentials);
    const data = new TextEncoder().encode('pushed with a bearer token');
    const pushed = await pushBlob(registry, 'test/repo', data, { Authorization: `Bearer ${pushToken}` });
    expect(pushed.status).toBe(201);
    const head = await fetch(`${registry.url}/v2/test/repo/blobs/${sha256(data)}`, {
      method: 'HEAD',
      headers: { Authorization: `Bearer ${pushToken}` },
    });
    expect(head.status).toBe(200);

    // A resource request without a token names the scope it needs. The
    // registry lists the actions in no fixed order (it builds them from a Go
    // map), so either order is the same scope.
    const unauthorised = await pushBlob(registry, 'test/repo', data);
    expect(unauthorised.status).toBe(401);
    expect(unauthorised.headers.get('www-authenticate')).toMatch(/scope="repository:test\/repo:(pull,push|push,pull)"/);

    const anonymousToken = await token('repository:test/repo:pull,push');
    const refused = await pushBlob(registry, 'test/repo', data, { Authorization: `Bearer ${anonymousToken}` });
    expect([401, 403]).toContain(refused.status);

    const wrong = await fetch(`${registry.tokenRealm}?service=${challenge.service}`, {
      headers: { Authorization: basic(registry.username ?? '', 'wrong') },
    });
    expect(wrong.status).toBe(401);

    // The OAuth2 form gives the same kind of token.
    const form = await fetch(registry.tokenRealm ?? '', {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'password',
        username: registry.username ?? '',
        password: registry.password ?? '',
        service: challenge.service ?? '',
        scope: 'repository:test/repo:pull',
        client_id: 'cs-test',
      }),
    });
    expect(form.status).toBe(200);
    const { access_token: pullToken } = (await form.json()) as { access_token: string };
    const pulled = await fetch(`${registry.url}/v2/test/repo/blobs/${sha256(data)}`, {
      headers: { Authorization: `Bearer ${pullToken}` },
    });
    expect(pulled.status).toBe(200);
    expect(await pulled.text()).toBe('pushed with a bearer token');

    expect(registry.tokenRequests() - before).toBe(4);
  });
});

describe('test registry: stop', () => {
  it('removes its temp dir and stops answering', async () => {
    const registry = await startRegistry({ mode: 'token', deleteEnabled: false });
    try {
      const realm = registry.tokenRealm ?? '';
      const dir = dirname(registry.storage);
      expect((await fetch(`${registry.url}/v2/`)).status).toBe(401);
      expect(existsSync(registry.storage)).toBe(true);
      await registry.stop();
      await registry.stop(); // idempotent
      expect(existsSync(dir)).toBe(false);
      await expect(fetch(`${registry.url}/v2/`)).rejects.toThrow();
      await expect(fetch(realm)).rejects.toThrow();
    } finally {
      await registry.stop();
    }
  });
});
