import { listSandboxes, type WorkspaceSummary } from '../../workspace/lifecycle.js';
import { CsCommand } from '../_base.js';
import { workspaceTable } from './_format.js';

export default class SandboxList extends CsCommand {
  static override summary = 'List sandboxes and the state of their workspaces.';
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json'];

  async run(): Promise<{ workspaces: WorkspaceSummary[] }> {
    await this.parse(SandboxList);
    const workspaces = await listSandboxes();
    this.show(workspaceTable(workspaces));
    return { workspaces };
  }
}
