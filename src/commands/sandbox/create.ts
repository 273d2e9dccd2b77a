import { Args, Flags } from '@oclif/core';
import { createSandbox } from '../../workspace/create.js';
import type { SandboxResult } from '../../workspace/lifecycle.js';
import { CsCommand } from '../_base.js';
import { workspaceDetails } from './_format.js';

export default class SandboxCreate extends CsCommand {
  static override summary = 'Create a sandbox from a definition and boot its workspaces.';
  static override description =
    'Resolves each workspace\'s snapshots to shared read-only images, gives it its own sparse disk and boots it as a microVM. ' +
    'Without --wait it returns once the guest agent answers; start-up (checkouts, hooks, daemons, probes) goes on in the background: follow it with `cs log -W SANDBOX/WORKSPACE -f`.';
  static override examples = [
    '<%= config.bin %> <%= command.id %> demo -f examples/debian.yaml --wait',
    '<%= config.bin %> <%= command.id %> -f team/shop.yaml',
    '<%= config.bin %> <%= command.id %> demo -f examples/debian.yaml --json',
    '<%= config.bin %> <%= command.id %> demo -f examples/debian.yaml --personal NONE',
  ];
  static override args = {
    name: Args.string({ description: 'Sandbox name (default: the definition\'s name, or its file name)' }),
  };
  static override flags = {
    file: Flags.string({ char: 'f', aliases: ['definition'], charAliases: ['D'], description: 'Sandbox definition (YAML)', required: true }),
    wait: Flags.boolean({ description: 'Wait until every workspace finished its start-up and its readiness probes pass' }),
    timeout: Flags.integer({ description: 'With --wait: give up after this many seconds', default: 900 }),
    personal: Flags.string({ description: 'Personal snapshot to apply (default: your default personal snapshot; NONE for none)' }),
  };

  async run(): Promise<SandboxResult> {
    const { args, flags } = await this.parse(SandboxCreate);
    const result = await createSandbox({
      file: flags.file,
      ...(args.name ? { name: args.name } : {}),
      wait: flags.wait,
      waitTimeoutMs: flags.timeout * 1000,
      ...(flags.personal ? { personal: flags.personal } : {}),
      onPhase: (phase) => this.say(`… ${phase}`),
    });
    this.show(result.workspaces.map(workspaceDetails).join('\n'));
    return result;
  }
}
