import { Args } from '@oclif/core';
import { removeImages } from '../../oci/image.js';
import { CsCommand } from '../_base.js';

export default class ImageRm extends CsCommand {
  static override summary = 'Remove images (their tags) from the local store.';
  static override description = 'Blobs stay until `cs image prune` removes the ones no tag reaches any more.';
  static override examples = ['<%= config.bin %> <%= command.id %> 127.0.0.1:5000/team/base:v1', '<%= config.bin %> <%= command.id %> a:v1 b:v2 && <%= config.bin %> image prune'];
  static override strict = false;
  static override aliases = ['image:remove'];
  static override args = { reference: Args.string({ description: 'Images to remove', required: true }) };

  async run(): Promise<{ removed: string[] }> {
    const { argv } = await this.parse(ImageRm);
    const result = await removeImages({ references: argv.map(String) });
    for (const name of result.removed) this.say(`Removed ${name}`);
    return result;
  }
}
