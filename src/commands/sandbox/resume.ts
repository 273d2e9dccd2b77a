import { Args, Flags } from '@oclif/core';
import { resumeSandbox, type SandboxResult } from '../../workspace/lifecycle.js';
import { CsCommand } from '../_base.js';
import { workspaceDetails } from './_format.js';

export default class SandboxResume extends CsCommand {
  static override summary = 'Start a suspended sandbox again, from the disks it had.';
  static override examples = ['<%= config.bin %> <%= command.id %> demo', '<%= config.bin %> <%= command.id %> demo --wait'];
  static override args = { name: Args.string({ description: 'Sandbox name', required: true }) };
  static override flags = {
    wait: Flags.boolean({ description: 'Wait until start-up finished and readiness probes pass' }),
    timeout: Flags.integer({ description: 'Give up waiting after this many seconds', default: 900 }),
  };

  async run(): Promise<SandboxResult> {
    const { args, flags } = await this.parse(SandboxResume);
    const result = await resumeSandbox({ name: args.name, wait: flags.wait, waitTimeoutMs: flags.timeout * 1000, onPhase: (p) => this.say(`… ${p}`) });
    this.show(result.workspaces.map(workspaceDetails).join('\n'));
    return result;
  }
}
