/**
 * Running the real `cs` binary (`node bin/run.js`) the way a user's shell
 * would. What vitest adds to the environment (NODE_ENV=test, VITEST*,
 * NODE_OPTIONS) is removed: with NODE_ENV=test oclif would load src/
 * through a TypeScript loader instead of dist/.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

export const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
export const BIN = join(ROOT, 'bin', 'run.js');

export interface Run {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
}

/** Build dist/ unless the command is there (`npm test` builds it first). */
export async function ensureBuilt(): Promise<void> {
  if (!existsSync(join(ROOT, 'dist', 'commands', 'rootfs', 'assemble.js'))) {
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
export function startCs(args: readonly string[], env: Record<string, string | undefined>) {
  return execa(process.execPath, [BIN, ...args], { cwd: ROOT, reject: false, env: userEnv(env), extendEnv: false, stdin: 'ignore', timeout: 60_000 });
}

export async function cs(args: readonly string[], env: Record<string, string | undefined>): Promise<Run> {
  const result = await startCs(args, env);
  return { exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr) };
}
