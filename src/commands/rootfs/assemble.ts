import type { AssembleResult } from '../../rootfs/assemble.js';
import { CsCommand, oclifFlags } from '../_base.js';
import { run, spec } from './_assemble.js';

export default class RootfsAssemble extends CsCommand {
  static override summary = spec.summary;
  static override description = spec.description;
  static override examples = [...spec.examples];
  static override flags = oclifFlags(spec);

  async run(): Promise<AssembleResult> {
    const { flags } = await this.parseSpec(spec);
    return run(flags, this.io());
  }
}
