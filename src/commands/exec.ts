import type { ExecResult } from '../workspace/exec.js';
import { CsCommand, oclifFlags } from './_base.js';
import { commandWords, run, spec } from './_exec.js';

export default class Exec extends CsCommand {
  static override summary = spec.summary;
  static override description = spec.description;
  static override examples = [...spec.examples];
  static override strict = false;
  static override flags = oclifFlags(spec);

  async run(): Promise<ExecResult | undefined> {
    const { flags, argv } = await this.parseSpec(spec);
    const { result, exitCode } = await run(flags, commandWords(this.argv, argv), this.io());
    if (exitCode !== 0) this.exit(exitCode);
    return result;
  }
}
