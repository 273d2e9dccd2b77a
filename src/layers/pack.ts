import { closeSync, constants, createReadStream, fstatSync, openSync, type Stats } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { pack as tarPack, type Header, type Pack } from 'tar-stream';
import { InputError } from '../util/errors.js';
import { run } from '../util/process.js';
import { installPaxCodec, XATTR_PAX_PREFIX } from './pax.js';
import { compareNames, type TreeEntry } from './tree-entry.js';

// Binary xattr values must leave as bytes (see pax.ts).
installPaxCodec();

/**
 * Trees as tar streams, deterministically: entries in the order their
 * source yields (depth-first, names in bytewise order), hardlinks as links
 * to the first path of the same inode, and a fixed policy for what varies
 * between machines (see PackOptions). The same tree always gives the same
 * bytes.
 */

export interface PackOptions {
  /** Set every mtime to this (seconds since the epoch); undefined keeps real mtimes. */
  mtime?: number;
  /** Set every folder's mtime to this (a folder's mtime moves whenever something in it changes, even what is left out). */
  dirMtime?: number;
  /** Record this uid/gid for every entry instead of the real owner (e.g. the workspace owner for home snapshots). */
  owner?: { uid: number; gid: number };
  /**
   * The tree is an overlayfs upper layer: its whiteouts (character devices
   * 0/0) become OCI whiteouts (`.wh.NAME`), folders marked
   * `trusted.overlay.opaque=y` get an opaque marker (`.wh..wh..opq`) after
   * them, and overlayfs's own `trusted.overlay.*` attributes are dropped
   * (image-spec layer.md, "Whiteouts").
   */
  overlay?: boolean;
}

export interface DirectoryPackOptions extends PackOptions {
  /** Paths (relative, `/`-separated) to leave out, with everything under them. */
  exclude?: (path: string) => boolean;
  /** Record extended attributes (one `getfattr` run over the tree). */
  xattrs?: boolean;
}

const OVERLAY_XATTR = 'trusted.overlay.';
const OPAQUE_XATTR = 'trusted.overlay.opaque';

/** A host folder's contents as entries (not the folder itself). */
export async function* hostEntries(root: string, options: { exclude?: (path: string) => boolean; xattrs?: boolean } = {}): AsyncGenerator<TreeEntry> {
  const xattrs = options.xattrs ? await readXattrs(root) : new Map<string, Record<string, string>>();
  const inodes = new Map<string, string>();
  async function* walk(dir: string, prefix: string): AsyncGenerator<TreeEntry> {
    const names = (await readdir(dir)).sort(compareNames);
    for (const name of names) {
      const full = join(dir, name);
      const path = prefix === '' ? name : `${prefix}/${name}`;
      if (options.exclude?.(path)) continue;
      const info = await lstat(full);
      const common = { path, mode: info.mode & 0o7777, uid: info.uid, gid: info.gid, mtime: Math.floor(info.mtimeMs / 1000), size: 0 };
      const attrs = xattrs.get(path);
      const withAttrs = attrs ? { xattrs: attrs } : {};
      if (info.isDirectory()) {
        yield { ...common, ...withAttrs, type: 'directory' };
        yield* walk(full, path);
      } else if (info.isSymbolicLink()) {
        yield { ...common, ...withAttrs, type: 'symlink', linkname: await readlink(full) };
      } else if (info.isFile()) {
        const inode = `${info.dev}:${info.ino}`;
        const first = info.nlink > 1 ? inodes.get(inode) : undefined;
        if (first !== undefined) {
          yield { ...common, type: 'hardlink', linkname: first };
          continue;
        }
        if (info.nlink > 1) inodes.set(inode, path);
        yield { ...common, ...withAttrs, type: 'file', size: info.size, open: () => openSame(full, info) };
      } else if (info.isFIFO()) {
        yield { ...common, ...withAttrs, type: 'fifo' };
      } else if (info.isCharacterDevice() || info.isBlockDevice()) {
        yield { ...common, ...withAttrs, type: info.isCharacterDevice() ? 'char' : 'block', devmajor: deviceMajor(info.rdev), devminor: deviceMinor(info.rdev) };
      }
      // Sockets cannot be stored in a tar; they are runtime objects anyway.
    }
  }
  yield* walk(root, '');
}

/**
 * Open the file that was listed, not whatever is at its path now: O_NOFOLLOW
 * and the same device, inode and size, or the pack fails (a file swapped for
 * a symlink to something else between listing and reading must not be read).
 */
function openSame(path: string, listed: Stats): Readable {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  const now = fstatSync(fd);
  if (now.dev !== listed.dev || now.ino !== listed.ino || now.size !== listed.size || !now.isFile()) {
    closeSync(fd);
    throw new InputError(`${path} changed while it was being packed`);
  }
  return createReadStream('', { fd });
}

/** The tar stream of `root`'s contents (not `root` itself). */
export function packDirectory(root: string, options: DirectoryPackOptions = {}): Readable {
  const source = hostEntries(root, { ...(options.exclude ? { exclude: options.exclude } : {}), ...(options.xattrs ? { xattrs: true } : {}) });
  return packEntries(source, options, (error) => (error instanceof Error && 'code' in error && !(error instanceof InputError) ? new InputError(`cannot read ${root}: ${error.message}`, { cause: error }) : (error as Error)));
}

/** Entries as a tar stream. Errors of the source (or of the overlay rules) destroy the stream. */
export function packEntries(entries: AsyncIterable<TreeEntry>, options: PackOptions = {}, mapError: (error: unknown) => Error = (e) => e as Error): Readable {
  const pack = tarPack();
  void (async () => {
    try {
      for await (const entry of entries) await packEntry(pack, entry, options);
      pack.finalize();
    } catch (error) {
      pack.destroy(mapError(error));
    }
  })();
  return pack as unknown as Readable;
}

async function packEntry(pack: Pack, entry: TreeEntry, options: PackOptions): Promise<void> {
  // Sources are trusted to give clean relative paths; a bad one (from a corrupt disk, say) stops the pack.
  if (entry.path === '' || entry.path.startsWith('/') || entry.path.includes('\0') || entry.path.split('/').some((p) => p === '' || p === '.' || p === '..')) {
    throw new InputError(`refusing to pack an entry named ${JSON.stringify(entry.path)}`);
  }
  const xattrs = { ...entry.xattrs };
  let opaque = false;
  if (options.overlay) {
    if (/(^|\/)\.wh\./.test(entry.path)) {
      throw new InputError(`${entry.path}: a file whose name starts with ".wh." cannot be stored in an OCI layer (the name means a deletion there)`);
    }
    opaque = entry.type === 'directory' && xattrs[OPAQUE_XATTR] === 'y';
    for (const name of Object.keys(xattrs)) if (name.startsWith(OVERLAY_XATTR)) delete xattrs[name];
  }
  const pax: Record<string, string> = {};
  for (const name of Object.keys(xattrs).sort(compareNames)) pax[`${XATTR_PAX_PREFIX}${name}`] = xattrs[name] as string;
  const common = {
    mode: entry.mode,
    uid: options.owner?.uid ?? entry.uid,
    gid: options.owner?.gid ?? entry.gid,
    mtime: new Date((options.mtime ?? (entry.type === 'directory' ? options.dirMtime : undefined) ?? entry.mtime) * 1000),
    ...(Object.keys(pax).length > 0 ? { pax } : {}),
  };
  if (options.overlay && entry.type === 'char' && entry.devmajor === 0 && entry.devminor === 0) {
    // image-spec layer.md, "Whiteouts": deletion of NAME is recorded as an empty .wh.NAME.
    const slash = entry.path.lastIndexOf('/');
    const name = `${entry.path.slice(0, slash + 1)}.wh.${entry.path.slice(slash + 1)}`;
    await addEntry(pack, { mode: 0o600, uid: common.uid, gid: common.gid, mtime: common.mtime, name, type: 'file', size: 0 });
    return;
  }
  switch (entry.type) {
    case 'directory':
      await addEntry(pack, { ...common, name: `${entry.path}/`, type: 'directory' });
      if (opaque) await addEntry(pack, { mode: 0o600, uid: common.uid, gid: common.gid, mtime: common.mtime, name: `${entry.path}/.wh..wh..opq`, type: 'file', size: 0 });
      return;
    case 'symlink':
      await addEntry(pack, { ...common, name: entry.path, type: 'symlink', linkname: entry.linkname ?? '' });
      return;
    case 'hardlink':
      await addEntry(pack, { ...common, name: entry.path, type: 'link', linkname: entry.linkname ?? '' });
      return;
    case 'file': {
      if (entry.size === 0 || !entry.open) {
        await addEntry(pack, { ...common, name: entry.path, type: 'file', size: 0 });
        return;
      }
      if (entry.size <= SMALL_FILE) {
        // Small files whole: a stream pipeline per file costs more than the file (many small files are the common case).
        const chunks: Buffer[] = [];
        for await (const chunk of entry.open()) chunks.push(chunk as Buffer);
        const body = Buffer.concat(chunks);
        if (body.length !== entry.size) throw new InputError(`${entry.path}: read ${body.length} bytes, expected ${entry.size}`);
        await addEntry(pack, { ...common, name: entry.path, type: 'file', size: entry.size }, body);
        return;
      }
      const stream = pack.entry({ ...common, name: entry.path, type: 'file', size: entry.size });
      await pipeline(entry.open(), stream);
      return;
    }
    case 'fifo':
      await addEntry(pack, { ...common, name: entry.path, type: 'fifo' });
      return;
    case 'char':
    case 'block':
      await addEntry(pack, { ...common, name: entry.path, type: entry.type === 'char' ? 'character-device' : 'block-device', devmajor: entry.devmajor ?? 0, devminor: entry.devminor ?? 0 });
      return;
  }
}

const SMALL_FILE = 256 * 1024;

function addEntry(pack: Pack, header: Partial<Header> & Pick<Header, 'name'>, body?: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (error?: Error | null): void => (error ? reject(error) : resolve());
    // A regular file needs its body given, even an empty one (a whiteout), or the entry never ends.
    if (header.type === 'file') pack.entry(header, body ?? Buffer.alloc(0), done);
    else pack.entry(header, done);
  });
}

/**
 * Every extended attribute under `root`, by relative path, with one
 * `getfattr` run (`-e hex` keeps binary values exact). trusted.* names are
 * only visible to root; unprivileged, they are simply not there.
 */
export async function readXattrs(root: string): Promise<Map<string, Record<string, string>>> {
  const result = await run('getfattr', ['-R', '-P', '--absolute-names', '-d', '-m', '-', '-e', 'hex', root], { okExitCodes: [0, 1] });
  const out = new Map<string, Record<string, string>>();
  let current: Record<string, string> | undefined;
  for (const line of result.stdout.split('\n')) {
    if (line.startsWith('# file: ')) {
      const path = unescapeAttrPath(line.slice('# file: '.length));
      current = undefined;
      if (path === root) continue;
      if (!path.startsWith(`${root}/`)) throw new InputError(`getfattr reported a path outside ${root}: ${path}`);
      current = {};
      out.set(path.slice(root.length + 1), current);
    } else if (current && line !== '') {
      const eq = line.indexOf('=');
      const name = eq === -1 ? line : line.slice(0, eq);
      const value = eq === -1 ? '' : line.slice(eq + 1);
      current[name] = value.startsWith('0x') ? Buffer.from(value.slice(2), 'hex').toString('latin1') : value.replace(/^"|"$/g, '');
    }
  }
  for (const [path, attrs] of out) if (Object.keys(attrs).length === 0) out.delete(path);
  return out;
}

/** getfattr escapes bytes outside printable ASCII (and backslash) as \\ooo. */
export function unescapeAttrPath(text: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '\\' && /^[0-7]{3}$/.test(text.slice(i + 1, i + 4))) {
      bytes.push(parseInt(text.slice(i + 1, i + 4), 8));
      i += 3;
    } else bytes.push(...Buffer.from(text[i] as string, 'utf8'));
  }
  return Buffer.from(bytes).toString('utf8');
}

/** Linux's encoding of dev_t (see makedev(3)). */
export function deviceMajor(rdev: number): number {
  const value = BigInt(rdev);
  return Number(((value >> 8n) & 0xfffn) | ((value >> 32n) & ~0xfffn));
}

export function deviceMinor(rdev: number): number {
  const value = BigInt(rdev);
  return Number((value & 0xffn) | ((value >> 12n) & ~0xffn));
}
