import { supervise } from './supervisor.js';

/**
 * Entry point of a workspace's supervisor process, started detached by
 * `cs sandbox create|resume` with the workspace folder as its argument.
 */
const dir = process.argv[2];
if (!dir) {
  process.stderr.write('usage: supervisor-main WORKSPACE_DIR\n');
  process.exit(2);
}
supervise(dir).catch((error: unknown) => {
  process.stderr.write(`supervisor failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
