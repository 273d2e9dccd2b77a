import { Args } from '@oclif/core';
import { setPersonalDefault } from '../../../snapshot/manage.js';
import { CsCommand } from '../../_base.js';

export default class SnapshotPersonalSetDefault extends CsCommand {
  static override summary = 'Choose the personal snapshot applied to your new workspaces (NONE for none).';
  static override examples = ['<%= config.bin %> <%= command.id %> my-dotfiles', '<%= config.bin %> <%= command.id %> NONE'];
  static override args = { name: Args.string({ description: 'A personal snapshot of yours, or NONE', required: true }) };

  async run(): Promise<{ default: string | null }> {
    const { args } = await this.parse(SnapshotPersonalSetDefault);
    const result = await setPersonalDefault({ name: args.name });
    this.say(result.default ? `Your default personal snapshot is now ${result.default}` : 'You have no default personal snapshot now');
    return result;
  }
}
