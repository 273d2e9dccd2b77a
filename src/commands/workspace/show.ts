import { Args } from '@oclif/core';
import { showWorkspace, type WorkspaceInfo } from '../../workspace/standalone.js';
import { CsCommand } from '../_base.js';
import { infoDetails } from './_format.js';

export default class WorkspaceShow extends CsCommand {
  static override summary = 'Show a workspace: status, resources, where it came from, restore points, bytes used.';
  static override examples = ['<%= config.bin %> <%= command.id %> scratch', '<%= config.bin %> <%= command.id %> demo/dev --json'];
  static override args = { name: Args.string({ description: 'NAME, or SANDBOX/WORKSPACE', required: true }) };

  async run(): Promise<WorkspaceInfo & { bytes: number }> {
    const { args } = await this.parse(WorkspaceShow);
    const result = await showWorkspace({ target: args.name });
    this.show(infoDetails(result));
    return result;
  }
}
