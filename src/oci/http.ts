import type { Agent as HttpAgent, IncomingMessage, request as httpRequest } from 'node:http';
import { Readable } from 'node:stream';

/**
 * The HTTP exchange under the registry client, on node:http and node:https
 * rather than the global fetch. Measured on a two-core machine pulling a
 * 263 MB image from a loopback registry: fetch's body path (undici's
 * WebAssembly parser, web streams turned back into chunks) cost about twice
 * the CPU of node:http's native parser, and compiling that WebAssembly kept
 * every cs process alive for a further ~0.2 s before it could exit. Nothing
 * here follows redirects or adds credentials: the client decides both.
 */

export interface HttpResponse {
  readonly status: number;
  /** A response header (repeated ones joined with ", "), or null. */
  header(name: string): string | null;
  /** The body, as Buffers; errors when the connection drops before its end. */
  readonly body: AsyncIterable<Buffer>;
  /**
   * Done with the body, read or not: a short one is drained so the
   * connection is reused, a long one closes it. Every response that is not
   * read to its end must be discarded.
   */
  discard(): void;
}

export interface HttpRequest {
  method: string;
  headers: Record<string, string>;
  body?: Uint8Array | Readable | undefined;
  /** Time allowed until the response headers; restarts with every chunk of a streamed request body. */
  headersTimeoutMs: number;
}

/**
 * How the registry client sends one request: ./http.ts's send, or
 * ./http-lean.ts for a long body (`lean`, a GET whose chunks are borrowed).
 * Tests of rules about hosts cs must not reach give the client their own.
 */
export type Transport = (url: URL, init: HttpRequest & { lean?: boolean }) => Promise<HttpResponse>;

/** A connection with no bytes either way for this long is given up (a stalled body); ./http-lean.ts too. */
export const IDLE_TIMEOUT_MS = 5 * 60 * 1000;
/** Bodies at most this long are read to the end by discard(), keeping the connection. */
const DRAIN_LIMIT = 64 * 1024;

// One pool of kept-alive connections per process; idle sockets do not hold the process open,
// and are closed after IDLE_POOLED_MS (as fetch did), before a server or proxy drops them under us.
const IDLE_POOLED_MS = 4_000;
/**
 * node:http and node:https (and TLS under it) are loaded on the first request
 * of their kind: a pull from a local registry never needs TLS, and the
 * commands that reach this module without going to a registry (a warm
 * `cs rootfs assemble`) need neither.
 */
type Via = { agent: HttpAgent; request: typeof httpRequest };
let http: Via | undefined;
let https: Via | undefined;

async function loadHttp(secure: boolean): Promise<Via> {
  if (secure) {
    if (!https) {
      const mod = await import('node:https');
      https ??= { agent: new mod.Agent({ keepAlive: true, maxSockets: 16, timeout: IDLE_POOLED_MS }), request: mod.request };
    }
    return https;
  }
  if (!http) {
    const mod = await import('node:http');
    http ??= { agent: new mod.Agent({ keepAlive: true, maxSockets: 16, timeout: IDLE_POOLED_MS }), request: mod.request };
  }
  return http;
}

export class HttpTimeoutError extends Error {
  override readonly name = 'TimeoutError';
}

/** The error of a connection that went IDLE_TIMEOUT_MS without a byte. */
export function stalled(): HttpTimeoutError {
  return new HttpTimeoutError('no data for 5 minutes');
}

export async function send(url: URL, init: HttpRequest): Promise<HttpResponse> {
  const via = await loadHttp(url.protocol === 'https:');
  try {
    return await sendOnce(url, init, via);
  } catch (error) {
    // A kept-alive connection the server closed just as the request went out: the request never
    // reached it, so it is sent once more on a new connection (unless its body was a stream).
    if (!(error as { reusedSocket?: boolean }).reusedSocket || init.body instanceof Readable) throw error;
    return sendOnce(url, init, via);
  }
}

function sendOnce(url: URL, init: HttpRequest, via: Via): Promise<HttpResponse> {
  return new Promise<HttpResponse>((resolve, reject) => {
    let settled = false;
    const fail = (error: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(error);
    };
    const request = via.request(url, { method: init.method, headers: init.headers, agent: via.agent });
    const timer = setTimeout(() => request.destroy(new HttpTimeoutError('The operation timed out')), init.headersTimeoutMs);
    request.setTimeout(IDLE_TIMEOUT_MS, () => request.destroy(stalled()));
    request.on('error', (error: Error & { code?: string }) => {
      // Only a reset before any response on a reused connection is worth a second try.
      if (request.reusedSocket && (error.code === 'ECONNRESET' || error.code === 'EPIPE')) Object.assign(error, { reusedSocket: true });
      fail(error);
    });
    request.on('response', (message: IncomingMessage) => {
      if (settled) {
        message.destroy();
        return;
      }
      settled = true;
      clearTimeout(timer);
      resolve(wrap(message));
    });
    const body = init.body;
    if (body instanceof Readable) {
      body.on('data', () => timer.refresh());
      body.on('error', (error) => request.destroy(error));
      body.pipe(request);
    } else {
      request.end(body === undefined ? undefined : Buffer.from(body.buffer, body.byteOffset, body.byteLength));
    }
  });
}

function wrap(message: IncomingMessage): HttpResponse {
  return {
    status: message.statusCode ?? 0,
    header(name) {
      const value = message.headers[name.toLowerCase()];
      if (value === undefined) return null;
      return Array.isArray(value) ? value.join(', ') : value;
    },
    body: message,
    discard() {
      // A response must be read to its end (even an empty one) before its connection is free
      // for the next request: an unread one would hold a pooled socket, and the process, open.
      if (message.destroyed) return;
      const length = Number(message.headers['content-length'] ?? NaN);
      if (message.complete || (Number.isFinite(length) && length <= DRAIN_LIMIT)) message.resume();
      else message.destroy();
    },
  };
}

/** Read a body whole, failing past `max` bytes (the connection is then closed). */
export async function readBody(response: HttpResponse, max: number, tooBig: () => Error): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of response.body) {
    total += chunk.length;
    if (total > max) {
      response.discard();
      throw tooBig();
    }
    // A copy: the body may be the lean reader's, whose chunks are borrowed.
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks, total);
}
