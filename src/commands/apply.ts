import { Flags } from '@oclif/core';
import { applyDefinitions } from '../reconcile/engine.js';
import { ExitCode } from '../util/errors.js';
import { CsCommand } from './_base.js';
import { formatPlan, formatResult, planJson, resultJson } from './_plan.js';

export default class Apply extends CsCommand {
  static override summary = 'Bring workspaces to their definitions: create, change in place, restart, refresh roots, and (with --prune) remove.';
  static override description = `Reads the definitions under PATH (each file is one sandbox, named by its top-level \`name:\` or its file name) and applies the plan \`cs diff\` shows. Each step checks whether it is still needed, acts, and checks that it took; a failing workspace is retried with growing back-off and reported failed after a few tries, without holding up the others. An invalid definition changes nothing: its problems are reported with file and line, and its sandbox keeps its last good spec. Workspaces are only removed with --prune.

Removals are judged only for sandboxes \`cs apply\` made or adopted, and none happen while any definition has a problem.

Exits 0 when everything matches, 3 when a definition is invalid (or another reconciler runs), 5 when a workspace could not be brought to its definition.`;
  static override examples = [
    { description: 'Apply every definition in a folder', command: '<%= config.bin %> <%= command.id %> -f team/' },
    { description: 'See the plan without changing anything', command: '<%= config.bin %> <%= command.id %> -f team/ --dry-run' },
    { description: 'Also remove workspaces whose definitions are gone', command: '<%= config.bin %> <%= command.id %> -f team/ --prune' },
    { description: 'Give existing workspaces their new home snapshot too', command: '<%= config.bin %> <%= command.id %> -f team/api.yaml --refresh-home' },
  ];
  static override flags = {
    file: Flags.string({ char: 'f', description: 'A definition file or a folder of them', required: true }),
    prune: Flags.boolean({ description: 'Remove workspaces and sandboxes that are no longer defined (their disks are deleted)' }),
    'dry-run': Flags.boolean({ description: 'Print the plan and change nothing' }),
    'refresh-home': Flags.boolean({ description: 'Apply new home and personal snapshots to existing workspaces too (their files stay on top)' }),
  };

  async run(): Promise<Record<string, unknown>> {
    const { flags } = await this.parse(Apply);
    const result = await applyDefinitions({
      path: flags.file,
      prune: flags.prune,
      refreshHome: flags['refresh-home'],
      dryRun: flags['dry-run'],
      onEvent: (e) => {
        if (e.phase === 'start') this.say(`… ${e.target}: ${e.step}`);
        else if (e.phase === 'progress') this.say(`    ${e.message ?? ''}`);
        else if (e.phase === 'done') this.say(`✓ ${e.target}: ${e.step}${e.message ? ` (${e.message})` : ''}`);
        else this.say(`${e.phase === 'failed' ? '✗' : '!'} ${e.target}: ${e.message ?? ''}`);
      },
    });
    if (flags['dry-run']) {
      this.show(formatPlan(result.plan));
      return this.finish(planJson(result.plan), result.plan.issues.length > 0 ? ExitCode.invalidInput : ExitCode.ok);
    }
    this.show(formatResult(result));
    const code = result.failed.length > 0 ? ExitCode.external : result.plan.issues.length > 0 ? ExitCode.invalidInput : ExitCode.ok;
    return this.finish(resultJson(result), code);
  }
}
