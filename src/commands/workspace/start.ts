import { Args, Flags } from '@oclif/core';
import { resolveWorkspace, startWorkspace } from '../../workspace/lifecycle.js';
import { showWorkspace, type WorkspaceInfo } from '../../workspace/standalone.js';
import { CsCommand } from '../_base.js';
import { infoDetails } from './_format.js';

export default class WorkspaceStart extends CsCommand {
  static override summary = 'Start a stopped workspace and wait until it is ready.';
  static override examples = ['<%= config.bin %> <%= command.id %> scratch', '<%= config.bin %> <%= command.id %> demo/dev --json'];
  static override args = { name: Args.string({ description: 'NAME, or SANDBOX/WORKSPACE', required: true }) };
  static override flags = { timeout: Flags.integer({ description: 'Give up after this many seconds', default: 900 }) };

  async run(): Promise<WorkspaceInfo> {
    const { args, flags } = await this.parse(WorkspaceStart);
    const ref = await resolveWorkspace(args.name);
    const started = await startWorkspace(ref, { wait: true, waitTimeoutMs: flags.timeout * 1000, onPhase: (p) => this.say(`… ${p}`) });
    if (!started) this.say(`${args.name} was already running`);
    const result = await showWorkspace({ target: args.name });
    this.show(infoDetails(result));
    return result;
  }
}
