/**
 * Running the real `cs` binary (`node bin/run.js`) as a user's shell would,
 * with a test home's environment. As in test/cli.test.ts, what vitest adds
 * (NODE_ENV=test, VITEST*, NODE_OPTIONS) is removed: with NODE_ENV=test
 * oclif would load src/ through a TypeScript loader instead of dist/.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

export const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const BIN = join(ROOT, 'bin', 'run.js');

export interface Run {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
}

/** Build dist/ unless it is there (`npm test` builds it first). */
export async function ensureBuilt(): Promise<void> {
  if (!existsSync(join(ROOT, 'dist', 'commands', 'image', 'pull.js'))) {
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

export async function cs(args: readonly string[], options: { env: Record<string, string | undefined>; input?: string }): Promise<Run> {
  const result = await execa(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    reject: false,
    env: userEnv(options.env),
    extendEnv: false,
    ...(options.input === undefined ? { stdin: 'ignore' as const } : { input: options.input }),
    timeout: 30_000,
  });
  return { exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr };
}

/** The one JSON object a `--json` run prints on stdout. */
export function json<T = Record<string, unknown>>(run: Run): T {
  try {
    return JSON.parse(run.stdout) as T;
  } catch {
    throw new Error(`stdout is not one JSON document (exit ${String(run.exitCode)}):\n${run.stdout}\nstderr:\n${run.stderr}`);
  }
}

/** Failures are printed for people, never as a stack trace. */
export function stackFree(run: Run): boolean {
  return ![run.stdout, run.stderr].some((s) => /^\s+at /m.test(s) || /Internal error/.test(s));
}
