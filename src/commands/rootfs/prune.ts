import { join } from 'node:path';
import { Flags } from '@oclif/core';
import { emptyCaches } from '../../rootfs/cache.js';
import { snapshotsDir } from '../../snapshot/catalogue.js';
import { formatSize } from '../../util/progress.js';
import { dataDir } from '../../util/paths.js';
import { pruneRootImages, type PruneResult } from '../../workspace/root-images.js';
import { CsCommand } from '../_base.js';

export default class RootfsPrune extends CsCommand {
  static override summary = 'Delete root images no workspace uses (and, with --cache, the assembly caches).';
  static override description =
    'Workspaces boot from EROFS images of their snapshot chains, kept under the cs data folder (and the private folder for images of personal snapshots); a new home snapshot makes a new one. ' +
    'An image no workspace, restore point or running VM names is deleted, as are leftovers of builds whose process died. A workspace being created or cloned claims its image before its record names it, and an image claimed in the last hour is kept. If a record cannot be read, nothing is deleted. ' +
    'Removing a workspace, or moving it to a new root, prunes the same way. ' +
    'With --cache, the caches that make repeated assembly cheap (trees and images by chain id, each bounded to 8 entries) are emptied too, yours and the shared ones; the next assembly of each chain starts cold. Images workspaces use are never part of them.';
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json', '<%= config.bin %> <%= command.id %> --cache'];
  static override flags = {
    cache: Flags.boolean({ description: 'Also empty the assembly caches' }),
  };

  async run(): Promise<PruneResult & { cache?: { entries: number; freedBytes: number } }> {
    const { flags } = await this.parse(RootfsPrune);
    const result = await pruneRootImages();
    this.say(`Removed ${result.removed.length} root ${result.removed.length === 1 ? 'image' : 'images'} (${formatSize(result.freedBytes)} freed); ${result.kept} kept`);
    if (!flags.cache) return result;
    // This cs home's caches and this user's private ones in it (not the private folder other cs homes share).
    const cache = await emptyCaches([dataDir(), join(snapshotsDir(), 'personal', String(process.getuid?.() ?? 0))]);
    this.say(`Emptied the assembly caches: ${cache.entries} ${cache.entries === 1 ? 'entry' : 'entries'} (${formatSize(cache.freedBytes)} freed)`);
    return { ...result, cache };
  }
}
