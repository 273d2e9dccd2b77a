import { Args } from '@oclif/core';
import { resolveWorkspace, stopWorkspace } from '../../workspace/lifecycle.js';
import { showWorkspace, type WorkspaceInfo } from '../../workspace/standalone.js';
import { CsCommand } from '../_base.js';

export default class WorkspaceStop extends CsCommand {
  static override summary = 'Stop a workspace (its on_suspend hook runs, the guest powers off); its disk is kept.';
  static override examples = ['<%= config.bin %> <%= command.id %> scratch'];
  static override args = { name: Args.string({ description: 'NAME, or SANDBOX/WORKSPACE', required: true }) };

  async run(): Promise<WorkspaceInfo> {
    const { args } = await this.parse(WorkspaceStop);
    await stopWorkspace(await resolveWorkspace(args.name), { onPhase: (p) => this.say(`… ${p}`) });
    const result = await showWorkspace({ target: args.name });
    this.show(`${result.id}: ${result.status}`);
    return result;
  }
}
