import { Args, Flags } from '@oclif/core';
import { addPortForward, type ForwardResult } from '../workspace/exec.js';
import { CsCommand } from './_base.js';

export default class PortForward extends CsCommand {
  static override summary = 'Forward a port on 127.0.0.1 to a port inside a running workspace.';
  static override description = 'The forward is kept with the workspace: it comes back after suspend and resume. With one number, the same local port is used when free.';
  static override examples = ['<%= config.bin %> <%= command.id %> -W demo/dev 8080:80', '<%= config.bin %> <%= command.id %> -W demo/dev 3000', '<%= config.bin %> <%= command.id %> -W demo/dev 5353:53/udp'];
  static override args = { ports: Args.string({ description: 'LOCAL:REMOTE[/tcp|/udp], or REMOTE', required: true }) };
  static override flags = {
    workspace: Flags.string({ char: 'W', description: 'SANDBOX/WORKSPACE (or SANDBOX when it has one workspace)', required: true }),
  };

  async run(): Promise<ForwardResult> {
    const { args, flags } = await this.parse(PortForward);
    const result = await addPortForward({ target: flags.workspace, spec: args.ports });
    this.say(`Forwarding 127.0.0.1:${result.mapping.hostPort} -> ${result.sandbox}/${result.workspace}:${result.mapping.guestPort}/${result.mapping.protocol.toLowerCase()}`);
    return result;
  }
}
