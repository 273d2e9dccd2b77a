import { Flags } from '@oclif/core';
import { UsageError } from '../util/errors.js';
import { execInWorkspace, type ExecResult } from '../workspace/exec.js';
import { CsCommand } from './_base.js';

export default class Exec extends CsCommand {
  static override summary = 'Run a command inside a workspace; its exit code becomes cs\'s.';
  static override description =
    'A stopped workspace is started first (and stays running for the next command). Runs as the workspace\'s owner in their home folder unless --user/--workdir say otherwise, with the workspace\'s env. ' +
    'Standard input is passed through when it is not a terminal (or always with -i); -t gives the command a terminal.';
  static override examples = [
    '<%= config.bin %> <%= command.id %> -W demo/dev -- uname -a',
    '<%= config.bin %> <%= command.id %> --workspace scratch -- make test',
    'echo hello | <%= config.bin %> <%= command.id %> -W demo/dev -- tr a-z A-Z',
    '<%= config.bin %> <%= command.id %> -W demo/dev --user root -- apt-get install -y make',
    '<%= config.bin %> <%= command.id %> -W demo/dev -e DEBUG=1 -w src/api -- make test',
  ];
  static override strict = false;
  static override flags = {
    workspace: Flags.string({ char: 'W', description: 'NAME, SANDBOX/WORKSPACE, or SANDBOX when it has one workspace; started if stopped', required: true }),
    user: Flags.string({ char: 'u', description: 'User to run as (name or uid); default the workspace owner' }),
    workdir: Flags.string({ char: 'w', description: 'Working directory (relative paths are under the home folder)' }),
    env: Flags.string({ char: 'e', description: 'Extra NAME=VALUE variable', multiple: true }),
    interactive: Flags.boolean({ char: 'i', description: 'Pass standard input even when it is a terminal' }),
    tty: Flags.boolean({ char: 't', description: 'Give the command a terminal (raw mode on this side)' }),
    timeout: Flags.integer({ description: 'Kill the command after this many seconds' }),
  };

  async run(): Promise<ExecResult | undefined> {
    const { flags, argv } = await this.parse(Exec);
    const command = (argv as string[]).filter((a, i) => !(i === 0 && a === '--'));
    if (command.length === 0) throw new UsageError('give the command to run after --, e.g. `cs exec -W demo/dev -- uname -a`');
    const tty = flags.tty && process.stdin.isTTY && process.stdout.isTTY;
    const passStdin = tty || flags.interactive || !process.stdin.isTTY;
    const workdir = flags.workdir && !flags.workdir.startsWith('/') ? `/home/owner/${flags.workdir}` : flags.workdir;
    if (tty) process.stdin.setRawMode(true);
    try {
      const result = await execInWorkspace({
        target: flags.workspace,
        argv: command,
        ...(flags.user ? { user: flags.user } : {}),
        ...(workdir ? { cwd: workdir } : {}),
        ...(flags.env ? { env: flags.env } : {}),
        ...(passStdin ? { stdin: process.stdin } : {}),
        stdout: process.stdout,
        stderr: process.stderr,
        onStart: (line) => this.logToStderr(`cs: ${line}`),
        ...(flags.timeout ? { timeoutMs: flags.timeout * 1000 } : {}),
        ...(tty
          ? { tty: { rows: process.stdout.rows, cols: process.stdout.columns, onResize: (resize) => process.stdout.on('resize', () => resize(process.stdout.rows, process.stdout.columns)) } }
          : {}),
      });
      if (result.timedOut) this.logToStderr(`cs: the command timed out after ${flags.timeout} s`);
      if (this.jsonEnabled()) return result;
      process.stdin.destroy();
      if (result.code !== 0) this.exit(result.code);
      return undefined;
    } finally {
      if (tty) process.stdin.setRawMode(false);
    }
  }
}
