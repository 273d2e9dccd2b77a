import { Readable } from 'node:stream';
import { RegistryError } from '../util/errors.js';
import { hostOf, isLoopbackHost, resolvesToPrivate } from './address.js';
import { parseChallenges, type Challenge } from './challenge.js';
import type { Credential } from './credentials.js';
import { digestOf, parseDigest } from './digest.js';
import { getLean } from './http-lean.js';
import { readBody, send, type HttpResponse, type Transport } from './http.js';
import { MAX_MANIFEST_BYTES, type Descriptor } from './manifest.js';
import { isManifestType, MANIFEST_ACCEPT } from './media-types.js';

/**
 * A client for the OCI distribution API
 * (https://github.com/opencontainers/distribution-spec/blob/main/spec.md),
 * written here because no maintained TypeScript client exists. It speaks
 * HTTP through ./http.ts (node:http) and owns the rules that make a client trustworthy:
 *
 * - authentication by challenge: Basic, or Bearer tokens fetched per scope,
 *   cached until they expire and refreshed on a 401;
 * - credentials never follow a redirect to another host, and a public
 *   registry may not point cs at private addresses (token realm, upload
 *   location);
 * - manifests are capped and rehashed; blob bodies are streamed to a caller
 *   that verifies them, and resumed with Range after a dropped connection;
 * - plain HTTP only for loopback registries or ones marked insecure.
 */

export interface RegistryClientOptions {
  /** `host[:port]` as in a reference. */
  registry: string;
  /** Allow plain HTTP to a non-loopback registry. */
  insecure?: boolean;
  /** Where credentials come from (default: none, anonymous). */
  credentials?: (registry: string) => Promise<Credential | undefined>;
  userAgent?: string;
  /** Per-request timeout for headers, in ms (default 30 s). */
  timeoutMs?: number;
  /** How requests are sent (default: node:http, and the lean transport for long blob bodies). */
  transport?: Transport;
}

export interface FetchedManifest {
  bytes: Buffer;
  mediaType: string;
  digest: string;
}

interface CachedToken {
  token: string;
  expiresAt: number;
}

interface RequestOptions {
  method?: string;
  headers?: Record<string, string>;
  body?: Uint8Array | Readable | undefined;
  /** Repository scopes this request needs, e.g. `repository:a/b:pull`. */
  scopes: readonly string[];
  /** Statuses that are not errors (others become RegistryError). */
  ok: readonly number[];
  /** Follow redirects (GET/HEAD of blobs and manifests). */
  follow?: boolean;
  /** A long body, read through ./http-lean.ts (GET only). */
  lean?: boolean;
  what: string;
}

const MAX_REDIRECTS = 5;
/** Blob bodies at least this long are read through the lean transport. */
const LEAN_MIN_BYTES = 1024 * 1024;
const TOKEN_MAX_BYTES = 1024 * 1024;

export class RegistryClient {
  readonly registry: string;
  readonly baseUrl: string;
  private readonly local: boolean;
  private challenge: Challenge | undefined;
  private credential: Credential | undefined | null = null;
  private readonly tokens = new Map<string, CachedToken>();

  constructor(private readonly options: RegistryClientOptions) {
    this.registry = options.registry === 'docker.io' ? 'registry-1.docker.io' : options.registry;
    this.local = isLoopbackHost(hostOf(this.registry));
    const plain = this.local || options.insecure === true;
    this.baseUrl = `${plain ? 'http' : 'https'}://${this.registry}`;
  }

  private async getCredential(): Promise<Credential | undefined> {
    if (this.credential === null) this.credential = (await this.options.credentials?.(this.options.registry)) ?? undefined;
    return this.credential;
  }

  /** `GET /v2/`: is this a registry, and may we talk to it? */
  async ping(): Promise<void> {
    (await this.request('/v2/', { scopes: [], ok: [200], what: `registry ${this.registry}` })).discard();
  }

  async getManifest(repository: string, reference: string): Promise<FetchedManifest> {
    const what = `manifest ${this.registry}/${repository}${reference.includes(':') ? '@' : ':'}${reference}`;
    const response = await this.request(`/v2/${repository}/manifests/${reference}`, {
      headers: { Accept: MANIFEST_ACCEPT },
      scopes: [`repository:${repository}:pull`],
      ok: [200],
      follow: true,
      what,
    });
    const declared = Number(response.header('content-length') ?? NaN);
    if (declared > MAX_MANIFEST_BYTES) {
      response.discard();
      throw new RegistryError(`${what}: manifest is ${declared} bytes, more than the ${MAX_MANIFEST_BYTES}-byte limit`, { code: 'MANIFEST_TOO_BIG' });
    }
    const bytes = await readCapped(response, MAX_MANIFEST_BYTES, what);
    const mediaType = manifestMediaType(response.header('content-type'), bytes);
    const wanted = parseDigest(reference);
    const digest = digestOf(bytes, wanted?.algorithm ?? 'sha256');
    if (wanted && digest !== reference) {
      throw new RegistryError(`${what}: the registry sent bytes whose digest is ${digest}`, { code: 'DIGEST_MISMATCH' });
    }
    const header = response.header('docker-content-digest');
    if (!wanted && header && parseDigest(header)?.algorithm === 'sha256' && header !== digest) {
      throw new RegistryError(`${what}: Docker-Content-Digest says ${header} but the bytes hash to ${digest}`, { code: 'DIGEST_MISMATCH' });
    }
    return { bytes, mediaType, digest };
  }

  /** The descriptor of a manifest without fetching it (HEAD), or undefined if absent. */
  async headManifest(repository: string, reference: string): Promise<{ digest: string; size: number; mediaType: string } | undefined> {
    const response = await this.request(`/v2/${repository}/manifests/${reference}`, {
      method: 'HEAD',
      headers: { Accept: MANIFEST_ACCEPT },
      scopes: [`repository:${repository}:pull`],
      ok: [200, 404],
      follow: true,
      what: `manifest ${repository}:${reference}`,
    });
    response.discard();
    if (response.status === 404) return undefined;
    const digest = response.header('docker-content-digest') ?? '';
    return { digest, size: Number(response.header('content-length') ?? 0), mediaType: response.header('content-type') ?? '' };
  }

  async hasBlob(repository: string, digest: string): Promise<boolean> {
    const response = await this.request(`/v2/${repository}/blobs/${digest}`, {
      method: 'HEAD',
      scopes: [`repository:${repository}:pull`],
      ok: [200, 404],
      follow: true,
      what: `blob ${digest}`,
    });
    response.discard();
    return response.status === 200;
  }

  /**
   * The bytes of a blob, as a stream that resumes with `Range` when the
   * connection drops. The stream ends after exactly `descriptor.size` bytes
   * or fails; the caller verifies the digest.
   */
  blobStream(repository: string, descriptor: Pick<Descriptor, 'digest' | 'size'>, options: { retries?: number } = {}): Readable {
    return Readable.from(this.blobChunks(repository, descriptor, options), { objectMode: false });
  }

  /**
   * The same bytes as blobStream, as plain chunks (no stream machinery in
   * between). With `borrowed`, a long blob comes through the lean transport
   * and each chunk is valid only until the next one is asked for.
   */
  blobChunks(repository: string, descriptor: Pick<Descriptor, 'digest' | 'size'>, options: { retries?: number; borrowed?: boolean } = {}): AsyncGenerator<Uint8Array> {
    const retries = options.retries ?? 3;
    const self = this;
    async function* chunks(): AsyncGenerator<Uint8Array> {
      let offset = 0;
      let attempt = 0;
      for (;;) {
        const headers: Record<string, string> = offset > 0 ? { Range: `bytes=${offset}-` } : {};
        const response = await self.request(`/v2/${repository}/blobs/${descriptor.digest}`, {
          headers,
          scopes: [`repository:${repository}:pull`],
          ok: [200, 206],
          follow: true,
          lean: options.borrowed === true && descriptor.size - offset >= LEAN_MIN_BYTES,
          what: `blob ${descriptor.digest}`,
        });
        if (offset > 0 && response.status !== 206) {
          response.discard();
          throw new RegistryError(`blob ${descriptor.digest}: the connection dropped and the registry cannot resume (no Range support)`, { code: 'NO_RESUME' });
        }
        // A 206 for another range than the one asked for would splice the wrong bytes in.
        const range = response.status === 206 ? /^bytes (\d+)-/.exec(response.header('content-range') ?? '') : null;
        if (range && Number(range[1]) !== offset) {
          response.discard();
          throw new RegistryError(`blob ${descriptor.digest}: asked to resume at byte ${offset}, the registry answered from byte ${range[1]}`, { code: 'NO_RESUME' });
        }
        const length = response.header('content-length');
        if (length !== null && Number(length) !== descriptor.size - offset) {
          response.discard();
          throw new RegistryError(`blob ${descriptor.digest}: Content-Length is ${length}, expected ${descriptor.size - offset}`, { code: 'SIZE_MISMATCH' });
        }
        try {
          for await (const chunk of response.body) {
            offset += chunk.length;
            if (offset > descriptor.size) throw new RegistryError(`blob ${descriptor.digest}: registry sent more than ${descriptor.size} bytes`, { code: 'SIZE_MISMATCH' });
            yield chunk;
          }
        } catch (error) {
          if (error instanceof RegistryError || attempt >= retries || offset >= descriptor.size) throw wrapNetwork(error, `blob ${descriptor.digest}`, self.registry);
          attempt++;
          continue; // resume from `offset`
        }
        if (offset < descriptor.size) {
          if (attempt >= retries) throw new RegistryError(`blob ${descriptor.digest}: connection closed after ${offset} of ${descriptor.size} bytes`, { code: 'SIZE_MISMATCH' });
          attempt++;
          continue;
        }
        return;
      }
    }
    return chunks();
  }

  /** Try a cross-repository mount; true when the registry mounted the blob. */
  async mountBlob(repository: string, from: string, digest: string): Promise<{ mounted: true } | { mounted: false; location: string | undefined }> {
    const response = await this.request(`/v2/${repository}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`, {
      method: 'POST',
      headers: { 'Content-Length': '0' },
      scopes: [`repository:${repository}:pull,push`, `repository:${from}:pull`],
      ok: [201, 202],
      what: `mount of ${digest} from ${from}`,
    });
    response.discard();
    if (response.status === 201) return { mounted: true };
    const location = response.header('location');
    return { mounted: false, location: location ? await this.checkLocation(location) : undefined };
  }

  /** Start an upload session; returns its location URL. */
  async startUpload(repository: string): Promise<string> {
    const response = await this.request(`/v2/${repository}/blobs/uploads/`, {
      method: 'POST',
      headers: { 'Content-Length': '0' },
      scopes: [`repository:${repository}:pull,push`],
      ok: [202],
      what: `upload to ${repository}`,
    });
    response.discard();
    const location = response.header('location');
    if (!location) throw new RegistryError(`upload to ${this.registry}/${repository}: registry gave no upload location`);
    return this.checkLocation(location);
  }

  /**
   * Upload a blob. `open(offset)` gives its bytes from `offset`. Small blobs
   * (or `chunkSize` 0) go in one PUT; otherwise PATCH chunks then PUT.
   */
  async uploadBlob(
    repository: string,
    descriptor: Pick<Descriptor, 'digest' | 'size'>,
    open: (start: number, end: number) => Readable,
    options: { chunkSize?: number; location?: string; onProgress?: (bytes: number) => void } = {},
  ): Promise<void> {
    let location = options.location ?? (await this.startUpload(repository));
    const scopes = [`repository:${repository}:pull,push`];
    const chunkSize = options.chunkSize ?? 0;
    if (chunkSize > 0 && descriptor.size > chunkSize) {
      for (let start = 0; start < descriptor.size; start += chunkSize) {
        const end = Math.min(descriptor.size, start + chunkSize) - 1;
        const response = await this.request(location, {
          method: 'PATCH',
          headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `${start}-${end}`, 'Content-Length': String(end - start + 1) },
          body: open(start, end),
          scopes,
          ok: [202],
          what: `upload of ${descriptor.digest} (bytes ${start}-${end})`,
        });
        response.discard();
        const next = response.header('location');
        if (next) location = await this.checkLocation(next);
        options.onProgress?.(end + 1);
      }
      const done = await this.request(withDigest(location, descriptor.digest), {
        method: 'PUT',
        headers: { 'Content-Length': '0' },
        scopes,
        ok: [201],
        what: `upload of ${descriptor.digest}`,
      });
      done.discard();
      return;
    }
    const response = await this.request(withDigest(location, descriptor.digest), {
      method: 'PUT',
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(descriptor.size) },
      body: open(0, descriptor.size - 1),
      scopes,
      ok: [201],
      what: `upload of ${descriptor.digest}`,
    });
    response.discard();
    options.onProgress?.(descriptor.size);
  }

  async putManifest(repository: string, reference: string, bytes: Uint8Array, mediaType: string): Promise<string> {
    const response = await this.request(`/v2/${repository}/manifests/${reference}`, {
      method: 'PUT',
      headers: { 'Content-Type': mediaType, 'Content-Length': String(bytes.length) },
      body: bytes,
      scopes: [`repository:${repository}:pull,push`],
      ok: [201],
      what: `manifest ${repository}:${reference}`,
    });
    response.discard();
    return response.header('docker-content-digest') ?? digestOf(bytes);
  }

  async listTags(repository: string): Promise<string[]> {
    const response = await this.request(`/v2/${repository}/tags/list`, { scopes: [`repository:${repository}:pull`], ok: [200], what: `tags of ${repository}` });
    const body = JSON.parse((await readCapped(response, MAX_MANIFEST_BYTES, `tags of ${repository}`)).toString('utf8')) as { tags?: unknown };
    return Array.isArray(body.tags) ? body.tags.filter((t): t is string => typeof t === 'string') : [];
  }

  /** An upload location may be relative; a public registry may not send us to a private address. */
  private async checkLocation(location: string): Promise<string> {
    let url: URL;
    try {
      url = new URL(location, this.baseUrl);
    } catch {
      throw new RegistryError(`registry ${this.registry} gave an invalid upload location`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new RegistryError(`registry ${this.registry} gave an upload location with scheme ${url.protocol}`);
    if (url.host !== new URL(this.baseUrl).host && !this.local && (await resolvesToPrivate(url.hostname))) {
      throw new RegistryError(`registry ${this.registry} sent an upload location on a private address (${url.host}); refused`, { code: 'UNSAFE_LOCATION' });
    }
    return url.toString();
  }

  /** One request with authentication, redirects and error mapping. */
  private async request(pathOrUrl: string, options: RequestOptions): Promise<HttpResponse> {
    const origin = new URL(this.baseUrl);
    let url = new URL(pathOrUrl, this.baseUrl);
    let retriedAuth = false;
    let redirects = 0;
    for (;;) {
      // Same scheme, host and port: a redirect from https to http on the same
      // host must not carry credentials in clear text.
      const sameHost = url.origin === origin.origin;
      const headers: Record<string, string> = { 'User-Agent': this.options.userAgent ?? 'cs', ...options.headers };
      if (sameHost) {
        const auth = await this.authorization(options.scopes);
        if (auth) headers['Authorization'] = auth;
      }
      let response: HttpResponse;
      // The timeout is for the response headers, restarted by every chunk of
      // an upload's body (the headers only come after the whole body); a
      // stalled download body is ended by the connection's idle timeout.
      try {
        response = await this.exchange(url, {
          method: options.method ?? 'GET',
          headers,
          body: options.body,
          lean: options.lean === true && options.method === undefined && options.body === undefined,
        });
      } catch (error) {
        throw wrapNetwork(error, options.what, this.registry);
      }
      if (response.status >= 300 && response.status < 400 && response.header('location') && options.follow) {
        response.discard();
        if (++redirects > MAX_REDIRECTS) throw new RegistryError(`${options.what}: too many redirects`);
        const next = new URL(response.header('location') ?? '', url);
        if (next.protocol !== 'https:' && next.protocol !== 'http:') throw new RegistryError(`${options.what}: redirect to unsupported scheme ${next.protocol}`);
        url = next; // credentials are attached above only when the host is the registry's own
        continue;
      }
      if (response.status === 401 && sameHost && !retriedAuth) {
        retriedAuth = true;
        const challenges = parseChallenges(response.header('www-authenticate'));
        response.discard();
        const usable = challenges.find((c) => c.scheme === 'bearer') ?? challenges.find((c) => c.scheme === 'basic');
        if (usable) {
          this.challenge = usable;
          for (const scope of options.scopes) this.tokens.delete(scopeKey([scope]));
          this.tokens.delete(scopeKey(options.scopes));
          if (options.body instanceof Readable) {
            // A consumed stream cannot be sent twice: authenticate first, then fail clearly.
            await this.authorization(options.scopes);
            throw new RegistryError(`${options.what}: registry asked for authentication in the middle of an upload; try again`);
          }
          continue;
        }
        throw await this.httpError(response, options);
      }
      if (!options.ok.includes(response.status)) throw await this.httpError(response, options);
      return response;
    }
  }

  private exchange(url: URL, init: Omit<Parameters<Transport>[1], 'headersTimeoutMs'>): Promise<HttpResponse> {
    const full = { ...init, headersTimeoutMs: this.options.timeoutMs ?? 30_000 };
    if (this.options.transport) return this.options.transport(url, full);
    return full.lean ? getLean(url, full) : send(url, full);
  }

  /** The Authorization header for these scopes, fetching a token when the registry uses Bearer. */
  private async authorization(scopes: readonly string[]): Promise<string | undefined> {
    const challenge = this.challenge;
    if (!challenge) return undefined;
    const credential = await this.getCredential();
    if (challenge.scheme === 'basic') {
      if (!credential?.username || credential.password === undefined) return undefined;
      return `Basic ${Buffer.from(`${credential.username}:${credential.password}`).toString('base64')}`;
    }
    if (challenge.scheme !== 'bearer') return undefined;
    if (credential?.registryToken) return `Bearer ${credential.registryToken}`;
    const key = scopeKey(scopes);
    const cached = this.tokens.get(key);
    if (cached && cached.expiresAt > Date.now()) return `Bearer ${cached.token}`;
    const token = await this.fetchToken(challenge, scopes, credential);
    this.tokens.set(key, token);
    return `Bearer ${token.token}`;
  }

  private async fetchToken(challenge: Challenge, scopes: readonly string[], credential: Credential | undefined): Promise<CachedToken> {
    const realm = challenge.params['realm'];
    if (!realm) throw new RegistryError(`registry ${this.registry} asked for a bearer token but named no realm`);
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw new RegistryError(`registry ${this.registry} gave an invalid token realm`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new RegistryError(`token realm of ${this.registry} uses scheme ${url.protocol}; refused`);
    if (!this.local && (await resolvesToPrivate(url.hostname))) {
      throw new RegistryError(`registry ${this.registry} sent cs to a token service on a private address (${url.host}); refused`, { code: 'UNSAFE_REALM' });
    }
    if (url.protocol === 'http:' && !this.baseUrl.startsWith('http:') && credential) {
      throw new RegistryError(`token realm of ${this.registry} is plain HTTP; refusing to send credentials over it`, { code: 'UNSAFE_REALM' });
    }
    const service = challenge.params['service'];
    const allScopes = [...new Set([...scopes, ...(challenge.params['scope'] ? challenge.params['scope'].split(' ') : [])])];
    let response: HttpResponse;
    try {
      if (credential?.identityToken) {
        const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: credential.identityToken, client_id: 'cs', ...(service ? { service } : {}) });
        if (allScopes.length > 0) form.set('scope', allScopes.join(' '));
        response = await this.exchange(url, {
          method: 'POST',
          headers: { 'User-Agent': this.options.userAgent ?? 'cs', 'Content-Type': 'application/x-www-form-urlencoded' },
          body: Buffer.from(form.toString()),
        });
      } else {
        if (service) url.searchParams.set('service', service);
        for (const scope of allScopes) url.searchParams.append('scope', scope);
        const headers: Record<string, string> = { 'User-Agent': this.options.userAgent ?? 'cs' };
        if (credential?.username && credential.password !== undefined) {
          url.searchParams.set('account', credential.username);
          headers['Authorization'] = `Basic ${Buffer.from(`${credential.username}:${credential.password}`).toString('base64')}`;
        }
        response = await this.exchange(url, { method: 'GET', headers });
      }
    } catch (error) {
      throw wrapNetwork(error, `token for ${this.registry}`, url.host);
    }
    if (response.status === 401 || response.status === 403) {
      response.discard();
      throw new RegistryError(`authentication to ${this.registry} failed: the token service refused ${credential ? 'the stored credentials' : 'anonymous access'}`, {
        code: 'UNAUTHORIZED',
        suggestions: [`run \`cs login ${this.options.registry}\``],
      });
    }
    if (response.status !== 200) {
      response.discard();
      throw new RegistryError(`token service for ${this.registry} answered HTTP ${response.status}`);
    }
    let body: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      body = JSON.parse((await readCapped(response, TOKEN_MAX_BYTES, 'token')).toString('utf8')) as typeof body;
    } catch (error) {
      if (error instanceof RegistryError) throw error;
      throw new RegistryError(`token service for ${this.registry} sent a response that is not JSON`);
    }
    const token = typeof body.token === 'string' ? body.token : typeof body.access_token === 'string' ? body.access_token : undefined;
    if (!token) throw new RegistryError(`token service for ${this.registry} sent no token`);
    const lifetime = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : 60;
    // Renew a little early so a token never expires in the middle of a request.
    return { token, expiresAt: Date.now() + Math.max(1, lifetime - 10) * 1000 };
  }

  private async httpError(response: HttpResponse, options: RequestOptions): Promise<RegistryError> {
    let detail = '';
    try {
      const text = (await readCapped(response, 64 * 1024, options.what)).toString('utf8');
      const parsed = JSON.parse(text) as { errors?: { code?: string; message?: string }[] };
      detail = (parsed.errors ?? []).map((e) => [e.code, e.message].filter(Boolean).join(': ')).join('; ');
    } catch {
      // not a distribution error body
    }
    const status = response.status;
    const suffix = detail ? ` (${detail.slice(0, 300)})` : '';
    if (status === 401) {
      return new RegistryError(`${options.what}: authentication required by ${this.registry}${suffix}`, {
        code: 'UNAUTHORIZED',
        suggestions: [`run \`cs login ${this.options.registry}\``],
      });
    }
    if (status === 403) return new RegistryError(`${options.what}: access denied by ${this.registry}${suffix}`, { code: 'DENIED' });
    if (status === 404) return new RegistryError(`${options.what}: not found in ${this.registry}${suffix}`, { code: 'NOT_FOUND' });
    return new RegistryError(`${options.what}: ${this.registry} answered HTTP ${status}${suffix}`, { code: `HTTP_${status}` });
  }
}

function scopeKey(scopes: readonly string[]): string {
  return [...scopes].sort().join(' ');
}

function withDigest(location: string, digest: string): string {
  const url = new URL(location);
  url.searchParams.set('digest', digest);
  return url.toString();
}

/**
 * The media type of fetched manifest bytes: the Content-Type when it is a
 * manifest type; otherwise (a registry that labels manifests as
 * application/json, or not at all) the document's own `mediaType`, so the
 * type cs records for the image is never one that is not a manifest type.
 * Whatever comes out is checked again by parseManifest.
 */
function manifestMediaType(contentType: string | null, bytes: Buffer): string {
  const header = (contentType ?? '').split(';')[0]?.trim() ?? '';
  if (isManifestType(header)) return header;
  try {
    const own = (JSON.parse(bytes.toString('utf8')) as { mediaType?: unknown }).mediaType;
    if (typeof own === 'string' && isManifestType(own)) return own;
  } catch {
    // not JSON: parseManifest says so
  }
  return header;
}

/** Read a response body whole, failing past `max` bytes. */
export function readCapped(response: HttpResponse, max: number, what: string): Promise<Buffer> {
  return readBody(response, max, () => new RegistryError(`${what}: response is larger than ${max} bytes`, { code: 'TOO_BIG' }));
}

function wrapNetwork(error: unknown, what: string, registry: string): RegistryError {
  if (error instanceof RegistryError) return error;
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  const code = cause?.code ?? (error as { code?: string }).code;
  const name = (error as { name?: string }).name;
  const why =
    name === 'TimeoutError' ? 'timed out'
      : code === 'ECONNREFUSED' ? 'connection refused'
        : code === 'ENOTFOUND' || code === 'EAI_AGAIN' ? 'host not found'
          : code === 'ECONNRESET' || code === 'EPIPE' ? 'connection reset'
            : cause?.message ?? (error as Error).message ?? 'network error';
  return new RegistryError(`${what}: cannot reach ${registry}: ${why}`, { code: 'NETWORK', cause: error });
}
