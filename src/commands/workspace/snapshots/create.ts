import { Args, Flags } from '@oclif/core';
import { formatSize } from '../../../util/progress.js';
import { createRestorePoint, type RestorePointInfo } from '../../../workspace/restore-points.js';
import { CsCommand } from '../../_base.js';

export default class RestorePointCreate extends CsCommand {
  static override summary = 'Take a restore point: the whole workspace disk as it is now.';
  static override description =
    'Takes the same time whatever the disk holds, and costs only the blocks written after it. A running workspace keeps running: ' +
    'its file system is frozen for the moment the disk switches to a new overlay. Memory is not kept.';
  static override examples = ['<%= config.bin %> <%= command.id %> scratch --name before-upgrade', '<%= config.bin %> <%= command.id %> demo/dev --name clean --json'];
  static override args = { workspace: Args.string({ description: 'NAME, or SANDBOX/WORKSPACE', required: true }) };
  static override flags = { name: Flags.string({ char: 'n', description: 'The restore point\'s name', required: true }) };

  async run(): Promise<RestorePointInfo> {
    const { args, flags } = await this.parse(RestorePointCreate);
    const point = await createRestorePoint({ target: args.workspace, name: flags.name, onPhase: (p) => this.say(`… ${p}`) });
    this.show(`restore point ${point.name} of ${args.workspace} taken${point.live ? ' (running, file system frozen)' : ''}; ${formatSize(point.bytes)} written since the one before`);
    return point;
  }
}
