import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';

/**
 * Content digests (image-spec descriptor.md#digests): `algorithm:hex`.
 * cs computes sha256 and sha512; a digest that does not parse is refused
 * before it is used in a path or a URL.
 */

export type Algorithm = 'sha256' | 'sha512';
const HEX_LENGTH: Record<Algorithm, number> = { sha256: 64, sha512: 128 };
const DIGEST = /^(sha256|sha512):([a-f0-9]+)$/;

export interface ParsedDigest {
  algorithm: Algorithm;
  hex: string;
}

export function parseDigest(digest: string): ParsedDigest | undefined {
  const match = DIGEST.exec(digest);
  if (!match) return undefined;
  const algorithm = match[1] as Algorithm;
  const hex = match[2] ?? '';
  return hex.length === HEX_LENGTH[algorithm] ? { algorithm, hex } : undefined;
}

export function isDigest(digest: string): boolean {
  return parseDigest(digest) !== undefined;
}

export function digestOf(bytes: Uint8Array | string, algorithm: Algorithm = 'sha256'): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
}

/**
 * A pass-through stream that hashes and counts what flows through it and
 * fails as soon as more bytes than expected arrive. Check `digest()` and
 * `bytes` at the end.
 */
export class DigestingStream extends Transform {
  private readonly hash: Hash;
  bytes = 0;

  constructor(
    readonly algorithm: Algorithm = 'sha256',
    private readonly maxBytes = Number.MAX_SAFE_INTEGER,
    initial?: Hash,
  ) {
    super();
    this.hash = initial ?? createHash(algorithm);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.maxBytes) {
      callback(new Error(`more than the expected ${this.maxBytes} bytes`));
      return;
    }
    this.hash.update(chunk);
    callback(null, chunk);
  }

  digest(): string {
    return `${this.algorithm}:${this.hash.copy().digest('hex')}`;
  }
}
