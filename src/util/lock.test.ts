import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { acquireLock, LockedError, withLock } from './lock.js';

let dir: string;
let path: string;
const children: ReturnType<typeof spawn>[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cs-lock-'));
  path = join(dir, 'thing.lock');
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A process that lives until the tests end. */
let livePid: number;
/** A pid whose process has exited. */
let deadPid: number;

beforeAll(async () => {
  const live = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' });
  children.push(live);
  livePid = live.pid ?? 0;
  const dead = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  deadPid = dead.pid ?? 0;
  await new Promise((resolve) => dead.once('exit', resolve));
});

afterAll(() => {
  for (const child of children) child.kill('SIGKILL');
});

async function writeHolder(pid: number, options: { host?: string; purpose?: string } = {}): Promise<void> {
  await writeFile(path, JSON.stringify({ pid, host: options.host ?? hostname(), since: '2024-01-01T00:00:00.000Z', purpose: options.purpose ?? 'pull an image' }));
}

describe('acquireLock', () => {
  it('makes a second acquirer wait until the first releases, then gives it the lock', async () => {
    const first = await acquireLock(path, { purpose: 'first' });
    const started = Date.now();
    let acquired = false;
    const second = acquireLock(path, { purpose: 'second', timeoutMs: 10_000 }).then((lock) => {
      acquired = true;
      return lock;
    });
    await sleep(300);
    expect(acquired).toBe(false);
    await first.release();
    const lock = await second;
    expect(Date.now() - started).toBeGreaterThanOrEqual(300);
    await lock.release();
    expect(await readdir(dir)).toEqual([]);
  });

  it('times out with an error naming the holder pid and purpose', async () => {
    await writeHolder(livePid, { purpose: 'tag 127.0.0.1:5000/a:b' });
    const started = Date.now();
    const error = await acquireLock(path, { purpose: 'prune the content store', timeoutMs: 300 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(Date.now() - started).toBeGreaterThanOrEqual(300);
    expect(error).toBeInstanceOf(LockedError);
    const locked = error as LockedError;
    expect(locked.exitCode).toBe(3);
    expect(locked.code).toBe('LOCKED');
    expect(locked.message).toBe(`prune the content store: process ${livePid} (tag 127.0.0.1:5000/a:b, since 2024-01-01T00:00:00.000Z) holds the lock ${path}`);
    expect(locked.holder).toMatchObject({ pid: livePid, purpose: 'tag 127.0.0.1:5000/a:b' });
    expect(locked.suggestions.length).toBeGreaterThan(0);
  });

  it('fails at once with timeoutMs 0', async () => {
    await writeHolder(livePid);
    const started = Date.now();
    await expect(acquireLock(path, { purpose: 'x', timeoutMs: 0 })).rejects.toBeInstanceOf(LockedError);
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('takes over a lock left by a dead process on this host', async () => {
    await writeHolder(deadPid);
    const lock = await acquireLock(path, { purpose: 'after a crash', timeoutMs: 2_000 });
    await lock.release();
  });

  it('does not take over a lock of another host (its pid means nothing here)', async () => {
    await writeHolder(deadPid, { host: `not-${hostname()}` });
    await expect(acquireLock(path, { purpose: 'x', timeoutMs: 200 })).rejects.toThrow(new RegExp(`process ${deadPid} \\(pull an image`));
  });

  it('takes over an empty lock file older than 5 s, but waits for a fresh one', async () => {
    await writeFile(path, '');
    await expect(acquireLock(path, { purpose: 'x', timeoutMs: 300 })).rejects.toThrow(/another cs process holds the lock/);
    const old = new Date(Date.now() - 6_000);
    await utimes(path, old, old);
    const lock = await acquireLock(path, { purpose: 'x', timeoutMs: 2_000 });
    await lock.release();
  });

  it('takes over an unreadable (not JSON) lock file older than 5 s', async () => {
    await writeFile(path, '{"pid": 12');
    const old = new Date(Date.now() - 6_000);
    await utimes(path, old, old);
    const lock = await acquireLock(path, { purpose: 'x', timeoutMs: 2_000 });
    await lock.release();
  });

  it('release is idempotent and withLock releases when the work throws', async () => {
    const lock = await acquireLock(path, { purpose: 'x' });
    await lock.release();
    const other = await acquireLock(path, { purpose: 'y', timeoutMs: 0 });
    await lock.release(); // must not remove the other holder's lock
    await expect(acquireLock(path, { purpose: 'z', timeoutMs: 0 })).rejects.toBeInstanceOf(LockedError);
    await other.release();
    await expect(withLock(path, { purpose: 'w' }, async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(await readdir(dir)).toEqual([]);
  });
});

/**
 * Run `n` critical sections on `lockPath` that start within `staggerMs` of
 * each other; returns the most that were ever inside together.
 */
async function contend(n: number, holdMs: number, staggerMs = 0, lockPath = path): Promise<{ maxInside: number; done: number }> {
  let inside = 0;
  let maxInside = 0;
  let done = 0;
  await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      if (staggerMs > 0) await sleep(Math.random() * staggerMs);
      await withLock(lockPath, { purpose: `worker ${i}`, timeoutMs: 20_000 }, async () => {
        inside++;
        maxInside = Math.max(maxInside, inside);
        await sleep(holdMs);
        inside--;
        done++;
      });
    }),
  );
  return { maxInside, done };
}

/** Rounds of a few waiters taking over a stale lock at once; the most inside together, per round. */
async function takeOver(rounds: number, makeStale: () => Promise<void>): Promise<number[]> {
  const most: number[] = [];
  for (let round = 0; round < rounds; round++) {
    await makeStale();
    most.push((await contend(3, 2, 4)).maxInside);
  }
  return most;
}

describe('mutual exclusion', () => {
  it('lets one holder in at a time under contention', async () => {
    expect(await contend(8, 2)).toEqual({ maxInside: 1, done: 8 });
  });

  // Before the fix in lock.ts, a waiter that had judged the dead holder's
  // lock stale could remove the lock that a faster waiter had just created
  // after removing the stale one: two holders at once (in about one round
  // in ten here).
  it('lets one holder in at a time when many waiters take over a dead holder’s lock', async () => {
    expect(await takeOver(40, () => writeHolder(deadPid))).toEqual(new Array(40).fill(1));
    expect(await readdir(dir)).toEqual([]);
  });

  it('lets one holder in at a time when many waiters take over a stale empty lock', async () => {
    const old = new Date(Date.now() - 6_000);
    const stale = async () => {
      await writeFile(path, '');
      await utimes(path, old, old);
    };
    expect(await takeOver(20, stale)).toEqual(new Array(20).fill(1));
    expect(await readdir(dir)).toEqual([]);
  });

  it('clears a takeover marker left by a waiter that died while taking over', async () => {
    await writeHolder(deadPid);
    await writeFile(`${path}.takeover`, '');
    const old = new Date(Date.now() - 6_000);
    await utimes(`${path}.takeover`, old, old);
    const lock = await acquireLock(path, { purpose: 'x', timeoutMs: 3_000 });
    await lock.release();
    expect(await readdir(dir)).toEqual([]);
  });
});
