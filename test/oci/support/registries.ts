/**
 * Several real registries at once (test/helpers/registry.ts), started in
 * parallel and all stopped even when one fails to start; and a raw HTTP
 * view of a registry that does not go through cs's client, so assertions
 * about what the registry holds do not trust the code under test.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { startRegistry, TOKEN_SERVICE, type RegistryAuthMode, type TestRegistry } from '../../helpers/registry.js';

export async function startRegistries<K extends string>(modes: Record<K, RegistryAuthMode>): Promise<Record<K, TestRegistry>> {
  const keys = Object.keys(modes) as K[];
  const settled = await Promise.allSettled(keys.map((k) => startRegistry({ mode: modes[k] })));
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) {
    await Promise.all(settled.map((s) => (s.status === 'fulfilled' ? s.value.stop() : undefined)));
    throw failed.reason;
  }
  return Object.fromEntries(keys.map((k, i) => [k, (settled[i] as PromiseFulfilledResult<TestRegistry>).value])) as Record<K, TestRegistry>;
}

export async function stopRegistries(registries: Record<string, TestRegistry> | undefined): Promise<void> {
  if (!registries) return;
  await Promise.allSettled(Object.values(registries).map((r) => r.stop()));
}

/**
 * A request to the registry with the registry's own user, authenticated by
 * hand: HTTP Basic, or a Bearer token fetched from the issuer for `scope`.
 * Does not count as a cs token request, but does count in tokenRequests().
 */
export async function registryFetch(registry: TestRegistry, path: string, init: RequestInit & { scope?: string } = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  const basic = registry.username ? `Basic ${Buffer.from(`${registry.username}:${registry.password ?? ''}`).toString('base64')}` : undefined;
  if (registry.mode === 'basic' && basic) headers.set('Authorization', basic);
  if (registry.mode === 'token' && basic && registry.tokenRealm) {
    const url = new URL(registry.tokenRealm);
    url.searchParams.set('service', TOKEN_SERVICE);
    if (init.scope) url.searchParams.set('scope', init.scope);
    const response = await fetch(url, { headers: { Authorization: basic } });
    const body = (await response.json()) as { token: string };
    headers.set('Authorization', `Bearer ${body.token}`);
  }
  return fetch(`${registry.url}${path}`, { ...init, headers });
}

export async function blobStatus(registry: TestRegistry, repository: string, digest: string): Promise<number> {
  const response = await registryFetch(registry, `/v2/${repository}/blobs/${digest}`, { method: 'HEAD', scope: `repository:${repository}:pull` });
  return response.status;
}

/** HEAD of a manifest: status and the digest the registry reports. */
export async function manifestHead(registry: TestRegistry, repository: string, reference: string): Promise<{ status: number; digest: string | null }> {
  const response = await registryFetch(registry, `/v2/${repository}/manifests/${reference}`, {
    method: 'HEAD',
    scope: `repository:${repository}:pull`,
    headers: { Accept: 'application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json' },
  });
  return { status: response.status, digest: response.headers.get('docker-content-digest') };
}

/**
 * Upload sessions the registry still holds open for `repository` (read from
 * its storage: distribution keeps one folder per session under `_uploads`
 * until the upload completes or is cancelled).
 */
export async function openUploads(registry: TestRegistry, repository: string): Promise<string[]> {
  return readdir(join(registry.storage, 'docker', 'registry', 'v2', 'repositories', ...repository.split('/'), '_uploads')).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return [];
    throw error;
  });
}
