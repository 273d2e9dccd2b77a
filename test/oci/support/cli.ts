/**
 * Running the real `cs` binary (`node bin/run.cjs`) as a user's shell would,
 * with a test home's environment. As in test/cli.test.ts, what vitest adds
 * (NODE_ENV=test, VITEST*, NODE_OPTIONS) is removed: with NODE_ENV=test
 * oclif would load src/ through a TypeScript loader instead of dist/.
 */
import { ensureBuilt as ensureCommand, runCs, type Run } from '../../helpers/cli.js';

export { ROOT, userEnv, type Run } from '../../helpers/cli.js';

/** Build dist/ unless it is there (`npm test` builds it first). */
export function ensureBuilt(): Promise<void> {
  return ensureCommand('image/pull');
}

export function cs(args: readonly string[], options: { env: Record<string, string | undefined>; input?: string }): Promise<Run> {
  return runCs(args, { ...options, timeoutMs: 30_000 });
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
