import { existsSync } from 'node:fs';
import { lstat, mkdir, readdir, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { snapshotsDir } from '../snapshot/catalogue.js';
import { InputError } from '../util/errors.js';
import { isAlive, withLock } from '../util/lock.js';
import { dataDir, type Env } from '../util/paths.js';
import { FILES, sandboxesDir, type RunRecord, type WorkspaceRecord } from './state.js';

/**
 * The root images workspaces boot from (`$CS_HOME/images/CHAIN.erofs`, and
 * under the user's private folder for roots with a personal snapshot), and
 * their removal once nothing uses them.
 *
 * An image is named by its chain and shared by every workspace on that
 * chain; a new home snapshot makes a new one. Without pruning, every version
 * of every root ever booted would stay (a Debian root is about 200 MB).
 *
 * An image is in use when a workspace's record, one of its restore points,
 * or a running VM names it. A workspace being made or cloned has its image
 * before its record exists (and its record sits in a staging folder until
 * it is renamed into place): it claims the image first, with a claim file
 * (`.claims/IMAGE.PID.TIME`) made under the images folder's lock, and an
 * image claimed in the last GRACE_MS is kept whatever the records say. A
 * prune holds the same lock while it reads the records and removes, so an
 * image is either claimed before the prune looks, or gone before the claim,
 * which then finds it missing and builds it again.
 */

export const GRACE_MS = 60 * 60 * 1000;

export function imagesDir(env?: Env): string {
  return join(dataDir(env), 'images');
}

const CLAIMS = '.claims';
const LOCK = '.lock';

/**
 * Claims the images in `paths` for a workspace being made, under the lock
 * of their folders. Returns false when one of them is gone (a prune took
 * it): the caller builds it again and claims again.
 */
export async function claimRootImages(paths: readonly string[]): Promise<boolean> {
  for (const path of paths) {
    const dir = dirname(path);
    const present = await withLock(join(dir, LOCK), { purpose: 'claiming a root image' }, async () => {
      if (!existsSync(path)) return false;
      await mkdir(join(dir, CLAIMS), { recursive: true });
      await writeFile(join(dir, CLAIMS, `${basename(path)}.${process.pid}.${Date.now()}`), '');
      return true;
    });
    if (!present) return false;
  }
  return true;
}

export interface PruneResult {
  /** Images (and leftovers of builds that died) removed. */
  removed: string[];
  /** Bytes given back to the file system (an image still linked from the cache frees nothing yet). */
  freedBytes: number;
  /** Images kept: in use, claimed within the grace period, or not ours to remove. */
  kept: number;
}

/**
 * Removes root images no workspace, restore point or running VM uses, and
 * the temporary files of builds whose process is gone. Anything that keeps
 * it from knowing every use (a record or folder it cannot read) stops it
 * before it removes anything.
 */
export async function pruneRootImages(options: { env?: Env; now?: number; graceMs?: number } = {}): Promise<PruneResult> {
  const now = options.now ?? Date.now();
  const grace = options.graceMs ?? GRACE_MS;
  // The private folder of this cs home only: the one beside other homes' data is shared by them.
  const dirs = [imagesDir(options.env), join(snapshotsDir(options.env), 'personal', String(process.getuid?.() ?? 0), 'images')];
  const result: PruneResult = { removed: [], freedBytes: 0, kept: 0 };
  // Read once, before the locks: a record written later names an image its creation claimed first (seen under the lock).
  const used = await imagesInUse(options.env);
  for (const dir of dirs) {
    if (!existsSync(dir)) continue;
    await withLock(join(dir, LOCK), { purpose: 'pruning root images', timeoutMs: 120_000 }, async () => {
      const claimed = await recentClaims(dir, now, grace);
      for (const name of await readdir(dir)) {
        const path = join(dir, name);
        const info = await lstat(path).catch(ignoreGone);
        if (!info?.isFile()) continue;
        const building = /\.erofs\.tmp-(\d+)-\d+$/.exec(name);
        if (!name.endsWith('.erofs') && !building) continue;
        const unused = building ? !isAlive(Number(building[1])) && now - info.mtimeMs >= grace : !used.has(identity(info)) && !claimed.has(name);
        if (!unused) {
          result.kept++;
          continue;
        }
        try {
          await unlink(path);
        } catch (error) {
          // Gone already (another prune), or someone else's file in a shared folder: not ours to count.
          if ((error as NodeJS.ErrnoException).code !== 'ENOENT') result.kept++;
          continue;
        }
        result.removed.push(path);
        if (info.nlink === 1) result.freedBytes += info.blocks * 512;
      }
    });
  }
  return result;
}

function ignoreGone(error: NodeJS.ErrnoException): undefined {
  if (error.code === 'ENOENT' || error.code === 'ENOTDIR') return undefined;
  throw error;
}

/** Images with a claim younger than `grace`; older claims are removed on the way. */
async function recentClaims(dir: string, now: number, grace: number): Promise<Set<string>> {
  const claimed = new Set<string>();
  for (const name of await readdir(join(dir, CLAIMS)).catch(ignoreGone) ?? []) {
    const m = /^(.+\.erofs)\.\d+\.(\d+)$/.exec(name);
    if (m && now - Number(m[2]) < grace) claimed.add(m[1] as string);
    else await unlink(join(dir, CLAIMS, name)).catch(() => undefined);
  }
  return claimed;
}

/** A file by its inode, not its name: a record may name an image by another path to the same file (a symlinked CS_HOME). */
function identity(info: { dev: number; ino: number }): string {
  return `${info.dev}:${info.ino}`;
}

/** Every image (by identity) a workspace record (also one still being made), a restore point or a running VM names. */
async function imagesInUse(env?: Env): Promise<Set<string>> {
  const named = new Set<string>();
  const root = sandboxesDir(env);
  // Dot folders too: a sandbox or workspace being made is filled in a staging folder and renamed into place.
  for (const sandbox of (await readdir(root).catch(ignoreGone)) ?? []) {
    const sandboxDir = join(root, sandbox);
    await addUses(sandboxDir, named);
    const entries = await readdir(sandboxDir).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT' || error.code === 'ENOTDIR') return [] as string[];
      throw unknowable(sandboxDir, error);
    });
    for (const workspace of entries) await addUses(join(sandboxDir, workspace), named);
  }
  const used = new Set<string>();
  for (const path of named) {
    const info = await stat(path).catch(ignoreGone);
    if (info) used.add(identity(info));
  }
  return used;
}

function unknowable(path: string, error: NodeJS.ErrnoException): InputError {
  return new InputError(`cannot read ${path} (${error.code ?? error.message}), so which root images it uses is unknown; nothing was pruned`, { cause: error });
}

async function addUses(dir: string, used: Set<string>): Promise<void> {
  const file = join(dir, FILES.record);
  const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT' || error.code === 'ENOTDIR') return undefined;
    throw unknowable(file, error);
  });
  if (text === undefined) return;
  let record: WorkspaceRecord;
  try {
    record = JSON.parse(text) as WorkspaceRecord;
  } catch (error) {
    throw new InputError(`${file} is not valid JSON, so which root images it uses is unknown; nothing was pruned`, { cause: error });
  }
  for (const path of record.lowers ?? []) used.add(path);
  for (const point of record.restorePoints ?? []) for (const path of point.root?.lowers ?? []) used.add(path);
  const run = await readFile(join(dir, FILES.run), 'utf8').then((t) => JSON.parse(t) as RunRecord, () => undefined);
  for (const path of run?.boot?.lowers ?? []) used.add(path);
}
