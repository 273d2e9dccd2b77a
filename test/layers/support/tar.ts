/**
 * Building layer tars for the layer tests. Most entries are written with
 * tar-stream's pack() (it writes PAX headers for long names and xattrs and
 * does not clean names, so `../x` and `/x` pass through as given); GNU long
 * name records (typeflag L and K), which pack() cannot write, are built by
 * hand in rawTar().
 */
import { Readable } from 'node:stream';
import { pack, type Header } from 'tar-stream';

/** A fixed mtime, so that tests can compare times. */
export const MTIME = new Date('2020-01-02T03:04:05Z');

export interface EntrySpec {
  name: string;
  type?: Header['type'];
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: Date;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  pax?: Record<string, string>;
  /** Content of a regular file. */
  body?: string | Uint8Array;
}

type Extra = Omit<EntrySpec, 'name' | 'type' | 'body' | 'linkname'>;

export const file = (name: string, body: string | Uint8Array = '', extra: Extra = {}): EntrySpec => ({ mode: 0o644, ...extra, name, type: 'file', body });
export const dir = (name: string, extra: Extra = {}): EntrySpec => ({ mode: 0o755, ...extra, name, type: 'directory' });
export const symlink = (name: string, target: string, extra: Extra = {}): EntrySpec => ({ mode: 0o777, ...extra, name, type: 'symlink', linkname: target });
export const hardlink = (name: string, target: string, extra: Extra = {}): EntrySpec => ({ mode: 0o644, ...extra, name, type: 'link', linkname: target });
/** A whiteout is an empty regular file named `.wh.NAME`. */
export const whiteout = (name: string): EntrySpec => file(name, '');
export const fifo = (name: string, extra: Extra = {}): EntrySpec => ({ mode: 0o644, ...extra, name, type: 'fifo' });
export const charDevice = (name: string, major: number, minor: number, extra: Extra = {}): EntrySpec => ({ mode: 0o666, ...extra, name, type: 'character-device', devmajor: major, devminor: minor });
export const blockDevice = (name: string, major: number, minor: number, extra: Extra = {}): EntrySpec => ({ mode: 0o660, ...extra, name, type: 'block-device', devmajor: major, devminor: minor });

/** One layer as an uncompressed tar stream, written by tar-stream's pack(). */
export function layerTar(entries: readonly EntrySpec[]): AsyncIterable<Uint8Array> {
  const p = pack();
  for (const spec of entries) {
    const { body, ...rest } = spec;
    const header = { mtime: MTIME, uid: 0, gid: 0, ...rest };
    if (header.type === 'file' || header.type === 'contiguous-file') p.entry(header, body ?? '');
    else p.entry(header);
  }
  p.finalize();
  return p as unknown as AsyncIterable<Uint8Array>;
}

// ---------------------------------------------------------------------------
// Hand-made tar records, for GNU long names.

const BLOCK = 512;

function octal(value: number, width: number): string {
  return `${value.toString(8).padStart(width - 1, '0')}\0`;
}

export interface RawHeader {
  name: string;
  /** One tar typeflag character: '0' file, '2' symlink, '5' directory, 'L' GNU long name, 'K' GNU long link name... */
  typeflag: string;
  size?: number;
  mode?: number;
  linkname?: string;
  mtime?: Date;
}

/** A 512-byte header in the old GNU layout (magic "ustar  \0", as GNU tar writes with --format=gnu). */
export function rawHeader(header: RawHeader): Buffer {
  const buf = Buffer.alloc(BLOCK);
  buf.write(header.name.slice(0, 100), 0, 'utf8');
  buf.write(octal(header.mode ?? 0o644, 8), 100, 'ascii');
  buf.write(octal(0, 8), 108, 'ascii');
  buf.write(octal(0, 8), 116, 'ascii');
  buf.write(octal(header.size ?? 0, 12), 124, 'ascii');
  buf.write(octal(Math.floor((header.mtime ?? MTIME).getTime() / 1000), 12), 136, 'ascii');
  buf.write(header.typeflag, 156, 'ascii');
  if (header.linkname) buf.write(header.linkname.slice(0, 100), 157, 'utf8');
  buf.write('ustar  \0', 257, 'ascii');
  buf.fill(' ', 148, 156);
  let sum = 0;
  for (const byte of buf) sum += byte;
  buf.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'ascii');
  return buf;
}

function padded(data: Buffer): Buffer {
  const rest = data.length % BLOCK;
  return rest === 0 ? data : Buffer.concat([data, Buffer.alloc(BLOCK - rest)]);
}

/** A record: its header and its body padded to whole blocks. */
export function rawRecord(header: RawHeader, body: string | Buffer = Buffer.alloc(0)): Buffer {
  const data = typeof body === 'string' ? Buffer.from(body) : body;
  return Buffer.concat([rawHeader({ ...header, size: data.length }), padded(data)]);
}

/** The GNU way to carry a long name: an `L` record holding the name, then the entry with a truncated name. */
export function gnuLongName(name: string): Buffer {
  return rawRecord({ name: '././@LongLink', typeflag: 'L' }, Buffer.from(`${name}\0`));
}

/** The GNU way to carry a long link target: a `K` record. */
export function gnuLongLinkName(target: string): Buffer {
  return rawRecord({ name: '././@LongLink', typeflag: 'K' }, Buffer.from(`${target}\0`));
}

/** A tar stream from records, with the two zero blocks that end a tar. */
export function rawTar(records: readonly Buffer[]): AsyncIterable<Uint8Array> {
  return Readable.from([Buffer.concat([...records, Buffer.alloc(2 * BLOCK)])]);
}

/** The same bytes through a bare async generator: a source with no destroy(), that only stops when it is no longer pulled. */
export async function* viaGenerator(tar: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  for await (const chunk of tar) yield chunk;
}
