import { Flags } from '@oclif/core';
import { createKey, parseScopes, SCOPES, type KeyInfo } from '../../service/keys.js';
import { CsCommand } from '../_base.js';

export default class ApikeyCreate extends CsCommand {
  static override summary = 'Make an API key for `cs serve`; it is shown once.';
  static override description = `A key reaches its owner's workspaces only (default owner: you), with the scopes given: ${SCOPES.join(', ')}, or all. Only a hash of it is stored: keep the printed key, it cannot be shown again.`;
  static override examples = [
    { description: 'A key for a CI pipeline that runs commands and moves files', command: '<%= config.bin %> <%= command.id %> --name ci --scope exec,files,workspaces:read' },
    { description: 'A key for another person, with every scope, as JSON', command: '<%= config.bin %> <%= command.id %> --name bob-laptop --owner bob --scope all --json' },
  ];
  static override flags = {
    name: Flags.string({ description: 'A name to know it by (for list and revoke)', required: true }),
    scope: Flags.string({ description: `Scopes, comma-separated: ${SCOPES.join(', ')}, or all`, required: true, multiple: true }),
    owner: Flags.string({ description: 'Whose workspaces it reaches (default: you)' }),
  };

  async run(): Promise<{ key: KeyInfo; token: string }> {
    const { flags } = await this.parse(ApikeyCreate);
    const made = await createKey({ name: flags.name, scopes: parseScopes(flags.scope), ...(flags.owner ? { owner: flags.owner } : {}) });
    this.show(made.token);
    this.say(`API key "${made.key.name}" for ${made.key.owner} (${made.key.scopes.join(', ')}); it is not shown again.`);
    return made;
  }
}
