import { VmError } from '../util/errors.js';

/**
 * The wire format of cs-agent/1, the protocol between cs and the agent inside
 * a workspace's VM (docs/agent-protocol.md). A frame is a 9-byte header (u32
 * BE payload length, u8 type, u32 BE stream id) and its payload; control
 * payloads are lists of fields (u8 tag, u32 BE length, bytes).
 *
 * This module only encodes and decodes: AgentClient speaks the protocol, and
 * a relay can use FrameDecoder + encodeFrame to rewrite stream ids.
 */

export const PROTOCOL_VERSION = '1';
export const PROTOCOL_NAME = `cs-agent/${PROTOCOL_VERSION}`;
export const HEADER_SIZE = 9;
/** A frame whose payload is larger is a protocol error. */
export const MAX_PAYLOAD = 1024 * 1024;
/** The largest STDOUT/STDERR chunk the agent sends; cs sends STDIN in chunks of this size too. */
export const DATA_CHUNK = 64 * 1024;
/** Stream 0 is the connection itself (HELLO). */
export const CONNECTION_STREAM = 0;
export const MAX_STREAM_ID = 0xffff_ffff;

export const FrameType = {
  hello: 0x01,
  exec: 0x02,
  stdin: 0x03,
  stdout: 0x04,
  stderr: 0x05,
  exit: 0x06,
  signal: 0x07,
  resize: 0x08,
  readFile: 0x09,
  writeFile: 0x0a,
  info: 0x0b,
  poweroff: 0x0c,
  started: 0x10,
  error: 0x13,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export const Tag = {
  arg: 1,
  env: 2,
  cwd: 3,
  user: 4,
  timeoutMs: 5,
  tty: 6,
  stdin: 7,
  detach: 8,
  log: 9,
  path: 10,
  mode: 11,
  uid: 12,
  gid: 13,
  mkdirs: 14,
  pid: 20,
  message: 21,
  errno: 22,
  code: 30,
  signal: 31,
  timedOut: 32,
  size: 33,
  fileMode: 34,
  rows: 40,
  cols: 41,
  version: 50,
  agent: 51,
  uptimeMs: 52,
  pid1: 53,
  loadavg: 54,
} as const;
export type Tag = (typeof Tag)[keyof typeof Tag];

/** Request types: each opens a stream that the agent ends with exactly one final frame. */
export const REQUEST_TYPES: ReadonlySet<number> = new Set([
  FrameType.exec,
  FrameType.readFile,
  FrameType.writeFile,
  FrameType.info,
  FrameType.poweroff,
]);

/** Whether an agent→host frame of this type is the last one of its stream. */
export function endsStream(type: number): boolean {
  return type === FrameType.exit || type === FrameType.error || type === FrameType.info;
}

export interface Frame {
  type: number;
  stream: number;
  payload: Buffer;
}

function protocolError(message: string): VmError {
  return new VmError(`agent protocol error: ${message}`, { code: 'AGENT_PROTOCOL' });
}

export function encodeFrameHeader(type: number, stream: number, payloadLength: number): Buffer {
  if (payloadLength > MAX_PAYLOAD) throw protocolError(`a frame of ${payloadLength} bytes exceeds the limit of ${MAX_PAYLOAD}`);
  if (!Number.isInteger(stream) || stream < 0 || stream > MAX_STREAM_ID) throw protocolError(`stream id ${stream} is out of range`);
  const header = Buffer.allocUnsafe(HEADER_SIZE);
  header.writeUInt32BE(payloadLength, 0);
  header.writeUInt8(type, 4);
  header.writeUInt32BE(stream, 5);
  return header;
}

export function encodeFrame(type: number, stream: number, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  return Buffer.concat([encodeFrameHeader(type, stream, payload.length), payload]);
}

export interface FrameDecoderOptions {
  /** Largest accepted payload (default and maximum: MAX_PAYLOAD). */
  maxPayload?: number;
}

/**
 * Cuts a byte stream into frames, whatever the chunking. A header announcing
 * more than the cap throws a VmError (code AGENT_PROTOCOL): the stream is
 * then out of step and the connection should be closed; reset() starts over
 * for a new connection.
 */
export class FrameDecoder {
  readonly #maxPayload: number;
  #chunks: Buffer[] = [];
  #buffered = 0;

  constructor(options: FrameDecoderOptions = {}) {
    this.#maxPayload = Math.min(options.maxPayload ?? MAX_PAYLOAD, MAX_PAYLOAD);
  }

  /** Bytes held that do not form a whole frame yet. */
  get buffered(): number {
    return this.#buffered;
  }

  reset(): void {
    this.#chunks = [];
    this.#buffered = 0;
  }

  /** Adds bytes and returns every frame they complete. */
  push(chunk: Uint8Array): Frame[] {
    if (chunk.length > 0) {
      this.#chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length));
      this.#buffered += chunk.length;
    }
    const frames: Frame[] = [];
    while (this.#buffered >= HEADER_SIZE) {
      const header = this.#peek(HEADER_SIZE);
      const length = header.readUInt32BE(0);
      if (length > this.#maxPayload) {
        this.reset();
        throw protocolError(`a frame of ${length} bytes exceeds the limit of ${this.#maxPayload}`);
      }
      if (this.#buffered < HEADER_SIZE + length) break;
      this.#take(HEADER_SIZE);
      frames.push({ type: header.readUInt8(4), stream: header.readUInt32BE(5), payload: this.#take(length) });
    }
    return frames;
  }

  /** The first n buffered bytes, without consuming them (n <= buffered). */
  #peek(n: number): Buffer {
    const first = this.#chunks[0] as Buffer;
    if (first.length >= n) return first.subarray(0, n);
    // Join just enough leading chunks to hold n bytes.
    let count = 0;
    let length = 0;
    while (length < n) length += (this.#chunks[count++] as Buffer).length;
    const merged = Buffer.concat(this.#chunks.slice(0, count), length);
    this.#chunks.splice(0, count, merged);
    return merged.subarray(0, n);
  }

  /** Removes and returns the first n buffered bytes (n <= buffered). */
  #take(n: number): Buffer {
    // A frame with an empty payload (EOF on stdin) may end the buffer exactly.
    if (n === 0) return Buffer.alloc(0);
    this.#buffered -= n;
    const first = this.#chunks[0] as Buffer;
    if (first.length === n) {
      this.#chunks.shift();
      return first;
    }
    if (first.length > n) {
      this.#chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const parts: Buffer[] = [];
    let left = n;
    while (left > 0) {
      const chunk = this.#chunks[0] as Buffer;
      if (chunk.length <= left) {
        parts.push(chunk);
        this.#chunks.shift();
        left -= chunk.length;
      } else {
        parts.push(chunk.subarray(0, left));
        this.#chunks[0] = chunk.subarray(left);
        left = 0;
      }
    }
    return Buffer.concat(parts, n);
  }
}

export type FieldValue = string | number | Uint8Array;
export type FieldInput = readonly [tag: number, value: FieldValue];

export interface Field {
  tag: number;
  value: Buffer;
}

/** Encodes fields in order; numbers become ASCII decimal. */
export function encodeFields(fields: Iterable<FieldInput>): Buffer {
  const parts: Buffer[] = [];
  for (const [tag, value] of fields) {
    const bytes = typeof value === 'string'
      ? Buffer.from(value, 'utf8')
      : typeof value === 'number'
        ? Buffer.from(String(Math.trunc(value)), 'ascii')
        : Buffer.from(value.buffer, value.byteOffset, value.length);
    const head = Buffer.allocUnsafe(5);
    head.writeUInt8(tag, 0);
    head.writeUInt32BE(bytes.length, 1);
    parts.push(head, bytes);
  }
  return Buffer.concat(parts);
}

/** Decodes a field list; a field running past the payload's end is a protocol error. */
export function decodeFields(payload: Buffer): Field[] {
  const fields: Field[] = [];
  let offset = 0;
  while (offset < payload.length) {
    if (payload.length - offset < 5) throw protocolError('a field header is cut short');
    const tag = payload.readUInt8(offset);
    const length = payload.readUInt32BE(offset + 1);
    if (length > payload.length - offset - 5) throw protocolError(`field ${tag} runs past the end of its frame`);
    fields.push({ tag, value: payload.subarray(offset + 5, offset + 5 + length) });
    offset += 5 + length;
  }
  return fields;
}

/** The first value of a tag, as UTF-8 text. */
export function fieldText(fields: readonly Field[], tag: number): string | undefined {
  return fields.find((f) => f.tag === tag)?.value.toString('utf8');
}

/** Every value of a repeatable tag, as UTF-8 text. */
export function fieldTexts(fields: readonly Field[], tag: number): string[] {
  return fields.filter((f) => f.tag === tag).map((f) => f.value.toString('utf8'));
}

/** The first value of a tag as a number (decimal, or octal with radix 8); undefined if absent or not a number. */
export function fieldNumber(fields: readonly Field[], tag: number, radix: 10 | 8 = 10): number | undefined {
  const text = fieldText(fields, tag);
  if (text === undefined) return undefined;
  const pattern = radix === 8 ? /^[0-7]+$/ : /^[0-9]+$/;
  return pattern.test(text) ? Number.parseInt(text, radix) : undefined;
}
