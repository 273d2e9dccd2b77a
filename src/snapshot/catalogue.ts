import { existsSync, lstatSync, realpathSync, statSync } from 'node:fs';
import { lstat, mkdir, readdir, readFile, rm, chmod } from 'node:fs/promises';
import { homedir, userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { SNAPSHOT_NAME, SNAPSHOT_NAME_RULE } from '../definition/names.js';
import { ContentStore } from '../oci/store.js';
import { InputError, UsageError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs.js';
import { withLock } from '../util/lock.js';
import { dataDir, storeDir, type Env } from '../util/paths.js';

/**
 * The snapshot catalogue: names for snapshot images.
 *
 *   $CS_HOME/snapshots/shared/KEY.json      base and home snapshots (one namespace)
 *   $CS_HOME/snapshots/personal/UID/        one user's own, mode 0700, owned by that user:
 *       KEY.json, default, store/ (an OCI layout of its own), images/, rootfs/
 *
 * KEY is the name in lower case: names are unique whatever their case. A
 * shared snapshot's image lives in the common content store, tagged
 * `localhost/cs/snapshots:KEY` so `cs image prune` keeps it; a personal
 * snapshot's image, and every root image or cached tree that contains it,
 * lives in its owner's private folder, so the operating system (not only
 * cs) keeps other users from listing, reading or applying it.
 */

export type SnapshotKind = 'base' | 'home' | 'personal';

export interface SnapshotLayer {
  digest: string;
  size: number;
  diffId: string;
  mediaType: string;
}

export interface SnapshotRecord {
  version: 1;
  /** As given at creation (the key is its lower case). */
  name: string;
  kind: SnapshotKind;
  /** The image's tag in its store. */
  reference: string;
  /** Manifest digest. */
  digest: string;
  layers: SnapshotLayer[];
  /** Compressed bytes of all layers. */
  size: number;
  created: string;
  createdBy: { user: string; uid: number };
  /** The image a base snapshot extends. */
  parent?: { name?: string; reference: string; digest: string };
  /** Where its files came from: a workspace, a folder or a home folder. */
  source: { workspace?: string; dir?: string; home?: string };
  /** Home and personal snapshots: the lists used. */
  includes?: string[];
  excludes?: string[];
  /** Where it was pushed, when a snapshot registry is configured. */
  pushed?: string;
}

const SHARED_REPOSITORY = 'localhost/cs/snapshots';
const PERSONAL_REPOSITORY = 'localhost/cs/personal';

export function checkSnapshotName(name: string): string {
  if (!SNAPSHOT_NAME.test(name)) throw new UsageError(`invalid snapshot name "${name}": ${SNAPSHOT_NAME_RULE}`);
  return name.toLowerCase();
}

export function snapshotsDir(env?: Env): string {
  return join(dataDir(env), 'snapshots');
}

function sharedDir(env?: Env): string {
  return join(snapshotsDir(env), 'shared');
}

export function currentUser(): { user: string; uid: number } {
  const uid = process.getuid?.() ?? 0;
  let user = String(uid);
  try {
    user = userInfo().username;
  } catch {
    // A uid without a passwd entry (containers): the number is its name.
  }
  return { user, uid };
}

/**
 * Where this user's personal snapshots live. A personal folder is only as
 * private as the folders above it: someone who can rename any of them can
 * swap the folder for one of theirs between a check and a write. So the
 * folder is `$CS_HOME/snapshots/personal/UID` only when every folder above
 * it can be changed by no one but this user and root (owned by one of them
 * and not writable by group or others, or root's and sticky, like /tmp);
 * in a data directory a team shares (group-writable), it is the user's own
 * `$XDG_DATA_HOME/cs/personal/UID` instead, under the same rule. When
 * neither qualifies, cs refuses to keep personal snapshots (the same rule
 * as ssh's StrictModes).
 */
function personalCandidates(env: Env | undefined, uid: number): string[] {
  const e = env ?? process.env;
  const xdg = e['XDG_DATA_HOME'] || join(e['HOME'] || homedir(), '.local', 'share');
  return [join(snapshotsDir(env), 'personal', String(uid)), join(xdg, 'cs', 'personal', String(uid))];
}

/** Whether `dir` (created as needed) and every folder above it can be changed only by `uid` and root. */
function trustedChain(dir: string, uid: number): boolean {
  let current = dir;
  while (!existsSync(current)) current = dirname(current);
  try {
    current = realpathSync(current);
  } catch {
    return false;
  }
  for (;;) {
    let info;
    try {
      info = statSync(current);
    } catch {
      return false;
    }
    const owner = info.uid === uid || info.uid === 0;
    const closed = (info.mode & 0o022) === 0 || (info.uid === 0 && (info.mode & 0o1000) !== 0);
    if (!info.isDirectory() || !owner || !closed) return false;
    const parent = dirname(current);
    if (parent === current) return true;
    current = parent;
  }
}

/** A folder that is really this user's: a real directory they own, open to no one else. */
function isOwnPrivate(dir: string, uid: number): boolean {
  try {
    const info = lstatSync(dir);
    return info.isDirectory() && info.uid === uid && (info.mode & 0o077) === 0;
  } catch {
    return false;
  }
}

/** This user's personal folder if it exists and can be trusted (reads never follow a planted folder). */
export function personalDir(env?: Env): string | undefined {
  const uid = process.getuid?.() ?? 0;
  for (const candidate of personalCandidates(env, uid)) {
    // Checked and then used by its real path: a symlink on the way, in a folder others can change, could be re-pointed in between.
    let real: string;
    try {
      real = realpathSync(candidate);
    } catch {
      continue;
    }
    if (isOwnPrivate(real, uid) && trustedChain(dirname(real), uid)) return real;
  }
  return undefined;
}

/** Make (or find) this user's personal folder, or refuse with the reason. */
export async function ensurePersonalDir(env?: Env): Promise<string> {
  const uid = process.getuid?.() ?? 0;
  const existing = personalDir(env);
  if (existing) return existing;
  const candidates = personalCandidates(env, uid);
  for (const dir of candidates) {
    if (!trustedChain(dir, uid)) continue;
    try {
      await makePrivate(dir);
    } catch (error) {
      throw new InputError(`cannot create ${dir}: ${(error as Error).message}`, { cause: error, code: 'PERSONAL_DIR' });
    }
    const made = personalDir(env);
    if (made) return made;
  }
  throw new InputError(`there is no folder only you can change to keep personal snapshots in (checked ${candidates.join(' and ')})`, {
    code: 'PERSONAL_DIR_UNSAFE',
    suggestions: ['a folder above them is writable by others or owned by another user; set XDG_DATA_HOME to a folder of yours'],
  });
}

/** mkdir -p with folders closed to group and others (0755 on the way, 0700 at the end), whatever the umask. */
async function makePrivate(dir: string): Promise<void> {
  const missing: string[] = [];
  let current = dir;
  while (!existsSync(current)) {
    missing.unshift(current);
    current = dirname(current);
  }
  for (const path of missing) {
    const last = path === dir;
    await mkdir(path, { mode: last ? 0o700 : 0o755 }).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'EEXIST') throw error;
    });
    const info = await lstat(path);
    if (info.uid === (process.getuid?.() ?? 0)) await chmod(path, last ? 0o700 : 0o755);
  }
}

export interface CatalogueLocation {
  dir: string;
  store: () => Promise<ContentStore>;
  repository: string;
}

/** Where snapshots of a kind are recorded and stored (made if missing). */
export async function locationOf(kind: SnapshotKind, env?: Env): Promise<CatalogueLocation> {
  if (kind === 'personal') {
    const dir = await ensurePersonalDir(env);
    return { dir, store: () => ContentStore.open(join(dir, 'store')), repository: PERSONAL_REPOSITORY };
  }
  const dir = sharedDir(env);
  await mkdir(dir, { recursive: true });
  return { dir, store: () => ContentStore.open(storeDir(env)), repository: SHARED_REPOSITORY };
}

/** The folder holding the records of a kind, for reading; undefined when this user has no personal folder yet. */
export function recordsDir(kind: SnapshotKind, env?: Env): string | undefined {
  return kind === 'personal' ? personalDir(env) : sharedDir(env);
}

export function tagOf(location: CatalogueLocation, key: string): string {
  return `${location.repository}:${key}`;
}

export function catalogueLock(env?: Env): string {
  return join(snapshotsDir(env), '.lock');
}

/** One lock for every change to the catalogue (the personal folder has its own: only its owner writes there). */
export async function withCatalogue<T>(kind: SnapshotKind, env: Env | undefined, purpose: string, fn: (location: CatalogueLocation) => Promise<T>): Promise<T> {
  const location = await locationOf(kind, env);
  const lock = kind === 'personal' ? join(location.dir, '.lock') : catalogueLock(env);
  return withLock(lock, { purpose }, () => fn(location));
}

export async function readRecordAt(dir: string, key: string): Promise<SnapshotRecord | undefined> {
  let text: string;
  try {
    text = await readFile(join(dir, `${key}.json`), 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    if (code === 'EACCES') throw new InputError(`cannot read the snapshot catalogue at ${dir}: permission denied`, { code: 'PERMISSION_DENIED' });
    throw error;
  }
  try {
    return JSON.parse(text) as SnapshotRecord;
  } catch (error) {
    throw new InputError(`${join(dir, `${key}.json`)}: the catalogue entry is not valid JSON`, { cause: error });
  }
}

export async function writeRecordAt(dir: string, record: SnapshotRecord): Promise<void> {
  const path = join(dir, `${record.name.toLowerCase()}.json`);
  await writeFileAtomic(path, JSON.stringify(record, null, 2) + '\n');
  // Shared entries are for everyone who uses the data directory, whatever the writer's umask; personal ones sit in a 0700 folder.
  if (record.kind !== 'personal') await chmod(path, 0o644);
}

export async function removeRecordAt(dir: string, key: string): Promise<void> {
  await rm(join(dir, `${key}.json`), { force: true });
}

export async function listRecordsAt(dir: string): Promise<SnapshotRecord[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return [];
    if (code === 'EACCES') throw new InputError(`cannot read the snapshot catalogue at ${dir}: permission denied`, { code: 'PERMISSION_DENIED' });
    throw error;
  }
  const out: SnapshotRecord[] = [];
  for (const name of names.sort()) {
    if (!name.endsWith('.json') || name.startsWith('.')) continue;
    // One entry someone made unreadable (or broke) must not hide the whole catalogue.
    const record = await readRecordAt(dir, name.slice(0, -'.json'.length)).catch(() => undefined);
    if (record) out.push(record);
  }
  return out;
}

/** Every snapshot this user can see: the shared ones, then their own. */
export async function listSnapshots(env?: Env): Promise<SnapshotRecord[]> {
  const shared = await listRecordsAt(sharedDir(env));
  const own = personalDir(env);
  const personal = own ? await listRecordsAt(own) : [];
  return [...shared, ...personal];
}

/**
 * A name looked up where the user means it: personal ones first for
 * `--personal`, else the shared namespace, then the user's own.
 */
export async function findSnapshot(name: string, env?: Env, kinds: readonly SnapshotKind[] = ['base', 'home', 'personal']): Promise<SnapshotRecord | undefined> {
  const key = checkSnapshotName(name);
  if (kinds.some((k) => k !== 'personal')) {
    const shared = await readRecordAt(sharedDir(env), key);
    if (shared && kinds.includes(shared.kind)) return shared;
  }
  const own = personalDir(env);
  if (kinds.includes('personal') && own) return readRecordAt(own, key);
  return undefined;
}

const DEFAULT_FILE = 'default';

/** The user's default personal snapshot's key, if any. */
export async function personalDefault(env?: Env): Promise<string | undefined> {
  const own = personalDir(env);
  if (!own) return undefined;
  try {
    const text = (await readFile(join(own, DEFAULT_FILE), 'utf8')).trim();
    return text === '' ? undefined : text;
  } catch {
    return undefined;
  }
}

export async function writePersonalDefault(dir: string, key: string | undefined): Promise<void> {
  if (key === undefined) await rm(join(dir, DEFAULT_FILE), { force: true });
  else await writeFileAtomic(join(dir, DEFAULT_FILE), `${key}\n`, { mode: 0o600 });
}
