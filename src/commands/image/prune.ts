import { pruneImages } from '../../oci/image.js';
import { formatSize } from '../../util/progress.js';
import { CsCommand } from '../_base.js';

export default class ImagePrune extends CsCommand {
  static override summary = 'Delete blobs that no tagged image reaches.';
  static override description = 'Safe to run while other cs commands pull: blobs written by a pull in progress are kept until it has tagged them.';
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json'];

  async run(): Promise<{ removedBlobs: number; removedBytes: number; keptBlobs: number }> {
    await this.parse(ImagePrune);
    const result = await pruneImages();
    this.say(`Removed ${result.removedBlobs} blobs (${formatSize(result.removedBytes)}); ${result.keptBlobs} kept`);
    return result;
  }
}
