import { Flags } from '@oclif/core';
import { readDesired } from '../reconcile/desired.js';
import { buildPlan } from '../reconcile/plan.js';
import { CsCommand } from './_base.js';
import { formatPlan, planJson } from './_plan.js';

export default class Diff extends CsCommand {
  static override summary = 'Show what `cs apply` would change: each workspace, each field, old and new, and what happens to it.';
  static override description = `Compares the definitions under PATH with what cs last applied to each workspace and with what really runs. Every change says how it is applied: in place (env, system files, daemons, ports, probes: no restart), by a restart (cpus, memory, kernel; the disk is kept), by refreshing the root (a new base snapshot; /home is kept), or held (a new home or personal snapshot, applied to existing workspaces only with --refresh-home). Nothing is changed.`;
  static override examples = [
    { description: 'What would change for the definitions in a folder', command: '<%= config.bin %> <%= command.id %> -f team/' },
    { description: 'The same plan as JSON', command: '<%= config.bin %> <%= command.id %> -f team/ --json' },
  ];
  static override flags = {
    file: Flags.string({ char: 'f', description: 'A definition file or a folder of them', required: true }),
    prune: Flags.boolean({ description: 'Show the removal of workspaces no longer defined' }),
    'refresh-home': Flags.boolean({ description: 'Show new home and personal snapshots as applied to existing workspaces' }),
  };

  async run(): Promise<Record<string, unknown>> {
    const { flags } = await this.parse(Diff);
    const plan = await buildPlan(await readDesired(flags.file), { prune: flags.prune, refreshHome: flags['refresh-home'] });
    this.show(formatPlan(plan));
    return planJson(plan);
  }
}
