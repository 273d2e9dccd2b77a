/**
 * Layer tars for tests (the umoci oracle, rootfs assembly), written entry by
 * entry with tar-stream's `pack()`. A layer is a list of entries in tar order;
 * whiteouts and opaque markers are entries too, so a stack can put them anywhere.
 *
 * tar-stream writes ustar headers and switches to PAX on its own for names
 * that do not fit. GNU long names ('L'/'K' records, what GNU tar and old
 * Docker wrote) it cannot write, so those records are spliced in here: a
 * 'L'/'K' record is a ustar header named `././@LongLink` whose body is the
 * long name, followed by the real header with a truncated name.
 */
import { pack, type Header } from 'tar-stream';

type Headers = Partial<Header> & Pick<Header, 'name'>;

export type EntryBase = {
  path: string;
  mode?: number;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch; the layer's default when absent. */
  mtime?: number;
  /** Extra PAX records (xattrs as `SCHILY.xattr.NAME`, `mtime`, `uid`...). */
  pax?: Record<string, string>;
  /** Write the name (and link name) with GNU 'L'/'K' records instead of PAX. */
  gnuLong?: boolean;
};

export type Entry =
  | (EntryBase & { type: 'dir' })
  | (EntryBase & { type: 'file'; content?: string | Buffer })
  | (EntryBase & { type: 'symlink'; target: string })
  | (EntryBase & { type: 'hardlink'; target: string })
  | (EntryBase & { type: 'fifo' })
  | (EntryBase & { type: 'char' | 'block'; major: number; minor: number })
  /** `dir/.wh.name`: hides `path` of the lower layers. */
  | { type: 'whiteout'; path: string }
  /** `path/.wh..wh..opq`: hides everything the lower layers had in `path`. */
  | { type: 'opaque'; path: string };

const END_OF_TAR = 1024;
const TYPE_OF: Record<string, Header['type']> = {
  dir: 'directory',
  file: 'file',
  symlink: 'symlink',
  hardlink: 'link',
  fifo: 'fifo',
  char: 'character-device',
  block: 'block-device',
};

function parentAndBase(path: string): [string, string] {
  const trimmed = path.replace(/\/+$/, '');
  const slash = trimmed.lastIndexOf('/');
  return slash === -1 ? ['', trimmed] : [trimmed.slice(0, slash + 1), trimmed.slice(slash + 1)];
}

function headerOf(entry: Entry, defaultMtime: number): { header: Headers; body?: Buffer } {
  if (entry.type === 'whiteout') {
    const [dir, base] = parentAndBase(entry.path);
    return { header: { name: `${dir}.wh.${base}`, type: 'file', mode: 0o644, mtime: new Date(defaultMtime * 1000) }, body: Buffer.alloc(0) };
  }
  if (entry.type === 'opaque') {
    const dir = entry.path.replace(/\/+$/, '');
    return { header: { name: `${dir === '' ? '' : `${dir}/`}.wh..wh..opq`, type: 'file', mode: 0o644, mtime: new Date(defaultMtime * 1000) }, body: Buffer.alloc(0) };
  }
  const type = TYPE_OF[entry.type] as Header['type'];
  const header: Headers = {
    name: entry.type === 'dir' && !entry.path.endsWith('/') ? `${entry.path}/` : entry.path,
    type,
    mode: entry.mode ?? (entry.type === 'dir' ? 0o755 : entry.type === 'symlink' ? 0o777 : 0o644),
    uid: entry.uid ?? 0,
    gid: entry.gid ?? 0,
    mtime: new Date((entry.mtime ?? defaultMtime) * 1000),
  };
  if (entry.pax) header.pax = { ...entry.pax };
  if (entry.type === 'symlink' || entry.type === 'hardlink') header.linkname = entry.target;
  if (entry.type === 'char' || entry.type === 'block') {
    header.devmajor = entry.major;
    header.devminor = entry.minor;
  }
  if (entry.type === 'file') return { header, body: Buffer.from(entry.content ?? '') };
  return { header };
}

/** tar-stream's output for `entries`, without the end-of-archive blocks. */
async function packEntries(items: { header: Headers; body?: Buffer }[]): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const chunk of p as unknown as AsyncIterable<Buffer>) chunks.push(chunk);
  })();
  for (const { header, body } of items) {
    await new Promise<void>((resolve, reject) => {
      const callback = (error?: Error | null) => (error ? reject(error) : resolve());
      if (body !== undefined) p.entry(header, body, callback);
      else p.entry(header, callback);
    });
  }
  p.finalize();
  await done;
  const all = Buffer.concat(chunks);
  return all.subarray(0, all.length - END_OF_TAR);
}

function checksum(block: Buffer): void {
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of block) sum += byte;
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
}

/** A GNU long name record ('L' for the entry name, 'K' for its link name). */
async function gnuLongRecord(flag: 'L' | 'K', name: string): Promise<Buffer> {
  const record = await packEntries([{ header: { name: '././@LongLink', type: 'file', mode: 0o644, mtime: new Date(0) }, body: Buffer.from(`${name}\0`) }]);
  record[156] = flag.charCodeAt(0);
  // GNU magic ("ustar  \0") as GNU tar writes it.
  record.write('ustar  \0', 257, 'latin1');
  checksum(record.subarray(0, 512));
  return record;
}

/** The uncompressed tar of one layer. */
export async function layerTar(entries: readonly Entry[], defaultMtime: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (const entry of entries) {
    const item = headerOf(entry, defaultMtime);
    if ('gnuLong' in entry && entry.gnuLong) {
      parts.push(await gnuLongRecord('L', item.header.name));
      if (item.header.linkname && Buffer.byteLength(item.header.linkname) > 100) {
        parts.push(await gnuLongRecord('K', item.header.linkname));
        item.header.linkname = item.header.linkname.slice(0, 100);
      }
      item.header.name = item.header.name.slice(0, 99) + (item.header.name.endsWith('/') ? '/' : '');
    }
    const bytes = await packEntries([item]);
    if ('gnuLong' in entry && entry.gnuLong) {
      // The real header in GNU format too, as GNU tar writes it (no PAX here: the names fit).
      bytes.write('ustar  \0', 257, 'latin1');
      checksum(bytes.subarray(0, 512));
    }
    parts.push(bytes);
  }
  parts.push(Buffer.alloc(END_OF_TAR));
  return Buffer.concat(parts);
}
