import { Args, Flags } from '@oclif/core';
import { snapshotRemove } from '../../workspace/snapshots.js';
import { CsCommand } from '../_base.js';

export default class SnapshotRemove extends CsCommand {
  static override summary = 'Remove a snapshot from the catalogue.';
  static override description =
    'Refused while a workspace or a definition of one of your sandboxes uses it, unless -f. Workspaces already built from it keep working (their root images stay); `cs image prune` frees the layers nothing uses any more.';
  static override aliases = ['snapshot:rm', 'snapshot:delete'];
  static override examples = ['<%= config.bin %> <%= command.id %> old-base', '<%= config.bin %> <%= command.id %> dev-base -f', '<%= config.bin %> <%= command.id %> dev --shared'];
  static override args = { name: Args.string({ description: 'Snapshot name', required: true }) };
  static override flags = {
    force: Flags.boolean({ char: 'f', description: 'Remove it even while it is in use' }),
    personal: Flags.boolean({ description: 'Remove your personal snapshot of that name', exclusive: ['shared'] }),
    shared: Flags.boolean({ description: 'Remove the shared (base or home) snapshot of that name', exclusive: ['personal'] }),
  };

  async run(): Promise<Awaited<ReturnType<typeof snapshotRemove>>> {
    const { args, flags } = await this.parse(SnapshotRemove);
    const result = await snapshotRemove({ name: args.name, namespace: flags.personal ? 'personal' : flags.shared ? 'shared' : 'any', ...(flags.force ? { force: true } : {}) });
    this.say(`Removed snapshot ${result.removed}${result.wasUsedBy.length > 0 ? ` (it was in use by ${result.wasUsedBy.join(', ')})` : ''}`);
    return result;
  }
}
