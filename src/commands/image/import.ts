import { Args } from '@oclif/core';
import { importDirectory, type ImportResult } from '../../snapshot/import-dir.js';
import { formatSize } from '../../util/progress.js';
import { CsCommand } from '../_base.js';

export default class ImageImport extends CsCommand {
  static override summary = 'Make a one-layer image from a folder, in the local store.';
  static override description = 'The folder\'s contents become the image\'s root filesystem: one gzip layer with modes, owners, symlinks and hardlinks kept, entries in sorted order.';
  static override examples = [
    '<%= config.bin %> <%= command.id %> ./rootfs localhost/debian:bookworm',
    'sudo debootstrap --variant=minbase bookworm /tmp/deb && <%= config.bin %> <%= command.id %> /tmp/deb localhost/debian:bookworm',
  ];
  static override args = {
    dir: Args.string({ description: 'Folder to import', required: true }),
    reference: Args.string({ description: 'Name to give the image, e.g. localhost/base:v1', required: true }),
  };

  async run(): Promise<ImportResult> {
    const { args } = await this.parse(ImageImport);
    const result = await importDirectory({ dir: args.dir, reference: args.reference });
    this.say(`Imported ${args.dir} as ${result.reference} (${result.digest}); layer ${formatSize(result.layer.size)} compressed, ${formatSize(result.uncompressedSize)} uncompressed`);
    return result;
  }
}
