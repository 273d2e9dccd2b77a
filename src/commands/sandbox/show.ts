import { Args } from '@oclif/core';
import { showSandbox, type SandboxResult } from '../../workspace/lifecycle.js';
import { CsCommand } from '../_base.js';
import { workspaceDetails } from './_format.js';

export default class SandboxShow extends CsCommand {
  static override summary = 'Show a sandbox: each workspace\'s state, ports, boot timings, and why it failed or crashed.';
  static override examples = ['<%= config.bin %> <%= command.id %> demo', '<%= config.bin %> <%= command.id %> demo --json'];
  static override args = { name: Args.string({ description: 'Sandbox name', required: true }) };

  async run(): Promise<SandboxResult> {
    const { args } = await this.parse(SandboxShow);
    const result = await showSandbox({ name: args.name });
    this.show(result.workspaces.map(workspaceDetails).join('\n'));
    return result;
  }
}
