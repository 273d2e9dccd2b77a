import { Flags } from '@oclif/core';
import { ExitCode } from '../util/errors.js';
import { doctor, type DoctorCheck } from '../workspace/setup.js';
import { CsCommand } from './_base.js';

export default class Doctor extends CsCommand {
  static override summary = 'Check that this host can boot workspaces, and say how to fix what is missing.';
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --probe --json'];
  static override flags = {
    probe: Flags.boolean({ description: 'Probe the accelerator now if this boot has no verdict yet' }),
    fix: Flags.boolean({ description: 'Run `cs setup` to fix what can be fixed' }),
  };

  async run(): Promise<{ ok: boolean; checks: DoctorCheck[] }> {
    const { flags } = await this.parse(Doctor);
    if (flags.fix) {
      const { setup } = await import('../workspace/setup.js');
      await setup({ onPhase: (p) => this.say(`… ${p}`) });
    }
    const result = await doctor({ probe: flags.probe || flags.fix });
    for (const check of result.checks) {
      this.show(`${check.ok ? 'ok  ' : 'FAIL'} ${check.name.padEnd(16)} ${check.detail}${check.fix ? `\n     fix: ${check.fix}` : ''}`);
    }
    return this.finish(result, result.ok ? ExitCode.ok : ExitCode.external);
  }
}
