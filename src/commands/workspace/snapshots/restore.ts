import { Args, Flags } from '@oclif/core';
import { restoreRestorePoint } from '../../../workspace/restore-points.js';
import { CsCommand } from '../../_base.js';

export default class RestorePointRestore extends CsCommand {
  static override summary = 'Put a workspace\'s disk back as it was at a restore point; what was written since is dropped.';
  static override description = 'The workspace must be stopped; --force stops it first and starts it again after. The restore point itself is kept.';
  static override examples = ['<%= config.bin %> <%= command.id %> scratch before-upgrade', '<%= config.bin %> <%= command.id %> scratch before-upgrade --force'];
  static override args = {
    workspace: Args.string({ description: 'NAME, or SANDBOX/WORKSPACE', required: true }),
    point: Args.string({ description: 'The restore point', required: true }),
  };
  static override flags = { force: Flags.boolean({ description: 'Stop the workspace if it runs, restore, and start it again' }) };

  async run(): Promise<{ workspace: string; restored: string; restarted: boolean }> {
    const { args, flags } = await this.parse(RestorePointRestore);
    const result = await restoreRestorePoint({ target: args.workspace, name: args.point, force: flags.force, onPhase: (p) => this.say(`… ${p}`) });
    this.show(`${result.workspace} restored to ${result.restored}${result.restarted ? ' and started again' : ''}`);
    return result;
  }
}
