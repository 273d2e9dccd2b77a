import { Args } from '@oclif/core';
import { inspectImage, type ImageDetails } from '../../oci/image.js';
import { formatSize } from '../../util/progress.js';
import { CsCommand } from '../_base.js';

export default class ImageInspect extends CsCommand {
  static override summary = 'Show an image: manifest, config, layers and sizes.';
  static override examples = ['<%= config.bin %> <%= command.id %> 127.0.0.1:5000/team/base:v1', '<%= config.bin %> <%= command.id %> debian:bookworm --json'];
  static override args = { reference: Args.string({ description: 'Image in the local store', required: true }) };

  async run(): Promise<ImageDetails> {
    const { args } = await this.parse(ImageInspect);
    const details = await inspectImage({ reference: args.reference });
    const lines = [
      `Name:       ${details.name}`,
      `Digest:     ${details.digest}`,
      `Media type: ${details.mediaType}`,
      `Platform:   ${details.platform ?? '-'}`,
      `Created:    ${details.created ?? '-'}`,
      `Size:       ${formatSize(details.size)}`,
      `Layers:     ${details.layers}`,
      ...details.layerDescriptors.map((l, i) => `  ${String(i + 1).padStart(2)}. ${l.digest}  ${formatSize(l.size).padStart(9)}  ${l.mediaType}`),
    ];
    this.show(lines.join('\n'));
    return details;
  }
}
