/** The real `cs` binary for the rootfs tests (see test/helpers/cli.ts). */
import { ensureBuilt as ensureCommand, runCs, startCs as start, type Run } from '../../helpers/cli.js';

export { BIN, ROOT, userEnv, type Run } from '../../helpers/cli.js';

/** Build dist/ unless the command is there (`npm test` builds it first). */
export function ensureBuilt(): Promise<void> {
  return ensureCommand('rootfs/assemble');
}

/** Start `cs ARGS` (not awaited): for tests that stop it midway. */
export function startCs(args: readonly string[], env: Record<string, string | undefined>) {
  return start(args, { env });
}

export function cs(args: readonly string[], env: Record<string, string | undefined>): Promise<Run> {
  return runCs(args, { env });
}
