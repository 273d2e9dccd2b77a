import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { pack as tarPack, type Header, type Pack } from 'tar-stream';
import { InputError } from '../util/errors.js';

/**
 * A folder as a tar stream, deterministically: entries sorted by path
 * (bytewise), parents before children, hardlinks kept as links to the first
 * path of the same inode, and a fixed policy for what varies between
 * machines (see PackOptions). The same tree always gives the same bytes.
 */

export interface PackOptions {
  /** Set every mtime to this (seconds since the epoch); undefined keeps real mtimes. */
  mtime?: number;
  /** Record this uid/gid for every entry instead of the real owner (e.g. 0 when unprivileged). */
  owner?: { uid: number; gid: number };
  /** Paths (relative, `/`-separated) to leave out, with everything under them. */
  exclude?: (path: string) => boolean;
  /**
   * The tree is an overlayfs upper layer: its whiteouts (character devices
   * 0/0) become OCI whiteouts (`.wh.NAME`), and the folders listed here
   * (overlay-opaque) get an opaque marker (`.wh..wh..opq`) after them.
   */
  overlay?: { opaque: ReadonlySet<string> };
}

interface Entry {
  path: string;
  full: string;
}

async function listTree(root: string, exclude: PackOptions['exclude']): Promise<Entry[]> {
  const out: Entry[] = [];
  const walk = async (dir: string): Promise<void> => {
    const names = (await readdir(dir)).sort((a, b) => (Buffer.from(a) < Buffer.from(b) ? -1 : Buffer.from(a) > Buffer.from(b) ? 1 : 0));
    for (const name of names) {
      const full = join(dir, name);
      const path = relative(root, full).split(sep).join('/');
      if (exclude?.(path)) continue;
      out.push({ path, full });
      const info = await lstat(full);
      if (info.isDirectory()) await walk(full);
    }
  };
  await walk(root);
  return out;
}

/** The tar stream of `root`'s contents (not `root` itself). */
export function packDirectory(root: string, options: PackOptions = {}): Readable {
  const pack = tarPack();
  void (async () => {
    try {
      const entries = await listTree(root, options.exclude);
      const inodes = new Map<string, string>();
      for (const entry of entries) {
        const info = await lstat(entry.full);
        const common = {
          mode: info.mode & 0o7777,
          uid: options.owner?.uid ?? info.uid,
          gid: options.owner?.gid ?? info.gid,
          mtime: new Date((options.mtime ?? Math.floor(info.mtimeMs / 1000)) * 1000),
        };
        if (options.overlay && /(^|\/)\.wh\./.test(entry.path)) {
          throw new InputError(`${entry.path}: a file whose name starts with ".wh." cannot be stored in an OCI layer (the name means a deletion there)`);
        }
        if (options.overlay && info.isCharacterDevice() && info.rdev === 0) {
          // image-spec layer.md, "Whiteouts": deletion of NAME is recorded as an empty .wh.NAME.
          const slash = entry.path.lastIndexOf('/');
          const name = `${entry.path.slice(0, slash + 1)}.wh.${entry.path.slice(slash + 1)}`;
          await addEntry(pack, { ...common, mode: 0o600, name, type: 'file', size: 0 });
        } else if (info.isDirectory()) {
          await addEntry(pack, { ...common, name: `${entry.path}/`, type: 'directory' });
          if (options.overlay?.opaque.has(entry.path)) {
            await addEntry(pack, { ...common, mode: 0o600, name: `${entry.path}/.wh..wh..opq`, type: 'file', size: 0 });
          }
        } else if (info.isSymbolicLink()) {
          await addEntry(pack, { ...common, name: entry.path, type: 'symlink', linkname: await readlink(entry.full) });
        } else if (info.isFile()) {
          const inode = `${info.dev}:${info.ino}`;
          const first = info.nlink > 1 ? inodes.get(inode) : undefined;
          if (first !== undefined) {
            await addEntry(pack, { ...common, name: entry.path, type: 'link', linkname: first });
            continue;
          }
          if (info.nlink > 1) inodes.set(inode, entry.path);
          const stream = pack.entry({ ...common, name: entry.path, type: 'file', size: info.size });
          await pipeline(createReadStream(entry.full), stream);
        } else if (info.isFIFO()) {
          await addEntry(pack, { ...common, name: entry.path, type: 'fifo' });
        } else if (info.isCharacterDevice() || info.isBlockDevice()) {
          await addEntry(pack, {
            ...common,
            name: entry.path,
            type: info.isCharacterDevice() ? 'character-device' : 'block-device',
            devmajor: deviceMajor(info.rdev),
            devminor: deviceMinor(info.rdev),
          });
        }
        // Sockets cannot be stored in a tar; they are runtime objects anyway.
      }
      pack.finalize();
    } catch (error) {
      pack.destroy(error instanceof Error && 'code' in error ? new InputError(`cannot read ${root}: ${error.message}`, { cause: error }) : (error as Error));
    }
  })();
  return pack as unknown as Readable;
}

function addEntry(pack: Pack, header: Partial<Header> & Pick<Header, 'name'>): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (error?: Error | null): void => (error ? reject(error) : resolve());
    // An empty regular file (a whiteout) needs its (empty) body given, or the entry never ends.
    if (header.type === 'file') pack.entry(header, Buffer.alloc(0), done);
    else pack.entry(header, done);
  });
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
