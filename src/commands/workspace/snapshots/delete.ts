import { Args } from '@oclif/core';
import { formatSize } from '../../../util/progress.js';
import { deleteRestorePoint } from '../../../workspace/restore-points.js';
import { CsCommand } from '../../_base.js';

export default class RestorePointDelete extends CsCommand {
  static override summary = 'Delete a restore point (the workspace itself is unchanged).';
  static override description = 'Frees the blocks only that point needed; blocks the current disk or other points still read stay.';
  static override aliases = ['workspace:snapshots:rm'];
  static override examples = ['<%= config.bin %> <%= command.id %> scratch before-upgrade'];
  static override args = {
    workspace: Args.string({ description: 'NAME, or SANDBOX/WORKSPACE', required: true }),
    point: Args.string({ description: 'The restore point', required: true }),
  };

  async run(): Promise<{ workspace: string; deleted: string; freedBytes: number }> {
    const { args } = await this.parse(RestorePointDelete);
    const result = await deleteRestorePoint({ target: args.workspace, name: args.point });
    this.show(`deleted restore point ${result.deleted} of ${result.workspace}; ${formatSize(result.freedBytes)} freed`);
    return result;
  }
}
