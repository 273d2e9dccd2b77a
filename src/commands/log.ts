import { Flags } from '@oclif/core';
import { UsageError } from '../util/errors.js';
import { showLog } from '../workspace/exec.js';
import { CsCommand } from './_base.js';

export default class Log extends CsCommand {
  static override summary = 'Show a workspace\'s start-up log, its console, or a daemon\'s output.';
  static override examples = [
    '<%= config.bin %> <%= command.id %> -W demo/dev',
    '<%= config.bin %> <%= command.id %> -W demo/dev -f',
    '<%= config.bin %> <%= command.id %> -W demo/dev --console',
    '<%= config.bin %> <%= command.id %> -W demo/api --daemon api -f',
  ];
  static override enableJsonFlag = false;
  static override flags = {
    workspace: Flags.string({ char: 'W', description: 'SANDBOX/WORKSPACE (or SANDBOX when it has one workspace)', required: true }),
    follow: Flags.boolean({ char: 'f', description: 'Keep printing new lines until interrupted' }),
    console: Flags.boolean({ description: 'The VM\'s serial console (kernel and init) instead of the start-up log' }),
    daemon: Flags.string({ description: 'A daemon\'s output, read from inside the workspace' }),
    lines: Flags.integer({ char: 'n', description: 'Start with the last N lines' }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Log);
    if (flags.console && flags.daemon) throw new UsageError('--console and --daemon are different logs; pick one');
    const controller = new AbortController();
    process.once('SIGINT', () => controller.abort());
    await showLog({
      target: flags.workspace,
      follow: flags.follow,
      source: flags.daemon ? { daemon: flags.daemon } : flags.console ? 'console' : 'workspace',
      out: process.stdout,
      ...(flags.lines !== undefined ? { lines: flags.lines } : {}),
      signal: controller.signal,
    });
  }
}
