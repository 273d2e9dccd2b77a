import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isAlive } from '../util/lock.js';

/**
 * Commands running in a workspace (`cs exec`, `cs ssh`), each announced by
 * a small file in its folder while it runs. An operation that would pull
 * the disk from under them (a restore, a clone, a removal) names them in
 * its refusal. A file whose process is gone (kill -9) is ignored.
 */

export interface ActiveCommand {
  pid: number;
  since: string;
  command: string;
}

const PREFIX = '.exec-';

let leases = 0;

export async function withCommandLease<T>(dir: string, command: string, fn: () => Promise<T>): Promise<T> {
  // One process (the service) may hold many at once: each gets its own file.
  const file = join(dir, `${PREFIX}${process.pid}-${Date.now()}-${++leases}.json`);
  const lease: ActiveCommand = { pid: process.pid, since: new Date().toISOString(), command: command.slice(0, 200) };
  await writeFile(file, JSON.stringify(lease)).catch(() => undefined);
  try {
    return await fn();
  } finally {
    await rm(file, { force: true });
  }
}

export async function activeCommands(dir: string): Promise<ActiveCommand[]> {
  const out: ActiveCommand[] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!name.startsWith(PREFIX)) continue;
    const lease = await readFile(join(dir, name), 'utf8').then((t) => JSON.parse(t) as ActiveCommand, () => undefined);
    if (lease && typeof lease.pid === 'number' && isAlive(lease.pid)) out.push(lease);
    else if (lease) await rm(join(dir, name), { force: true });
  }
  return out;
}

/** "cs exec (pid 12, since …): make test" for messages. */
export function describeCommands(list: readonly ActiveCommand[]): string {
  return list.map((c) => `\`${c.command}\` (pid ${c.pid}, since ${c.since})`).join(', ');
}
