import { isIP, connect as connectTcp, type Socket } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { HttpTimeoutError, IDLE_TIMEOUT_MS, stalled, type HttpResponse } from './http.js';

/**
 * A GET whose body the kernel copies straight into memory that is used
 * again and again: the transport for blob downloads into the store.
 *
 * Why not node:http: it hands every body chunk over as a fresh copy of a
 * fresh socket buffer. On the virtual machines cs runs on, first touching a
 * page of new memory costs microseconds (about 1.2 ms per MiB measured), so
 * fresh memory for every byte of a 263 MB pull cost more CPU than hashing it,
 * and on two cores that decided the pace. Here the socket reads (`onread`)
 * into 1 MiB slabs taken from a small pool; a slab goes back to the pool
 * once every chunk cut from it has been consumed.
 *
 * The price is a contract: the body's chunks are BORROWED. A chunk is valid
 * until the reader asks for the next one; whoever keeps bytes longer copies
 * them (the store's spools copy into their own reused buffers at once).
 *
 * Deliberately small: one request per connection (`Connection: close`; a
 * blob is one long body, so there is little to gain from reuse), HTTP/1.1
 * only, Content-Length, chunked or until-close bodies. Hostile input is
 * bounded: the response head may not exceed 64 KiB, chunk-size lines 4 KiB,
 * and malformed framing is an error, never a guess. Redirects, credentials
 * and statuses stay the caller's (client.ts) business, as with ./http.ts.
 */

const SLAB_BYTES = 1024 * 1024;
/** The room offered to each read; a slab with less left is retired. */
const MIN_READ = 64 * 1024;
const MAX_HEAD = 64 * 1024;
const MAX_CHUNK_LINE = 4 * 1024;
/** Bytes received and not yet taken by the consumer before the socket is paused. */
const HIGH_WATER = 8 * 1024 * 1024;
/** Slabs kept for the next reads once their chunks are consumed. */
const SPARE_SLABS = 24;

export interface LeanRequest {
  headers: Record<string, string>;
  headersTimeoutMs: number;
}

class ProtocolError extends Error {
  readonly code = 'EPROTO';
}

/** A network failure shaped like node's own (client.ts maps `code`). */
function closedEarly(message: string): Error {
  return Object.assign(new Error(message), { code: 'ECONNRESET' });
}

export async function getLean(url: URL, init: LeanRequest): Promise<HttpResponse> {
  // TLS is loaded on the first https download (a local registry never needs it).
  const connectTls = url.protocol === 'https:' ? (await import('node:tls')).connect : undefined;
  const lines = [`GET ${url.pathname}${url.search} HTTP/1.1`, `Host: ${url.host}`];
  for (const [name, value] of Object.entries(init.headers)) {
    if (/[\r\n]/.test(name) || /[\r\n]/.test(value)) throw new ProtocolError(`header ${JSON.stringify(name)} contains a line break`);
    lines.push(`${name}: ${value}`);
  }
  lines.push('Connection: close', '', '');
  return new Promise<HttpResponse>((resolve, reject) => {
    const exchange = new Exchange(resolve, reject);
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    const port = Number(url.port || (connectTls ? 443 : 80));
    const onread = { buffer: () => exchange.nextBuffer(), callback: (n: number, buffer: Uint8Array) => exchange.received(n, buffer) };
    const socket = connectTls
      ? // `onread` works for TLS sockets too (node 15+), though @types/node only declares it for net.
        connectTls({ host, port, ...(isIP(host) ? {} : { servername: host }), ALPNProtocols: ['http/1.1'], onread } as ConnectionOptions)
      : connectTcp({ host, port, onread });
    exchange.attach(socket, init.headersTimeoutMs);
    socket.write(lines.join('\r\n'));
  });
}

/** A slab and how many of its chunks are still with the reader or in the queue. */
interface Slab {
  bytes: Buffer;
  used: number;
  out: number;
  retired: boolean;
}

const spareSlabs: Buffer[] = [];
/** The read buffer of connections that are done: whatever lands there is never looked at. */
const DEAD_END = Buffer.allocUnsafeSlow(MIN_READ);

function newSlab(): Slab {
  return { bytes: spareSlabs.pop() ?? Buffer.allocUnsafeSlow(SLAB_BYTES), used: 0, out: 0, retired: false };
}

/** A retired slab none of whose chunks is out any more goes back to the pool. */
function giveBackIfFree(slab: Slab): void {
  if (slab.retired && slab.out === 0 && spareSlabs.length < SPARE_SLABS) spareSlabs.push(slab.bytes);
}

function release(slab: Slab): void {
  slab.out--;
  giveBackIfFree(slab);
}

type BodyMode = { kind: 'length'; left: number } | { kind: 'chunked' } | { kind: 'close' } | { kind: 'none' };

/** One request's life: the head being parsed, then the body being queued for its reader. */
class Exchange {
  private socket: Socket | undefined;
  private slab = newSlab();
  /** The slab the read in progress fills. */
  private reading: Slab = this.slab;
  private headTimer: NodeJS.Timeout | undefined;
  private head: Buffer[] = [];
  private headBytes = 0;
  private response: { status: number; headers: Map<string, string> } | undefined;
  private mode: BodyMode = { kind: 'none' };
  // chunked framing
  private chunkLeft = 0;
  private chunkState: 'size' | 'data' | 'data-end' | 'trailers' = 'size';
  private line = '';
  private trailerBytes = 0;
  // the body queue: chunks and the slab each was cut from
  private readonly queue: { chunk: Buffer; slab: Slab | undefined }[] = [];
  private queued = 0;
  private ended = false;
  private failure: Error | undefined;
  private wake: (() => void) | undefined;
  private paused = false;

  constructor(
    private readonly resolve: (response: HttpResponse) => void,
    private readonly reject: (error: Error) => void,
  ) {}

  attach(socket: Socket, headersTimeoutMs: number): void {
    this.socket = socket;
    this.headTimer = setTimeout(() => this.fail(new HttpTimeoutError('The operation timed out')), headersTimeoutMs);
    socket.setTimeout(IDLE_TIMEOUT_MS, () => this.fail(stalled()));
    socket.on('error', (error) => this.fail(error));
    socket.on('close', () => this.closed());
  }

  nextBuffer(): Buffer {
    // Node asks for the next read's buffer after every read, even one after which the exchange
    // ended and its socket was destroyed: that one gets no slab (it would never go back, and the
    // current one may already be lent to another exchange), only memory nobody reads.
    if (this.ended || this.failure) return DEAD_END;
    if (this.slab.retired || SLAB_BYTES - this.slab.used < MIN_READ) {
      this.retire();
      this.slab = newSlab();
    }
    this.reading = this.slab;
    // Reads of at most MIN_READ: whoever hashes or copies them finds the bytes still in the CPU's cache.
    return this.slab.bytes.subarray(this.slab.used, this.slab.used + MIN_READ);
  }

  /** No more reads go into the current slab; it returns to the pool once its chunks are consumed. */
  private retire(): void {
    if (this.slab.retired) return;
    this.slab.retired = true;
    giveBackIfFree(this.slab);
  }

  received(n: number, buffer: Uint8Array): boolean {
    // `buffer` is the view nextBuffer() gave for this read, in this.reading.
    const data = Buffer.from(buffer.buffer, buffer.byteOffset, n);
    const slab = this.reading;
    if (buffer.buffer === slab.bytes.buffer) slab.used = Math.max(slab.used, buffer.byteOffset - slab.bytes.byteOffset + n);
    try {
      this.feed(data);
    } catch (error) {
      this.fail(error as Error);
      return false;
    }
    if (this.queued > HIGH_WATER && !this.ended) {
      this.paused = true;
      return false;
    }
    return true;
  }

  private feed(data: Buffer): void {
    let rest = data;
    while (rest.length > 0 && !this.ended && !this.failure) {
      if (!this.response) {
        rest = this.readHead(rest);
        continue;
      }
      rest = this.mode.kind === 'chunked' ? this.readChunked(rest) : this.readPlain(rest);
    }
  }

  private readHead(data: Buffer): Buffer {
    this.head.push(data);
    this.headBytes += data.length;
    const all = this.head.length === 1 ? data : Buffer.concat(this.head, this.headBytes);
    const end = all.indexOf('\r\n\r\n');
    if (end < 0) {
      if (this.headBytes > MAX_HEAD) throw new ProtocolError(`response head is larger than ${MAX_HEAD} bytes`);
      this.head = [Buffer.from(all)]; // a copy: the slab under `data` may be reused
      return Buffer.alloc(0);
    }
    if (end > MAX_HEAD) throw new ProtocolError(`response head is larger than ${MAX_HEAD} bytes`);
    this.head = [];
    this.headBytes = 0;
    const [statusLine = '', ...fields] = all.subarray(0, end).toString('latin1').split('\r\n');
    const match = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(statusLine);
    if (!match) throw new ProtocolError(`not an HTTP/1.1 response: ${JSON.stringify(statusLine.slice(0, 80))}`);
    const status = Number(match[1]);
    const rest = all.subarray(end + 4);
    if (status >= 100 && status < 200) return rest; // an interim response; the real one follows
    const headers = new Map<string, string>();
    for (const field of fields) {
      const colon = field.indexOf(':');
      if (colon <= 0 || /\s/.test(field.slice(0, colon))) throw new ProtocolError(`malformed header line ${JSON.stringify(field.slice(0, 80))}`);
      const name = field.slice(0, colon).toLowerCase();
      const value = field.slice(colon + 1).trim();
      const earlier = headers.get(name);
      headers.set(name, earlier === undefined ? value : `${earlier}, ${value}`);
    }
    this.mode = bodyMode(status, headers);
    this.response = { status, headers };
    clearTimeout(this.headTimer);
    this.resolve(this.asResponse());
    if (this.mode.kind === 'none') this.finish();
    return rest;
  }

  private readPlain(data: Buffer): Buffer {
    if (this.mode.kind === 'length') {
      const take = Math.min(this.mode.left, data.length);
      if (take > 0) this.push(data.subarray(0, take));
      this.mode.left -= take;
      if (this.mode.left === 0) this.finish();
      return Buffer.alloc(0); // bytes past the body are dropped: the connection closes
    }
    this.push(data); // until close
    return Buffer.alloc(0);
  }

  private readChunked(data: Buffer): Buffer {
    let at = 0;
    while (at < data.length && !this.ended) {
      if (this.chunkState === 'data') {
        const take = Math.min(this.chunkLeft, data.length - at);
        this.push(data.subarray(at, at + take));
        at += take;
        this.chunkLeft -= take;
        if (this.chunkLeft === 0) this.chunkState = 'data-end';
        continue;
      }
      const newline = data.indexOf(0x0a, at);
      const piece = data.subarray(at, newline < 0 ? data.length : newline + 1).toString('latin1');
      at += piece.length;
      this.line += piece;
      if (this.line.length > MAX_CHUNK_LINE) throw new ProtocolError('chunked body: a size or trailer line is too long');
      if (newline < 0) break;
      const line = this.line.replace(/\r?\n$/, '');
      this.line = '';
      if (this.chunkState === 'data-end') {
        if (line !== '') throw new ProtocolError('chunked body: a chunk does not end where its size says');
        this.chunkState = 'size';
      } else if (this.chunkState === 'size') {
        const size = /^([0-9a-fA-F]{1,15})(?:\s*;.*)?$/.exec(line);
        if (!size) throw new ProtocolError(`chunked body: invalid chunk size ${JSON.stringify(line.slice(0, 40))}`);
        this.chunkLeft = Number.parseInt(size[1] as string, 16);
        this.chunkState = this.chunkLeft === 0 ? 'trailers' : 'data';
      } else if (line === '') {
        this.finish(); // the empty line after the trailers
      } else {
        // Trailers are read and dropped, but not without end.
        this.trailerBytes += line.length;
        if (this.trailerBytes > MAX_HEAD) throw new ProtocolError(`chunked body: trailers are larger than ${MAX_HEAD} bytes`);
      }
    }
    return Buffer.alloc(0);
  }

  private push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    // A chunk is cut from the slab of the read that brought it, unless it was gathered by copying
    // (the end of a response head split across reads), or came in after the end (DEAD_END).
    const slab = chunk.buffer === this.reading.bytes.buffer ? this.reading : undefined;
    if (slab) slab.out++;
    this.queue.push({ chunk, slab });
    this.queued += chunk.length;
    this.wakeReader();
  }

  private finish(): void {
    if (this.ended) return;
    this.ended = true;
    this.socket?.destroy();
    this.retire();
    this.wakeReader();
  }

  private closed(): void {
    if (this.ended || this.failure) return;
    if (this.response && this.mode.kind === 'close') {
      this.finish();
      return;
    }
    const why = this.response ? 'connection closed before the end of the body' : 'connection closed before a response';
    this.fail(closedEarly(why));
  }

  private fail(error: Error): void {
    if (this.ended || this.failure) return;
    this.failure = error;
    clearTimeout(this.headTimer);
    this.socket?.destroy();
    this.retire();
    this.dropQueue();
    if (!this.response) this.reject(error);
    this.wakeReader();
  }

  /** Chunks nobody will read: their slabs go back to the pool. */
  private dropQueue(): void {
    for (const entry of this.queue.splice(0)) if (entry.slab) release(entry.slab);
    this.queued = 0;
  }

  private wakeReader(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private async *chunks(): AsyncGenerator<Buffer> {
    let lent: Slab | undefined;
    try {
      for (;;) {
        const next = this.queue.shift();
        if (next) {
          this.queued -= next.chunk.length;
          if (this.paused && this.queued <= HIGH_WATER / 2) {
            this.paused = false;
            this.socket?.resume();
          }
          lent = next.slab;
          yield next.chunk;
          // The reader asked for more: the chunk it had is given back.
          if (lent) release(lent);
          lent = undefined;
          continue;
        }
        if (this.failure) throw this.failure;
        if (this.ended) return;
        await new Promise<void>((resolve) => (this.wake = resolve));
      }
    } finally {
      if (lent) release(lent);
      // The reader stopped early (or the body ended): nothing more is wanted from this connection.
      if (!this.ended) this.fail(closedEarly('body abandoned'));
      this.dropQueue();
    }
  }

  private asResponse(): HttpResponse {
    const { status, headers } = this.response as { status: number; headers: Map<string, string> };
    return {
      status,
      header: (name) => headers.get(name.toLowerCase()) ?? null,
      body: this.chunks(),
      discard: () => {
        if (!this.ended) this.fail(closedEarly('body discarded'));
        this.dropQueue();
      },
    };
  }
}

function bodyMode(status: number, headers: Map<string, string>): BodyMode {
  if (status === 204 || status === 304) return { kind: 'none' };
  const encoding = headers.get('transfer-encoding');
  if (encoding !== undefined) {
    const codings = encoding.split(',').map((c) => c.trim().toLowerCase());
    if (codings.at(-1) !== 'chunked' || codings.some((c) => c !== 'chunked' && c !== 'identity')) {
      throw new ProtocolError(`unsupported Transfer-Encoding ${JSON.stringify(encoding.slice(0, 60))}`);
    }
    return { kind: 'chunked' };
  }
  const length = headers.get('content-length');
  if (length !== undefined) {
    const values = new Set(length.split(',').map((v) => v.trim()));
    const [only] = values;
    if (values.size !== 1 || only === undefined || !/^\d{1,15}$/.test(only)) throw new ProtocolError(`invalid Content-Length ${JSON.stringify(length.slice(0, 60))}`);
    const left = Number(only);
    return left === 0 ? { kind: 'none' } : { kind: 'length', left };
  }
  return { kind: 'close' };
}
