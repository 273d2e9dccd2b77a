import type { TransferResult } from '../../oci/image.js';
import { CsCommand, oclifArgs, oclifFlags } from '../_base.js';
import { run, spec } from './_pull.js';

export default class ImagePull extends CsCommand {
  static override summary = spec.summary;
  static override description = spec.description;
  static override examples = [...spec.examples];
  static override args = oclifArgs(spec);
  static override flags = oclifFlags(spec);

  async run(): Promise<TransferResult> {
    const { flags, args } = await this.parseSpec(spec);
    return run(flags, args['reference'] as string, this.io());
  }
}
