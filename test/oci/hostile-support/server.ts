/**
 * A hostile registry: a small distribution-API server written with node:http
 * for tests. A real registry cannot be made to misbehave, so this server
 * stands in for a broken or malicious one. By default it serves one good
 * image (`evil/img:v1`: an OCI manifest, a config and one layer) correctly;
 * a test switches it into misbehaving by setting `handler`, which sees every
 * request first and answers it (returning true) or lets the default answer.
 *
 * It only listens on loopback addresses and is stopped by each test.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export const REPO = 'evil/img';
export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';

export interface Blob {
  mediaType: string;
  digest: string;
  bytes: Buffer;
}

export interface TestImage {
  config: Blob;
  layer: Blob;
  manifest: Blob;
}

export function sha256(bytes: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

export function blob(mediaType: string, bytes: Buffer): Blob {
  return { mediaType, digest: sha256(bytes), bytes };
}

/** The OCI platform of this host, so pullImage's platform choice never gets in the way. */
function hostArch(): string {
  return ({ x64: 'amd64', arm64: 'arm64' } as Record<string, string>)[process.arch] ?? process.arch;
}

/** A manifest document for `config` and `layers`, with extra fields merged in. */
export function manifestJson(config: Blob, layers: readonly Pick<Blob, 'mediaType' | 'digest' | 'bytes'>[], extra: Record<string, unknown> = {}): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: config.mediaType, digest: config.digest, size: config.bytes.length },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.bytes.length })),
      ...extra,
    }),
  );
}

/** A one-layer image whose layer is `layerSize` random bytes (cs does not look inside layers when pulling). */
export function makeImage(layerSize = 64 * 1024): TestImage {
  const config = blob(
    OCI_CONFIG,
    Buffer.from(JSON.stringify({ architecture: hostArch(), os: process.platform, rootfs: { type: 'layers', diff_ids: [sha256(randomBytes(8))] }, config: {} })),
  );
  const layer = blob(OCI_LAYER, randomBytes(layerSize));
  const manifest = blob(OCI_MANIFEST, manifestJson(config, [layer]));
  return { config, layer, manifest };
}

export interface LoggedRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}

export type Route =
  | { kind: 'ping' }
  | { kind: 'token' }
  | { kind: 'manifest'; reference: string }
  | { kind: 'blob'; digest: string }
  | { kind: 'other' };

/** Answers a request (returns true) or leaves it to the default behaviour. */
export type Handler = (req: IncomingMessage, res: ServerResponse, route: Route) => boolean | Promise<boolean>;

export interface HostileRegistry {
  /** `ADDRESS:PORT`, as in an image reference. */
  host: string;
  url: string;
  image: TestImage;
  /** Every request received, in order. */
  requests: LoggedRequest[];
  /** Body bytes sent for blobs by the default handler. */
  blobBytesSent: () => number;
  /** Per-test switch: sees each request first. */
  handler: Handler | undefined;
  /** Require HTTP Basic with these credentials on /v2/. */
  basicAuth: { username: string; password: string } | undefined;
  /** Require this Bearer token on /v2/, issued by /token on this server. */
  bearerToken: string | undefined;
  close(): Promise<void>;
}

export async function startHostileRegistry(options: { address?: string; image?: TestImage } = {}): Promise<HostileRegistry> {
  const address = options.address ?? '127.0.0.1';
  const sockets = new Set<Socket>();
  let blobBytes = 0;

  const serveBlob = (req: IncomingMessage, res: ServerResponse, b: Blob): void => {
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    const start = range ? Number(range[1]) : 0;
    const body = b.bytes.subarray(start);
    const headers: Record<string, string | number> = { 'Content-Type': 'application/octet-stream', 'Content-Length': body.length, 'Docker-Content-Digest': b.digest };
    if (range) headers['Content-Range'] = `bytes ${start}-${b.bytes.length - 1}/${b.bytes.length}`;
    res.writeHead(range ? 206 : 200, headers);
    if (req.method === 'HEAD') return void res.end();
    blobBytes += body.length;
    res.end(body);
  };

  const registry: HostileRegistry = {
    host: '',
    url: '',
    image: options.image ?? makeImage(),
    requests: [],
    blobBytesSent: () => blobBytes,
    handler: undefined,
    basicAuth: undefined,
    bearerToken: undefined,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };

  const route = (path: string): Route => {
    if (path === '/v2/' || path === '/v2') return { kind: 'ping' };
    if (path === '/token') return { kind: 'token' };
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(path);
    if (m && m[1] === REPO) return m[2] === 'manifests' ? { kind: 'manifest', reference: m[3] ?? '' } : { kind: 'blob', digest: m[3] ?? '' };
    return { kind: 'other' };
  };

  const authorised = (req: IncomingMessage, res: ServerResponse): boolean => {
    const given = req.headers.authorization;
    if (registry.basicAuth) {
      const want = `Basic ${Buffer.from(`${registry.basicAuth.username}:${registry.basicAuth.password}`).toString('base64')}`;
      if (given === want) return true;
      res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="hostile"', 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
      return false;
    }
    if (registry.bearerToken) {
      if (given === `Bearer ${registry.bearerToken}`) return true;
      res.writeHead(401, { 'WWW-Authenticate': `Bearer realm="${registry.url}/token",service="hostile",scope="repository:${REPO}:pull"`, 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'token required' }] }));
      return false;
    }
    return true;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://hostile');
    registry.requests.push({ method: req.method ?? 'GET', url: req.url ?? '/', headers: req.headers });
    const r = route(url.pathname);
    if (registry.handler && (await registry.handler(req, res, r))) return;
    if (r.kind === 'token') {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      return void res.end(JSON.stringify({ token: registry.bearerToken ?? 'none', expires_in: 300 }));
    }
    if (r.kind !== 'other' && !authorised(req, res)) return;
    const image = registry.image;
    if (r.kind === 'ping') {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      return void res.end('{}');
    }
    if (r.kind === 'manifest' && (r.reference === 'v1' || r.reference === image.manifest.digest)) {
      res.writeHead(200, { 'Content-Type': image.manifest.mediaType, 'Content-Length': image.manifest.bytes.length, 'Docker-Content-Digest': image.manifest.digest });
      return void res.end(req.method === 'HEAD' ? undefined : image.manifest.bytes);
    }
    if (r.kind === 'blob') {
      const found = [image.config, image.layer].find((b) => b.digest === r.digest);
      if (found) return serveBlob(req, res, found);
    }
    res.writeHead(404, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ errors: [{ code: 'NOT_FOUND', message: 'not here' }] }));
  };

  const server: Server = createServer((req, res) => {
    req.socket.on('error', () => undefined);
    res.on('error', () => undefined);
    handle(req, res).catch(() => {
      if (!res.headersSent) {
        res.writeHead(500);
        res.end();
      } else res.destroy();
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('clientError', (_error, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, address, () => resolve());
  });
  const bound = server.address();
  const port = typeof bound === 'object' && bound ? bound.port : 0;
  registry.host = `${address}:${port}`;
  registry.url = `http://${registry.host}`;
  return registry;
}

/**
 * Write a raw HTTP/1.1 response straight to the socket (so headers can lie
 * about the body) and close the connection.
 */
export function rawResponse(res: ServerResponse, status: number, headers: Record<string, string | number>, body: Buffer): void {
  const head = [`HTTP/1.1 ${status} X`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`), 'Connection: close', '', ''].join('\r\n');
  const socket = res.socket;
  if (!socket) return;
  socket.end(Buffer.concat([Buffer.from(head, 'latin1'), body]));
}

/** Send `bytes` in chunks with a pause between them (a slow link). */
export async function serveSlowly(res: ServerResponse, bytes: Buffer, options: { status?: number; chunk: number; pauseMs: number; headers?: Record<string, string | number> }): Promise<void> {
  res.writeHead(options.status ?? 200, { 'Content-Type': 'application/octet-stream', 'Content-Length': bytes.length, ...options.headers });
  for (let offset = 0; offset < bytes.length; offset += options.chunk) {
    if (res.destroyed || res.socket?.destroyed) return;
    res.write(bytes.subarray(offset, offset + options.chunk));
    await sleep(options.pauseMs);
  }
  res.end();
}
