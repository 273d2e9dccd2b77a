import { listImages, type ImageSummary } from '../../oci/image.js';
import { formatSize } from '../../util/progress.js';
import { CsCommand } from '../_base.js';
import { table } from '../_table.js';

export default class ImageLs extends CsCommand {
  static override summary = 'List the images in the local store.';
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json'];
  static override aliases = ['image:list'];

  async run(): Promise<{ images: ImageSummary[] }> {
    await this.parse(ImageLs);
    const images = await listImages();
    if (images.length === 0) this.say('No images in the local store. Pull one with `cs image pull REF` or import a folder with `cs image import DIR REF`.');
    else {
      const rows = images.map((i) => [i.name, i.digest.slice(0, 19), formatSize(i.size), String(i.layers), i.platform ?? '', i.created?.slice(0, 19) ?? '']);
      this.show(table(['NAME', 'DIGEST', 'SIZE', 'LAYERS', 'PLATFORM', 'CREATED'], rows));
    }
    return { images };
  }
}
