/**
 * Running the real `cs` binary (`node bin/run.cjs`) the way a user's shell
 * would. What vitest adds to the environment (NODE_ENV=test, VITEST*,
 * NODE_OPTIONS) is removed: with NODE_ENV=test oclif would load src/
 * through a TypeScript loader instead of dist/.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { expect } from 'vitest';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const BIN = join(ROOT, 'bin', 'run.cjs');

export interface Run {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
}

/** Build dist/ unless `command` (e.g. 'image/pull') is there: `npm test` builds it first. */
export async function ensureBuilt(command: string): Promise<void> {
  const needed = [join(ROOT, 'dist', 'commands', `${command}.js`), join(ROOT, 'dist', 'bundle', 'run.js'), join(ROOT, 'oclif.manifest.json')];
  if (!needed.every((path) => existsSync(path))) {
    await execa('npm', ['run', 'build'], { cwd: ROOT, stdio: 'inherit' });
  }
}

export function userEnv(env: Record<string, string | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(env)) {
    if (value === undefined || /^(CS_DEBUG|FORCE_COLOR|NODE_ENV|NODE_OPTIONS|DEBUG|VITEST.*|TSX.*)$/.test(key)) continue;
    out[key] = value;
  }
  out['NO_COLOR'] = '1';
  return out;
}

/** Start `cs ARGS` (not awaited): for tests that stop it midway. */
export function startCs(args: readonly string[], options: { env: Record<string, string | undefined>; input?: string; timeoutMs?: number }) {
  return execa(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    reject: false,
    env: userEnv(options.env),
    extendEnv: false,
    ...(options.input === undefined ? { stdin: 'ignore' as const } : { input: options.input }),
    timeout: options.timeoutMs ?? 60_000,
  });
}

export async function runCs(args: readonly string[], options: { env: Record<string, string | undefined>; input?: string; timeoutMs?: number }): Promise<Run> {
  const result = await startCs(args, options);
  return { exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr) };
}

/**
 * `cs` for a test's home, whose environment is read at each call (tests set
 * it in beforeAll): run it, run it expecting success (the output is in the
 * failure), and run it with --json, parsed.
 */
export function csClient(env: () => Record<string, string>, timeoutMs = 300_000) {
  const cs = (...args: string[]): Promise<Run> => runCs(args, { env: env(), timeoutMs });
  const ok = async (...args: string[]): Promise<Run> => {
    const result = await cs(...args);
    expect(result.exitCode, `cs ${args.join(' ')}\n${result.stdout}\n${result.stderr}`).toBe(0);
    return result;
  };
  const json = async <T,>(...args: string[]): Promise<T> => JSON.parse((await ok(...args, '--json')).stdout) as T;
  return { cs, ok, json };
}
