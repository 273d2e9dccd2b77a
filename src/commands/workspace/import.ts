import { Flags } from '@oclif/core';
import { importGit, type WorkspaceInfo } from '../../workspace/standalone.js';
import { CsCommand } from '../_base.js';
import { infoDetails } from './_format.js';
import { machineFlags, machineOptions } from './create.js';

export default class WorkspaceImport extends CsCommand {
  static override summary = 'Create a workspace whose /workspace is a clone of a git repository.';
  static override description =
    'The repository is cloned on this machine (any URL your git reaches, with your credentials) and copied into /workspace, owned by the workspace user. ' +
    'The source is recorded: a boot that finds /workspace empty (its disk was lost) clones it again.';
  static override examples = [
    '<%= config.bin %> <%= command.id %> --name api --git https://github.com/acme/api.git --image debian:12',
    '<%= config.bin %> <%= command.id %> --name api-v2 --git git@github.com:acme/api.git --ref v2.0.0 --snapshot team-base',
  ];
  static override flags = {
    name: Flags.string({ char: 'n', description: 'The workspace\'s name', required: true }),
    git: Flags.string({ description: 'Repository URL (or a local path)', required: true }),
    ref: Flags.string({ description: 'Branch, tag or full commit id (default: the default branch)' }),
    ...machineFlags,
  };

  async run(): Promise<WorkspaceInfo> {
    const { flags } = await this.parse(WorkspaceImport);
    const result = await importGit({
      name: flags.name,
      url: flags.git,
      ...(flags.ref ? { ref: flags.ref } : {}),
      ...machineOptions(flags),
      onPhase: (phase) => this.say(`… ${phase}`),
    });
    this.show(infoDetails(result));
    return result;
  }
}
