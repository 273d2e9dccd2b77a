import { Flags } from '@oclif/core';
import { listAllWorkspaces, type WorkspaceInfo } from '../../workspace/standalone.js';
import { CsCommand } from '../_base.js';
import { infoTable } from './_format.js';

export default class WorkspaceList extends CsCommand {
  static override summary = 'List every workspace: those made with `cs workspace create` and those of definitions.';
  static override aliases = ['workspace:ls'];
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --templates', '<%= config.bin %> <%= command.id %> --json'];
  static override flags = {
    templates: Flags.boolean({ description: 'Only templates' }),
  };

  async run(): Promise<{ workspaces: WorkspaceInfo[] }> {
    const { flags } = await this.parse(WorkspaceList);
    const workspaces = await listAllWorkspaces({ templates: flags.templates });
    this.show(infoTable(workspaces));
    return { workspaces };
  }
}
