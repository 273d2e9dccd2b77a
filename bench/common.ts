import { mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type Options } from 'execa';
import { userEnv } from '../test/helpers/cli.js';

export const root = fileURLToPath(new URL('..', import.meta.url));
export const cacheDir = join(root, '.bench-cache');

/** Environment for the cs binary: production mode (dist/), nothing of a test runner's. */
export function cliEnv(extra: Record<string, string>): Record<string, string> {
  return { ...userEnv(process.env), ...extra };
}

export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const start = process.hrtime.bigint();
  const value = await fn();
  return { ms: Number(process.hrtime.bigint() - start) / 1e6, value };
}

/**
 * timed(fn) after a `sync` and an optional pause, so a step does not pay for
 * the dirty pages (or, on a file system mounted with `discard`, the removals)
 * of the step before.
 */
export async function timedAfterSync<T>(fn: () => Promise<T>, pauseMs = 0): Promise<{ ms: number; value: T }> {
  await sh('sync', []);
  if (pauseMs > 0) await new Promise((resolve) => setTimeout(resolve, pauseMs));
  return timed(fn);
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[mid] ?? 0) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

export async function tempDir(prefix: string): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

export async function sh(file: string, args: string[], options: Options = {}): Promise<string> {
  const result = await execa(file, args, { ...options, reject: true });
  return String(result.stdout);
}

export async function removeAll(...dirs: string[]): Promise<void> {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
}

export async function ensureBuilt(): Promise<void> {
  await execa('npm', ['run', 'build'], { cwd: root, stdio: 'inherit' });
}

/**
 * A fresh CS_HOME for a workspace benchmark whose kernels come from the
 * shared bench cache (fetched once), and the environment for the cs binary.
 */
export async function benchHome(): Promise<{ home: string; env: Record<string, string> }> {
  const home = await tempDir('csb-');
  const shared = join(cacheDir, 'cs-home');
  await mkdir(join(shared, 'kernels'), { recursive: true });
  await symlink(join(shared, 'kernels'), join(home, 'kernels'));
  return { home, env: cliEnv({ CS_HOME: home, CS_CONFIG: join(home, 'config.yaml') }) };
}
