import { Args } from '@oclif/core';
import { logout } from '../oci/login.js';
import type { CredentialSource } from '../oci/credentials.js';
import { CsCommand } from './_base.js';

export default class Logout extends CsCommand {
  static override summary = 'Remove stored credentials for a registry.';
  static override description = 'Removes them from every auth file cs reads and from the configured credential helper.';
  static override examples = ['<%= config.bin %> <%= command.id %> registry.example.com'];
  static override args = { registry: Args.string({ description: 'Registry host[:port]', required: true }) };

  async run(): Promise<{ registry: string; removedFrom: CredentialSource[] }> {
    const { args } = await this.parse(Logout);
    const result = await logout({ registry: args.registry });
    if (result.removedFrom.length === 0) this.say(`No credentials for ${result.registry} were stored`);
    for (const source of result.removedFrom) this.say(`Removed credentials for ${result.registry} from ${source.path ?? source.helper}`);
    return result;
  }
}
