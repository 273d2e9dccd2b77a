import { Args, Flags } from '@oclif/core';
import { removeWorkspace } from '../../workspace/standalone.js';
import { CsCommand } from '../_base.js';

export default class WorkspaceRemove extends CsCommand {
  static override summary = 'Stop a workspace and delete it with its disk and restore points.';
  static override description = 'Clones made from it keep their own copy of what they share with it. Refused while commands run in it, unless --force.';
  static override aliases = ['workspace:rm'];
  static override examples = ['<%= config.bin %> <%= command.id %> scratch', '<%= config.bin %> <%= command.id %> scratch --force'];
  static override args = { name: Args.string({ description: 'NAME, or SANDBOX/WORKSPACE', required: true }) };
  static override flags = { force: Flags.boolean({ description: 'Remove it even while commands run in it' }) };

  async run(): Promise<{ removed: string }> {
    const { args, flags } = await this.parse(WorkspaceRemove);
    const result = await removeWorkspace({ target: args.name, force: flags.force, onPhase: (p) => this.say(`… ${p}`) });
    this.show(`removed ${result.removed}`);
    return result;
  }
}
