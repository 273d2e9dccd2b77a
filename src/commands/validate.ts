import { Args, Flags } from '@oclif/core';
import { formatIssue, validatePaths, type ValidationReport } from '../definition/index.js';
import { ExitCode } from '../util/errors.js';
import { CsCommand } from './_base.js';

export default class Validate extends CsCommand {
  static override summary = 'Check sandbox definitions and repo manifests against the schema and cs\'s rules.';
  static override description = `Reads each file (directories are searched for *.yaml and *.yml; a repo's .sandbox/manifest.yaml is checked as a manifest) and reports every problem as FILE:LINE:COL [field.path]: message. Exits 3 when anything is invalid.`;
  static override examples = [
    { description: 'Check every definition under examples/', command: '<%= config.bin %> <%= command.id %> examples/' },
    { description: 'Check one file and print its typed model as JSON', command: '<%= config.bin %> <%= command.id %> sandbox.yaml --json --print-model' },
    { description: 'Use in CI: machine-readable problems', command: '<%= config.bin %> <%= command.id %> . --json | jq \'.issues[]\'' },
  ];
  static override strict = false;
  static override args = {
    path: Args.string({ description: 'Definition files or directories (default: the current directory)', required: false }),
  };
  static override flags = {
    'print-model': Flags.boolean({ description: 'Include the typed model of each valid file in the output' }),
  };

  async run(): Promise<ValidationReport | Record<string, unknown>> {
    const { argv, flags } = await this.parse(Validate);
    const paths = argv.length > 0 ? argv.map(String) : ['.'];
    const report = await validatePaths({ paths });

    for (const issue of report.issues) this.show(formatIssue(issue));
    const invalidFiles = new Set(report.issues.map((i) => i.file)).size;
    const noun = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
    if (report.ok) {
      this.show(`✓ ${noun(report.files.length, 'definition')} valid`);
      if (flags['print-model']) {
        for (const file of report.files) if (file.ok) this.show(JSON.stringify(file.model, null, 2));
      }
    } else {
      this.show(`✗ ${noun(report.issues.length, 'problem')} in ${noun(invalidFiles, 'path')} (${noun(report.files.length, 'file')} checked)`);
    }

    const result = {
      ok: report.ok,
      files: report.files.map((f) => ({
        file: f.file,
        kind: f.kind,
        ok: f.ok,
        ...(flags['print-model'] && f.ok ? { model: f.model } : {}),
      })),
      issues: report.issues,
    };
    return this.finish(result, report.ok ? ExitCode.ok : ExitCode.invalidInput);
  }
}
