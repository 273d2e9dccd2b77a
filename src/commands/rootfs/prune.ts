import { formatSize } from '../../util/progress.js';
import { pruneRootImages, type PruneResult } from '../../workspace/root-images.js';
import { CsCommand } from '../_base.js';

export default class RootfsPrune extends CsCommand {
  static override summary = 'Delete root images no workspace uses.';
  static override description =
    'Workspaces boot from EROFS images of their snapshot chains, kept under the cs data folder (and the private folder for roots with a personal snapshot); a new home snapshot makes a new one. ' +
    'An image no workspace, restore point or running VM names is deleted, as are leftovers of builds whose process died. A workspace being created or cloned claims its image before its record names it, and an image claimed in the last hour is kept. If a record cannot be read, nothing is deleted. ' +
    'Removing a workspace, or moving it to a new root, prunes the same way.';
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json'];

  async run(): Promise<PruneResult> {
    await this.parse(RootfsPrune);
    const result = await pruneRootImages();
    this.say(`Removed ${result.removed.length} root ${result.removed.length === 1 ? 'image' : 'images'} (${formatSize(result.freedBytes)} freed); ${result.kept} kept`);
    return result;
  }
}
