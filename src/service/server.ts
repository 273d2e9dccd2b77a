import { readFile } from 'node:fs/promises';
import { createServer as createHttp, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttps } from 'node:https';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import busboy from 'busboy';
import { CsError, InputError, UsageError } from '../util/errors.js';
import { packageRoot } from '../util/package-root.js';
import type { Env } from '../util/paths.js';
import { parseSize } from '../util/units.js';
import { FileTooLargeError, listFiles, readWorkspaceFile, withWorkspaceAgent, writeWorkspaceFile } from '../workspace/files.js';
import { createRestorePoint, deleteRestorePoint, listRestorePoints, restoreRestorePoint } from '../workspace/restore-points.js';
import { createStandalone, labelWorkspace, listAllWorkspaces, removeWorkspace, showWorkspace } from '../workspace/standalone.js';
import { resolveWorkspace } from '../workspace/lifecycle.js';
import { usageReport } from '../workspace/usage.js';
import { authenticate, type Principal, type Scope } from './keys.js';
import { Captured, checkRunRequest, ownedWorkspace, runCommand } from './run.js';
import { selfTest } from './self-test.js';

/**
 * `cs serve`: the HTTP API. Every request but the OpenAPI document carries
 * `Authorization: Bearer KEY`; each route needs one scope, and a key only
 * ever sees its owner's workspaces (anyone else's answer "not found", as a
 * missing one does). Handlers call the same library functions as the CLI.
 * Errors are JSON `{error: {code, message}}` with the HTTP status their
 * kind calls for. Node's http module is enough for a router of this size;
 * multipart uploads are parsed by busboy.
 */

export interface ServiceOptions {
  /** HOST:PORT; default 127.0.0.1:8080. */
  listen?: string;
  /** Needed (with `allowRemote`) to listen beyond loopback. */
  tls?: { cert: string; key: string };
  allowRemote?: boolean;
  /** Largest file served or accepted (default 16 MiB). */
  maxFileBytes?: number;
  /** Output kept per stream of a JSON exec answer (default 1 MiB). */
  maxOutputBytes?: number;
  env?: Env;
  log?: (line: string) => void;
  /** Extra routes (jobs, MCP) mounted by the caller. */
  routes?: Route[];
}

export interface RunningService {
  url: string;
  server: Server;
  close(): Promise<void>;
}

export interface Context {
  req: IncomingMessage;
  res: ServerResponse;
  principal: Principal;
  params: string[];
  query: URLSearchParams;
  options: Required<Pick<ServiceOptions, 'maxFileBytes' | 'maxOutputBytes'>> & ServiceOptions;
  /** `{ env }` when the service runs with one, to spread into library calls. */
  envOpt: { env?: Env };
  /** Aborted when the client goes away before the answer is complete. */
  signal: AbortSignal;
}

export interface Route {
  method: string;
  path: RegExp;
  /** Undefined: no key needed (the OpenAPI document). */
  scope?: Scope;
  handler: (ctx: Context) => Promise<unknown>;
}

export class HttpError extends CsError {
  constructor(readonly status: number, code: string, message: string) {
    super(message, { code, exitCode: 3 });
  }
}

function statusOf(error: unknown): number {
  if (error instanceof HttpError) return error.status;
  if (error instanceof FileTooLargeError) return 413;
  if (error instanceof CsError) {
    if (error.code === 'NOT_FOUND') return 404;
    if (error.code === 'EXISTS' || error.code === 'BUSY' || error.code === 'RUNNING' || error.code === 'LOCKED') return 409;
    if (error.code === 'QUOTA_EXCEEDED') return 507;
    if (error instanceof UsageError || error instanceof InputError) return 400;
    return 500;
  }
  return 500;
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

/** A JSON body, at most `limit` bytes. */
export async function readJson(req: IncomingMessage, limit: number): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new HttpError(413, 'TOO_LARGE', `the request body is over ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch {
    throw new UsageError('the request body is not valid JSON');
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(listen);
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (!m || !host || !Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--listen takes HOST:PORT (e.g. 127.0.0.1:8080), not "${listen}"`);
  if (host !== 'localhost' && isIP(host) === 0) throw new UsageError(`--listen: "${host}" is not an IP address`);
  return { host, port };
}

const str = (body: Record<string, unknown>, key: string): string | undefined => {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw new UsageError(`"${key}" must be a string`);
  return v;
};

function objectBody(body: unknown): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new UsageError('the body must be a JSON object');
  return body as Record<string, unknown>;
}

/** A path segment, decoded; a malformed %-escape is the client's mistake. */
function segment(value: string | undefined): string {
  try {
    return decodeURIComponent(value ?? '');
  } catch {
    throw new UsageError(`"${value ?? ''}" is not a valid URL path segment`);
  }
}

const id = (ctx: Context): string => segment(ctx.params[0]);

/** The API's own routes. */
function coreRoutes(): Route[] {
  const W = '/v1/workspaces/([^/]+)';
  const r = (method: string, path: string, scope: Scope | undefined, handler: Route['handler']): Route => ({ method, path: new RegExp(`^${path}$`), ...(scope ? { scope } : {}), handler });
  return [
    r('GET', '/v1/openapi.json', undefined, async (ctx) => {
      const text = await readFile(join(packageRoot(), 'schemas', 'service.openapi.json'), 'utf8');
      ctx.res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' });
      ctx.res.end(text);
      return undefined;
    }),
    r('POST', '/v1/exec', 'exec', async (ctx) => {
      const request = checkRunRequest(await readJson(ctx.req, 1024 * 1024));
      const captured = new Captured(ctx.options.maxOutputBytes);
      const result = await runCommand(ctx.principal, request, captured, { signal: ctx.signal, ...ctx.envOpt });
      return { ...result, ...captured.result() };
    }),
    r('POST', '/v1/exec/stream', 'exec', async (ctx) => {
      const request = checkRunRequest(await readJson(ctx.req, 1024 * 1024));
      ctx.res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive' });
      // A slow reader holds the command's output back (the agent pauses it) instead of the service buffering it.
      const event = (name: string, data: unknown): Promise<void> | undefined => {
        if (ctx.res.writableEnded || ctx.res.destroyed) return undefined;
        if (ctx.res.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`)) return undefined;
        return new Promise<void>((resolve) => {
          ctx.res.once('drain', resolve);
          ctx.res.once('close', resolve);
        });
      };
      // Characters split between chunks are joined again before they are sent.
      const out = new StringDecoder('utf8');
      const err = new StringDecoder('utf8');
      const text = (decoder: StringDecoder, name: string, chunk: Buffer): Promise<void> | undefined => {
        const data = decoder.write(chunk);
        return data === '' ? undefined : event(name, { data });
      };
      try {
        const result = await runCommand(
          ctx.principal,
          request,
          { stdout: (c) => text(out, 'stdout', c), stderr: (c) => text(err, 'stderr', c) },
          { signal: ctx.signal, ...ctx.envOpt, onWorkspace: (w) => event('workspace', { workspace: w }) },
        );
        const restOut = out.end();
        const restErr = err.end();
        if (restOut) await event('stdout', { data: restOut });
        if (restErr) await event('stderr', { data: restErr });
        await event('exit', result);
      } catch (error) {
        await event('error', { code: error instanceof CsError ? error.code : 'INTERNAL', message: error instanceof CsError ? error.message : 'internal error (see the service log)' });
      }
      ctx.res.end();
      return undefined;
    }),
    r('GET', '/v1/workspaces', 'workspaces:read', async (ctx) => {
      const all = await listAllWorkspaces(ctx.envOpt);
      return { workspaces: all.filter((w) => w.owner === ctx.principal.owner) };
    }),
    r('POST', '/v1/workspaces', 'workspaces:write', async (ctx) => {
      const body = objectBody(await readJson(ctx.req, 64 * 1024));
      const name = str(body, 'name');
      if (!name) throw new UsageError('"name" is required');
      const size = (key: string): number | undefined => {
        const v = body[key];
        if (v === undefined) return undefined;
        if (typeof v !== 'string' && typeof v !== 'number') throw new UsageError(`"${key}" must be a size like 2Gi`);
        const n = parseSize(v);
        if (n === undefined) throw new UsageError(`"${key}" must be a size like 2Gi`);
        return n;
      };
      // Names are one namespace per service: a taken name reads the same whoever holds it.
      const taken = await resolveWorkspace(name, ctx.options.env).then(() => true, () => false);
      if (taken) throw new InputError(`the name "${name}" is taken; pick another`, { code: 'EXISTS' });
      const cloneFrom = str(body, 'clone_from');
      if (cloneFrom) await ownedWorkspace(ctx.principal, cloneFrom, ctx.options.env);
      const memory = size('memory');
      const image = str(body, 'image');
      const snapshot = str(body, 'snapshot');
      const label = str(body, 'label');
      const disk = size('disk');
      const created = await createStandalone({
        name,
        owner: ctx.principal.owner,
        // The service user's personal snapshot holds their own files: never in a workspace made through the API (a clone has its source's).
        ...(cloneFrom ? {} : { personal: 'NONE' }),
        ...(image ? { image } : {}),
        ...(snapshot ? { snapshot } : {}),
        ...(cloneFrom ? { cloneFrom } : {}),
        ...(label ? { label } : {}),
        ...(body['template'] === true ? { template: true } : {}),
        ...(body['start'] === true ? { start: true } : {}),
        ...(typeof body['cpus'] === 'number' ? { cpus: body['cpus'] } : {}),
        ...(memory !== undefined ? { memoryMiB: Math.round(memory / 1024 / 1024) } : {}),
        ...(disk !== undefined ? { diskBytes: disk } : {}),
        ...ctx.envOpt,
      });
      ctx.res.statusCode = 201;
      return created;
    }),
    r('GET', W, 'workspaces:read', async (ctx) => {
      const { id: target } = await ownedWorkspace(ctx.principal, id(ctx), ctx.options.env);
      return showWorkspace({ target, ...ctx.envOpt });
    }),
    r('POST', `${W}/label`, 'workspaces:write', async (ctx) => {
      const { id: target } = await ownedWorkspace(ctx.principal, id(ctx), ctx.options.env);
      const label = str(objectBody(await readJson(ctx.req, 16 * 1024)), 'label');
      return labelWorkspace({ target, ...(label ? { label } : {}), ...ctx.envOpt });
    }),
    r('DELETE', W, 'workspaces:write', async (ctx) => {
      const { id: target } = await ownedWorkspace(ctx.principal, id(ctx), ctx.options.env);
      return removeWorkspace({ target, force: ctx.query.get('force') === 'true', ...ctx.envOpt });
    }),
    r('GET', `${W}/restore-points`, 'workspaces:read', async (ctx) => {
      const { id: target } = await ownedWorkspace(ctx.principal, id(ctx), ctx.options.env);
      return listRestorePoints({ target, ...ctx.envOpt });
    }),
    r('POST', `${W}/restore-points`, 'workspaces:write', async (ctx) => {
      const { id: target } = await ownedWorkspace(ctx.principal, id(ctx), ctx.options.env);
      const name = str(objectBody(await readJson(ctx.req, 16 * 1024)), 'name');
      if (!name) throw new UsageError('"name" is required');
      ctx.res.statusCode = 201;
      return createRestorePoint({ target, name, ...ctx.envOpt });
    }),
    r('POST', `${W}/restore-points/([^/]+)/restore`, 'workspaces:write', async (ctx) => {
      const { id: target } = await ownedWorkspace(ctx.principal, id(ctx), ctx.options.env);
      return restoreRestorePoint({ target, name: segment(ctx.params[1]), force: ctx.query.get('force') === 'true', ...ctx.envOpt });
    }),
    r('DELETE', `${W}/restore-points/([^/]+)`, 'workspaces:write', async (ctx) => {
      const { id: target } = await ownedWorkspace(ctx.principal, id(ctx), ctx.options.env);
      return deleteRestorePoint({ target, name: segment(ctx.params[1]), ...ctx.envOpt });
    }),
    r('GET', `${W}/fs`, 'files', async (ctx) => {
      const { ref, id: target } = await ownedWorkspace(ctx.principal, id(ctx), ctx.options.env);
      return withWorkspaceAgent(ref, target, (client) => listFiles(client, ctx.query.get('path') ?? '.'), ctx.options.env);
    }),
    r('GET', `${W}/fs/read`, 'files', async (ctx) => {
      const { ref, id: target } = await ownedWorkspace(ctx.principal, id(ctx), ctx.options.env);
      const { path, bytes } = await withWorkspaceAgent(ref, target, (client) => readWorkspaceFile(client, requiredPath(ctx), ctx.options.maxFileBytes), ctx.options.env);
      const text = bytes.toString('utf8');
      const isText = Buffer.from(text, 'utf8').equals(bytes);
      return { path, size: bytes.length, encoding: isText ? 'utf8' : 'base64', content: isText ? text : bytes.toString('base64') };
    }),
    r('GET', `${W}/fs/download`, 'files', async (ctx) => {
      const { ref, id: target } = await ownedWorkspace(ctx.principal, id(ctx), ctx.options.env);
      const { path, bytes } = await withWorkspaceAgent(ref, target, (client) => readWorkspaceFile(client, requiredPath(ctx), ctx.options.maxFileBytes), ctx.options.env);
      const name = path.split('/').pop() ?? 'file';
      ctx.res.writeHead(200, {
        'content-type': 'application/octet-stream',
        'content-length': bytes.length,
        'content-disposition': `attachment; filename="${name.replace(/[^A-Za-z0-9._-]/g, '_')}"`,
      });
      ctx.res.end(bytes);
      return undefined;
    }),
    r('POST', `${W}/fs/write`, 'files', async (ctx) => {
      const { ref, id: target } = await ownedWorkspace(ctx.principal, id(ctx), ctx.options.env);
      const body = objectBody(await readJson(ctx.req, Math.ceil(ctx.options.maxFileBytes * 1.4) + 64 * 1024));
      const path = str(body, 'path');
      const content = str(body, 'content') ?? '';
      if (!path) throw new UsageError('"path" is required');
      const encoding = str(body, 'encoding') ?? 'utf8';
      if (encoding !== 'utf8' && encoding !== 'base64') throw new UsageError('"encoding" is utf8 or base64');
      const data = Buffer.from(content, encoding);
      if (data.length > ctx.options.maxFileBytes) throw new FileTooLargeError(`the file is ${data.length} bytes; at most ${ctx.options.maxFileBytes} are accepted`);
      const mode = body['mode'] === undefined ? undefined : parseInt(String(body['mode']), 8);
      if (mode !== undefined && (!Number.isInteger(mode) || mode < 0 || mode > 0o7777)) throw new UsageError('"mode" is an octal string like "0644"');
      return withWorkspaceAgent(ref, target, (client) => writeWorkspaceFile(client, path, data, mode === undefined ? {} : { mode }), ctx.options.env);
    }),
    r('POST', `${W}/fs/upload`, 'files', async (ctx) => {
      const { ref, id: target } = await ownedWorkspace(ctx.principal, id(ctx), ctx.options.env);
      const files = await readMultipart(ctx);
      const dir = ctx.query.get('path') ?? '.';
      return withWorkspaceAgent(
        ref,
        target,
        async (client) => {
          const written = [];
          for (const f of files) written.push(await writeWorkspaceFile(client, `${dir}/${f.name}`, f.data));
          return { files: written };
        },
        ctx.options.env,
      );
    }),
    r('POST', `${W}/self-test`, 'exec', async (ctx) => {
      const { ref, id: target } = await ownedWorkspace(ctx.principal, id(ctx), ctx.options.env);
      return selfTest(ref, target, ctx.options.env);
    }),
    r('GET', '/v1/usage', 'workspaces:read', async (ctx) => {
      const report = await usageReport(ctx.options.env);
      const mine = new Set((await listAllWorkspaces(ctx.envOpt)).filter((w) => w.owner === ctx.principal.owner).map((w) => w.id));
      const workspaces = report.workspaces.filter((w) => mine.has(w.workspace));
      return { workspaces, ownerBytes: workspaces.reduce((sum, w) => sum + w.bytes, 0), quotaBytes: report.quotaBytes };
    }),
  ];
}

function requiredPath(ctx: Context): string {
  const path = ctx.query.get('path');
  if (!path) throw new UsageError('give ?path=');
  return path;
}

/** Files of a multipart/form-data upload, each at most the file limit; names stay plain (no folders). */
async function readMultipart(ctx: Context): Promise<{ name: string; data: Buffer }[]> {
  const type = ctx.req.headers['content-type'] ?? '';
  if (!type.startsWith('multipart/form-data')) throw new UsageError('an upload is multipart/form-data');
  const files: { name: string; data: Buffer }[] = [];
  await new Promise<void>((resolve, reject) => {
    let failed: Error | undefined;
    // One upload holds at most the file limit in all: the service keeps it in memory until it is written.
    let total = 0;
    const fail = (error: Error): void => {
      if (failed) return;
      failed = error;
      ctx.req.unpipe(parser);
      ctx.req.resume();
      reject(error);
    };
    const parser = busboy({ headers: ctx.req.headers, limits: { fileSize: ctx.options.maxFileBytes, files: 20, fields: 20, parts: 40 } });
    parser.on('file', (_field, stream, info) => {
      const chunks: Buffer[] = [];
      const name = info.filename ?? '';
      if (name === '' || name.includes('/') || name === '.' || name === '..' || name.includes('\0')) fail(new UsageError(`an uploaded file's name must be a plain file name, not "${name}"`));
      stream.on('data', (c: Buffer) => {
        total += c.length;
        if (total > ctx.options.maxFileBytes) fail(new FileTooLargeError(`the upload is over ${ctx.options.maxFileBytes} bytes`));
        if (!failed) chunks.push(c);
      });
      stream.on('limit', () => fail(new FileTooLargeError(`${name} is over ${ctx.options.maxFileBytes} bytes`)));
      stream.on('close', () => files.push({ name, data: Buffer.concat(chunks) }));
    });
    parser.on('filesLimit', () => fail(new UsageError('an upload holds at most 20 files')));
    parser.on('partsLimit', () => fail(new UsageError('an upload holds at most 40 parts')));
    parser.on('error', (error: Error) => fail(new UsageError(`the upload is not valid multipart: ${error.message}`)));
    parser.on('close', () => (failed ? undefined : resolve()));
    ctx.req.pipe(parser);
  });
  if (files.length === 0) throw new UsageError('the upload holds no file');
  return files;
}

export async function startService(options: ServiceOptions = {}): Promise<RunningService> {
  const { host, port } = parseListen(options.listen ?? '127.0.0.1:8080');
  if (!isLoopback(host)) {
    if (!options.allowRemote) throw new UsageError(`listening on ${host} reaches beyond this machine: pass --allow-remote, with --tls-cert and --tls-key`);
    if (!options.tls) throw new UsageError('listening beyond loopback needs TLS: give --tls-cert and --tls-key');
  }
  const settings = { maxFileBytes: 16 * 1024 * 1024, maxOutputBytes: 1024 * 1024, ...options };
  const envOpt = options.env ? { env: options.env } : {};
  const routes = [...coreRoutes(), ...(options.routes ?? [])];
  const log = options.log ?? (() => undefined);

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const started = Date.now();
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://localhost');
    } catch {
      sendJson(res, 400, { error: { code: 'BAD_REQUEST', message: 'the request target is not a valid URL path' } });
      return;
    }
    const controller = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) controller.abort();
    });
    let status = 500;
    try {
      const matching = routes.filter((r) => r.path.test(url.pathname));
      if (matching.length === 0) throw new HttpError(404, 'NOT_FOUND', `no such endpoint: ${url.pathname}`);
      const route = matching.find((r) => r.method === req.method);
      if (!route) throw new HttpError(405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed on ${url.pathname} (${matching.map((r) => r.method).join(', ')})`);
      let principal: Principal = { keyId: '', owner: '', scopes: new Set() };
      if (route.scope) {
        const header = req.headers.authorization ?? '';
        const token = /^Bearer (\S+)$/.exec(header)?.[1];
        if (!token) throw new HttpError(401, 'UNAUTHENTICATED', 'send an API key: Authorization: Bearer KEY (make one with `cs apikey create`)');
        const found = await authenticate(token, options.env);
        if (!found) throw new HttpError(401, 'UNAUTHENTICATED', 'the API key is unknown or revoked');
        if (!found.scopes.has(route.scope)) throw new HttpError(403, 'FORBIDDEN', `this API key lacks the "${route.scope}" scope`);
        principal = found;
      }
      const params = (route.path.exec(url.pathname) ?? []).slice(1);
      const body = await route.handler({ req, res, principal, params, query: url.searchParams, options: settings, envOpt, signal: controller.signal });
      status = res.statusCode;
      if (!res.headersSent) sendJson(res, res.statusCode || 200, body);
    } catch (error) {
      status = statusOf(error);
      if (status === 500 && !(error instanceof CsError)) log(`internal error on ${req.method} ${url.pathname}: ${(error as Error).stack ?? String(error)}`);
      const code = error instanceof CsError ? error.code : 'INTERNAL';
      // An unexpected error's text may name host paths: it goes to the log, the client gets a plain word.
      const message = error instanceof CsError ? error.message : 'internal error (see the service log)';
      if (!res.headersSent) sendJson(res, status, { error: { code, message } });
      else res.end();
    } finally {
      log(`${req.method} ${url.pathname} ${status} ${Date.now() - started} ms`);
    }
  };

  const listener = (req: IncomingMessage, res: ServerResponse): void => {
    handle(req, res).catch((error: Error) => {
      // Nothing a request does may end the service.
      log(`internal error: ${error.stack ?? error.message}`);
      if (!res.headersSent) sendJson(res, 500, { error: { code: 'INTERNAL', message: 'internal error' } });
      else res.destroy();
    });
  };
  const server = options.tls ? createHttps({ cert: await readFile(options.tls.cert), key: await readFile(options.tls.key) }, listener) : createHttp(listener);
  server.requestTimeout = 0;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const address = server.address();
  const actualPort = typeof address === 'object' && address ? address.port : port;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  return {
    url: `${options.tls ? 'https' : 'http'}://${shownHost}:${actualPort}`,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
