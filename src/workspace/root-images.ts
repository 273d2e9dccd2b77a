import { existsSync } from 'node:fs';
import { chmod, lstat, readdir, readFile, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { personalDir } from '../snapshot/catalogue.js';
import { InputError } from '../util/errors.js';
import { isAlive } from '../util/lock.js';
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
 * or a running VM names it. A creation in progress has built (or reused)
 * its image before its record exists: it claims the image first (its
 * inode's change time is set to now, see `claimRootImage`), and an image
 * claimed in the last GRACE_MS is kept whatever the records say.
 */

export const GRACE_MS = 60 * 60 * 1000;

export function imagesDir(env?: Env): string {
  return join(dataDir(env), 'images');
}

/** Mark `path` as just taken by a workspace being made (its change time becomes now, its contents and times stay). */
export async function claimRootImage(path: string): Promise<void> {
  const info = await stat(path);
  await chmod(path, info.mode & 0o7777);
}

export interface PruneResult {
  /** Images (and leftovers of builds that died) removed. */
  removed: string[];
  /** Bytes given back to the file system (an image still linked from the cache frees nothing yet). */
  freedBytes: number;
  /** Images kept: in use, or claimed within the grace period. */
  kept: number;
}

/**
 * Removes root images no workspace, restore point or running VM uses, and
 * the temporary files of builds whose process is gone. A record that cannot
 * be read stops the prune (what it names is unknown): nothing is removed.
 */
export async function pruneRootImages(options: { env?: Env; now?: number; graceMs?: number } = {}): Promise<PruneResult> {
  const now = options.now ?? Date.now();
  const grace = options.graceMs ?? GRACE_MS;
  const used = await imagesInUse(options.env);
  const dirs = [imagesDir(options.env)];
  const personal = personalDir(options.env);
  if (personal) dirs.push(join(personal, 'images'));
  const result: PruneResult = { removed: [], freedBytes: 0, kept: 0 };
  for (const dir of dirs) {
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      const path = join(dir, name);
      const info = await lstat(path).catch(() => undefined);
      if (!info?.isFile()) continue;
      const building = /\.erofs\.tmp-(\d+)-\d+$/.exec(name);
      if (!name.endsWith('.erofs') && !building) continue;
      const claimedRecently = now - info.ctimeMs < grace;
      const unused = building ? !isAlive(Number(building[1])) : !used.has(identity(info));
      if (!unused || claimedRecently) {
        result.kept++;
        continue;
      }
      await unlink(path);
      result.removed.push(path);
      if (info.nlink === 1) result.freedBytes += info.blocks * 512;
    }
  }
  return result;
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
  for (const sandbox of await readdir(root).catch(() => [] as string[])) {
    const sandboxDir = join(root, sandbox);
    if (existsSync(join(sandboxDir, FILES.record))) await addUses(sandboxDir, named);
    for (const workspace of await readdir(sandboxDir).catch(() => [] as string[])) await addUses(join(sandboxDir, workspace), named);
  }
  const used = new Set<string>();
  for (const path of named) {
    const info = await stat(path).catch(() => undefined);
    if (info) used.add(identity(info));
  }
  return used;
}

async function addUses(dir: string, used: Set<string>): Promise<void> {
  const text = await readFile(join(dir, FILES.record), 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT' || error.code === 'ENOTDIR') return undefined;
    throw new InputError(`cannot read ${join(dir, FILES.record)} (${error.code ?? error.message}), so which root images it uses is unknown; nothing was pruned`, { cause: error });
  });
  if (text === undefined) return;
  let record: WorkspaceRecord;
  try {
    record = JSON.parse(text) as WorkspaceRecord;
  } catch (error) {
    throw new InputError(`${join(dir, FILES.record)} is not valid JSON, so which root images it uses is unknown; nothing was pruned`, { cause: error });
  }
  for (const path of record.lowers ?? []) used.add(path);
  for (const point of record.restorePoints ?? []) for (const path of point.root?.lowers ?? []) used.add(path);
  const run = await readFile(join(dir, FILES.run), 'utf8').then((t) => JSON.parse(t) as RunRecord, () => undefined);
  for (const path of run?.boot?.lowers ?? []) used.add(path);
}
