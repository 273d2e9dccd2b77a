import { existsSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { isAbsolute, join, normalize, sep } from 'node:path';
import { watch, type FSWatcher } from 'chokidar';
import { InputError } from '../util/errors.js';
import { dataDir, type Env } from '../util/paths.js';
import { run } from '../util/process.js';
import { readDesired, sha256 } from './desired.js';
import { applyDesired, lockReconciler, type ApplyOptions, type ApplyResult } from './engine.js';

/**
 * The long-running reconcilers. `--watch PATH` applies the definitions at
 * once, then again whenever a file under PATH changes (debounced, so an
 * editor's save, atomic rename included, is one apply) and on a periodic
 * full resync that catches what no file event says: a workspace that
 * crashed, a snapshot with a new version. `--git URL` clones a repository
 * once, fetches it on an interval and applies each new commit, recording
 * the commit in every workspace it brings to it. Both hold the reconcile
 * lock for as long as they run.
 */

export interface LoopOptions extends Omit<ApplyOptions, 'path' | 'commit' | 'locked' | 'dryRun'> {
  /** A full resync this often even when nothing changed (default 60 s). */
  resyncMs?: number;
  /** Quiet time after a file event before applying (default 50 ms; chokidar waits for writes to settle first). */
  debounceMs?: number;
  /** One apply (for git: one fetch and apply), then return. */
  once?: boolean;
  signal?: AbortSignal;
  onApply?: (result: ApplyResult, trigger: string) => void;
  onError?: (error: Error) => void;
}

/** A removal seen by the watcher is carried out when a second apply this much later still plans it. */
const REMOVAL_GRACE_MS = 2000;

/** Runs a caller's callback; one that throws must not end the loop. */
function report(fn: () => void): void {
  try {
    fn();
  } catch {
    // the caller's printing failed (a closed stdout): the loop goes on
  }
}

/** Runs `fn` whenever asked, never twice at once; a request during a run makes one more run after it. */
function serial(fn: (trigger: string) => Promise<void>): { request: (trigger: string) => void; idle: () => Promise<void> } {
  let running: Promise<void> | undefined;
  let again: string | undefined;
  const start = (trigger: string): void => {
    running = fn(trigger).finally(() => {
      running = undefined;
      if (again !== undefined) {
        const next = again;
        again = undefined;
        start(next);
      }
    });
  };
  return {
    request: (trigger) => {
      if (running) again = trigger;
      else start(trigger);
    },
    idle: async () => {
      while (running) await running;
    },
  };
}

function aborted(signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (!signal) return;
    if (signal.aborted) resolve();
    signal.addEventListener('abort', () => resolve(), { once: true });
  });
}

export async function watchDefinitions(options: LoopOptions & { path: string }): Promise<void> {
  if (!existsSync(options.path)) throw new InputError(`${options.path}: no such file or folder`);
  const lock = await lockReconciler(options.env, `cs reconcile --watch ${options.path}`);
  let watcher: FSWatcher | undefined;
  let timer: NodeJS.Timeout | undefined;
  let resync: NodeJS.Timeout | undefined;
  try {
    const seenRemovals = new Map<string, number>();
    const grace = options.once ? 0 : REMOVAL_GRACE_MS;
    let later: NodeJS.Timeout | undefined;
    const applyOnce = async (trigger: string): Promise<void> => {
      try {
        const desired = await readDesired(options.path);
        const result = await applyDesired(desired, { ...options, path: options.path, locked: true, removalGraceMs: grace, seenRemovals });
        report(() => options.onApply?.(result, trigger));
        // A removal waits for a second look: the file may have been half-written when it was read.
        if (result.deferred.length > 0 && !later) {
          later = setTimeout(() => {
            later = undefined;
            loop.request('removal check');
          }, grace + 50);
        }
      } catch (error) {
        report(() => options.onError?.(error as Error));
      }
    };
    const loop = serial(applyOnce);
    loop.request('start');
    if (options.once) {
      await loop.idle();
      return;
    }
    watcher = watch(options.path, {
      ignoreInitial: true,
      // Only definitions (and folders holding them) matter; editors' swap and backup files do not.
      ignored: (path, stats) => (stats?.isFile() ?? false) && !/\.ya?ml$/i.test(path),
      // An editor that writes in place (truncate, then write) is read once it has stopped writing.
      awaitWriteFinish: { stabilityThreshold: 60, pollInterval: 20 },
    });
    watcher.on('all', (event, path) => {
      clearTimeout(timer);
      timer = setTimeout(() => loop.request(`${event} ${path}`), options.debounceMs ?? 50);
    });
    watcher.on('error', (error) => report(() => options.onError?.(error as Error)));
    resync = setInterval(() => loop.request('resync'), options.resyncMs ?? 60_000);
    await aborted(options.signal);
    await loop.idle();
    clearTimeout(later);
  } finally {
    clearTimeout(timer);
    clearInterval(resync);
    await watcher?.close();
    await lock.release();
  }
}

export interface GitOptions extends LoopOptions {
  url: string;
  branch?: string;
  /** The folder of the repository holding the definitions. */
  subdir?: string;
  /** How often to fetch (default 30 s). */
  intervalMs?: number;
}

/** Where a followed repository is kept: one clone per URL and branch, in the data directory. */
export function gitCacheDir(url: string, branch: string | undefined, env?: Env): string {
  return join(dataDir(env), 'reconcile', 'git', sha256(Buffer.from(`${url}\n${branch ?? ''}`)).slice(0, 16));
}

function checkSubdir(subdir: string | undefined): string {
  if (!subdir) return '';
  const clean = normalize(subdir).replace(/\/+$/, '');
  if (isAbsolute(clean) || clean === '..' || clean.startsWith(`..${sep}`)) throw new InputError(`--path ${subdir}: must be a folder inside the repository`);
  return clean === '.' ? '' : clean;
}

const GIT_ENV = { GIT_TERMINAL_PROMPT: '0' };

/** Clones (once) or fetches the repository and checks out the newest commit of the branch; returns it. */
export async function syncRepository(options: Pick<GitOptions, 'url' | 'branch' | 'env'>): Promise<{ commit: string; tree: string }> {
  const dir = gitCacheDir(options.url, options.branch, options.env);
  const tree = join(dir, 'tree');
  if (!existsSync(join(tree, '.git'))) {
    await mkdir(dir, { recursive: true });
    const temp = join(dir, `.clone-${process.pid}`);
    await rm(temp, { recursive: true, force: true });
    const args = ['clone', '--quiet', '--no-checkout', ...(options.branch ? ['--branch', options.branch, '--single-branch'] : []), '--', options.url, temp];
    await run('git', args, { timeoutMs: 10 * 60_000, env: GIT_ENV }).catch((error: Error) => {
      throw new InputError(`cannot clone ${options.url}: ${error.message}`, { cause: error });
    });
    await rm(tree, { recursive: true, force: true });
    await rename(temp, tree);
  }
  await run('git', ['-C', tree, 'fetch', '--quiet', 'origin', options.branch ? `refs/heads/${options.branch}` : 'HEAD'], { timeoutMs: 10 * 60_000, env: GIT_ENV }).catch((error: Error) => {
    throw new InputError(`cannot fetch ${options.url}${options.branch ? ` (branch ${options.branch})` : ''}: ${error.message}`, { cause: error });
  });
  const commit = (await run('git', ['-C', tree, 'rev-parse', 'FETCH_HEAD^{commit}'])).stdout.trim();
  await run('git', ['-C', tree, 'checkout', '--quiet', '--force', '--detach', commit]);
  await run('git', ['-C', tree, 'clean', '--quiet', '-fdx']);
  return { commit, tree };
}

export async function followRepository(options: GitOptions): Promise<void> {
  const subdir = checkSubdir(options.subdir);
  const lock = await lockReconciler(options.env, `cs reconcile --git ${options.url}`);
  let last: string | undefined;
  let lastFull = 0;
  try {
    for (;;) {
      try {
        const { commit, tree } = await syncRepository(options);
        const path = subdir ? join(tree, subdir) : tree;
        const resyncDue = Date.now() - lastFull >= (options.resyncMs ?? 60_000);
        if (commit !== last || resyncDue) {
          if (!existsSync(path)) throw new InputError(`${options.url} has no folder ${subdir} at commit ${commit.slice(0, 12)}`);
          const desired = await readDesired(path, { commit });
          const result = await applyDesired(desired, { ...options, path, commit, locked: true });
          report(() => options.onApply?.(result, commit !== last ? `commit ${commit.slice(0, 12)}` : 'resync'));
          last = commit;
          lastFull = Date.now();
        }
      } catch (error) {
        report(() => options.onError?.(error as Error));
      }
      if (options.once || options.signal?.aborted) return;
      await Promise.race([new Promise((r) => setTimeout(r, options.intervalMs ?? 30_000)), aborted(options.signal)]);
      if (options.signal?.aborted) return;
    }
  } finally {
    await lock.release();
  }
}
