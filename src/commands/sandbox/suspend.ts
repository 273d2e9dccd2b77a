import { Args } from '@oclif/core';
import { suspendSandbox, type SandboxResult } from '../../workspace/lifecycle.js';
import { CsCommand } from '../_base.js';
import { workspaceDetails } from './_format.js';

export default class SandboxSuspend extends CsCommand {
  static override summary = 'Stop a sandbox\'s workspaces, keeping their disks.';
  static override description = 'Runs each workspace\'s on_suspend hook, powers the guest off cleanly (its disk is synced), and keeps everything for `cs sandbox resume`.';
  static override examples = ['<%= config.bin %> <%= command.id %> demo'];
  static override args = { name: Args.string({ description: 'Sandbox name', required: true }) };

  async run(): Promise<SandboxResult> {
    const { args } = await this.parse(SandboxSuspend);
    const result = await suspendSandbox({ name: args.name, onPhase: (p) => this.say(`… ${p}`) });
    this.show(result.workspaces.map(workspaceDetails).join('\n'));
    return result;
  }
}
