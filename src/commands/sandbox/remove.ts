import { Args } from '@oclif/core';
import { removeSandbox } from '../../workspace/lifecycle.js';
import { CsCommand } from '../_base.js';

export default class SandboxRemove extends CsCommand {
  static override summary = 'Remove a sandbox: stop its workspaces and delete their disks.';
  static override description = 'Runs each workspace\'s on_delete hook first. The shared snapshot images stay (other workspaces may use them).';
  static override aliases = ['sandbox:rm', 'sandbox:delete'];
  static override examples = ['<%= config.bin %> <%= command.id %> demo'];
  static override args = { name: Args.string({ description: 'Sandbox name', required: true }) };

  async run(): Promise<{ sandbox: string; removed: string[] }> {
    const { args } = await this.parse(SandboxRemove);
    const result = await removeSandbox({ name: args.name, onPhase: (p) => this.say(`… ${p}`) });
    this.say(`Removed sandbox ${result.sandbox} (${result.removed.join(', ')})`);
    return result;
  }
}
