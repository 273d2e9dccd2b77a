import { Args } from '@oclif/core';
import { formatSize } from '../../../util/progress.js';
import { listRestorePoints, type RestorePointInfo } from '../../../workspace/restore-points.js';
import { CsCommand } from '../../_base.js';
import { table } from '../../_table.js';

export default class RestorePointList extends CsCommand {
  static override summary = 'List a workspace\'s restore points, oldest first.';
  static override aliases = ['workspace:snapshots:ls'];
  static override examples = ['<%= config.bin %> <%= command.id %> scratch', '<%= config.bin %> <%= command.id %> scratch --json'];
  static override args = { workspace: Args.string({ description: 'NAME, or SANDBOX/WORKSPACE', required: true }) };

  async run(): Promise<{ workspace: string; restorePoints: RestorePointInfo[] }> {
    const { args } = await this.parse(RestorePointList);
    const result = await listRestorePoints({ target: args.workspace });
    if (result.restorePoints.length === 0) this.show(`${result.workspace} has no restore points. Take one with \`cs workspace snapshots create ${result.workspace} --name NAME\`.`);
    else {
      const rows = result.restorePoints.map((p) => [p.name, p.createdAt.replace(/\.\d+Z$/, 'Z'), formatSize(p.bytes), p.live ? 'running' : 'stopped', p.state]);
      this.show(table(['NAME', 'CREATED', 'SIZE', 'TAKEN', 'STATE'], rows));
    }
    return result;
  }
}
