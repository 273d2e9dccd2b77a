import { Flags } from '@oclif/core';
import { UsageError } from '../util/errors.js';
import { execInWorkspace, loginShell } from '../workspace/exec.js';
import { CsCommand } from './_base.js';

export default class Ssh extends CsCommand {
  static override summary = 'Open an interactive login shell in a workspace, on a real terminal.';
  static override examples = ['<%= config.bin %> <%= command.id %> -W demo/dev', '<%= config.bin %> <%= command.id %> -W demo/dev --user root'];
  static override enableJsonFlag = false;
  static override flags = {
    workspace: Flags.string({ char: 'W', description: 'SANDBOX/WORKSPACE (or SANDBOX when it has one workspace)', required: true }),
    user: Flags.string({ char: 'u', description: 'User to log in as; default the workspace owner' }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Ssh);
    if (!process.stdin.isTTY || !process.stdout.isTTY) throw new UsageError('cs ssh needs a terminal; use `cs exec -W ... -- CMD` from scripts');
    const user = flags.user ?? 'owner';
    const shell = await loginShell(flags.workspace, user, undefined, (line) => this.logToStderr(`cs: ${line}`));
    process.stdin.setRawMode(true);
    let code = 0;
    try {
      const result = await execInWorkspace({
        target: flags.workspace,
        argv: [shell, '-l'],
        user,
        stdin: process.stdin,
        stdout: process.stdout,
        stderr: process.stderr,
        tty: { rows: process.stdout.rows, cols: process.stdout.columns, onResize: (resize) => process.stdout.on('resize', () => resize(process.stdout.rows, process.stdout.columns)) },
      });
      code = result.code;
    } finally {
      process.stdin.setRawMode(false);
      process.stdin.destroy();
    }
    this.exit(code);
  }
}
