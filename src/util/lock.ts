import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { open, readFile, rm, stat } from 'node:fs/promises';
import { CsError, ExitCode } from './errors.js';

/**
 * Advisory locks between cs processes: a lock file created with O_EXCL that
 * names its holder. A lock whose holder process is gone (crash, kill -9) is
 * stale and taken over. Waiting is bounded; the error names the holder.
 */

export interface LockHolder {
  pid: number;
  host: string;
  since: string;
  purpose: string;
}

export class LockedError extends CsError {
  constructor(message: string, readonly holder: LockHolder | undefined) {
    super(message, { code: 'LOCKED', exitCode: ExitCode.invalidInput, suggestions: ['wait for the other cs command to finish, then try again'] });
  }
}

export interface LockOptions {
  /** What the lock protects, shown to whoever waits for it. */
  purpose: string;
  /** How long to wait for another holder (default 30 s). 0 fails at once. */
  timeoutMs?: number;
}

export interface Lock {
  release(): Promise<void>;
}

/**
 * Whether a process with this pid exists on this host (EPERM: it exists, but
 * is not ours). A zombie is dead: a killed detached process stays one until
 * whoever adopted it reaps it, which some init processes do late or never.
 */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as { code?: string }).code !== 'EPERM') return false;
  }
  try {
    // /proc/PID/stat: "pid (comm) state ...", and comm may hold spaces or parentheses.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

async function readHolder(path: string): Promise<LockHolder | undefined> {
  try {
    const parsed = JSON.parse(await readFile(path, 'utf8')) as Partial<LockHolder>;
    if (typeof parsed.pid !== 'number') return undefined;
    return { pid: parsed.pid, host: String(parsed.host ?? ''), since: String(parsed.since ?? ''), purpose: String(parsed.purpose ?? '') };
  } catch {
    return undefined;
  }
}

async function ageMs(path: string): Promise<number> {
  try {
    return Date.now() - (await stat(path)).mtimeMs;
  } catch {
    return 0;
  }
}

/**
 * A holder on this host whose process is gone left the lock behind. A lock
 * file still being written (no holder yet) is given a moment.
 */
async function isStale(path: string, holder: LockHolder | undefined, host: string): Promise<boolean> {
  return holder ? holder.host === host && !isAlive(holder.pid) : (await ageMs(path)) > STALE_EMPTY_MS;
}

/**
 * Remove a stale lock file; true when it is gone. Waiters take over one at
 * a time, under `PATH.takeover`, and judge the file again there: a plain
 * `rm` after judging let a slow waiter delete the lock that a faster one
 * had just taken after removing the stale one, and both went in.
 */
async function removeStale(path: string, host: string): Promise<boolean> {
  const takeover = `${path}.takeover`;
  let handle;
  try {
    handle = await open(takeover, 'wx', 0o644);
  } catch (error) {
    if ((error as { code?: string }).code !== 'EEXIST') throw error;
    // Left by a waiter that died in the middle of a takeover (a few ms).
    if ((await ageMs(takeover)) > STALE_EMPTY_MS) await rm(takeover, { force: true });
    return false;
  }
  try {
    await handle.close();
    // While we hold the takeover, a stale lock file cannot change: its holder is gone, and nobody else removes it.
    if (await isStale(path, await readHolder(path), host)) await rm(path, { force: true });
    return true;
  } finally {
    await rm(takeover, { force: true });
  }
}

const STALE_EMPTY_MS = 5_000;

export async function acquireLock(path: string, options: LockOptions): Promise<Lock> {
  const deadline = Date.now() + (options.timeoutMs ?? 30_000);
  let delay = 10;
  const me: LockHolder = { pid: process.pid, host: hostname(), since: new Date().toISOString(), purpose: options.purpose };
  for (;;) {
    try {
      const handle = await open(path, 'wx', 0o644);
      await handle.writeFile(JSON.stringify(me));
      await handle.close();
      let released = false;
      return {
        release: async () => {
          if (released) return;
          released = true;
          await rm(path, { force: true });
        },
      };
    } catch (error) {
      if ((error as { code?: string }).code !== 'EEXIST') throw error;
    }
    const holder = await readHolder(path);
    if (await isStale(path, holder, me.host)) {
      if (await removeStale(path, me.host)) continue;
      // Another waiter is taking it over: wait like for a live holder.
    }
    if (Date.now() >= deadline) {
      const who = holder ? `process ${holder.pid} (${holder.purpose}, since ${holder.since})` : 'another cs process';
      throw new LockedError(`${options.purpose}: ${who} holds the lock ${path}`, holder);
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 250);
  }
}

export async function withLock<T>(path: string, options: LockOptions, fn: () => Promise<T>): Promise<T> {
  const lock = await acquireLock(path, options);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}
