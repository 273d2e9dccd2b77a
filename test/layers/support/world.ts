/**
 * The world a hostile layer is applied in: a fresh parent folder holding the
 * root (`dest/`), a sibling `victim/` and a sibling `dest-evil/` (for names
 * that share the root's prefix). A snapshot taken before the layer and
 * compared after proves that nothing outside the root was written, removed,
 * added, re-linked, re-moded or even read:
 *
 * - every victim path's type, mode, owner, size, inode, link count, device,
 *   ctime (any metadata change), mtime and atime, taken with lstat only;
 * - atimes are set to 2001 and mtimes to 2020, so on a relatime mount (as
 *   /tmp is here) any read of a file, listing of a folder or readlink of a
 *   symlink moves the atime and shows up;
 * - the listing of every victim folder (nothing added or removed) and the
 *   content of every file, read only after all the lstat comparisons (with
 *   O_NOATIME besides); those listings move atimes, so a clean comparison
 *   sets the old times again and renews the snapshot;
 * - the parent folder still holds exactly dest, dest-evil and victim;
 * - a few host paths a hostile layer names (/etc/passwd, /victim, ...) are
 *   as they were.
 */
import { createHash } from 'node:crypto';
import {
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readlinkSync,
  readSync,
  rmSync,
  symlinkSync,
  writeFileSync,
  chmodSync,
  type BigIntStats,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';

export interface World {
  /** The temp folder holding the three below. */
  parent: string;
  /** The root layers are applied onto. */
  dest: string;
  victim: string;
  /** A sibling whose name starts with the root's name. */
  evil: string;
  /** What the outside looked like; renewed by a clean outsideChanges(). */
  snapshot: Snapshot;
}

type Node =
  | { path: string; kind: 'file'; content: string; mode: number }
  | { path: string; kind: 'dir'; mode: number }
  | { path: string; kind: 'fifo'; mode: number }
  | { path: string; kind: 'symlink'; target: string };

/** What lives outside the root, relative to the parent folder. Parents before children. */
const OUTSIDE: readonly Node[] = [
  { path: 'victim', kind: 'dir', mode: 0o755 },
  { path: 'victim/secret', kind: 'file', content: 'top secret\n', mode: 0o600 },
  { path: 'victim/notes.txt', kind: 'file', content: 'notes of the victim\n', mode: 0o644 },
  { path: 'victim/fifo', kind: 'fifo', mode: 0o644 },
  { path: 'victim/nested', kind: 'dir', mode: 0o750 },
  { path: 'victim/nested/deep', kind: 'file', content: 'deep secret\n', mode: 0o640 },
  { path: 'victim/nested/inner', kind: 'dir', mode: 0o755 },
  { path: 'victim/nested/inner/leaf', kind: 'file', content: 'leaf\n', mode: 0o644 },
  { path: 'victim/link-to-secret', kind: 'symlink', target: 'secret' },
  { path: 'dest-evil', kind: 'dir', mode: 0o755 },
  { path: 'dest-evil/secret', kind: 'file', content: 'evil twin secret\n', mode: 0o600 },
  { path: 'dest-evil/sub', kind: 'dir', mode: 0o755 },
  { path: 'dest-evil/sub/file', kind: 'file', content: 'evil sub file\n', mode: 0o644 },
];

/** Host paths a hostile layer names; they must not change (or appear). */
const HOST_SENTINELS = ['/etc/passwd', '/etc/shadow', '/etc', '/victim', '/x', '/dest-evil', '/pwned', '/dev/null', '/dev/zero'];

const OLD_ATIME = new Date('2001-01-01T00:00:00Z');
const NEWER_MTIME = new Date('2020-06-01T00:00:00Z');

interface PathState {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: string;
  ino: string;
  nlink: string;
  rdev: string;
  atimeNs: string;
  mtimeNs: string;
  ctimeNs: string;
}

export interface Snapshot {
  outside: Map<string, PathState>;
  host: Map<string, string>;
}

function typeOf(info: { isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean; isFIFO(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean }): string {
  if (info.isSymbolicLink()) return 'symlink';
  if (info.isFile()) return 'file';
  if (info.isDirectory()) return 'dir';
  if (info.isFIFO()) return 'fifo';
  if (info.isCharacterDevice()) return 'char';
  if (info.isBlockDevice()) return 'block';
  return 'other';
}

function state(path: string): PathState {
  const info: BigIntStats = lstatSync(path, { bigint: true });
  return {
    type: typeOf(info),
    mode: Number(info.mode & 0o7777n),
    uid: Number(info.uid),
    gid: Number(info.gid),
    size: String(info.size),
    ino: String(info.ino),
    nlink: String(info.nlink),
    rdev: String(info.rdev),
    atimeNs: String(info.atimeNs),
    mtimeNs: String(info.mtimeNs),
    ctimeNs: String(info.ctimeNs),
  };
}

function hostState(path: string): string {
  let info: BigIntStats;
  try {
    info = lstatSync(path, { bigint: true });
  } catch {
    return 'missing';
  }
  const times = info.isFile() ? ` mtime=${info.mtimeNs} ctime=${info.ctimeNs}` : '';
  return `${typeOf(info)} ino=${info.ino} mode=${(info.mode & 0o7777n).toString(8)} nlink=${info.nlink} size=${info.isFile() ? info.size : '-'} rdev=${info.rdev} owner=${info.uid}:${info.gid}${times}`;
}

function takeSnapshot(parent: string): Snapshot {
  const outside = new Map<string, PathState>();
  for (const node of OUTSIDE) outside.set(node.path, state(join(parent, node.path)));
  const host = new Map<string, string>();
  for (const path of HOST_SENTINELS) host.set(path, hostState(path));
  return { outside, host };
}

/** A fresh world; the snapshot is taken last, after all times are set. */
export function createWorld(): World {
  const parent = mkdtempSync(join(tmpdir(), 'cs-breakout-'));
  const dest = join(parent, 'dest');
  mkdirSync(dest, { mode: 0o755 });
  for (const node of OUTSIDE) {
    const path = join(parent, node.path);
    switch (node.kind) {
      case 'dir':
        mkdirSync(path);
        chmodSync(path, node.mode);
        break;
      case 'file':
        writeFileSync(path, node.content);
        chmodSync(path, node.mode);
        break;
      case 'fifo':
        execFileSync('mkfifo', ['-m', node.mode.toString(8), '--', path]);
        break;
      case 'symlink':
        symlinkSync(node.target, path);
        break;
    }
  }
  setOldTimes(parent);
  return { parent, dest, victim: join(parent, 'victim'), evil: join(parent, 'dest-evil'), snapshot: takeSnapshot(parent) };
}

/** atime 2001, mtime 2020 everywhere outside; children first, so that setting a child's times does not disturb the parent's. */
function setOldTimes(parent: string): void {
  for (const node of [...OUTSIDE].reverse()) lutimesSync(join(parent, node.path), OLD_ATIME, NEWER_MTIME);
}

export function destroyWorld(world: World): void {
  rmSync(world.parent, { recursive: true, force: true });
}

function listTree(root: string, prefix: string, out: string[]): void {
  for (const name of readdirSync(root, { withFileTypes: true })) {
    const rel = `${prefix}/${name.name}`;
    out.push(rel);
    if (name.isDirectory()) listTree(join(root, name.name), rel, out);
  }
}

function readNoAtime(path: string): Buffer {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOATIME | constants.O_NOFOLLOW);
  try {
    const size = Number(fstatSync(fd).size);
    const buf = Buffer.alloc(size);
    let offset = 0;
    while (offset < size) {
      const read = readSync(fd, buf, offset, size - offset, offset);
      if (read === 0) break;
      offset += read;
    }
    return buf.subarray(0, offset);
  } finally {
    closeSync(fd);
  }
}

const sha = (data: string | Buffer): string => createHash('sha256').update(data).digest('hex');

/**
 * Everything that differs from the snapshot, as readable lines (empty when
 * untouched). Metadata first (lstat only), then listings, then contents.
 */
export function outsideChanges(world: World): string[] {
  const problems: string[] = [];
  // 1. Metadata of every path, with lstat only: nothing here reads.
  for (const node of OUTSIDE) {
    const path = join(world.parent, node.path);
    const before = world.snapshot.outside.get(node.path) as PathState;
    let after: PathState;
    try {
      after = state(path);
    } catch (error) {
      problems.push(`${node.path}: ${(error as Error).message}`);
      continue;
    }
    for (const key of Object.keys(before) as (keyof PathState)[]) {
      if (before[key] !== after[key]) problems.push(`${node.path}: ${key} changed from ${before[key]} to ${after[key]}`);
    }
  }
  for (const [path, before] of world.snapshot.host) {
    const after = hostState(path);
    if (after !== before) problems.push(`host ${path}: was ${before}, now ${after}`);
  }
  // 2. Listings: nothing added or removed outside the root.
  const parentListing = readdirSync(world.parent).sort();
  if (JSON.stringify(parentListing) !== JSON.stringify(['dest', 'dest-evil', 'victim'])) problems.push(`parent folder now holds ${parentListing.join(', ')}`);
  for (const top of ['victim', 'dest-evil']) {
    const found: string[] = [];
    try {
      listTree(join(world.parent, top), top, found);
    } catch (error) {
      problems.push(`cannot list ${top}: ${(error as Error).message}`);
      continue;
    }
    const expected = OUTSIDE.filter((node) => node.path.startsWith(`${top}/`)).map((node) => node.path);
    for (const path of found) if (!expected.includes(path)) problems.push(`${path} appeared`);
    for (const path of expected) if (!found.includes(path)) problems.push(`${path} disappeared`);
  }
  // 3. Contents and link targets.
  for (const node of OUTSIDE) {
    const path = join(world.parent, node.path);
    try {
      if (node.kind === 'file' && sha(readNoAtime(path)) !== sha(node.content)) problems.push(`${node.path}: content changed`);
      if (node.kind === 'symlink' && readlinkSync(path) !== node.target) problems.push(`${node.path}: target changed`);
    } catch (error) {
      problems.push(`${node.path}: ${(error as Error).message}`);
    }
  }
  // The listings and readlinks above moved atimes (that is how reads show):
  // when all is well, set the old times again and take a new snapshot, so
  // that the next comparison is as sharp as the first.
  if (problems.length === 0) {
    setOldTimes(world.parent);
    world.snapshot = takeSnapshot(world.parent);
  }
  return problems;
}
