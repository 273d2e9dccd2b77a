import { Args, Flags } from '@oclif/core';
import { UsageError } from '../../util/errors.js';
import { labelWorkspace, type WorkspaceInfo } from '../../workspace/standalone.js';
import { CsCommand } from '../_base.js';

export default class WorkspaceLabel extends CsCommand {
  static override summary = 'Set or clear a workspace\'s label (free text shown in lists).';
  static override examples = ['<%= config.bin %> <%= command.id %> scratch "trying the new parser"', '<%= config.bin %> <%= command.id %> scratch --clear'];
  static override args = {
    name: Args.string({ description: 'NAME, or SANDBOX/WORKSPACE', required: true }),
    label: Args.string({ description: 'The new label' }),
  };
  static override flags = { clear: Flags.boolean({ description: 'Remove the label' }) };

  async run(): Promise<WorkspaceInfo> {
    const { args, flags } = await this.parse(WorkspaceLabel);
    if (flags.clear === (args.label !== undefined)) throw new UsageError('give either a LABEL or --clear');
    const result = await labelWorkspace({ target: args.name, ...(args.label !== undefined ? { label: args.label } : {}) });
    this.show(result.label ? `${result.id}: label "${result.label}"` : `${result.id}: no label`);
    return result;
  }
}
