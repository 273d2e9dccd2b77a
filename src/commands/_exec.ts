import type { ExecResult } from '../workspace/exec.js';
import type { Hot } from './_lean.js';
import type { CommandIo, CommandSpec, FlagValues } from './_spec.js';

/** `cs exec`, described once for oclif and for the lean start (see _spec.ts). */
export const spec = {
  summary: "Run a command inside a workspace; its exit code becomes cs's.",
  description:
    "A stopped workspace is started first (and stays running for the next command). Runs as the workspace's owner in their home folder unless --user/--workdir say otherwise, with the workspace's env. " +
    'Standard input is passed through when it is not a terminal (or always with -i); -t gives the command a terminal.',
  examples: [
    '<%= config.bin %> <%= command.id %> -W demo/dev -- uname -a',
    '<%= config.bin %> <%= command.id %> --workspace scratch -- make test',
    'echo hello | <%= config.bin %> <%= command.id %> -W demo/dev -- tr a-z A-Z',
    '<%= config.bin %> <%= command.id %> -W demo/dev --user root -- apt-get install -y make',
    '<%= config.bin %> <%= command.id %> -W demo/dev -e DEBUG=1 -w src/api -- make test',
  ],
  strict: false,
  flags: {
    workspace: { type: 'string', char: 'W', description: 'NAME, SANDBOX/WORKSPACE, or SANDBOX when it has one workspace; started if stopped', required: true },
    user: { type: 'string', char: 'u', description: 'User to run as (name or uid); default the workspace owner' },
    workdir: { type: 'string', char: 'w', description: 'Working directory (relative paths are under the home folder)' },
    env: { type: 'string', char: 'e', description: 'Extra NAME=VALUE variable', multiple: true },
    interactive: { type: 'boolean', char: 'i', description: 'Pass standard input even when it is a terminal' },
    tty: { type: 'boolean', char: 't', description: 'Give the command a terminal (raw mode on this side)' },
    timeout: { type: 'integer', description: 'Kill the command after this many seconds' },
  },
} as const satisfies CommandSpec;

/**
 * The command to run: every word after the first `--` as typed. oclif's
 * parser is not asked: it orders the words it leaves by where each first
 * appears on the line, so `-u root -- chown root /x` came out `root chown /x`.
 * Without `--`, the words oclif left (`parsed`) are all there is.
 */
export function commandWords(words: readonly string[], parsed: readonly string[]): string[] {
  const at = words.indexOf('--');
  return at === -1 ? [...parsed] : words.slice(at + 1);
}

/** The command's result (printed with --json), and the exit code cs ends with: the command's own. */
export async function run(flags: FlagValues<typeof spec>, argv: readonly string[], io: CommandIo): Promise<{ result: ExecResult | undefined; exitCode: number }> {
  const [{ UsageError }, { execInWorkspace }] = await Promise.all([import('../util/errors.js'), import('../workspace/exec.js')]);
  if (argv.length === 0) throw new UsageError('give the command to run after --, e.g. `cs exec -W demo/dev -- uname -a`');
  const tty = flags.tty && process.stdin.isTTY && process.stdout.isTTY;
  const passStdin = tty || flags.interactive || !process.stdin.isTTY;
  const workdir = flags.workdir && !flags.workdir.startsWith('/') ? `/home/owner/${flags.workdir}` : flags.workdir;
  if (tty) process.stdin.setRawMode(true);
  try {
    const result = await execInWorkspace({
      target: flags.workspace,
      argv: [...argv],
      ...(flags.user ? { user: flags.user } : {}),
      ...(workdir ? { cwd: workdir } : {}),
      ...(flags.env ? { env: flags.env } : {}),
      ...(passStdin ? { stdin: process.stdin } : {}),
      stdout: process.stdout,
      stderr: process.stderr,
      onStart: (line) => io.say(`cs: ${line}`),
      ...(flags.timeout ? { timeoutMs: flags.timeout * 1000 } : {}),
      ...(tty
        ? { tty: { rows: process.stdout.rows, cols: process.stdout.columns, onResize: (resize) => process.stdout.on('resize', () => resize(process.stdout.rows, process.stdout.columns)) } }
        : {}),
    });
    if (result.timedOut) io.say(`cs: the command timed out after ${flags.timeout} s`);
    if (io.json) return { result, exitCode: 0 };
    process.stdin.destroy();
    return { result: undefined, exitCode: result.code };
  } finally {
    if (tty) process.stdin.setRawMode(false);
  }
}

/** For the lean start (see _lean.ts). */
export const hot: Hot = { words: ['exec'], spec, run: (p, io) => run(p.flags as FlagValues<typeof spec>, p.argv, io) };
