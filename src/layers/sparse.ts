import { ftruncateSync, writeSync } from 'node:fs';
import type { Header } from 'tar-stream';
import { LayerError } from '../util/errors.js';

/**
 * Sparse files in PAX layers, as GNU tar writes them with `--sparse
 * --format=posix` (GNU tar manual, "Storing Sparse Files"; the formats are
 * named by GNU.sparse.major and .minor):
 *
 * - 1.0 (GNU tar's default): the entry's data starts with the map, decimal
 *   numbers one per line (the count, then offset and size of each piece),
 *   padded with zeros to a 512-byte boundary, followed by the pieces.
 * - 0.1: the map is the PAX record GNU.sparse.map ("offset,size,...").
 * - 0.0 repeats GNU.sparse.offset and .numbytes records, which a PAX decoder
 *   that keeps one value per key cannot read: refused, as are GNU's old
 *   typeflag 'S' entries (their map sits in header fields tar-stream does
 *   not expose).
 *
 * The entry's header name is a placeholder (`GNUSparseFile.PID/NAME`); the
 * real one is GNU.sparse.name. Everything in the map is hostile input:
 * pieces must be in order, must not overlap, must lie inside the real size,
 * and must add up to exactly the data the entry carries.
 */

export interface Sparse {
  name: string;
  realSize: number;
  /** The map, when the PAX records carry it (0.1); undefined when it leads the data (1.0). */
  map?: [number, number][];
}

const MAX_PIECES = 1_000_000;
const NUMBER = /^[0-9]{1,16}$/;

function number(text: string | undefined, what: string, entry: string): number {
  if (text === undefined || !NUMBER.test(text)) throw new LayerError(`sparse entry ${entry}: bad ${what} ${JSON.stringify(text?.slice(0, 40))}`, { code: 'LAYER_BAD_SPARSE' });
  const value = Number(text);
  if (!Number.isSafeInteger(value)) throw new LayerError(`sparse entry ${entry}: ${what} out of range`, { code: 'LAYER_BAD_SPARSE' });
  return value;
}

/** The sparse description of a regular file entry, or undefined when it is an ordinary file. */
export function sparseOf(header: Header): Sparse | undefined {
  const pax = (header.pax ?? {}) as Record<string, string>;
  if (!Object.keys(pax).some((k) => k.startsWith('GNU.sparse.'))) return undefined;
  const entry = header.name;
  const major = pax['GNU.sparse.major'];
  const minor = pax['GNU.sparse.minor'];
  if (major === '1' && minor === '0') {
    const name = pax['GNU.sparse.name'];
    if (!name) throw new LayerError(`sparse entry ${entry} has no GNU.sparse.name`, { code: 'LAYER_BAD_SPARSE' });
    return { name, realSize: number(pax['GNU.sparse.realsize'], 'real size', entry) };
  }
  if (major === undefined && pax['GNU.sparse.map'] !== undefined) {
    const name = pax['GNU.sparse.name'] ?? entry;
    const fields = pax['GNU.sparse.map'].split(',');
    if (fields.length % 2 !== 0 || fields.length / 2 > MAX_PIECES) throw new LayerError(`sparse entry ${entry}: bad GNU.sparse.map`, { code: 'LAYER_BAD_SPARSE' });
    const map: [number, number][] = [];
    for (let i = 0; i < fields.length; i += 2) map.push([number(fields[i], 'offset', entry), number(fields[i + 1], 'size', entry)]);
    return { name, realSize: number(pax['GNU.sparse.size'] ?? pax['GNU.sparse.realsize'], 'real size', entry), map };
  }
  throw new LayerError(`sparse entry ${entry} uses GNU sparse format ${major ?? '0'}.${minor ?? '0'}, which cs does not read; re-create the layer with GNU tar's default (--sparse --format=posix writes 1.0)`, {
    code: 'LAYER_SPARSE_FORMAT',
  });
}

/** Reads the body as it is asked for: the map's lines, then the pieces (no copying per line). */
class BodyReader {
  private pending: Buffer = Buffer.alloc(0);
  consumed = 0;
  constructor(private readonly iterator: AsyncIterator<Buffer>) {}

  private async fill(): Promise<boolean> {
    const next = await this.iterator.next();
    if (next.done) return false;
    this.pending = this.pending.length === 0 ? next.value : Buffer.concat([this.pending, next.value]);
    return true;
  }

  async line(limit: number): Promise<string | undefined> {
    for (;;) {
      const newline = this.pending.subarray(0, limit + 1).indexOf(0x0a);
      if (newline >= 0) {
        const text = this.pending.subarray(0, newline).toString('latin1');
        this.pending = this.pending.subarray(newline + 1);
        this.consumed += newline + 1;
        return text;
      }
      if (this.pending.length > limit || !(await this.fill())) return undefined;
    }
  }

  async take(bytes: number, each: (piece: Buffer) => void): Promise<void> {
    let left = bytes;
    while (left > 0) {
      if (this.pending.length === 0 && !(await this.fill())) throw new LayerError('sparse entry ends before its data does', { code: 'LAYER_BAD_SPARSE' });
      const piece = this.pending.subarray(0, Math.min(left, this.pending.length));
      this.pending = this.pending.subarray(piece.length);
      this.consumed += piece.length;
      left -= piece.length;
      each(piece);
    }
  }
}

/**
 * Write a sparse entry's pieces into `fd` at their offsets (plus `base`, where
 * the file starts in `fd`), leaving holes between them; returns the data
 * bytes written.
 */
export async function writeSparse(fd: number, body: AsyncIterable<Buffer>, sparse: Sparse, dataSize: number, entry: string, base = 0): Promise<number> {
  const reader = new BodyReader(body[Symbol.asyncIterator]());
  let map = sparse.map;
  if (!map) {
    const count = number(await reader.line(32), 'piece count', entry);
    if (count > MAX_PIECES) throw new LayerError(`sparse entry ${entry}: ${count} pieces is too many`, { code: 'LAYER_BAD_SPARSE' });
    map = [];
    for (let i = 0; i < count; i++) map.push([number(await reader.line(32), 'offset', entry), number(await reader.line(32), 'size', entry)]);
    // The map is padded to the next 512-byte block.
    const padding = (512 - (reader.consumed % 512)) % 512;
    await reader.take(padding, () => undefined);
  }
  let end = 0;
  let total = 0;
  for (const [offset, size] of map) {
    if (offset < end || offset + size > sparse.realSize) throw new LayerError(`sparse entry ${entry}: its pieces overlap or run past its size`, { code: 'LAYER_BAD_SPARSE' });
    end = offset + size;
    total += size;
  }
  if (reader.consumed + total !== dataSize) throw new LayerError(`sparse entry ${entry}: its map describes ${total} bytes of data, the entry carries ${dataSize - reader.consumed}`, { code: 'LAYER_BAD_SPARSE' });
  ftruncateSync(fd, base + sparse.realSize);
  for (const [offset, size] of map) {
    let position = base + offset;
    await reader.take(size, (piece) => {
      let done = 0;
      while (done < piece.length) done += writeSync(fd, piece, done, piece.length - done, position + done);
      position += piece.length;
    });
  }
  return total;
}
