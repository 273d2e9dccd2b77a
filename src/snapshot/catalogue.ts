import { lstatSync } from 'node:fs';
import { lstat, mkdir, readdir, readFile, rm, chmod } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
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

/** This user's private folder (it may not exist yet). */
export function personalDir(env?: Env, uid = currentUser().uid): string {
  return join(snapshotsDir(env), 'personal', String(uid));
}

/**
 * The private folder to read from: only when it is really this user's (a
 * folder someone else planted there could hold made-up entries).
 */
function ownPersonalDir(env?: Env): string | undefined {
  const dir = personalDir(env);
  try {
    const info = lstatSync(dir);
    return info.isDirectory() && info.uid === (process.getuid?.() ?? 0) ? dir : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Make (or check) this user's private folder. `personal/` is shared like
 * /tmp (sticky, everyone may add a folder); a user's folder must be a real
 * directory owned by them and closed to everyone else, or cs refuses to put
 * private data there: someone else could have made it first, open, to read
 * what lands in it.
 */
export async function ensurePersonalDir(env?: Env): Promise<string> {
  const parent = join(snapshotsDir(env), 'personal');
  await mkdir(parent, { recursive: true });
  const parentInfo = await lstat(parent);
  if (parentInfo.uid === process.getuid?.() && (parentInfo.mode & 0o7777) !== 0o1777) await chmod(parent, 0o1777);
  const dir = personalDir(env);
  await mkdir(dir, { mode: 0o700 }).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'EEXIST') throw error;
  });
  await checkPrivate(dir);
  return dir;
}

async function checkPrivate(dir: string): Promise<void> {
  const info = await lstat(dir);
  const uid = process.getuid?.() ?? 0;
  if (!info.isDirectory() || info.uid !== uid) {
    throw new InputError(`${dir} is not a folder owned by you (uid ${uid}); cs will not keep personal snapshots there`, {
      code: 'PERSONAL_DIR_UNSAFE',
      suggestions: ['ask the owner of the data directory to remove it'],
    });
  }
  if ((info.mode & 0o077) !== 0) await chmod(dir, 0o700);
}

export interface CatalogueLocation {
  dir: string;
  store: () => Promise<ContentStore>;
  repository: string;
}

/** Where snapshots of a kind are recorded and stored. */
export async function locationOf(kind: SnapshotKind, env?: Env, options: { create?: boolean } = {}): Promise<CatalogueLocation> {
  if (kind === 'personal') {
    const dir = options.create ? await ensurePersonalDir(env) : personalDir(env);
    return { dir, store: () => ContentStore.open(join(dir, 'store')), repository: PERSONAL_REPOSITORY };
  }
  const dir = sharedDir(env);
  if (options.create) await mkdir(dir, { recursive: true });
  return { dir, store: () => ContentStore.open(storeDir(env)), repository: SHARED_REPOSITORY };
}

export function tagOf(location: CatalogueLocation, key: string): string {
  return `${location.repository}:${key}`;
}

export function catalogueLock(env?: Env): string {
  return join(snapshotsDir(env), '.lock');
}

/** One lock for every change to the catalogue (the personal folder has its own: only its owner writes there). */
export async function withCatalogue<T>(kind: SnapshotKind, env: Env | undefined, purpose: string, fn: (location: CatalogueLocation) => Promise<T>): Promise<T> {
  const location = await locationOf(kind, env, { create: true });
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
  await writeFileAtomic(join(dir, `${record.name.toLowerCase()}.json`), JSON.stringify(record, null, 2) + '\n');
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
    const record = await readRecordAt(dir, name.slice(0, -'.json'.length));
    if (record) out.push(record);
  }
  return out;
}

/** Every snapshot this user can see: the shared ones, then their own. */
export async function listSnapshots(env?: Env): Promise<SnapshotRecord[]> {
  const shared = await listRecordsAt(sharedDir(env));
  const own = ownPersonalDir(env);
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
  const own = ownPersonalDir(env);
  if (kinds.includes('personal') && own) return readRecordAt(own, key);
  return undefined;
}

const DEFAULT_FILE = 'default';

/** The user's default personal snapshot's key, if any. */
export async function personalDefault(env?: Env): Promise<string | undefined> {
  const own = ownPersonalDir(env);
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
