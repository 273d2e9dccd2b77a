import { lstatSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DeferredMetadata } from '../layers/apply.js';
import type { TreeEntry } from '../layers/tree-entry.js';
import { run } from '../util/process.js';

/**
 * What an unprivileged assembly could not do to the tree (owners other
 * than the user, device nodes, xattrs outside `user.*`), recorded per layer
 * in `deferred.jsonl` beside the cached tree, applied where the image is
 * built:
 *
 * - ext4 images are built by mke2fs, run under fakeroot with a state made
 *   from the records: it then sees the
 *   recorded owners, modes and devices (and everything else owned by root,
 *   as the layers had it), and the recorded xattrs, set inside the same
 *   fakeroot session, which fakes them too (erofs images need none of
 *   this: they are written from the layers' headers, see erofs-build.ts);
 * - a tar gets them in its headers directly;
 * - a folder cannot hold them: they are written beside it.
 *
 * A later layer's entry at a recorded path is recorded too (root's as
 * well: see `reportRootOwners`), and the last layer's record wins. A record
 * also names the inode it was made for (a folder: that it was a folder),
 * and one whose path now holds another is dropped. The cache's trees are
 * hard-link copies, so files keep their inodes from one chain to the next;
 * folders are made anew, hence matched by type.
 */

export interface Deferred extends DeferredMetadata {
  /** The inode the record was made for. */
  ino?: number;
  /** The layer (its index in the chain) that asked for it. */
  layer?: number;
  /** Made for a folder (folders are matched by type: a cache copy gives them new inodes). */
  dir?: boolean;
}

/** The records of a tree, last one per path winning, those for replaced inodes dropped. */
export async function readDeferred(entryDir: string, tree: string): Promise<Map<string, Deferred>> {
  const text = await readFile(join(entryDir, 'deferred.jsonl'), 'utf8').catch(() => '');
  const out = new Map<string, Deferred>();
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    let record: Deferred;
    try {
      record = JSON.parse(line) as Deferred;
    } catch {
      continue;
    }
    const previous = out.get(record.path);
    // One entry's records (owner in one, xattrs in another) add up; a later layer's entry declares the path anew.
    const same = previous && previous.ino === record.ino && previous.dir === record.dir && previous.layer === record.layer;
    out.set(record.path, same ? { ...previous, ...record, ...(previous.xattrs || record.xattrs ? { xattrs: { ...previous.xattrs, ...record.xattrs } } : {}) } : record);
  }
  for (const [path, record] of out) {
    const now = (() => {
      try {
        return lstatSync(join(tree, path));
      } catch {
        return undefined;
      }
    })();
    const stale = record.dir ? !now?.isDirectory() : record.ino !== undefined && now?.ino !== record.ino;
    if (!now || stale) out.delete(path);
  }
  return out;
}

const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

/** glibc's makedev, as fakeroot's state stores a device number. */
function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major);
  const mi = BigInt(minor);
  return ((ma & 0xfffn) << 8n) | (mi & 0xffn) | ((mi & ~0xffn) << 12n) | ((ma & ~0xfffn) << 32n);
}

/** A fakeroot state (`fakeroot -i`): one line per recorded inode. */
export function fakerootState(tree: string, deferred: ReadonlyMap<string, Deferred>): string {
  const lines: string[] = [];
  for (const [path, record] of deferred) {
    // Every recorded inode is listed, xattr-only ones too: fakeroot would otherwise note one it sets xattrs on with its real owner.
    const st = lstatSync(join(tree, path), { bigint: true });
    const mode = record.device ? BigInt((record.device.type === 'char' ? S_IFCHR : S_IFBLK) | (record.device.mode & 0o7777)) : st.mode;
    const rdev = record.device ? makedev(record.device.major, record.device.minor) : 0n;
    lines.push(`dev=${st.dev.toString(16)},ino=${st.ino},mode=${mode.toString(8)},uid=${record.uid ?? 0},gid=${record.gid ?? 0},nlink=${st.nlink},rdev=${rdev}`);
  }
  return lines.join('\n') + (lines.length ? '\n' : '');
}

/** A path as `setfattr --restore` reads it: bytes outside printable ASCII, `\\` and `=` as octal escapes. */
export function escapeAttrPath(path: string): string {
  let out = '';
  for (const byte of Buffer.from(path, 'utf8')) out += byte <= 0x20 || byte >= 0x7f || byte === 0x5c || byte === 0x3d ? `\\${byte.toString(8).padStart(3, '0')}` : String.fromCharCode(byte);
  return out;
}

/** The recorded xattrs as a `setfattr --restore` file (paths relative to the tree). */
export function xattrRestore(tree: string, deferred: ReadonlyMap<string, Deferred>): string {
  const lines: string[] = [];
  for (const [path, record] of deferred) {
    if (!record.xattrs || Object.keys(record.xattrs).length === 0) continue;
    if (lstatSync(join(tree, path)).isSymbolicLink()) continue;
    lines.push(`# file: ${escapeAttrPath(path)}`);
    for (const [name, value] of Object.entries(record.xattrs)) {
      if (!/^[A-Za-z0-9._-]+$/.test(name)) continue;
      lines.push(`${name}=0x${Buffer.from(value, 'latin1').toString('hex')}`);
    }
    lines.push('');
  }
  return lines.join('\n');
}

/**
 * Runs an image builder over `tree` so that it sees the recorded metadata:
 * directly when running as root (the tree holds it already), else under
 * fakeroot.
 */
export async function buildWithOwners(tree: string, entryDir: string, argv: readonly string[]): Promise<void> {
  if (process.getuid?.() === 0) {
    await run(argv[0] as string, argv.slice(1), { timeoutMs: 60 * 60_000 });
    return;
  }
  const deferred = await readDeferred(entryDir, tree);
  const scratch = await mkdtemp(join(tmpdir(), 'cs-owners-'));
  try {
    const state = join(scratch, 'state');
    const xattrs = join(scratch, 'xattrs');
    await writeFile(state, fakerootState(tree, deferred));
    await writeFile(xattrs, xattrRestore(tree, deferred));
    // Inside one fakeroot session: the xattrs are set (fakeroot keeps them), then the builder reads the faked tree.
    const script = 'cd "$1" && { [ ! -s "$2" ] || setfattr -h --restore="$2"; } && shift 2 && exec "$@"';
    await run('fakeroot', ['-i', state, '--', 'sh', '-c', script, 'sh', tree, xattrs, ...argv], { timeoutMs: 60 * 60_000 });
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

/** Tree entries with the recorded metadata (unprivileged: everything unrecorded is root's, as in the layers). */
export async function* withOwners(entries: AsyncIterable<TreeEntry>, deferred: ReadonlyMap<string, Deferred>): AsyncGenerator<TreeEntry> {
  for await (const entry of entries) {
    const record = deferred.get(entry.path);
    const out: TreeEntry = { ...entry, uid: record?.uid ?? 0, gid: record?.gid ?? 0 };
    if (record?.device && entry.type === 'file') {
      out.type = record.device.type;
      out.mode = record.device.mode & 0o7777;
      out.devmajor = record.device.major;
      out.devminor = record.device.minor;
      out.size = 0;
      delete out.open;
    }
    if (record?.xattrs) out.xattrs = { ...entry.xattrs, ...record.xattrs };
    yield out;
  }
}
